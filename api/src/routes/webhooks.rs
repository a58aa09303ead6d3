//! A client's webhook endpoints and their delivery logs.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/webhook-endpoints` | register an endpoint; the answer holds its secret, once |
//! | `GET /v1/webhook-endpoints` | the caller's endpoints |
//! | `GET /v1/webhook-endpoints/{id}` | one of them |
//! | `DELETE /v1/webhook-endpoints/{id}` | delete it and its deliveries |
//! | `GET /v1/webhook-endpoints/{id}/deliveries` | its delivery log, newest first |
//! | `POST /v1/webhook-endpoints/{id}/deliveries/{delivery_id}/retry` | send one again |
//!
//! The worker sends the deliveries ([`orderflow_storage::webhooks`] has the scheme). An endpoint
//! receives the caller's events from its creation on: the same events, with the same ids, as
//! `GET /v1/events`.

use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, Caller, IdempotencyKey, StrictJson};
use crate::openapi::{self, IdempotencyKeyHeader};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::{DateTime, Utc};
use orderflow_contract::webhooks::{check_url, valid_event_type};
use orderflow_domain::CommandKind;
use orderflow_storage::webhooks::{self as store, CreateError, Delivery, Endpoint, Retried};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

/// Endpoints a client may have.
pub const MAX_ENDPOINTS: i64 = 16;
/// Event types an endpoint may name.
const MAX_EVENT_TYPES: usize = 32;
/// Longest description.
const MAX_DESCRIPTION: usize = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_endpoint, list_endpoints))
        .routes(routes!(get_endpoint, delete_endpoint))
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
}

/// The body of `POST /v1/webhook-endpoints`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewEndpoint {
    /// Where deliveries are POSTed: `https` to a public host (plain `http`, loopback and private
    /// addresses only where the operator allows them). Redirects are not followed.
    #[schema(max_length = 2048, example = "https://hooks.example.com/orderflow")]
    url: String,
    /// The event types sent: exact ones (`command.applied.pay`) or every type of a status
    /// (`command.rejected.*`). Absent or empty: every event.
    #[serde(default)]
    #[schema(schema_with = event_types_schema)]
    event_types: Vec<String>,
    /// A note for people (up to 500 characters).
    #[serde(default)]
    #[schema(max_length = 500, pattern = "^[^\\u0000]*$")]
    description: String,
}

/// `event_types`: up to 32 of the event types there are, each exact or `command.<status>.*`.
fn event_types_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let names = ["applied", "rejected", "failed"]
        .into_iter()
        .flat_map(|status| {
            std::iter::once("*")
                .chain(CommandKind::ALL.iter().map(|k| k.as_str()))
                .map(move |kind| format!("command.{status}.{kind}"))
        });
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(names)),
        )
        .max_items(Some(MAX_EVENT_TYPES))
        .description(Some(
            "The event types sent: exact ones (`command.applied.pay`) or every type of a status \
             (`command.rejected.*`). Absent or empty: every event.",
        ))
        .examples([serde_json::json!([
            "command.applied.*",
            "command.rejected.reserve"
        ])])
        .build()
}

/// An endpoint.
#[derive(Serialize, ToSchema)]
pub(crate) struct EndpointView {
    id: Uuid,
    url: String,
    /// The event types it receives (empty: every event).
    event_types: Vec<String>,
    description: String,
    /// `active`; or `failing`: a delivery was retried for too long (three days by default) and
    /// given up. A failing endpoint is sent nothing until a delivery of it is retried
    /// (`POST …/deliveries/{delivery_id}/retry`); its deliveries wait meanwhile.
    #[schema(pattern = "^(active|failing)$")]
    status: String,
    failing_since: Option<DateTime<Utc>>,
    /// Why it is failing: the given-up delivery's last error.
    failing_reason: Option<String>,
    /// Set when the feed pruned events before they reached this endpoint's backlog (which
    /// stayed full, or no worker ran, for the feed's whole retention): where, and that some
    /// may be lost. Deliveries go on.
    feed_gap: Option<String>,
    /// Deliveries not sent yet, or being retried.
    pending: i64,
    created_at: DateTime<Utc>,
}

