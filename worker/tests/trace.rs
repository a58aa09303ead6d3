//! W3C trace context through the worker: the `traceparent` header of a command message is
//! continued by the span that processes it, so every JSON log line about the command carries the
//! command, its order, its partition and the trace id; the trace is stored with a direct
//! producer's command, and the relays hand the stored trace on (command republish, status event).
//! One test in this binary: it installs the process's log subscriber, writing to a buffer.

mod common;

use common::{add_item, create, created_order};
use futures_util::StreamExt;
use orderflow_messaging::header_str;
use orderflow_runtime::telemetry::{self, TRACEPARENT, trace_id_of};
use orderflow_testkit::{self as testing, Stack, wait_for};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Log output collected in memory.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Capture {
    type Writer = Capture;
    fn make_writer(&'w self) -> Capture {
        self.clone()
    }
}

impl Capture {
    /// The JSON lines logged so far.
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|line| serde_json::from_str(line).expect("every line is JSON"))
            .collect()
    }

    /// Waits for the line with this message inside the span of this command; returns the span.
    async fn span_of(&self, message: &str, command_id: &str) -> Value {
        wait_for(format!("a {message:?} line about {command_id}"))
            .until(|| async {
                self.lines().into_iter().find_map(|line| {
                    let span = line.get("span")?.clone();
                    (line["fields"]["message"] == message && span["command_id"] == command_id)
                        .then_some(span)
                })
            })
            .await
    }
}

async fn stored_traceparent(stack: &Stack, id: uuid::Uuid) -> Option<String> {
    sqlx::query_scalar("select traceparent from commands where id = $1")
        .bind(id)
        .fetch_one(&stack.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_traceparent_header_reaches_the_log_lines_about_its_command_and_goes_on_with_its_event() {
    let logs = Capture::default();
    telemetry::init_with_writer("json", logs.clone());
    let mut stack = common::stack().start().await;
    // A subscriber of the status events.
    let (connection, mut events) = testing::broker::consume_events(&stack.topology, "#").await;
    stack
        .start_worker_with(|c| c.republish_after_ms = 200)
        .await;

    let order = created_order(&stack, 0).await;

    // A traced command that the worker rejects (and logs a line about).
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let header = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let stale = stack.message(order, add_item("SKU-1"), Some(9));
    stack.publish_traced(&stale, &header).await;
    assert_eq!(stack.wait_final_status(stale.command_id).await, "rejected");
    let span = logs
        .span_of("command rejected", &stale.command_id.to_string())
        .await;
    assert_eq!(span["order_id"], order.to_string());
    assert_eq!(span["partition"], 0);
    assert_eq!(span["trace_id"], trace_id);
    assert_eq!(
        stored_traceparent(&stack, stale.command_id.0)
            .await
            .as_deref(),
        Some(header.as_str())
    );
    // Its status event carries the trace on.
    let event_trace = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let delivery = events.next().await.unwrap().unwrap();
            let event: Value = serde_json::from_slice(&delivery.data).unwrap();
            if event["command_id"] == stale.command_id.to_string() {
                break header_str(&delivery.properties, TRACEPARENT).map(str::to_owned);
            }
        }
    })
    .await
    .expect("the status event");
    assert_eq!(
        event_trace.as_deref().and_then(trace_id_of).as_deref(),
        Some(trace_id)
    );

    // A traced command recorded but never published: the command relay republishes it with
    // its trace, which the worker's span continues.
    let relayed_trace = "0af7651916cd43dd8448eb211c80319c";
    let relayed = stack.message(order, add_item("SKU-2"), Some(9));
    let relayed_header = format!("00-{relayed_trace}-b7ad6b7169203331-01");
    stack.record(&relayed, Some(&relayed_header)).await;
    assert_eq!(
        stack.wait_final_status(relayed.command_id).await,
        "rejected"
    );
    let span = logs
        .span_of("command rejected", &relayed.command_id.to_string())
        .await;
    assert_eq!(span["trace_id"], relayed_trace);

    // Without a header the worker starts a trace, and a direct producer's command keeps it.
    let untraced = stack.message(stack.order_in(1), create(), None);
    stack.publish(&untraced).await;
    assert_eq!(
        stack.wait_final_status(untraced.command_id).await,
        "applied"
    );
    let started = stored_traceparent(&stack, untraced.command_id.0)
        .await
        .expect("a trace was started");
    let started_id = trace_id_of(&started).expect("a valid traceparent");
    assert_ne!(started_id, trace_id);

    stack.stop_workers().await;
    let _ = connection.close(200, "done".into()).await;
}
