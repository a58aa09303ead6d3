//! The HTTP surface: one `router()` per resource, merged here, with problem+json fallbacks.

pub mod commands;
pub mod events;
pub mod health;
pub mod inventory;
pub mod orders;
pub mod webhooks;

use crate::admission;
use crate::dashboard;
use crate::error::ApiError;
use crate::extract::MAX_BODY_BYTES;
use crate::metrics;
use crate::openapi::{self, ApiDoc};
use crate::state::AppState;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::time::Duration;
use tower::{BoxError, ServiceBuilder};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Request headers allowed at most, and their total size (names and values). Below hyper's own
/// limits (100 headers, ~400 KiB), so that a request over them gets a problem+json 431 here.
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Server-wide limits (per-client ones are in [`crate::limits`], the in-flight budgets in
/// [`crate::admission`]).
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// A request still running after this is answered 503 (it covers the longest long-poll).
    pub request_timeout: Duration,
}

/// The API's routes and the OpenAPI document describing exactly them.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, _, document) = api_parts();
    (routes, document)
}

/// The API's routes in two parts: those under the request timeout, and those that stream
/// (outliving it); and the document of both.
fn api_parts() -> (Router<AppState>, Router<AppState>, utoipa::openapi::OpenApi) {
    let (timed, mut document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(orders::router())
        .merge(commands::router())
        .merge(inventory::router())
        .merge(webhooks::router())
        .merge(health::router())
        .split_for_parts();
    let (streaming, streaming_document) = events::router().split_for_parts();
    document.merge(streaming_document);
    (timed, streaming, document)
}

pub fn router(state: AppState, limits: ServerLimits) -> Router {
    // Each `layer` call boxes every route once more, and a request clones its route's boxes for
    // as long as it runs (a long-poll: 30 s), so the layers go on in two stacks, not one by one.
    // The in-flight budgets are the admission middleware's, around every route (live feeds
    // included): it authenticates first, so that only a valid key spends the shared budget.
    let overload = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: BoxError| async {
            ApiError::Overloaded
        }))
        .timeout(limits.request_timeout)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let every_request = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(middleware::from_fn(metrics::track_requests))
        .layer(middleware::from_fn(limit_headers))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            admission::admit,
        ));
    let (api, streaming, document) = api_parts();
    api.merge(openapi::router(&document))
        .merge(dashboard::router())
        .route("/metrics", get(metrics::render))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(overload)
        // Mounted after the overload layer: a live feed must outlive the request timeout (it is
        // capped per client instead, and ends on shutdown).
        .merge(dashboard::streams())
        .merge(streaming)
        .layer(every_request)
        .with_state(state)
}

/// 431 for a request with too many header fields or too many bytes of them, before anything
/// (authentication included) reads them.
async fn limit_headers(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge {
            max_count: MAX_HEADERS,
            max_bytes: MAX_HEADER_BYTES,
        }
        .into_response();
    }
    next.run(request).await
}

/// The span of one request; it continues the caller's trace when a valid W3C `traceparent`
/// header came with it, and that trace goes on with the command to the worker.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
    );
    let header = request
        .headers()
        .get(orderflow_runtime::telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    orderflow_runtime::telemetry::accept_traceparent(&span, header);
    span
}
