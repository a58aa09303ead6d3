//! Every client's webhook endpoints and their delivery logs, for the people who run orderflow:
//! which endpoints fail and why, and a retry of a given-up delivery (which makes its endpoint
//! active again) once its receiver is fixed.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /dashboard/api/webhooks` | viewers | every endpoint, with its client, status and backlog (never a secret) |
//! | `GET /dashboard/api/webhooks/{id}/deliveries` | viewers | its last 100 deliveries, newest first (`?starting_after=` reads on) |
//! | `POST /dashboard/api/webhooks/{id}/deliveries/{delivery_id}/retry` | operators, admins | send it again (in the admin log) |

use super::auth::{Operator, Viewer};
use super::redrive::EmptyRequest;
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, StrictJson};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use orderflow_storage::dashboard;
use orderflow_storage::webhooks::{self as store, Delivery, Endpoint, Retried};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Deliveries a page of the log holds.
const PAGE: i64 = 100;

#[derive(Serialize)]
pub struct EndpointRow {
    id: Uuid,
    client: String,
    url: String,
    event_types: Vec<String>,
    description: String,
    status: String,
    failing_since: Option<DateTime<Utc>>,
    failing_reason: Option<String>,
    pending: i64,
    created_at: DateTime<Utc>,
}

impl From<Endpoint> for EndpointRow {
    fn from(e: Endpoint) -> Self {
        Self {
            id: e.id,
            client: e.client,
            url: e.url,
            event_types: e.event_types,
            description: e.description,
            status: e.status,
            failing_since: e.failing_since,
            failing_reason: e.failing_reason,
            pending: e.pending,
            created_at: e.created_at,
        }
    }
}

pub async fn endpoints(
    State(state): State<AppState>,
    _: Viewer,
) -> Result<Json<Vec<EndpointRow>>, ApiError> {
    let all = store::endpoints(&state.db, None, None).await?;
    Ok(Json(all.into_iter().map(EndpointRow::from).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// The deliveries older than this one.
    starting_after: Option<i64>,
}

#[derive(Serialize)]
pub struct DeliveryRow {
    id: i64,
    event_id: i64,
    event_type: String,
    order_id: Uuid,
    status: String,
    attempts: i32,
    next_attempt_at: Option<DateTime<Utc>>,
    last_attempt_at: Option<DateTime<Utc>>,
    last_response_status: Option<i32>,
    last_error: Option<String>,
    delivered_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl From<Delivery> for DeliveryRow {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            event_id: d.position,
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

#[derive(Serialize)]
pub struct Log {
    deliveries: Vec<DeliveryRow>,
    has_more: bool,
}

pub async fn deliveries(
    State(state): State<AppState>,
    _: Viewer,
    ApiPath(endpoint): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> Result<Json<Log>, ApiError> {
    let mut found = store::deliveries(&state.db, None, endpoint, query.starting_after, PAGE + 1)
        .await?
        .ok_or(ApiError::NotFound("webhook endpoint"))?;
    let has_more = found.len() as i64 > PAGE;
    found.truncate(PAGE as usize);
    Ok(Json(Log {
        deliveries: found.into_iter().map(DeliveryRow::from).collect(),
        has_more,
    }))
}

#[derive(Serialize)]
pub struct RetryAnswer {
    /// `retrying` (it goes out now) or `pending` (it was waiting already).
    status: &'static str,
}

pub async fn retry(
    State(state): State<AppState>,
    Operator(operator): Operator,
    ApiPath((endpoint, delivery)): ApiPath<(Uuid, i64)>,
    _: StrictJson<EmptyRequest>,
) -> Result<Json<RetryAnswer>, ApiError> {
    let mut tx = state.db.begin().await?;
    let status = match store::retry(&mut *tx, None, endpoint, delivery).await? {
        Retried::Again => "retrying",
        Retried::AlreadyPending => "pending",
        Retried::NotFound => return Err(ApiError::NotFound("webhook delivery")),
    };
    if status == "retrying" {
        dashboard::record_action(
            &mut *tx,
            operator.audited_as(),
            "retry_webhook_delivery",
            &endpoint.to_string(),
            &serde_json::json!({ "delivery": delivery }),
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(endpoint = %endpoint, delivery, by = %operator.actor(), status,
                   "webhook delivery retried from the dashboard");
    Ok(Json(RetryAnswer { status }))
}
