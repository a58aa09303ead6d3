//! What the worker reports about its partitions besides per-message counters. The consumers keep
//! a few atomics per partition (a handful of relaxed stores per message); two background tasks
//! turn them into a heartbeat row per partition in `worker_partitions` (about once a second, one
//! statement for all partitions, read by the dashboard to tell the active worker) and into
//! sampled gauges (about every 2 s: queue depths by passive declare, the oldest pending command
//! per partition, the outbox backlog, the dead-letter queue). Neither runs per message.

use crate::metrics::{self, PartitionSeries};
use chrono::{DateTime, Utc};
use orderflow_contract::partition::MAX_PARTITIONS;
use orderflow_messaging::{SharedConnection, Topology, queue_depth};
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_storage::observability::{self, PartitionBeat};
use sqlx::PgPool;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering::Relaxed};
use std::time::Duration;

/// How often the heartbeat row is written.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How often the sampled gauges are refreshed.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// This worker's view of one partition.
#[derive(Default)]
struct PartitionState {
    consuming: AtomicBool,
    /// Milliseconds since the epoch; 0 before the first delivery.
    last_delivery_ms: AtomicI64,
    delivered: AtomicI64,
    redelivered: AtomicI64,
    finished: AtomicI64,
    /// Ready messages in the partition's queue at the last sample (0 until sampled).
    ready: AtomicI64,
    /// When this worker's current consumer on the partition started (ms since the epoch).
    consuming_since_ms: AtomicI64,
    /// What the partition's consumer is doing ([`Stage`] as u8), and since when (ms since the
    /// epoch): what the watchdog reports when a step never ends.
    stage: AtomicU8,
    stage_since_ms: AtomicI64,
    /// The stage entry the watchdog already reported (its `stage_since_ms`), so that each is
    /// reported once.
    reported_ms: AtomicI64,
}

/// What a partition's consumer is doing. Every step but waiting for deliveries talks to
/// PostgreSQL or RabbitMQ and has a bound of its own; the watchdog ([`Monitor::run_watchdog`])
/// names a step that outlives [`STUCK_AFTER`] anyway, so that a stall is never silent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// Not consuming.
    Stopped = 0,
    /// Getting the AMQP connection, opening the channel, starting the consumer.
    Opening = 1,
    /// Waiting for deliveries.
    Waiting = 2,
    /// Applying what arrived (transactions, with their retries).
    Applying = 3,
    /// Acking what was applied.
    Acking = 4,
    /// Publishing a message to the dead-letter exchange.
    DeadLettering = 5,
    /// Cancelling the consumer at the broker (draining).
    Cancelling = 6,
    /// Closing the channel.
    Closing = 7,
}

impl Stage {
    const ALL: [Stage; 8] = [
        Stage::Stopped,
        Stage::Opening,
        Stage::Waiting,
        Stage::Applying,
        Stage::Acking,
        Stage::DeadLettering,
        Stage::Cancelling,
        Stage::Closing,
    ];

    /// The steps the watchdog can report (the `stage` label values).
    pub const STUCK_LABELS: [&'static str; 6] = [
        "opening",
        "applying",
        "acking",
        "dead_lettering",
        "cancelling",
        "closing",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Stopped => "stopped",
            Stage::Opening => "opening",
            Stage::Waiting => "waiting",
            Stage::Applying => "applying",
            Stage::Acking => "acking",
            Stage::DeadLettering => "dead_lettering",
            Stage::Cancelling => "cancelling",
            Stage::Closing => "closing",
        }
    }

    fn from_u8(value: u8) -> Stage {
        Stage::ALL
            .get(usize::from(value))
            .copied()
            .unwrap_or(Stage::Stopped)
    }
}

/// A consumer step (other than waiting for deliveries) that lasts this long is reported.
pub const STUCK_AFTER: Duration = Duration::from_secs(30);
/// How often the watchdog looks.
const WATCH_EVERY: Duration = Duration::from_secs(5);

