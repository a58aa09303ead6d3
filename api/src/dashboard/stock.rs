//! The stock screen: every SKU's stock for everyone who may read the dashboard, and setting a
//! SKU's available stock for admins (as `PUT /v1/inventory/{sku}` does for an admin key), each
//! change recorded in `admin_actions` with who made it and the figure it replaced.

use super::auth::{Admin, Viewer};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, StrictJson};
use crate::routes::inventory::{checked_available, parse_sku};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use orderflow_storage::dashboard::record_action;
use orderflow_storage::inventory::{self, Stock};
use serde::Deserialize;

/// Most SKUs a page holds.
const PAGE: i64 = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockQuery {
    /// The page after this SKU.
    after: Option<String>,
    /// Only SKUs whose name contains this (any case).
    q: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    _: Viewer,
    ApiQuery(query): ApiQuery<StockQuery>,
) -> Result<Json<Vec<Stock>>, ApiError> {
    let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    if q.is_some_and(|q| q.len() > 64) {
        return Err(ApiError::InvalidRequest(
            "q must be at most 64 characters".into(),
        ));
    }
    let stock = inventory::list(&state.db, query.after.as_deref(), q, PAGE).await?;
    Ok(Json(stock))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStock {
    available: i64,
}

pub async fn set(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(sku): ApiPath<String>,
    body: StrictJson<SetStock>,
) -> Result<Json<Stock>, ApiError> {
    let sku = parse_sku(sku)?;
    let available = checked_available(body.value.available)?;
    let mut tx = state.db.begin().await?;
    let before = inventory::get(&mut *tx, &sku).await?.map(|s| s.available);
    let stock = inventory::set_available(&mut *tx, &sku, available).await?;
    record_action(
        &mut *tx,
        admin.audited_as(),
        "set_stock",
        sku.as_str(),
        &serde_json::json!({ "available": available, "before": before }),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(sku = %sku, available, ?before, by = %admin.actor(), "stock set on the dashboard");
    Ok(Json(stock))
}
