//! Liveness and readiness.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The process is up.
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// PostgreSQL answers and the broker channel is open; 503 otherwise.
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    sqlx::query_scalar::<_, i32>("select 1")
        .fetch_one(&state.db)
        .await
        .map_err(|e| ApiError::Unavailable(anyhow::Error::from(e).context("PostgreSQL")))?;
    state
        .publisher
        .channel()
        .await
        .map_err(|e| ApiError::Unavailable(anyhow::Error::from(e).context("RabbitMQ")))?;
    Ok(Json(
        json!({"status": "ready", "postgres": "ok", "rabbitmq": "ok"}),
    ))
}
