//! Logging set-up (`RUST_LOG` filters, default `info`; `text` or `json` format, to stderr), W3C
//! trace context, and the process's Prometheus metrics recorder.
//!
//! Traces: every span is also an OpenTelemetry span (a local SDK tracer provider; nothing is
//! exported), so a span can continue a remote trace from a `traceparent` header and hand its own
//! `traceparent` on: HTTP request → command row and AMQP header → the worker's per-message span →
//! status events. Log lines carry the trace through a `trace_id` span field (see
//! [`accept_traceparent`]); JSON logs print the fields of every enclosing span. The OpenTelemetry
//! layer sees spans regardless of `RUST_LOG`, so turning logs down does not break propagation.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{self, Filter};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The W3C Trace Context header (HTTP) and AMQP message header carrying a trace.
pub const TRACEPARENT: &str = "traceparent";

/// Installs the global subscriber once, logging to stderr; later calls (tests) are no-ops. Text
/// lines are coloured only when stderr is a terminal and `NO_COLOR` is unset, so that logs
/// redirected to a file (deploy/local-up.sh) or collected by Docker carry no escape codes.
pub fn init(format: &str) {
    let ansi = colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    install(format, std::io::stderr, ansi);
}

/// [`init`] with another destination for the log lines (tests capture them to check what they
/// carry), never coloured. Only the first call in a process installs anything.
pub fn init_with_writer<W>(format: &str, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    install(format, writer, false);
}

/// Whether text log lines get ANSI colours: only on a terminal, and not when `NO_COLOR` is set
/// to anything but the empty string (<https://no-color.org>).
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

fn install<W>(format: &str, writer: W, ansi: bool)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // No exporter: spans are only there to carry trace ids between processes and into logs.
    let provider = SdkTracerProvider::builder().build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("orderflow"))
        // Attributes nobody reads without an exporter; skipping them keeps each span cheap.
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(InfoSpans);
    let registry = tracing_subscriber::registry().with(otel);
    let _ = if format == "json" {
        let logs = fmt::layer()
            .json()
            // Span fields (command_id, order_id, partition, trace_id) on every line, with the
            // innermost span's also under `span`.
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(writer)
            .with_filter(filter);
        registry.with(logs).try_init()
    } else {
        let logs = fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .with_filter(filter);
        registry.with(logs).try_init()
    };
}

/// What the OpenTelemetry layer sees: spans at `info` and above, whatever `RUST_LOG` says (it
/// filters the log lines only). Events are not attached to spans: nothing would export them.
struct InfoSpans;

impl InfoSpans {
    fn wants(metadata: &Metadata<'_>) -> bool {
        metadata.is_span() && *metadata.level() <= Level::INFO
    }
}

impl<S> Filter<S> for InfoSpans {
    fn enabled(&self, metadata: &Metadata<'_>, _: &layer::Context<'_, S>) -> bool {
        Self::wants(metadata)
    }
    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        // Decided once per callsite: the filter depends on static metadata only.
        if Self::wants(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::INFO)
    }
}

/// Makes `span` continue the trace of a W3C `traceparent` header, or start a new trace when the
/// header is absent or invalid, and records the trace id in the span's `trace_id` field if it
/// declared one (`trace_id = tracing::field::Empty`), so that every log line inside carries it.
/// Call it before the span is first entered: a started span's parent cannot change.
pub fn accept_traceparent(span: &tracing::Span, header: Option<&str>) {
    let remote = header.map(|value| TraceContextPropagator::new().extract(&Header(Some(value))));
    let remote_trace = remote
        .as_ref()
        .map(|cx| cx.span().span_context().clone())
        .filter(|context| context.is_valid());
    if let Some(cx) = remote.filter(|_| remote_trace.is_some()) {
        // Fails only without the OpenTelemetry layer (or on a started span): the trace id below
        // still comes from the header.
        let _ = span.set_parent(cx);
    }
    let own = span.context().span().span_context().clone();
    let trace_id = if own.is_valid() {
        Some(own.trace_id())
    } else {
        remote_trace.map(|context| context.trace_id())
    };
    if let Some(trace_id) = trace_id {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// The W3C `traceparent` value naming `span` (its trace, itself as the parent), to hand on in a
/// header or store; `None` if the span has no trace (disabled, or no OpenTelemetry layer).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    context_traceparent(&span.context())
}

fn context_traceparent(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut written = Written(None);
    TraceContextPropagator::new().inject_context(cx, &mut written);
    written.0
}

/// The trace id (32 lowercase hex digits) of a `traceparent` value, if it is a valid one.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let cx = TraceContextPropagator::new().extract(&Header(Some(traceparent)));
    let context = cx.span().span_context().clone();
    context.is_valid().then(|| context.trace_id().to_string())
}

/// A carrier holding just a `traceparent` value.
struct Header<'a>(Option<&'a str>);

impl Extractor for Header<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.filter(|_| key.eq_ignore_ascii_case(TRACEPARENT))
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// Where the propagator writes the `traceparent` of a context.
struct Written(Option<String>);

impl Injector for Written {
    fn set(&mut self, key: &str, value: String) {
        // The propagator also writes `tracestate` when the trace has one; orderflow carries only
        // `traceparent`.
        if key.eq_ignore_ascii_case(TRACEPARENT) {
            self.0 = Some(value);
        }
    }
}

/// Histogram buckets (seconds) for request and pipeline latencies: 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Finer buckets (seconds) for the stages of accepting a command (`orderflow_intake_…`): each is
/// a few milliseconds, and which one grows is what an operator needs to see.
const STAGE_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0065, 0.008, 0.01, 0.0125, 0.015,
    0.02, 0.025, 0.035, 0.05, 0.1, 0.25, 1.0,
];

/// Histogram buckets for counts of messages (series named `…_messages`): batch sizes.
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// The process's Prometheus recorder, installed on first use; every `metrics::counter!` and
/// friends in the process land in it, and `/metrics` renders it. One per process because the
/// `metrics` facade has one global recorder (tests that run an API and a worker in one process
/// see both sets of series on both endpoints).
pub fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Prefix("orderflow_intake_".into()),
                STAGE_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_messages".into()),
                COUNT_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed in this process");
        // The exporter keeps histogram samples until rendered; scrapes are not guaranteed (tests,
        // a stack without Prometheus), so drain them regularly to keep memory flat.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .expect("spawning the metrics upkeep thread");
        handle
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_traceparents_name_a_trace() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of(valid).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for invalid in [
            "",
            "garbage",
            // the all-zero trace id is invalid by the W3C spec
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            assert_eq!(trace_id_of(invalid), None, "{invalid:?}");
        }
    }

    #[test]
    fn text_logs_are_coloured_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        // A log file, a pipe, Docker's log collector.
        assert!(!colour(false, None));
    }

    #[test]
    fn a_span_without_a_trace_has_no_traceparent() {
        assert_eq!(traceparent(&tracing::Span::none()), None);
        // Harmless on a disabled span.
        accept_traceparent(&tracing::Span::none(), Some("garbage"));
    }
}
