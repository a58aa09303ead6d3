//! Liveness and readiness.

use crate::error::ApiError;
use crate::openapi;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// The process is up.
#[derive(Serialize, ToSchema)]
struct Health {
    #[schema(pattern = "^ok$")]
    status: &'static str,
}

/// Both backing services answer.
#[derive(Serialize, ToSchema)]
struct Readiness {
    #[schema(pattern = "^ready$")]
    status: &'static str,
    #[schema(pattern = "^ok$")]
    postgres: &'static str,
    #[schema(pattern = "^ok$")]
    rabbitmq: &'static str,
}

/// The process is up (no key needed).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses(
        (status = 200, description = "The process is up.", body = Health),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// PostgreSQL answers and the broker channel is open; 503 otherwise (no key needed).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "PostgreSQL and RabbitMQ are reachable.", body = Readiness),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    orderflow_storage::ping(&state.db)
        .await
        .map_err(|e| ApiError::Unavailable(anyhow::Error::from(e).context("PostgreSQL")))?;
    state
        .publisher
        .channel()
        .await
        .map_err(|e| ApiError::Unavailable(anyhow::Error::from(e).context("RabbitMQ")))?;
    Ok(Json(Readiness {
        status: "ready",
        postgres: "ok",
        rabbitmq: "ok",
    }))
}
