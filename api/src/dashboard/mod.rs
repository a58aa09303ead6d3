//! The operators' dashboard, served at `/`: a page (vanilla HTML/JS, uPlot vendored — nothing
//! from a CDN) and the private JSON and SSE endpoints under `/dashboard/` it reads. Admin keys
//! only (see [`auth`]). These endpoints are not part of the public API and not in the OpenAPI
//! document. Who may use which: [`auth`].
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the dashboard, or the sign-in page |
//! | `POST /dashboard/session` | sign in (`{"name": …, "password": …}`): the session cookie, and who signed in |
//! | `GET /dashboard/session` | who is signed in: name, role, the session's CSRF token and expiry |
//! | `DELETE /dashboard/session` | sign out: the session ends, and every live feed it holds |
//! | `GET /dashboard/api/orders?status=&q=&limit=` | the latest orders, by status and id part |
//! | `GET /dashboard/api/orders/{id}` | one order's timeline |
//! | `POST /dashboard/api/orders/{id}/commands` | act on an order: a command with the version seen in `If-Match`, made by the signed-in person (operators and admins; [`desk`]) |
//! | `GET`, `PUT`, `DELETE /dashboard/api/orders/{id}/presence` | who has the order open; "I have it open" (renewed by the page), "I left" ([`presence`]) |
//! | `POST`, `PUT`, `DELETE /dashboard/api/orders/{id}/edit-lease` | take, renew, let go of the order's edit lease (operators and admins; [`presence`]) |
//! | `POST /dashboard/api/orders/{id}/edit-lease/break` | break whoever's edit lease (admins; audited) |
//! | `GET /dashboard/api/partitions` | the partitions panel |
//! | `GET /dashboard/api/inventory?q=&after=` | every SKU's stock, 200 a page in SKU order |
//! | `PUT /dashboard/api/inventory/{sku}` (`{"available": n}`) | set a SKU's available stock (admins; audited) |
//! | `GET /dashboard/api/dead-letters` | the dead letters, newest first, each saying whether it can be redriven |
//! | `POST /dashboard/api/dead-letters/{id}/redrive` | re-submit one (audited) |
//! | `POST /dashboard/api/dead-letters/{id}/acknowledge` | close one without redriving it (audited) |
//! | `GET /dashboard/api/webhooks` | every client's webhook endpoints, with status and backlog ([`webhooks`]) |
//! | `GET /dashboard/api/webhooks/{id}/deliveries` | an endpoint's delivery log, newest first |
//! | `POST /dashboard/api/webhooks/{id}/deliveries/{delivery_id}/retry` | send a delivery again (operators and admins; audited) |
//! | `GET /dashboard/api/operators`, `POST` (`{"name", "role", "password"}`) | the operators; create one (admins) |
//! | `POST /dashboard/api/operators/{name}/disable` | disable one: their sessions and feeds end (admins; not oneself) |
//! | `GET /dashboard/api/config` | the alert thresholds |
//! | `GET /dashboard/api/stats/history` | the last five minutes of statistics frames, for the charts |
//! | `GET /dashboard/api/stream` | the live feed (SSE) |
//! | `GET /favicon.ico`, `GET /dashboard/assets/favicon.svg` | the icon |

pub mod auth;
mod desk;
pub mod hub;
mod operators;
pub mod partitions;
pub mod presence;
mod redrive;
pub mod stats;
mod stock;
mod stream;
pub mod timeline;
mod webhooks;

use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, Peer, StrictJson};
use crate::state::AppState;
use auth::{Principal, Viewer};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use orderflow_domain::OrderId;
use orderflow_storage::dashboard;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const INDEX_HTML: &str = include_str!("../../static/dashboard/index.html");
const SIGN_IN_HTML: &str = include_str!("../../static/dashboard/sign-in.html");

/// Static files of the page: (name, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/dashboard/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../static/dashboard/app.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../../static/vendor/uPlot.min.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../static/dashboard/favicon.svg"),
    ),
];

/// The same icon for browsers that ask for `/favicon.ico` whatever the page says (16 and 32 px).
const FAVICON_ICO: &[u8] = include_bytes!("../../static/dashboard/favicon.ico");

/// Everything but the live feed (which must outlive the request timeout; see [`streams`]).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/dashboard/assets/{name}", get(asset))
        .route(
            "/dashboard/session",
            get(whoami).post(sign_in).delete(sign_out),
        )
        .route("/dashboard/api/orders", get(orders))
        .route("/dashboard/api/orders/{id}", get(order_timeline))
        .route(
            "/dashboard/api/orders/{id}/commands",
            post(desk::send_command),
        )
        .route(
            "/dashboard/api/orders/{id}/presence",
            get(presence::get)
                .put(presence::arrive)
                .delete(presence::leave),
        )
        .route(
            "/dashboard/api/orders/{id}/edit-lease",
            post(presence::claim)
                .put(presence::renew)
                .delete(presence::release),
        )
        .route(
            "/dashboard/api/orders/{id}/edit-lease/break",
            post(presence::break_lease),
        )
        .route("/dashboard/api/partitions", get(partitions_view))
        .route("/dashboard/api/inventory", get(stock::list))
        .route(
            "/dashboard/api/inventory/{sku}",
            axum::routing::put(stock::set),
        )
        .route("/dashboard/api/dead-letters", get(dead_letters))
        .route(
            "/dashboard/api/dead-letters/{id}/redrive",
            post(redrive::redrive),
        )
        .route(
            "/dashboard/api/dead-letters/{id}/acknowledge",
            post(redrive::acknowledge),
        )
        .route("/dashboard/api/webhooks", get(webhooks::endpoints))
        .route(
            "/dashboard/api/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/dashboard/api/webhooks/{id}/deliveries/{delivery_id}/retry",
            post(webhooks::retry),
        )
        .route(
            "/dashboard/api/operators",
            get(operators::list).post(operators::create),
        )
        .route(
            "/dashboard/api/operators/{name}/disable",
            post(operators::disable),
        )
        .route("/dashboard/api/config", get(config))
        .route("/dashboard/api/stats/history", get(stats_history))
        .route("/favicon.ico", get(favicon))
}