impl From<Endpoint> for EndpointView {
    fn from(e: Endpoint) -> Self {
        Self {
            id: e.id,
            url: e.url,
            event_types: e.event_types,
            description: e.description,
            status: e.status,
            failing_since: e.failing_since,
            failing_reason: e.failing_reason,
            feed_gap: e.feed_gap,
            pending: e.pending,
            created_at: e.created_at,
        }
    }
}

/// A new endpoint, with its signing secret: the only time it is shown.
#[derive(Serialize, ToSchema)]
struct CreatedEndpoint {
    #[serde(flatten)]
    endpoint: EndpointView,
    /// The signing secret (`whsec_` + base64, the Standard Webhooks form): every delivery
    /// carries `webhook-signature: v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">`
    /// under the base64-decoded part. Shown once; a lost secret means a new endpoint.
    #[schema(pattern = "^whsec_[A-Za-z0-9+/]{43}=$")]
    secret: String,
}

/// Register a webhook endpoint (a retry with the same `Idempotency-Key` and body answers the
/// same endpoint, secret included): the caller's events from now on are POSTed to it, signed
/// (Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`), at least once
/// (an event's `webhook-id` is its feed id: the same on every retry), per order in order.
/// A failed delivery is retried with exponential backoff and jitter for up to three days.
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints",
    tag = "webhooks",
    security(("bearer" = [])),
    params(IdempotencyKeyHeader),
    request_body(content = NewEndpoint, content_type = "application/json"),
    responses(
        (status = 201, description = "The endpoint, with its secret (shown only now, and to a \
            replay of this request).", body = CreatedEndpoint,
         headers(("Idempotent-Replayed" = String,
                  description = "`true` when this answers a replayed request."))),
        (status = 400, response = inline(openapi::BadBodyRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 409, response = inline(openapi::TooManyEndpoints)),
        (status = 413, response = inline(openapi::PayloadTooLarge)),
        (status = 415, response = inline(openapi::UnsupportedMediaType)),
        (status = 422, response = inline(openapi::Unprocessable)),
        (status = 429, response = inline(openapi::RateLimited)),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
async fn create_endpoint(
    State(state): State<AppState>,
    Caller(client): Caller,
    IdempotencyKey(key): IdempotencyKey,
    body: StrictJson<NewEndpoint>,
) -> Result<Response, ApiError> {
    let new = body.value;
    let url =
        check_url(new.url.trim(), state.webhook_allow_private).map_err(ApiError::InvalidBody)?;
    if new.event_types.len() > MAX_EVENT_TYPES {
        return Err(ApiError::InvalidBody(format!(
            "event_types: at most {MAX_EVENT_TYPES}"
        )));
    }
    if let Some(bad) = new.event_types.iter().find(|t| !valid_event_type(t)) {
        return Err(ApiError::InvalidBody(format!(
            "event_types: {bad:?} is not an event type (command.<applied|rejected|failed>.<command \
             type>, or command.<status>.*)"
        )));
    }
    if new.description.chars().count() > MAX_DESCRIPTION || new.description.contains('\0') {
        return Err(ApiError::InvalidBody(format!(
            "description: at most {MAX_DESCRIPTION} characters, without NUL"
        )));
    }
    let mut types = new.event_types;
    types.sort();
    types.dedup();
    let secret = new_secret();
    let created = store::create_endpoint(
        &state.db,
        store::NewEndpoint {
            id: Uuid::now_v7(),
            client: client.id,
            url: url.as_str(),
            event_types: &types,
            description: &new.description,
            secret: &secret,
            idempotency_key: &key,
        },
        MAX_ENDPOINTS,
    )
    .await
    .map_err(|e| match e {
        CreateError::TooMany(n) => ApiError::TooManyEndpoints(n),
        CreateError::KeyReused => ApiError::IdempotencyMismatch,
        CreateError::Db(e) => e.into(),
    })?;
    if !created.replayed {
        tracing::info!(endpoint = %created.endpoint.id, client = %client.id.0,
                       "webhook endpoint registered");
    }
    let replayed = created.replayed;
    let view = CreatedEndpoint {
        endpoint: created.endpoint.into(),
        secret: created.secret,
    };
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// `whsec_` and the base64 of 32 random bytes.
fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The caller's endpoints.
#[derive(Serialize, ToSchema)]
struct EndpointList {
    /// Oldest first (at most 16).
    data: Vec<EndpointView>,
}

/// List the caller's webhook endpoints (never their secrets).
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints",
    tag = "webhooks",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's endpoints.", body = EndpointList),
        (status = 400, response = inline(openapi::BadRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 429, response = inline(openapi::RateLimited)),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
async fn list_endpoints(
    State(state): State<AppState>,
    Caller(client): Caller,
) -> Result<Json<EndpointList>, ApiError> {
    let found = store::endpoints(&state.db, Some(client.id), None).await?;
    Ok(Json(EndpointList {
        data: found.into_iter().map(EndpointView::from).collect(),
    }))
}

/// The endpoint id in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct EndpointPath {
    /// The endpoint's id.
    endpoint_id: Uuid,
}

/// One of the caller's webhook endpoints (never its secret).
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{endpoint_id}",
    tag = "webhooks",
    security(("bearer" = [])),
    params(EndpointPath),
    responses(
        (status = 200, description = "The endpoint.", body = EndpointView),
        (status = 400, response = inline(openapi::BadRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 404, response = inline(openapi::NotFound)),
        (status = 429, response = inline(openapi::RateLimited)),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
async fn get_endpoint(
    State(state): State<AppState>,
    Caller(client): Caller,
    ApiPath(EndpointPath { endpoint_id }): ApiPath<EndpointPath>,
) -> Result<Json<EndpointView>, ApiError> {
    store::endpoints(&state.db, Some(client.id), Some(endpoint_id))
        .await?
        .pop()
        .map(|e| Json(e.into()))
        .ok_or(ApiError::NotFound("webhook endpoint"))
}

/// Delete one of the caller's webhook endpoints: nothing more is sent to it (a delivery already
/// on its way may still arrive), and its delivery log goes with it.
#[utoipa::path(
    delete,
    path = "/v1/webhook-endpoints/{endpoint_id}",
    tag = "webhooks",
    security(("bearer" = [])),
    params(EndpointPath),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, response = inline(openapi::BadRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 404, response = inline(openapi::NotFound)),
        (status = 429, response = inline(openapi::RateLimited)),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
async fn delete_endpoint(
    State(state): State<AppState>,
    Caller(client): Caller,
    ApiPath(EndpointPath { endpoint_id }): ApiPath<EndpointPath>,
) -> Result<StatusCode, ApiError> {
    if store::delete_endpoint(&state.db, client.id, endpoint_id).await? {
        tracing::info!(endpoint = %endpoint_id, client = %client.id.0, "webhook endpoint deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("webhook endpoint"))
    }
}

/// The query of the delivery log.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeliveriesQuery {
    /// How many deliveries a page holds at most: 1–100 (10 when absent).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The page after another one: that page's `next_cursor` (the deliveries older than its
    /// last).
    #[param(pattern = "^[0-9]{1,18}$")]
    starting_after: Option<String>,
}

/// One delivery: an event sent (or to be sent) to an endpoint.
#[derive(Serialize, ToSchema)]
pub(crate) struct DeliveryView {
    /// The delivery's id (for a retry).
    #[schema(pattern = "^[0-9]{1,18}$")]
    id: String,
    /// The event's id: its `webhook-id`, and its id in `GET /v1/events`.
    #[schema(pattern = "^[0-9]{1,18}$")]
    event_id: String,
    event_type: String,
    order_id: Uuid,
    /// `pending` (not sent yet, being sent, or waiting for a retry, or for an earlier delivery of
    /// its order), `delivered` (a 2xx came back) or `given_up` (retried for too long; the
    /// endpoint is failing, and the order's later deliveries wait for a retry of it).
    #[schema(pattern = "^(pending|delivered|given_up)$")]
    status: String,
    attempts: i32,
    /// When the next attempt is due (pending deliveries only).
    next_attempt_at: Option<DateTime<Utc>>,
    last_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status the last attempt got (null: no answer).
    last_response_status: Option<i32>,
    /// What went wrong with the last attempt.
    last_error: Option<String>,
    delivered_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id.to_string(),
            event_id: d.position.to_string(),
            event_type: d.event_type,
            order_id: d.order_id,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_attempt_at: d.last_attempt_at,
            last_response_status: d.last_response_status,
            last_error: d.last_error,
            delivered_at: d.delivered_at,
            created_at: d.created_at,
        }
    }
}

/// A page of an endpoint's delivery log, newest first.
#[derive(Serialize, ToSchema)]
struct DeliveryList {
    data: Vec<DeliveryView>,
    /// Whether older deliveries follow.
    has_more: bool,
    /// Pass as `starting_after` for the next (older) page; null when there is none.
    next_cursor: Option<String>,
}

/// An endpoint's delivery log, newest first: every event it was sent or is to be sent, with the
/// outcome of its last attempt.
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{endpoint_id}/deliveries",
    tag = "webhooks",
    security(("bearer" = [])),
    params(EndpointPath, DeliveriesQuery),
    responses(
        (status = 200, description = "A page of the log.", body = DeliveryList),
        (status = 400, response = inline(openapi::BadRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 404, response = inline(openapi::NotFound)),
        (status = 429, response = inline(openapi::RateLimited)),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
async fn list_deliveries(
    State(state): State<AppState>,
    Caller(client): Caller,
    ApiPath(EndpointPath { endpoint_id }): ApiPath<EndpointPath>,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let limit = crate::pagination::limit(query.limit)?;
    let before = query
        .starting_after
        .as_deref()
        .map(|c| {
            delivery_id_of(c).ok_or_else(|| {
                ApiError::InvalidRequest(format!("starting_after: {c:?} is not a delivery id"))
            })
        })
        .transpose()?;
    let mut found = store::deliveries(&state.db, Some(client.id), endpoint_id, before, limit + 1)
        .await?
        .ok_or(ApiError::NotFound("webhook endpoint"))?;
    let has_more = found.len() as i64 > limit;
    found.truncate(limit as usize);
    let next_cursor = has_more
        .then(|| found.last().map(|d| d.id.to_string()))
        .flatten();
    Ok(Json(DeliveryList {
        data: found.into_iter().map(DeliveryView::from).collect(),
        has_more,
        next_cursor,
    }))
}

/// The delivery in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct DeliveryPath {
    /// The endpoint's id.
    endpoint_id: Uuid,
    /// The delivery's id.
    #[param(pattern = "^[0-9]{1,18}$")]
    delivery_id: String,
}

/// What a retry did.
#[derive(Serialize, ToSchema)]
struct RetryView {
    /// `retrying`: the given-up delivery goes out again now, with a new three-day window, and a
    /// failing endpoint is active again; `pending`: it was not sent yet, it goes out when due;
    /// `delivered`: it was delivered, there is nothing to retry.
    #[schema(pattern = "^(retrying|pending|delivered)$")]
    status: String,
}

/// Send a given-up delivery again (which also makes a failing endpoint active again). It goes
/// out in its order's turn: an order's later deliveries wait for it.
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/retry",
    tag = "webhooks",
    security(("bearer" = [])),
    params(DeliveryPath),
    responses(
        (status = 202, description = "It goes out again (or still waits its turn).",
         body = RetryView),
        (status = 400, response = inline(openapi::BadRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 404, response = inline(openapi::NotFound)),
        (status = 429, response = inline(openapi::RateLimited)),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
async fn retry_delivery(
    State(state): State<AppState>,
    Caller(client): Caller,
    ApiPath(DeliveryPath {
        endpoint_id,
        delivery_id,
    }): ApiPath<DeliveryPath>,
) -> Result<Response, ApiError> {
    let delivery = delivery_id_of(&delivery_id)
        .ok_or_else(|| ApiError::InvalidRequest(format!("{delivery_id:?} is not a delivery id")))?;
    let status = match store::retry(&state.db, Some(client.id), endpoint_id, delivery).await? {
        Retried::Again => "retrying",
        Retried::AlreadyPending => "pending",
        Retried::Delivered => "delivered",
        Retried::NotFound => return Err(ApiError::NotFound("webhook delivery")),
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(RetryView {
            status: status.to_owned(),
        }),
    )
        .into_response())
}

/// A delivery id as the API writes it: 1 to 18 digits (the document's pattern), no sign.
fn delivery_id_of(text: &str) -> Option<i64> {
    let digits = (1..=18).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_secret_is_the_standard_form_and_never_repeats() {
        let (a, b) = (super::new_secret(), super::new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_") && a.len() == 6 + 44, "{a}");
        assert!(decode(&a[6..]).len() == 32);
    }

    fn decode(text: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap()
    }
}
