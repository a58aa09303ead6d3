//! Orders: create one, send it commands, read its projection and its history.

use crate::error::ApiError;
use crate::extract::{
    ApiPath, ApiQuery, Caller, IdempotencyKey, IfMatch, MergePatchJson, OptionalIdempotencyKey,
    Received, StrictJson,
};
use crate::intake::{self, Accepted, Submission, Target};
use crate::openapi::{
    self, IdempotencyKeyHeader, IfMatchHeader, OptionalIdempotencyKeyHeader, OrderCommand,
    OrderIdPath, PutIdempotencyKeyHeader, PutIfMatchHeader, RequiredIfMatchHeader,
};
use crate::pagination;
use crate::routes::commands::CommandView;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use orderflow_contract::CommandStatus;
use orderflow_domain::{
    Command, CommandId, Currency, CustomerId, Event, Items, Order, OrderId, OrderStatus,
};
use orderflow_storage::orders::OrderFilter;
use orderflow_storage::{commands, orders};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_order, list_orders))
        .routes(routes!(get_order, patch_order))
        .routes(routes!(post_command, list_commands))
        .routes(routes!(get_events))
        .routes(routes!(put_shipping_address))
}

/// The body of `POST /v1/orders`. The API assigns the order id.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    customer_id: CustomerId,
    currency: Currency,
    items: Items,
}

/// Create an order: its `create` command is recorded and enqueued; the worker creates the order.
#[utoipa::path(
    post,
    path = "/v1/orders",
    tag = "orders",
    security(("bearer" = [])),
    params(IdempotencyKeyHeader),
    request_body(content = NewOrder, content_type = "application/json"),
    responses(
        (status = 202, response = inline(openapi::AcceptedResponse)),
        (status = 400, response = inline(openapi::BadBodyRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 409, response = inline(openapi::IdempotencyInFlight)),
        (status = 413, response = inline(openapi::PayloadTooLarge)),
        (status = 415, response = inline(openapi::UnsupportedMediaType)),
        (status = 422, response = inline(openapi::Unprocessable)),
        (status = 429, response = inline(openapi::RateLimited)),
        (status = 503, response = inline(openapi::NotAccepted)),
    )
)]
async fn create_order(
    State(state): State<AppState>,
    Caller(client): Caller,
    Received(received_at): Received,
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
        received_at,
        on_behalf: None,
    };
    intake::submit(&state, submission).await
}

