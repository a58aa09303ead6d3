//! Stock per SKU: admins set it, every client may read it.

use crate::error::ApiError;
use crate::extract::{Admin, ApiPath, Caller, StrictJson};
use crate::openapi;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use orderflow_domain::Sku;
use orderflow_storage::inventory;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_stock, put_stock))
}

/// Most stock one SKU can have available.
const MAX_AVAILABLE: i64 = 1_000_000_000;

/// The body of `PUT /v1/inventory/{sku}`.
/// A SKU's stock: what may still be reserved, what is reserved by orders, what has shipped.
#[derive(Serialize, ToSchema)]
struct Stock {
    sku: String,
    available: i64,
    reserved: i64,
    shipped: i64,
}

impl From<inventory::Stock> for Stock {
    fn from(s: inventory::Stock) -> Self {
        Self {
            sku: s.sku,
            available: s.available,
            reserved: s.reserved,
            shipped: s.shipped,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SetStock {
    /// The stock available for reservation (replaces the current figure).
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "orderflow_domain::values::deserialize_integer")]
    available: i64,
}

/// The `{sku}` of the route.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only its parameter schema is used
struct SkuPath {
    sku: Sku,
}

/// A figure of available stock as set by an admin (here, and on the dashboard's stock screen):
/// 0 to [`MAX_AVAILABLE`], else 422.
pub(crate) fn checked_available(available: i64) -> Result<i64, ApiError> {
    if (0..=MAX_AVAILABLE).contains(&available) {
        Ok(available)
    } else {
        Err(ApiError::InvalidBody(format!(
            "available must be between 0 and {MAX_AVAILABLE}"
        )))
    }
}

pub(crate) fn parse_sku(sku: String) -> Result<Sku, ApiError> {
    Sku::parse(sku).map_err(|e| ApiError::InvalidRequest(format!("invalid path: {e}")))
}

/// Set a SKU's available stock (admin keys only); creates the SKU if new. Idempotent by its
/// nature (it sets a value): a retry needs no `Idempotency-Key`.
#[utoipa::path(
    put,
    path = "/v1/inventory/{sku}",
    tag = "inventory",
    security(("bearer" = [])),
    params(SkuPath),
    request_body(content = SetStock, content_type = "application/json"),
    responses(
        (status = 200, description = "The SKU's stock after the change.", body = Stock),
        (status = 400, response = inline(openapi::BadBodyRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 403, response = inline(openapi::Forbidden)),
        (status = 404, response = inline(openapi::NotFound)),
        (status = 413, response = inline(openapi::PayloadTooLarge)),
        (status = 415, response = inline(openapi::UnsupportedMediaType)),
        (status = 422, response = inline(openapi::InvalidBody)),
        (status = 429, response = inline(openapi::RateLimited)),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
async fn put_stock(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(sku): ApiPath<String>,
    body: StrictJson<SetStock>,
) -> Result<Json<Stock>, ApiError> {
    let sku = parse_sku(sku)?;
    let available = checked_available(body.value.available)?;
    let stock = inventory::set_available(&state.db, &sku, available).await?;
    tracing::info!(sku = %sku, available, admin = %admin.id, "stock set");
    Ok(Json(stock.into()))
}

/// Read a SKU's stock.
#[utoipa::path(
    get,
    path = "/v1/inventory/{sku}",
    tag = "inventory",
    security(("bearer" = [])),
    params(SkuPath),
    responses(
        (status = 200, description = "The SKU's stock.", body = Stock),
        (status = 400, response = inline(openapi::BadRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 404, response = inline(openapi::NotFound)),
        (status = 429, response = inline(openapi::RateLimited)),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
async fn get_stock(
    State(state): State<AppState>,
    Caller(_): Caller,
    ApiPath(sku): ApiPath<String>,
) -> Result<Json<Stock>, ApiError> {
    let sku = parse_sku(sku)?;
    let stock = inventory::get(&state.db, &sku)
        .await?
        .ok_or(ApiError::NotFound("sku"))?;
    Ok(Json(stock.into()))
}
