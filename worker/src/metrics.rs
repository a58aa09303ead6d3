//! The worker's Prometheus series (names fixed: dashboards and alerts are written against them)
//! and the `/metrics` listener that serves them. Recording is in memory (the process's
//! `metrics` recorder, [`orderflow_runtime::telemetry::prometheus`]); nothing here touches
//! PostgreSQL or RabbitMQ. Counters are recorded after the commit they describe, so a retried
//! transaction is counted once.

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use chrono::{DateTime, Utc};
use metrics::{Counter, Gauge, counter, gauge, histogram};
use orderflow_contract::CommandStatus;
use orderflow_contract::{FailureCode, Reason};
use orderflow_domain::CommandKind;
use orderflow_domain::Rejection;
use orderflow_runtime::shutdown::CancellationToken;
use std::time::Duration;
use tokio::net::TcpListener;

pub const COMMANDS_FINISHED: &str = "orderflow_commands_finished_total";
pub const COMMANDS_ACCEPTED: &str = "orderflow_commands_accepted_total";
pub const VERSION_CONFLICTS: &str = "orderflow_version_conflicts_total";
pub const ACCEPT_TO_FINISHED: &str = "orderflow_accept_to_applied_seconds";
pub const APPLY_DURATION: &str = "orderflow_apply_duration_seconds";
pub const APPLY_BATCH_SIZE: &str = "orderflow_apply_batch_messages";
pub const APPLY_TRANSACTION_PARTITIONS: &str = "orderflow_apply_transaction_partitions";
pub const APPLY_RUNS_WAITING: &str = "orderflow_apply_runs_waiting";
pub const APPLY_COMBINED_FALLBACKS: &str = "orderflow_apply_combined_fallbacks_total";
pub const APPLY_TRANSACTIONS: &str = "orderflow_apply_transactions_total";

/// How a committed transaction of several messages (or a combined one) applied them
/// (`orderflow_apply_transactions_total{path}`): with two statements for all of them, or
/// message by message.
pub const APPLY_PATHS: [&str; 2] = ["set_based", "per_message"];
pub const INBOX_DUPLICATES: &str = "orderflow_inbox_duplicates_total";
pub const REDELIVERIES: &str = "orderflow_redeliveries_total";
pub const DEAD_LETTERS: &str = "orderflow_dead_letters_total";
pub const PARKED: &str = "orderflow_commands_parked_total";
pub const REPUBLISHED: &str = "orderflow_commands_republished_total";
pub const TX_RETRIES: &str = "orderflow_tx_retries_total";
pub const OUTBOX_BACKLOG: &str = "orderflow_outbox_backlog";
pub const OUTBOX_OLDEST_AGE: &str = "orderflow_outbox_oldest_age_seconds";
pub const QUEUE_DEPTH: &str = "orderflow_partition_queue_depth";
pub const CONSUMER_UP: &str = "orderflow_partition_consumer_up";
pub const LAST_DELIVERY: &str = "orderflow_partition_last_delivery_timestamp_seconds";
pub const OLDEST_PENDING_AGE: &str = "orderflow_partition_oldest_pending_age_seconds";
pub const DEAD_LETTER_QUEUE_DEPTH: &str = "orderflow_dead_letter_queue_depth";
pub const DEAD_LETTERS_UNRECORDED: &str = "orderflow_dead_letters_unrecorded_total";
pub const LEASE_EPOCH: &str = "orderflow_partition_lease_epoch";
pub const LEASE_HELD: &str = "orderflow_partition_lease_held";
pub const REBALANCES: &str = "orderflow_partition_rebalances_total";
pub const FENCED: &str = "orderflow_fenced_transactions_total";
pub const CONSUMERS_STUCK: &str = "orderflow_partition_consumer_stuck_total";
pub const DRAIN_OVERRUNS: &str = "orderflow_partition_drain_overruns_total";
pub const WEBHOOK_ATTEMPTS: &str = "orderflow_webhook_attempts_total";

/// Outcomes of `orderflow_webhook_attempts_total`: a 2xx; anything else, to be retried; anything
/// else, and the delivery given up (retried too long, or it can go nowhere it may).
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "failed", "given_up"];

/// Kinds of `orderflow_partition_rebalances_total`: a lease this worker took, one it released
/// after draining, one it lost (taken over, or given up because it could not renew it in time).
pub const REBALANCE_KINDS: [&str; 3] = ["taken", "released", "lost"];

