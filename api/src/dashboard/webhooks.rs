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
use crate::routes::webhooks::{DeliveryView, EndpointView};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use orderflow_storage::dashboard;
use orderflow_storage::webhooks::{self as store, Retried};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Deliveries a page of the log holds.
const PAGE: i64 = 100;

/// An endpoint as its client sees it, and whose it is.
#[derive(Serialize)]
pub struct EndpointRow {
    client: String,
    #[serde(flatten)]
    endpoint: EndpointView,
}

pub async fn endpoints(
    State(state): State<AppState>,
    _: Viewer,
) -> Result<Json<Vec<EndpointRow>>, ApiError> {
    let all = store::endpoints(&state.db, None, None).await?;
    Ok(Json(
        all.into_iter()
            .map(|e| EndpointRow {
                client: e.client.clone(),
                endpoint: e.into(),
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// The deliveries older than this one.
    starting_after: Option<i64>,
}

#[derive(Serialize)]
pub struct Log {
    deliveries: Vec<DeliveryView>,
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
        deliveries: found.into_iter().map(DeliveryView::from).collect(),
        has_more,
    }))
}

#[derive(Serialize)]
pub struct RetryAnswer {
    /// `retrying` (it goes out now), `pending` (it was waiting already) or `delivered`
    /// (nothing to retry).
    status: &'static str,
}

pub async fn retry(
    State(state): State<AppState>,
    Operator(operator): Operator,
    ApiPath((endpoint, delivery)): ApiPath<(Uuid, i64)>,
    _: StrictJson<EmptyRequest>,
) -> Result<Json<RetryAnswer>, ApiError> {
    let mut tx = state.db.begin().await?;
    let status = match store::retry_in(&mut tx, None, endpoint, delivery).await? {
        Retried::Again => "retrying",
        Retried::AlreadyPending => "pending",
        Retried::Delivered => "delivered",
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