/// The partitions of one worker process, as its consumers report them.
pub struct Monitor {
    worker: String,
    /// One slot per possible partition; those below the count in force are filled (the count
    /// only grows, see [`Monitor::grow`]), so that a growth never moves what a consumer holds.
    partitions: Vec<OnceLock<(PartitionState, PartitionSeries)>>,
}

impl Monitor {
    /// Call after the metrics recorder is installed (the series handles are taken here).
    pub fn new(worker: String, partitions: u16) -> Self {
        let monitor = Self {
            worker,
            partitions: (0..MAX_PARTITIONS).map(|_| OnceLock::new()).collect(),
        };
        monitor.grow(partitions);
        monitor
    }

    /// Tracks partitions `0..partitions` (after the count grew); their series appear now.
    pub fn grow(&self, partitions: u16) {
        for (p, slot) in self
            .partitions
            .iter()
            .enumerate()
            .take(usize::from(partitions))
        {
            slot.get_or_init(|| (PartitionState::default(), PartitionSeries::new(p as u16)));
        }
    }

    fn slot(&self, partition: u16) -> Option<&(PartitionState, PartitionSeries)> {
        self.partitions.get(usize::from(partition))?.get()
    }

    /// The partitions tracked, in order.
    fn tracked(&self) -> impl Iterator<Item = (u16, &(PartitionState, PartitionSeries))> {
        self.partitions
            .iter()
            .map_while(OnceLock::get)
            .enumerate()
            .map(|(p, slot)| (p as u16, slot))
    }

