//! The partitions panel: per partition the broker's queue depth and consumer count (passive
//! declares), the worker that is active on it and the standbys (the workers' heartbeats in
//! `worker_partitions`), messages/s and redeliveries (differences of the heartbeat counters), and
//! the backlog in PostgreSQL (unfinished commands and the oldest one's age).

use crate::state::AppState;
use chrono::{DateTime, Utc};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use orderflow_shared::db::dashboard::{self, WorkerPartition};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Heartbeats older than this are workers that stopped (they beat about once a second).
const LIVE_HEARTBEAT_SECS: f64 = 10.0;

#[derive(Debug, Serialize)]
pub struct PartitionsView {
    pub at: DateTime<Utc>,
    pub partitions: Vec<PartitionInfo>,
    /// Messages in the dead-letter queue (None: the broker did not answer).
    pub dead_letter_depth: Option<u32>,
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
    pub consumers: Option<u32>,
    /// The worker that got this partition's latest delivery (the single active consumer).
    pub active_worker: Option<String>,
    /// Every live worker with a consumer on the queue (the active one and the standbys).
    pub workers: Vec<String>,
    pub messages_per_s: f64,
    /// Redelivered messages since the live workers started.
    pub redeliveries: i64,
    pub pending: i64,
    pub oldest_pending_age_secs: f64,
    pub last_delivery_at: Option<DateTime<Utc>>,
}

/// A heartbeat row's key: (worker, partition).
type HeartbeatKey = (String, i32);

/// The heartbeat counters of the previous snapshot, for rates: when, and deliveries so far.
#[derive(Clone, Default)]
pub struct RateMemory(Arc<Mutex<HashMap<HeartbeatKey, (Instant, i64)>>>);

impl RateMemory {
    /// Deliveries per second of this heartbeat row since the last call (0 on the first).
    fn rate(&self, row: &WorkerPartition, now: Instant) -> f64 {
        let mut seen = self.0.lock().expect("not poisoned");
        let previous = seen.insert((row.worker.clone(), row.partition), (now, row.delivered));
        match previous {
            Some((at, delivered)) if now > at => {
                (row.delivered - delivered).max(0) as f64 / now.duration_since(at).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

pub async fn snapshot(state: &AppState) -> anyhow::Result<PartitionsView> {
    let topology = &state.topology;
    let heartbeats = dashboard::worker_partitions(&state.db, LIVE_HEARTBEAT_SECS).await?;
    let backlog = dashboard::partition_backlog(&state.db).await?;
    let mut queues: Vec<String> = (0..topology.partitions)
        .map(|p| topology.partition_queue(p))
        .collect();
    queues.push(topology.dead_letter_queue());
    let depths = queue_depths(state, &queues).await;

    let now = Instant::now();
    let partitions = (0..topology.partitions)
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
            let (depth, consumers) = depths
                .as_ref()
                .and_then(|d| d.get(p as usize).copied())
                .map_or((None, None), |(d, c)| (Some(d), Some(c)));
            PartitionInfo {
                partition: p,
                queue: topology.partition_queue(p),
                depth,
                consumers,
                active_worker: active.map(|h| h.worker.clone()),
                workers: consuming.iter().map(|h| h.worker.clone()).collect(),
                messages_per_s: rows.iter().map(|h| state.hub.rates.rate(h, now)).sum(),
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
            .and_then(|d| d.get(topology.partitions as usize).map(|(depth, _)| *depth)),
    })
}

/// (ready messages, consumers) of each queue, in order; None if the broker cannot be asked.
async fn queue_depths(state: &AppState, queues: &[String]) -> Option<Vec<(u32, u32)>> {
    let connection = state.publisher.pool().get().await.ok()?;
    let channel = connection.create_channel().await.ok()?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let mut depths = Vec::with_capacity(queues.len());
    for queue in queues {
        // A missing queue closes the channel (404): then the broker view is simply unknown.
        let declared = channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .ok()?;
        depths.push((declared.message_count(), declared.consumer_count()));
    }
    let _ = channel.close(200, "done".into()).await;
    Some(depths)
}
