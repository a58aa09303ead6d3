//! The API's Prometheus series and `GET /metrics`. Requests are counted by route template (never
//! by raw path, so ids cannot blow up the label set), method and status.
//!
//! `/metrics` carries no tenant data (counts by route, status, command type and reason), so it
//! is open like a health check; put it behind the network's scrape policy in production.

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Instant;

/// Counts and times every request (a layer around the whole router, outside the overload layer so
/// that shed requests are counted as the 503s they are), and stamps when it was received.
pub async fn track_requests(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    request
        .extensions_mut()
        .insert(crate::extract::Received(chrono::Utc::now()));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        // Unmatched paths share one label value.
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("orderflow_http_requests_total",
        "method" => method, "route" => route.clone(), "status" => status)
    .increment(1);
    metrics::histogram!("orderflow_http_request_duration_seconds",
        "method" => method, "route" => route)
    .record(started.elapsed().as_secs_f64());
    response
}

/// The `method` label: a standard method's name, anything else `other` (a client chooses the
/// method, and every label value must come from a closed set).
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    KNOWN
        .iter()
        .find(|known| *known == method)
        .map_or("other", Method::as_str)
}

/// Creates the counters that alerts and charts read at 0, so that a rate over them is 0 (not "no
/// data") until the first event.
pub fn register() {
    metrics::counter!("orderflow_idempotent_replays_total").increment(0);
    metrics::counter!("orderflow_idempotency_mismatches_total").increment(0);
    metrics::counter!("orderflow_intake_batches_total").increment(0);
    metrics::counter!("orderflow_intake_batched_commands_total").increment(0);
    metrics::counter!("orderflow_intake_recorded_alone_total").increment(0);
}

/// `GET /metrics`: the Prometheus text exposition of this process's series.
pub async fn render() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        orderflow_runtime::telemetry::prometheus().render(),
    )
}

/// A command the API recorded and the broker confirmed.
pub fn command_accepted(kind: &str) {
    metrics::counter!("orderflow_commands_accepted_total",
        "type" => kind.to_owned(), "source" => "http")
    .increment(1);
}

/// Runs one stage of accepting a command and times it: what a 202 waited for, stage by stage.
pub async fn intake_stage<T>(stage: &'static str, work: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let done = work.await;
    metrics::histogram!("orderflow_intake_stage_seconds", "stage" => stage)
        .record(started.elapsed().as_secs_f64());
    done
}

/// One intake batch written (`records`): the commands it held, and how many of them it sent back
/// to be recorded alone (their stream was held, or the statement failed).
pub fn intake_batch(commands: usize, alone: usize) {
    metrics::counter!("orderflow_intake_batches_total").increment(1);
    metrics::counter!("orderflow_intake_batched_commands_total").increment(commands as u64);
    metrics::counter!("orderflow_intake_recorded_alone_total").increment(alone as u64);
}

pub fn idempotent_replay() {
    metrics::counter!("orderflow_idempotent_replays_total").increment(1);
}

pub fn idempotency_mismatch() {
    metrics::counter!("orderflow_idempotency_mismatches_total").increment(1);
}

/// An open long-poll or SSE stream; the gauge goes down when the guard drops.
pub struct OpenStream(&'static str);

impl OpenStream {
    pub fn new(kind: &'static str) -> Self {
        metrics::gauge!("orderflow_open_streams", "kind" => kind).increment(1.0);
        Self(kind)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!("orderflow_open_streams", "kind" => self.0).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_up_method_is_labelled_other() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(method_label(&Method::from_bytes(b"M123").unwrap()), "other");
        assert_eq!(method_label(&Method::from_bytes(b"get").unwrap()), "other");
    }
}