    /// The name this worker heartbeats under.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    fn state(&self, partition: u16) -> Option<&PartitionState> {
        self.slot(partition).map(|(state, _)| state)
    }

    /// A message arrived on `partition`.
    pub fn delivered(&self, partition: u16, redelivered: bool, at: DateTime<Utc>) {
        let Some((state, series)) = self.slot(partition) else {
            return;
        };
        state.delivered.fetch_add(1, Relaxed);
        state.last_delivery_ms.store(at.timestamp_millis(), Relaxed);
        if redelivered {
            state.redelivered.fetch_add(1, Relaxed);
            series.redeliveries.increment(1);
        }
    }

    /// This worker brought `count` commands of `partition` to a final status.
    pub fn finished(&self, partition: u16, count: usize) {
        if let Some(state) = self.state(partition).filter(|_| count > 0) {
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            state.finished.fetch_add(count, Relaxed);
        }
    }

    /// This worker now holds `partition`'s lease at `epoch` (0: no longer holds it).
    pub fn lease(&self, partition: u16, epoch: i64) {
        let Some((_, series)) = self.slot(partition) else {
            return;
        };
        series.lease_epoch.set(epoch as f64);
        series.lease_held.set(if epoch > 0 { 1.0 } else { 0.0 });
    }

    /// `partition`'s consumer enters `stage`.
    pub fn stage(&self, partition: u16, stage: Stage) {
        let Some(state) = self.state(partition) else {
            return;
        };
        state
            .stage_since_ms
            .store(Utc::now().timestamp_millis(), Relaxed);
        state.stage.store(stage as u8, Relaxed);
    }

    /// The partitions whose consumer has been in one step (other than waiting for deliveries,
    /// or stopped) for longer than `limit` and were not reported yet: (partition, step, for
    /// how long). Each stage entry is returned once.
    pub fn stuck(&self, limit: Duration) -> Vec<(u16, Stage, Duration)> {
        let now = Utc::now().timestamp_millis();
        let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
        let mut stuck = Vec::new();
        for (p, (state, _)) in self.tracked() {
            let stage = Stage::from_u8(state.stage.load(Relaxed));
            let since = state.stage_since_ms.load(Relaxed);
            if matches!(stage, Stage::Stopped | Stage::Waiting)
                || now - since <= limit_ms
                || state.reported_ms.swap(since, Relaxed) == since
            {
                continue;
            }
            let lasted = Duration::from_millis(u64::try_from(now - since).unwrap_or(0));
            stuck.push((p, stage, lasted));
        }
        stuck
    }

    /// Reports every consumer step that outlives [`STUCK_AFTER`], until shutdown. It touches
    /// neither PostgreSQL nor RabbitMQ, so that it reports while they hang.
    pub async fn run_watchdog(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            for (partition, stage, lasted) in self.stuck(STUCK_AFTER) {
                metrics::consumer_stuck(stage.as_str());
                tracing::error!(
                    partition,
                    stage = stage.as_str(),
                    ?lasted,
                    "a partition consumer is stuck in one step"
                );
            }
        }
    }

    /// Marks `partition` as consumed by this worker until the guard is dropped.
    pub fn consuming(&self, partition: u16) -> Consuming<'_> {
        self.set_consuming(partition, true);
        Consuming {
            monitor: self,
            partition,
        }
    }

    /// Whether the partition's consumer looks stalled: the queue had ready messages at the last
    /// sample, yet nothing was delivered to this consumer for `quiet` since it started or since
    /// its last delivery (a dead channel, or a consumer the broker never made active).
    pub fn stalled(&self, partition: u16, quiet: Duration) -> bool {
        let Some(state) = self.state(partition) else {
            return false;
        };
        let since = state
            .last_delivery_ms
            .load(Relaxed)
            .max(state.consuming_since_ms.load(Relaxed));
        let quiet_ms = i64::try_from(quiet.as_millis()).unwrap_or(i64::MAX);
        state.consuming.load(Relaxed)
            && state.ready.load(Relaxed) > 0
            && Utc::now().timestamp_millis() - since > quiet_ms
    }

    fn set_consuming(&self, partition: u16, up: bool) {
        let Some((state, series)) = self.slot(partition) else {
            return;
        };
        if up {
            state
                .consuming_since_ms
                .store(Utc::now().timestamp_millis(), Relaxed);
        }
        state.consuming.store(up, Relaxed);
        series.consumer_up.set(if up { 1.0 } else { 0.0 });
    }

    fn beats(&self) -> Vec<PartitionBeat> {
        self.tracked()
            .map(|(p, (state, _))| PartitionBeat {
                partition: i32::from(p),
                consuming: state.consuming.load(Relaxed),
                last_delivery_at: last_delivery(state),
                delivered: state.delivered.load(Relaxed),
                redelivered: state.redelivered.load(Relaxed),
                finished: state.finished.load(Relaxed),
            })
            .collect()
    }

    /// Writes the heartbeat once (also the last one, after the consumers stopped).
    pub async fn beat(&self, db: &PgPool) -> sqlx::Result<()> {
        observability::heartbeat(db, &self.worker, &self.beats()).await
    }

    /// Heartbeats until shutdown.
    pub async fn run_heartbeat(&self, db: PgPool, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            let result = self.beat(&db).await;
            failing = report("heartbeat", result, failing);
        }
    }

    /// Refreshes the sampled gauges until shutdown.
    pub async fn run_sampler(
        &self,
        db: PgPool,
        connection: &SharedConnection,
        topology: &Topology,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut channel: Option<lapin::Channel> = None;
        let (mut db_failing, mut broker_failing) = (false, false);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            for (_, (state, series)) in self.tracked() {
                let last = state.last_delivery_ms.load(Relaxed);
                if last > 0 {
                    series.last_delivery.set(last as f64 / 1000.0);
                }
            }
            db_failing = report("database gauges", self.sample_db(&db).await, db_failing);
            let sampled = self.sample_queues(&mut channel, connection, topology).await;
            if sampled.is_err() {
                // A failed passive declare closes the channel: open a new one next time.
                channel = None;
            }
            broker_failing = report("queue gauges", sampled, broker_failing);
        }
    }

    async fn sample_db(&self, db: &PgPool) -> sqlx::Result<()> {
        let (backlog, oldest) = observability::outbox_backlog(db).await?;
        metrics::outbox(backlog, oldest);
        let partitions = self.tracked().count() as u16;
        let ages = observability::oldest_pending(db, partitions).await?;
        for ((_, (_, series)), age) in self.tracked().zip(ages) {
            series.oldest_pending_age.set(age);
        }
        Ok(())
    }

    async fn sample_queues(
        &self,
        channel: &mut Option<lapin::Channel>,
        connection: &SharedConnection,
        topology: &Topology,
    ) -> lapin::Result<()> {
        if channel.as_ref().is_none_or(|c| !c.status().connected()) {
            *channel = Some(orderflow_messaging::open_channel(&*connection.get().await?).await?);
        }
        let channel = channel.as_ref().expect("opened above");
        for (p, (state, series)) in self.tracked() {
            let depth = queue_depth(channel, &topology.partition_queue(p))
                .await?
                .ready;
            series.queue_depth.set(f64::from(depth));
            state.ready.store(i64::from(depth), Relaxed);
        }
        let depth = queue_depth(channel, &topology.dead_letter_queue())
            .await?
            .ready;
        metrics::dead_letter_queue_depth(depth);
        Ok(())
    }
}

