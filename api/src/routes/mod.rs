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
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
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
        .layer(request_trace())
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

/// The span of each request, and what is logged when it ends.
type RequestTrace = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&axum::http::Request<axum::body::Body>) -> tracing::Span,
>;

/// A 5xx is logged by `ApiError`, once and at its own level (a 500 at error, a dependency out
/// of reach at warn), not again here: a 503 that sheds load is the API working as designed, and
/// a burst of them logged at error cost a line per refused request while the CPUs were short.
fn request_trace() -> RequestTrace {
    TraceLayer::new_for_http()
        .make_span_with(request_span as fn(&_) -> _)
        .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG))
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use tower::ServiceExt;

    /// What the subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        /// The lines logged at error so far.
        fn errors(&self) -> Vec<String> {
            let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
            text.lines()
                .filter(|l| l.contains("ERROR"))
                .map(str::to_owned)
                .collect()
        }
    }

    async fn status_of(app: &Router, path: &str) -> StatusCode {
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    }

    /// The perf bench's burst: 60,275 requests shed with 503 in 10 s wrote 60,275 ERROR lines
    /// ("response failed", from the trace layer), 26 MB of log, while the CPUs were the scarce
    /// thing. Shedding is the API working as designed; what is an error (a 500) is logged once,
    /// by `ApiError`, at error.
    #[tokio::test]
    async fn a_shed_request_logs_no_error_and_an_internal_error_logs_one() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let app = Router::new()
            .route("/shed", get(|| async { ApiError::Overloaded }))
            .route(
                "/broken",
                get(|| async { ApiError::Internal(anyhow::anyhow!("broken on purpose")) }),
            )
            .layer(request_trace());

        assert_eq!(
            status_of(&app, "/shed").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let errors = captured.errors();
        assert!(errors.is_empty(), "a shed request logged {errors:?}");

        assert_eq!(
            status_of(&app, "/broken").await,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let errors = captured.errors();
        assert_eq!(errors.len(), 1, "an internal error logged {errors:?}");
        assert!(errors[0].contains("broken on purpose"), "{errors:?}");
    }
}