/// Causes of `orderflow_tx_retries_total` (see `ApplyError::retry_cause`).
const RETRY_CAUSES: [&str; 5] = [
    "deadlock",
    "serialization",
    "lock_timeout",
    "connection",
    "other",
];

/// Creates the counters that alerts and charts read at 0, so that a rate over them is 0 (not "no
/// data") until the first event.
pub fn register() {
    for name in [
        VERSION_CONFLICTS,
        INBOX_DUPLICATES,
        PARKED,
        DEAD_LETTERS_UNRECORDED,
        FENCED,
        DRAIN_OVERRUNS,
        APPLY_COMBINED_FALLBACKS,
    ] {
        counter!(name).increment(0);
    }
    for cause in RETRY_CAUSES {
        counter!(TX_RETRIES, "cause" => cause).increment(0);
    }
    for kind in REBALANCE_KINDS {
        counter!(REBALANCES, "kind" => kind).increment(0);
    }
    for stage in crate::monitor::Stage::STUCK_LABELS {
        counter!(CONSUMERS_STUCK, "stage" => stage).increment(0);
    }
    for outcome in WEBHOOK_OUTCOMES {
        counter!(WEBHOOK_ATTEMPTS, "outcome" => outcome).increment(0);
    }
    for path in APPLY_PATHS {
        counter!(APPLY_TRANSACTIONS, "path" => path).increment(0);
    }
}

/// A webhook delivery attempt ended (`outcome`: one of [`WEBHOOK_OUTCOMES`]).
pub fn webhook_attempt(outcome: &'static str) {
    debug_assert!(WEBHOOK_OUTCOMES.contains(&outcome));
    counter!(WEBHOOK_ATTEMPTS, "outcome" => outcome).increment(1);
}

/// A partition consumer spent longer than `monitor::STUCK_AFTER` in one step (`stage`: one of
/// `Stage::STUCK_LABELS`).
pub fn consumer_stuck(stage: &'static str) {
    counter!(CONSUMERS_STUCK, "stage" => stage).increment(1);
}

/// A transaction of this worker was refused by its fence: the partition's lease had been taken
/// over (the worker was paused or cut off past its lease).
pub fn fenced() {
    counter!(FENCED).increment(1);
}

/// A partition's drain outlasted `ORDERFLOW_DRAIN_LIMIT_MS`: what it had not started went back
/// to the broker unopened.
pub fn drain_overran() {
    counter!(DRAIN_OVERRUNS).increment(1);
}

/// A lease of this worker was taken, released or lost (one of [`REBALANCE_KINDS`]).
pub fn rebalanced(kind: &'static str) {
    debug_assert!(REBALANCE_KINDS.contains(&kind));
    counter!(REBALANCES, "kind" => kind).increment(1);
}

/// The `reason` label of an applied command.
pub const NO_REASON: &str = "none";

/// A command the worker brought to a final status, to be counted once its transaction commits.
#[derive(Clone, Debug)]
pub struct FinishedCommand {
    pub command_id: orderflow_domain::CommandId,
    pub kind: CommandKind,
    pub status: CommandStatus,
    /// Why it was rejected or failed; `None` when applied.
    pub reason: Option<Reason>,
    pub accepted_at: DateTime<Utc>,
}

impl FinishedCommand {
    /// Counts the command and observes its time from acceptance to now.
    pub fn record(&self) {
        let status = self.status.as_str();
        let reason = self.reason.map_or(NO_REASON, Reason::as_str);
        counter!(COMMANDS_FINISHED, "type" => self.kind.as_str(), "status" => status, "reason" => reason)
            .increment(1);
        if self.reason == Some(Reason::Rejected(Rejection::VersionConflict)) {
            counter!(VERSION_CONFLICTS).increment(1);
        }
        let waited = (Utc::now() - self.accepted_at).to_std().unwrap_or_default();
        histogram!(ACCEPT_TO_FINISHED, "status" => status).record(waited.as_secs_f64());
    }
}

/// A direct producer's command, recorded by the worker (the API counts its own).
pub fn command_accepted(kind: CommandKind) {
    counter!(COMMANDS_ACCEPTED, "type" => kind.as_str(), "source" => "amqp").increment(1);
}

pub fn apply_duration(elapsed: Duration) {
    histogram!(APPLY_DURATION).record(elapsed.as_secs_f64());
}

