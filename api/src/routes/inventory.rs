//! Stock per SKU: admins set it, every client may read it.

use crate::error::ApiError;
use crate::extract::{Admin, ApiPath, Caller, StrictJson};
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use orderflow_shared::db::inventory::{self, Stock};
use orderflow_shared::domain::Sku;
use serde::Deserialize;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/inventory/{sku}", get(get_stock).put(put_stock))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStock {
    available: i64,
}

fn parse_sku(sku: String) -> Result<Sku, ApiError> {
    Sku::parse(sku).map_err(|e| ApiError::InvalidRequest(format!("invalid path: {e}")))
}

async fn put_stock(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(sku): ApiPath<String>,
    body: StrictJson<SetStock>,
) -> Result<Json<Stock>, ApiError> {
    let sku = parse_sku(sku)?;
    let available = body.value.available;
    if !(0..=1_000_000_000).contains(&available) {
        return Err(ApiError::InvalidBody(
            "available must be between 0 and 1000000000".into(),
        ));
    }
    let stock = inventory::set_available(&state.db, &sku, available).await?;
    tracing::info!(sku = %sku, available, admin = %admin.id, "stock set");
    Ok(Json(stock))
}

async fn get_stock(
    State(state): State<AppState>,
    Caller(_): Caller,
    ApiPath(sku): ApiPath<String>,
) -> Result<Json<Stock>, ApiError> {
    let sku = parse_sku(sku)?;
    let stock = inventory::get(&state.db, &sku)
        .await?
        .ok_or(ApiError::NotFound("sku"))?;
    Ok(Json(stock))
}