/// The live feed: long-lived, so it is mounted outside the request timeout.
pub fn streams() -> Router<AppState> {
    Router::new().route("/dashboard/api/stream", get(stream::feed))
}

/// The page for a signed-in operator (or an admin key), else the sign-in page. Both are static:
/// the data comes from the authenticated endpoints.
async fn index(viewer: Result<Viewer, ApiError>) -> Response {
    let page = match viewer {
        Ok(_) => INDEX_HTML,
        Err(ApiError::Unauthorized | ApiError::Forbidden) => SIGN_IN_HTML,
        Err(other) => return other.into_response(),
    };
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        Html(page),
    )
        .into_response()
}

/// Scripts and styles from this origin only; no inline script, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

async fn asset(ApiPath(name): ApiPath<String>) -> Result<Response, ApiError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(n, ..)| *n == name)
        .ok_or(ApiError::NotFound("asset"))?;
    Ok((
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        *body,
    )
        .into_response())
}

async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/x-icon"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        FAVICON_ICO,
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    name: String,
    password: String,
}

/// Who is signed in, as the page needs it.
#[derive(Serialize)]
struct Me {
    name: String,
    role: &'static str,
    /// Send it as `X-CSRF-Token` with every change (none for an API key).
    csrf_token: Option<String>,
    /// When the session ends (none for an API key).
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Me {
    fn of(principal: &Principal) -> Self {
        Me {
            name: principal.name().to_owned(),
            role: principal.role().as_str(),
            csrf_token: principal.csrf_token(),
            expires_at: match principal {
                Principal::Operator(session) => Some(session.expires_at),
                Principal::AdminKey(_) => None,
            },
        }
    }
}

/// Checks a name and password and starts a session (see [`crate::operators`]).
async fn sign_in(
    State(state): State<AppState>,
    Peer(address): Peer,
    headers: HeaderMap,
    body: StrictJson<SignIn>,
) -> Result<Response, ApiError> {
    let SignIn { name, password } = body.value;
    let signed_in = state
        .sessions
        .sign_in(&state.db, &name, &password, address)
        .await?;
    let me = Me::of(&Principal::Operator(signed_in.session));
    let cookie = auth::sign_in_cookie(
        &signed_in.token,
        state.sessions.ttl().as_secs(),
        auth::over_tls(&headers),
    );
    Ok((
        [
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Json(me),
    )
        .into_response())
}

async fn whoami(Viewer(principal): Viewer) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(Me::of(&principal)),
    )
        .into_response()
}

/// Ends the session (its live feeds end with it) and forgets the cookie.
async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    Viewer(principal): Viewer,
) -> Result<Response, ApiError> {
    if let Principal::Operator(session) = &principal {
        orderflow_storage::operators::end_session(&state.db, &session.token_hash).await?;
        tracing::info!(operator = %session.name, "signed out");
    }
    Ok((
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            auth::sign_out_cookie(auth::over_tls(&headers)),
        )],
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrdersQuery {
    status: Option<String>,
    /// Part of an order id.
    q: Option<String>,
    limit: Option<i64>,
}

const STATUSES: [&str; 6] = [
    "pending",
    "reserved",
    "paid",
    "shipped",
    "delivered",
    "cancelled",
];

async fn orders(
    State(state): State<AppState>,
    _: Viewer,
    ApiQuery(query): ApiQuery<OrdersQuery>,
) -> Result<Json<Vec<dashboard::OrderSummary>>, ApiError> {
    let status = query.status.filter(|s| !s.is_empty());
    if let Some(s) = &status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::InvalidRequest(format!(
            "status must be one of {}",
            STATUSES.join(", ")
        )));
    }
    let id_part = query
        .q
        .map(|q| q.trim().to_ascii_lowercase())
        .filter(|q| !q.is_empty());
    if let Some(q) = &id_part
        && (q.len() > 36 || !q.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
    {
        return Err(ApiError::InvalidRequest(
            "q must be part of an order id (hex digits and dashes)".into(),
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::InvalidRequest("limit must be 1 to 500".into()));
    }
    Ok(Json(
        dashboard::recent_orders(&state.db, status.as_deref(), id_part.as_deref(), limit).await?,
    ))
}

async fn order_timeline(
    State(state): State<AppState>,
    _: Viewer,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<timeline::Timeline>, ApiError> {
    timeline::build(&state.db, &state.hub, OrderId(id))
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("order"))
}

async fn partitions_view(
    State(state): State<AppState>,
    _: Viewer,
) -> Result<Json<partitions::PartitionsView>, ApiError> {
    Ok(Json(partitions::snapshot(&state).await?))
}

async fn dead_letters(
    State(state): State<AppState>,
    _: Viewer,
) -> Result<Json<Vec<redrive::DeadLetterView>>, ApiError> {
    let letters = dashboard::dead_letters(&state.db, 100).await?;
    Ok(Json(letters.into_iter().map(Into::into).collect()))
}

/// The statistics frames of the last five minutes, oldest first: the charts start from them.
async fn stats_history(
    State(state): State<AppState>,
    _: Viewer,
) -> Json<Vec<std::sync::Arc<stats::Point>>> {
    Json(state.hub.history())
}

async fn config(State(state): State<AppState>, _: Viewer) -> Json<hub::Thresholds> {
    Json(state.hub.thresholds)
}
