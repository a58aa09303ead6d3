//! The partitions panel: per partition the broker's queue depth and consumers (passive
//! declares), the worker that is active on it and the standbys (the workers' heartbeats in
//! `worker_partitions`), the lease (owner, epoch, state, takes in the last hour), messages/s and redeliveries (differences of the heartbeat counters), and
//! the backlog in PostgreSQL (unfinished commands and the oldest one's age); and the dead letters
//! still open.
//!
//! Consumers: over AMQP the broker reports only the *active* consumer of a single-active-consumer
//! queue (0 or 1), while it holds the standbys too (`rabbitmqctl list_consumers`, the management
//! UI). The panel's count is the broker's whole count: none if the broker has no active consumer
//! (then it has none at all), else the workers that heartbeat a consumer on the queue (at least
//! the broker's one). A worker that died without a word counts until its heartbeat is stale.

use crate::state::AppState;
use chrono::{DateTime, Utc};
use orderflow_messaging as amqp;
use orderflow_storage::dashboard::{self, WorkerPartition};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Heartbeats older than this are workers that stopped (they beat about once a second).
const LIVE_HEARTBEAT_SECS: f64 = 10.0;

#[derive(Debug, Serialize)]
pub struct PartitionsView {
    pub at: DateTime<Utc>,
    pub partitions: Vec<PartitionInfo>,
    /// Messages in the dead-letter queue (None: the broker did not answer). The queue keeps
    /// every dead letter, redriven or not: [`Self::dead_letters_open`] is what needs someone.
    pub dead_letter_depth: Option<u32>,
    /// Dead letters neither redriven nor acknowledged.
    pub dead_letters_open: i64,
}

impl PartitionsView {
    /// The largest age of a partition's oldest unfinished command.
    pub fn max_lag_secs(&self) -> f64 {
        self.partitions
            .iter()
            .map(|p| p.oldest_pending_age_secs)
            .fold(0.0, f64::max)
    }
}

#[derive(Debug, Serialize)]
pub struct PartitionInfo {
    pub partition: u16,
    pub queue: String,
    /// Ready messages in the queue (None: the broker did not answer).
    pub depth: Option<u32>,
    /// Every consumer on the queue, the active one and the standbys (None: the broker did not
    /// answer).
    pub consumers: Option<u32>,
    /// The consumers the broker delivers to: 1, or 0 with no consumer at all.
    pub active_consumers: Option<u32>,
    /// The worker that got this partition's latest delivery (the single active consumer).
    pub active_worker: Option<String>,
    /// Every live worker with a consumer on the queue (the active one and the standbys).
    pub workers: Vec<String>,
    /// The worker holding the partition's lease (None: free), the only one that may write for
    /// it, and the lease's epoch (bumped by every take).
    pub owner: Option<String>,
    pub epoch: i64,
    /// active, draining (its owner is finishing what it holds before a hand-over) or free.
    pub lease_state: String,
    /// Takes of the lease in the last hour.
    pub moves_last_hour: i64,
    /// None until measured (two heartbeats of every worker on it, a second apart at least).
    pub messages_per_s: Option<f64>,
    /// Redelivered messages since the live workers started.
    pub redeliveries: i64,
    pub pending: i64,
    pub oldest_pending_age_secs: f64,
    pub last_delivery_at: Option<DateTime<Utc>>,
}

/// A heartbeat row's key: (worker, partition).
type HeartbeatKey = (String, i32);

/// Rates are taken over at least this long (a snapshot asked for between two ticks answers the
/// rate measured last, rather than one over a few milliseconds).
const MIN_RATE_SPAN: Duration = Duration::from_secs(1);

/// Per heartbeat row: when its counter was last sampled, the count then, and the rate measured
/// at that sample (None: sampled once only).
type RateSample = (Instant, i64, Option<f64>);

/// The heartbeat counters of earlier snapshots, for rates.
#[derive(Clone, Default)]
pub struct RateMemory(Arc<Mutex<HashMap<HeartbeatKey, RateSample>>>);

impl RateMemory {
    /// Deliveries per second of this heartbeat row; None until it was seen twice.
    fn rate(&self, row: &WorkerPartition, now: Instant) -> Option<f64> {
        let mut seen = self.0.lock().expect("not poisoned");
        let key = (row.worker.clone(), row.partition);
        match seen.get(&key).copied() {
            Some((at, _, rate)) if now.duration_since(at) < MIN_RATE_SPAN => rate,
            Some((at, delivered, _)) => {
                let rate = (row.delivered - delivered).max(0) as f64
                    / now.duration_since(at).as_secs_f64();
                seen.insert(key, (now, row.delivered, Some(rate)));
                Some(rate)
            }
            None => {
                seen.insert(key, (now, row.delivered, None));
                None
            }
        }
    }
}