/// Send an order a command (any but `create`); `If-Match` makes it conditional on the version.
#[utoipa::path(
    post,
    path = "/v1/orders/{order_id}/commands",
    tag = "orders",
    security(("bearer" = [])),
    params(OrderIdPath, IdempotencyKeyHeader, IfMatchHeader),
    request_body(content = inline(OrderCommand), content_type = "application/json"),
    responses(
        (status = 202, response = inline(openapi::AcceptedResponse)),
        (status = 400, response = inline(openapi::BadBodyRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 404, response = inline(openapi::NotFound)),
        (status = 409, response = inline(openapi::IdempotencyInFlight)),
        (status = 413, response = inline(openapi::PayloadTooLarge)),
        (status = 415, response = inline(openapi::UnsupportedMediaType)),
        (status = 422, response = inline(openapi::Unprocessable)),
        (status = 429, response = inline(openapi::RateLimitedOrOrderBusy)),
        (status = 503, response = inline(openapi::NotAccepted)),
    )
)]
async fn post_command(
    State(state): State<AppState>,
    Caller(client): Caller,
    Received(received_at): Received,
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
        received_at,
        on_behalf: None,
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

/// An order's projection: the fold of its events.
#[derive(Serialize, ToSchema)]
pub struct OrderView {
    order_id: OrderId,
    customer_id: CustomerId,
    currency: Currency,
    status: orderflow_domain::OrderStatus,
    version: i64,
    items: Vec<orderflow_domain::Item>,
    total_cents: i64,
    /// Shipping address, contact and note: each absent until set (`update_details`).
    details: orderflow_domain::details::OrderDetails,
    /// The carrier's tracking number: absent until the order ships with one (`ship`).
    #[serde(skip_serializing_if = "Option::is_none")]
    tracking_number: Option<orderflow_domain::TrackingNumber>,
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
            details: o.details,
            tracking_number: o.tracking_number,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

/// Read an order's projection (404 until its `create` command is applied).
#[utoipa::path(
    get,
    path = "/v1/orders/{order_id}",
    tag = "orders",
    security(("bearer" = [])),
    params(OrderIdPath),
    responses(
        (status = 200, response = inline(openapi::OrderResponse)),
        (status = 400, response = inline(openapi::BadRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 404, response = inline(openapi::OrderNotFound)),
        (status = 429, response = inline(openapi::RateLimited)),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
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

/// Change an order's details (shipping address, contact email and phone, note) by an RFC 7396
/// merge patch: a member left out stays as it is, `null` removes it, a value replaces it;
/// `shipping_address` merges member by member and must end whole. `If-Match` is required: a
/// version older than the order's is refused at once (412, with the current `ETag`); otherwise
/// the change is accepted like any command (202) and the worker's version check decides
/// (`rejected` with `version_conflict` if the order moved meanwhile). The same request again
/// (same `If-Match`, same patch) answers the first one's 202, with or without an
/// `Idempotency-Key`.
#[utoipa::path(
    patch,
    path = "/v1/orders/{order_id}",
    tag = "orders",
    security(("bearer" = [])),
    params(OrderIdPath, OptionalIdempotencyKeyHeader, RequiredIfMatchHeader),
    request_body(content = inline(orderflow_domain::details::DetailsPatch), content_type = "application/merge-patch+json"),
    responses(
        (status = 202, response = inline(openapi::AcceptedResponse)),
        (status = 400, response = inline(openapi::BadBodyRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 404, response = inline(openapi::OrderNotFound)),
        (status = 409, response = inline(openapi::IdempotencyInFlight)),
        (status = 412, response = inline(openapi::PreconditionFailed)),
        (status = 413, response = inline(openapi::PayloadTooLarge)),
        (status = 415, response = inline(openapi::MergePatchRequired)),
        (status = 422, response = inline(openapi::Unprocessable)),
        (status = 428, response = inline(openapi::PreconditionRequired)),
        (status = 429, response = inline(openapi::RateLimitedOrOrderBusy)),
        (status = 503, response = inline(openapi::NotAccepted)),
    )
)]
async fn patch_order(
    State(state): State<AppState>,
    Caller(client): Caller,
    Received(received_at): Received,
    ApiPath(order_id): ApiPath<Uuid>,
    OptionalIdempotencyKey(key): OptionalIdempotencyKey,
    IfMatch(if_match): IfMatch,
    MergePatchJson(body): MergePatchJson<orderflow_domain::details::DetailsPatch>,
) -> Result<Accepted, ApiError> {
    let expected = if_match.ok_or(ApiError::PreconditionRequired)?;
    let order_id = OrderId(order_id);
    let route = format!("PATCH /v1/orders/{order_id}");
    let fingerprint = intake::fingerprint(&route, Some(expected), &body.raw);
    // Without a key, the request names itself: the same patch on the same version is the same
    // change, so a retry replays the first answer.
    let key = key.unwrap_or_else(|| format!("patch:{}", hex::encode(&fingerprint)));
    refuse_stale(&state, &client, &key, order_id, expected).await?;
    let submission = Submission {
        client: &client,
        idempotency_key: &key,
        fingerprint,
        target: Target::Existing(order_id),
        command: Command::UpdateDetails {
            details: body.value,
        },
        expected_version: Some(expected),
        received_at,
        on_behalf: None,
    };
    intake::submit(&state, submission).await
}

/// Refuses at once (412, with the current `ETag`) a change made against a version older than the
/// order's, unless it is a retry of a change already accepted under `key` (answered as the first
/// time, not as stale). 404 when the caller has no such order.
pub(crate) async fn refuse_stale(
    state: &AppState,
    client: &orderflow_storage::clients::Client,
    key: &str,
    order_id: OrderId,
    expected: i64,
) -> Result<(), ApiError> {
    let replay = orderflow_storage::idempotency::lookup(&state.db, client.id, key)
        .await?
        .is_some();
    if replay {
        return Ok(());
    }
    let current = orders::get_for_client(&state.db, client.id, order_id)
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    if current.version > expected {
        return Err(ApiError::PreconditionFailed {
            current: current.version,
        });
    }
    Ok(())
}

/// Replace an order's shipping address whole. Idempotent by its nature: an address the order
/// already has is applied with no change (the command ends `applied` with the reason
/// `unchanged`, no event is appended and the version stays), so the same PUT twice leaves one
/// change in the history, and a client may retry it without an `Idempotency-Key`. A new address
/// is accepted until the order ships (then `rejected` with `invalid_transition`). `If-Match` is
/// optional: older than the order's version, 412 at once with the current `ETag`; overtaken
/// after it was accepted, `rejected` with `version_conflict`.
#[utoipa::path(
    put,
    path = "/v1/orders/{order_id}/shipping-address",
    tag = "orders",
    security(("bearer" = [])),
    params(OrderIdPath, PutIdempotencyKeyHeader, PutIfMatchHeader),
    request_body(content = orderflow_domain::details::ShippingAddress, content_type = "application/json"),
    responses(
        (status = 202, response = inline(openapi::AcceptedResponse)),
        (status = 400, response = inline(openapi::BadBodyRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 404, response = inline(openapi::OrderNotFound)),
        (status = 409, response = inline(openapi::IdempotencyInFlight)),
        (status = 412, response = inline(openapi::PreconditionFailed)),
        (status = 413, response = inline(openapi::PayloadTooLarge)),
        (status = 415, response = inline(openapi::UnsupportedMediaType)),
        (status = 422, response = inline(openapi::Unprocessable)),
        (status = 429, response = inline(openapi::RateLimitedOrOrderBusy)),
        (status = 503, response = inline(openapi::NotAccepted)),
    )
)]
async fn put_shipping_address(
    State(state): State<AppState>,
    Caller(client): Caller,
    Received(received_at): Received,
    ApiPath(order_id): ApiPath<Uuid>,
    OptionalIdempotencyKey(key): OptionalIdempotencyKey,
    IfMatch(if_match): IfMatch,
    body: StrictJson<orderflow_domain::details::ShippingAddress>,
) -> Result<Accepted, ApiError> {
    let order_id = OrderId(order_id);
    let route = format!("PUT /v1/orders/{order_id}/shipping-address");
    let fingerprint = intake::fingerprint(&route, if_match, &body.raw);
    // Without a key every PUT is a command of its own: a retry is safe because the same address
    // again changes nothing. (Naming it by its fingerprint, as a PATCH is, would answer a PUT
    // of an address the order had before with that old 202, and set nothing.)
    let key = key.unwrap_or_else(|| format!("put:{}", Uuid::now_v7()));
    if let Some(expected) = if_match {
        refuse_stale(&state, &client, &key, order_id, expected).await?;
    }
    let submission = Submission {
        client: &client,
        idempotency_key: &key,
        fingerprint,
        target: Target::Existing(order_id),
        command: Command::SetShippingAddress {
            address: body.value,
        },
        expected_version: if_match,
        received_at,
        on_behalf: None,
    };
    intake::submit(&state, submission).await
}

/// The query of `GET /v1/orders`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListOrdersQuery {
    /// How many orders a page holds at most: 1–100 (10 when absent).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The page after another one: that page's `next_cursor` (the orders older than its last).
    #[param(pattern = "^[A-Za-z0-9_-]{22}$")]
    starting_after: Option<String>,
    /// The page before another one: that page's `previous_cursor` (the orders newer than its
    /// first). Not together with `starting_after`.
    #[param(pattern = "^[A-Za-z0-9_-]{22}$")]
    ending_before: Option<String>,
    /// Only orders in this status.
    status: Option<OrderStatus>,
    /// Only orders of this customer reference.
    customer_id: Option<CustomerId>,
    /// Only orders created at or after this time (RFC 3339, e.g. `2026-12-01T00:00:00Z`).
    created_gte: Option<DateTime<Utc>>,
    /// Only orders created before this time (RFC 3339).
    created_lt: Option<DateTime<Utc>>,
}

/// One page of the caller's orders, newest first.
#[derive(Serialize, ToSchema)]
struct OrderList {
    /// The orders of the page, newest first (by creation). With a filter (`status`,
    /// `customer_id`, `created_gte`, `created_lt`) a page reads at most 2,000 of the caller's
    /// orders, so it may hold fewer than `limit` orders, or none, while `has_more` is true:
    /// follow the cursor to read on.
    data: Vec<OrderView>,
    /// Whether more orders may lie beyond this page in the direction it was read: older ones
    /// for a first page or a `starting_after` page, newer ones for an `ending_before` page.
    has_more: bool,
    /// Pass as `starting_after` for the next page (older orders); null when there is none.
    next_cursor: Option<String>,
    /// Pass as `ending_before` for the previous page (newer orders); null on the first page.
    previous_cursor: Option<String>,
}

/// List the caller's orders, newest first, a page at a time (cursor pagination: a page stays put
/// while orders are created). Only orders whose `create` was applied are listed. A filtered page
/// reads at most 2,000 orders: it may come back short, or empty, with `has_more` true and a
/// cursor to read on from.
#[utoipa::path(
    get,
    path = "/v1/orders",
    tag = "orders",
    security(("bearer" = [])),
    params(ListOrdersQuery),
    responses(
        (status = 200, description = "A page of the caller's orders.", body = OrderList),
        (status = 400, response = inline(openapi::BadRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 429, response = inline(openapi::RateLimited)),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
async fn list_orders(
    State(state): State<AppState>,
    Caller(client): Caller,
    ApiQuery(query): ApiQuery<ListOrdersQuery>,
) -> Result<Json<OrderList>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let from = pagination::page_from(
        query.starting_after.as_deref(),
        query.ending_before.as_deref(),
        pagination::parse_cursor,
    )?
    .map(OrderId);
    let filter = OrderFilter {
        status: query.status.map(OrderStatus::as_str),
        customer_id: query.customer_id.as_ref().map(CustomerId::as_str),
        created_gte: query.created_gte,
        created_lt: query.created_lt,
    };
    // One more than the page, to learn whether there is more.
    let found = orders::list_for_client(&state.db, client.id, &filter, from, limit + 1).await?;
    let page = pagination::page(
        found.orders,
        limit,
        from,
        |o| pagination::cursor(o.id.0),
        found.stopped_at.map(|id| pagination::cursor(id.0)),
    );
    Ok(Json(OrderList {
        data: page.data.into_iter().map(OrderView::from).collect(),
        has_more: page.has_more,
        next_cursor: page.next_cursor,
        previous_cursor: page.previous_cursor,
    }))
}

/// The query of `GET /v1/orders/{order_id}/commands`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListCommandsQuery {
    /// How many commands a page holds at most: 1–100 (10 when absent).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The page after another one: that page's `next_cursor` (the commands before its last).
    #[param(pattern = "^[A-Za-z0-9_-]{22}$")]
    starting_after: Option<String>,
    /// The page before another one: that page's `previous_cursor` (the commands after its
    /// first). Not together with `starting_after`.
    #[param(pattern = "^[A-Za-z0-9_-]{22}$")]
    ending_before: Option<String>,
    /// Only commands in this status.
    status: Option<CommandStatus>,
}

/// One page of an order's commands, latest first.
#[derive(Serialize, ToSchema)]
struct CommandList {
    /// The commands of the page, latest first (by `seq`). With `status` a page reads at most
    /// 2,000 of the order's commands, so it may hold fewer than `limit`, or none, while
    /// `has_more` is true: follow the cursor to read on.
    data: Vec<CommandView>,
    /// Whether more commands may lie beyond this page in the direction it was read.
    has_more: bool,
    /// Pass as `starting_after` for the next page (earlier commands); null when there is none.
    next_cursor: Option<String>,
    /// Pass as `ending_before` for the previous page (later commands); null on the first page.
    previous_cursor: Option<String>,
}

/// List an order's commands, latest first (by `seq`), a page at a time, with their statuses:
/// every command sent to it, applied, rejected, failed or still accepted. A page filtered by
/// `status` reads at most 2,000 commands: it may come back short, or empty, with `has_more` true
/// and a cursor to read on from.
#[utoipa::path(
    get,
    path = "/v1/orders/{order_id}/commands",
    tag = "orders",
    security(("bearer" = [])),
    params(OrderIdPath, ListCommandsQuery),
    responses(
        (status = 200, description = "A page of the order's commands.", body = CommandList),
        (status = 400, response = inline(openapi::BadRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 404, response = inline(openapi::NotFound)),
        (status = 429, response = inline(openapi::RateLimited)),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
async fn list_commands(
    State(state): State<AppState>,
    Caller(client): Caller,
    ApiPath(order_id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<ListCommandsQuery>,
) -> Result<Json<CommandList>, ApiError> {
    let order_id = OrderId(order_id);
    let limit = pagination::limit(query.limit)?;
    let from = pagination::page_from(
        query.starting_after.as_deref(),
        query.ending_before.as_deref(),
        pagination::parse_seq_cursor,
    )?;
    let last_seq = commands::last_seq_for_client(&state.db, client.id, order_id)
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    let scan = commands::list_for_order(
        &state.db,
        client.id,
        order_id,
        query.status,
        from,
        limit + 1,
        last_seq,
    )
    .await?;
    let page = pagination::page(
        scan.commands,
        limit,
        from,
        |c| pagination::seq_cursor(c.seq),
        scan.stopped_at.map(pagination::seq_cursor),
    );
    Ok(Json(CommandList {
        data: page.data.into_iter().map(CommandView::from).collect(),
        has_more: page.has_more,
        next_cursor: page.next_cursor,
        previous_cursor: page.previous_cursor,
    }))
}

/// An order's history, `seq` from 1, gapless.
#[derive(Serialize, ToSchema)]
struct EventsView {
    order_id: OrderId,
    events: Vec<EventRecord>,
}

/// One event of an order's history.
#[derive(Serialize, ToSchema)]
struct EventRecord {
    seq: i64,
    command_id: CommandId,
    #[serde(flatten)]
    event: Event,
    recorded_at: DateTime<Utc>,
    /// Who made the change: `client:<name>` (an API client), `operator:<name>` (a person on
    /// the dashboard) or `producer:<broker user>` (a direct producer); null for changes made
    /// before actors were kept.
    #[schema(pattern = "^(client|operator|producer):")]
    actor: Option<String>,
}

impl From<orders::EventRecord> for EventRecord {
    fn from(r: orders::EventRecord) -> Self {
        Self {
            seq: r.seq,
            command_id: r.command_id,
            event: r.event,
            recorded_at: r.recorded_at,
            actor: r.actor,
        }
    }
}

/// Read an order's append-only history (empty until its `create` command is applied).
#[utoipa::path(
    get,
    path = "/v1/orders/{order_id}/events",
    tag = "orders",
    security(("bearer" = [])),
    params(OrderIdPath),
    responses(
        (status = 200, description = "The order's events, oldest first.", body = EventsView),
        (status = 400, response = inline(openapi::BadRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 404, response = inline(openapi::NotFound)),
        (status = 429, response = inline(openapi::RateLimited)),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
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
    let events = events.into_iter().map(EventRecord::from).collect();
    Ok(Json(EventsView { order_id, events }))
}