/// Clears the consuming mark of a partition when its consumer ends, however it ends.
pub struct Consuming<'a> {
    monitor: &'a Monitor,
    partition: u16,
}

impl Drop for Consuming<'_> {
    fn drop(&mut self) {
        self.monitor.set_consuming(self.partition, false);
    }
}

fn last_delivery(state: &PartitionState) -> Option<DateTime<Utc>> {
    match state.last_delivery_ms.load(Relaxed) {
        0 => None,
        ms => DateTime::from_timestamp_millis(ms),
    }
}

/// Logs a background task's failure once when it starts failing and once when it recovers, not
/// every tick; returns whether it is failing now.
fn report<E: std::fmt::Display>(what: &str, result: Result<(), E>, was_failing: bool) -> bool {
    match result {
        Ok(()) => {
            if was_failing {
                tracing::info!("{what} recovered");
            }
            false
        }
        Err(e) => {
            if !was_failing {
                tracing::warn!(error = %e, "{what} failed; retrying");
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts `partition`'s consumer in `stage` since `ago`.
    fn entered(monitor: &Monitor, partition: u16, stage: Stage, ago: Duration) {
        monitor.stage(partition, stage);
        let since = Utc::now().timestamp_millis() - i64::try_from(ago.as_millis()).unwrap();
        monitor
            .state(partition)
            .unwrap()
            .stage_since_ms
            .store(since, Relaxed);
    }

    #[test]
    fn a_step_that_outlives_the_limit_is_reported_once_per_entry() {
        let monitor = Monitor::new("w".into(), 3);
        entered(&monitor, 0, Stage::Acking, Duration::from_secs(31));
        entered(&monitor, 1, Stage::Applying, Duration::from_secs(5));
        entered(&monitor, 2, Stage::Opening, Duration::from_secs(40));
        let stuck: Vec<(u16, Stage)> = monitor
            .stuck(STUCK_AFTER)
            .into_iter()
            .map(|(p, s, lasted)| {
                assert!(lasted > STUCK_AFTER);
                (p, s)
            })
            .collect();
        assert_eq!(stuck, [(0, Stage::Acking), (2, Stage::Opening)]);
        // Reported already: not again while it is the same entry.
        assert!(monitor.stuck(STUCK_AFTER).is_empty());
        // A new entry into a step is a new report once it outlives the limit.
        entered(&monitor, 0, Stage::Applying, Duration::from_secs(35));
        let again: Vec<u16> = monitor.stuck(STUCK_AFTER).iter().map(|s| s.0).collect();
        assert_eq!(again, [0]);
    }

    #[test]
    fn waiting_for_deliveries_or_stopped_is_never_stuck() {
        let monitor = Monitor::new("w".into(), 2);
        entered(&monitor, 0, Stage::Waiting, Duration::from_secs(3600));
        entered(&monitor, 1, Stage::Stopped, Duration::from_secs(3600));
        assert!(monitor.stuck(STUCK_AFTER).is_empty());
    }

    #[test]
    fn every_stage_label_is_one_the_watchdog_can_report() {
        for stage in Stage::ALL {
            let reportable = !matches!(stage, Stage::Stopped | Stage::Waiting);
            assert_eq!(
                Stage::STUCK_LABELS.contains(&stage.as_str()),
                reportable,
                "{stage:?}"
            );
            assert_eq!(Stage::from_u8(stage as u8), stage);
        }
    }
}