pub async fn snapshot(state: &AppState) -> anyhow::Result<PartitionsView> {
    let topology = &state.topology;
    let count = state.layout.get().partitions();
    let heartbeats = dashboard::worker_partitions(&state.db, LIVE_HEARTBEAT_SECS).await?;
    let backlog = dashboard::partition_backlog(&state.db).await?;
    let mut queues: Vec<String> = (0..count).map(|p| topology.partition_queue(p)).collect();
    queues.push(topology.dead_letter_queue());
    let depths = queue_depths(state, &queues).await;
    let dead_letters_open = dashboard::open_dead_letters(&state.db).await?;
    let leases = orderflow_storage::leases::overview(&state.db).await?;

    let now = Instant::now();
    let partitions = (0..count)
        .map(|p| {
            let rows: Vec<&WorkerPartition> = heartbeats
                .iter()
                .filter(|h| h.partition == i32::from(p))
                .collect();
            // The single active consumer is the one that got the latest delivery; before any
            // delivery, a lone consumer is the active one.
            let consuming: Vec<&&WorkerPartition> = rows.iter().filter(|h| h.consuming).collect();
            let active = rows
                .iter()
                .filter(|h| h.last_delivery_at.is_some())
                .max_by_key(|h| h.last_delivery_at)
                .or(match consuming.as_slice() {
                    [only] => Some(*only),
                    _ => None,
                });
            let backlog = backlog.iter().find(|b| b.partition == i32::from(p));
            let lease = leases.iter().find(|l| l.partition == i32::from(p));
            let (depth, active_consumers) = depths
                .as_ref()
                .and_then(|d| d.get(p as usize).copied())
                .map_or((None, None), |(d, c)| (Some(d), Some(c)));
            let heartbeating = u32::try_from(consuming.len()).unwrap_or(u32::MAX);
            let consumers = active_consumers.map(|active| {
                if active == 0 {
                    0
                } else {
                    active.max(heartbeating)
                }
            });
            // A rate is known once every worker on the partition has been measured (none
            // heartbeating: no one reports, so nothing is known).
            let rates: Option<Vec<f64>> =
                rows.iter().map(|h| state.hub.rates.rate(h, now)).collect();
            let messages_per_s = rates.filter(|r| !r.is_empty()).map(|r| r.iter().sum());
            PartitionInfo {
                partition: p,
                queue: topology.partition_queue(p),
                depth,
                consumers,
                active_consumers,
                active_worker: active.map(|h| h.worker.clone()),
                workers: consuming.iter().map(|h| h.worker.clone()).collect(),
                owner: lease.and_then(|l| l.owner.clone()),
                epoch: lease.map_or(0, |l| l.epoch),
                lease_state: lease.map_or_else(|| "free".to_owned(), |l| l.state.clone()),
                moves_last_hour: lease.map_or(0, |l| l.moves_last_hour),
                messages_per_s,
                redeliveries: rows.iter().map(|h| h.redelivered).sum(),
                pending: backlog.map_or(0, |b| b.pending),
                oldest_pending_age_secs: backlog.map_or(0.0, |b| b.oldest_age_secs),
                last_delivery_at: active.and_then(|h| h.last_delivery_at),
            }
        })
        .collect();
    Ok(PartitionsView {
        at: Utc::now(),
        partitions,
        dead_letter_depth: depths
            .as_ref()
            .and_then(|d| d.get(usize::from(count)).map(|(depth, _)| *depth)),
        dead_letters_open,
    })
}

/// (ready messages, consumers) of each queue, in order; None if the broker cannot be asked.
async fn queue_depths(state: &AppState, queues: &[String]) -> Option<Vec<(u32, u32)>> {
    let connection = state.publisher.pool().get().await.ok()?;
    let channel = amqp::open_channel(&connection).await.ok()?;
    let mut depths = Vec::with_capacity(queues.len());
    for queue in queues {
        // A missing queue closes the channel (404): then the broker view is simply unknown.
        let depth = amqp::queue_depth(&channel, queue).await.ok()?;
        depths.push((depth.ready, depth.consumers));
    }
    let _ = amqp::answered("closing a channel", channel.close(200, "done".into())).await;
    Some(depths)
}
