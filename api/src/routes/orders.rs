//! Orders: create one, send it commands, read its projection and its history.

use crate::error::ApiError;
use crate::extract::{ApiPath, Caller, IdempotencyKey, IfMatch, StrictJson};
use crate::intake::{self, Accepted, Submission, Target};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use orderflow_shared::db::orders::EventRecord;
use orderflow_shared::db::{commands, orders};
use orderflow_shared::domain::{Command, Currency, CustomerId, Items, Order, OrderId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/orders", post(create_order))
        .route("/v1/orders/{order_id}", get(get_order))
        .route("/v1/orders/{order_id}/commands", post(post_command))
        .route("/v1/orders/{order_id}/events", get(get_events))
}

/// The body of `POST /v1/orders`. The API assigns the order id.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    customer_id: CustomerId,
    currency: Currency,
    items: Items,
}

async fn create_order(
    State(state): State<AppState>,
    Caller(client): Caller,
    IdempotencyKey(key): IdempotencyKey,
    body: StrictJson<NewOrder>,
) -> Result<Accepted, ApiError> {
    let NewOrder {
        customer_id,
        currency,
        items,
    } = body.value;
    let submission = Submission {
        client: &client,
        idempotency_key: &key,
        fingerprint: intake::fingerprint("POST /v1/orders", None, &body.raw),
        target: Target::New(OrderId::new()),
        command: Command::Create {
            customer_id,
            currency,
            items,
        },
        expected_version: None,
    };
    intake::submit(&state, submission).await
}

async fn post_command(
    State(state): State<AppState>,
    Caller(client): Caller,
    ApiPath(order_id): ApiPath<Uuid>,
    IdempotencyKey(key): IdempotencyKey,
    IfMatch(if_match): IfMatch,
    body: StrictJson<Command>,
) -> Result<Accepted, ApiError> {
    if matches!(body.value, Command::Create { .. }) {
        return Err(ApiError::InvalidBody(
            "orders are created with POST /v1/orders".into(),
        ));
    }
    let route = format!("POST /v1/orders/{order_id}/commands");
    let submission = Submission {
        client: &client,
        idempotency_key: &key,
        fingerprint: intake::fingerprint(&route, if_match, &body.raw),
        target: Target::Existing(OrderId(order_id)),
        command: body.value,
        expected_version: if_match,
    };
    intake::submit(&state, submission).await
}

/// The projection, with `ETag: "<version>"` for `If-Match`.
struct OrderResponse(Order);

impl IntoResponse for OrderResponse {
    fn into_response(self) -> Response {
        let etag = format!("\"{}\"", self.0.version);
        let mut response = Json(OrderView::from(self.0)).into_response();
        response.headers_mut().insert(
            header::ETAG,
            HeaderValue::from_str(&etag).expect("a number in quotes is a valid header"),
        );
        response
    }
}

#[derive(Serialize)]
struct OrderView {
    order_id: OrderId,
    customer_id: CustomerId,
    currency: Currency,
    status: orderflow_shared::domain::OrderStatus,
    version: i64,
    items: Vec<orderflow_shared::domain::Item>,
    total_cents: i64,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<Order> for OrderView {
    fn from(o: Order) -> Self {
        Self {
            order_id: o.id,
            customer_id: o.customer_id,
            currency: o.currency,
            status: o.status,
            version: o.version,
            items: o.items,
            total_cents: o.total_cents,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

async fn get_order(
    State(state): State<AppState>,
    Caller(client): Caller,
    ApiPath(order_id): ApiPath<Uuid>,
) -> Result<OrderResponse, ApiError> {
    let order = orders::get_for_client(&state.db, client.id, OrderId(order_id))
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    Ok(OrderResponse(order))
}

#[derive(Serialize)]
struct EventsView {
    order_id: OrderId,
    events: Vec<EventRecord>,
}

async fn get_events(
    State(state): State<AppState>,
    Caller(client): Caller,
    ApiPath(order_id): ApiPath<Uuid>,
) -> Result<Json<EventsView>, ApiError> {
    let order_id = OrderId(order_id);
    if commands::stream_owner(&state.db, order_id).await? != Some(client.id) {
        return Err(ApiError::NotFound("order"));
    }
    let events = orders::events(&state.db, order_id).await?;
    Ok(Json(EventsView { order_id, events }))
}