/// Messages applied together in one committed transaction (only batches of two or more).
pub fn batch_applied(messages: usize) {
    histogram!(APPLY_BATCH_SIZE).record(messages as f64);
}

/// A combined transaction committed the runs of this many partitions.
pub fn combined_applied(partitions: usize) {
    histogram!(APPLY_TRANSACTION_PARTITIONS).record(partitions as f64);
}

/// A transaction of [`crate::apply::Applier::apply_combined`] committed, by `path` (one of
/// [`APPLY_PATHS`]).
pub fn apply_transaction(path: &'static str) {
    debug_assert!(APPLY_PATHS.contains(&path));
    counter!(APPLY_TRANSACTIONS, "path" => path).increment(1);
}

/// Runs handed to the combined transactions and not yet taken by one (`delta` of them).
pub fn runs_waiting(delta: f64) {
    gauge!(APPLY_RUNS_WAITING).increment(delta);
}

/// A combined transaction did not commit: its runs went back to their partitions, each applied
/// on its own.
pub fn combined_fallback() {
    counter!(APPLY_COMBINED_FALLBACKS).increment(1);
}

pub fn inbox_duplicate() {
    counter!(INBOX_DUPLICATES).increment(1);
}

/// A command parked until an earlier command of its order arrives.
pub fn parked() {
    counter!(PARKED).increment(1);
}

/// Commands the relay published again: `unconfirmed` (recorded, never confirmed by the broker)
/// or `overtaken` (confirmed, but a later message of the partition was delivered before it).
pub fn republished(why: &'static str, count: usize) {
    counter!(REPUBLISHED, "why" => why).increment(count as u64);
}

pub fn dead_lettered(code: FailureCode) {
    counter!(DEAD_LETTERS, "reason" => code.as_str()).increment(1);
}

/// A message dead-lettered through the broker only: PostgreSQL refused its `dead_letters` row
/// (the broker's copy carries the reason in its headers).
pub fn dead_letter_unrecorded() {
    counter!(DEAD_LETTERS_UNRECORDED).increment(1);
}

pub fn tx_retry(cause: &'static str) {
    counter!(TX_RETRIES, "cause" => cause).increment(1);
}

pub fn outbox(backlog: i64, oldest_age_secs: f64) {
    gauge!(OUTBOX_BACKLOG).set(backlog as f64);
    gauge!(OUTBOX_OLDEST_AGE).set(oldest_age_secs);
}

pub fn dead_letter_queue_depth(messages: u32) {
    gauge!(DEAD_LETTER_QUEUE_DEPTH).set(f64::from(messages));
}

/// The series of one partition, looked up once (after the recorder is installed) rather than
/// per message.
pub struct PartitionSeries {
    pub redeliveries: Counter,
    pub queue_depth: Gauge,
    pub consumer_up: Gauge,
    pub last_delivery: Gauge,
    pub oldest_pending_age: Gauge,
    /// The epoch this worker holds the partition's lease at; 0 while it holds none.
    pub lease_epoch: Gauge,
    /// 1 while this worker holds the partition's lease (the owner is the scraped worker).
    pub lease_held: Gauge,
}

impl PartitionSeries {
    pub fn new(partition: u16) -> Self {
        let p = partition.to_string();
        Self {
            redeliveries: counter!(REDELIVERIES, "partition" => p.clone()),
            queue_depth: gauge!(QUEUE_DEPTH, "partition" => p.clone()),
            consumer_up: gauge!(CONSUMER_UP, "partition" => p.clone()),
            last_delivery: gauge!(LAST_DELIVERY, "partition" => p.clone()),
            oldest_pending_age: gauge!(OLDEST_PENDING_AGE, "partition" => p.clone()),
            lease_epoch: gauge!(LEASE_EPOCH, "partition" => p.clone()),
            lease_held: gauge!(LEASE_HELD, "partition" => p),
        }
    }
}

/// `GET /metrics` in the Prometheus text format.
fn router() -> Router {
    Router::new().route(
        "/metrics",
        get(|| async {
            (
                [(CONTENT_TYPE, "text/plain; version=0.0.4")],
                orderflow_runtime::telemetry::prometheus().render(),
            )
        }),
    )
}

/// Serves `/metrics` on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let served = axum::serve(listener, router())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the metrics listener failed");
    }
}
