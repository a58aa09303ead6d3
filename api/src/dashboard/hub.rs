//! The dashboard's live feed: one per API process, shared by every open dashboard.
//!
//! It listens to PostgreSQL (`LISTEN`) for commands reaching their final status (the worker's
//! `pg_notify` in its apply transaction) and for the API instances' idempotency events, fetches
//! the finished commands and their orders in batches (every [`BATCH_EVERY`]), and fans them out as
//! SSE frames. Once a second it also sends a statistics frame (rates, latency percentiles, conflicts
//! by reason, the hottest orders and SKUs, alerts), and every two seconds a partitions frame.
//!
//! It keeps the last five minutes of statistics ([`HISTORY`]) so that a page that opens draws its
//! charts from them at once (`GET /dashboard/api/stats/history`).
//!
//! It only queries while someone watches, and for [`HISTORY`] after the last one left (so that a
//! page opened again soon finds no hole in its charts): otherwise it keeps listening (so
//! idempotency conflicts stay on the order timelines) but fetches nothing.

use super::partitions::{self, RateMemory};
use super::stats::{Point, Sample, Window};
use crate::state::AppState;
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_runtime::tasks::Tasks;
use orderflow_storage::listen::{Listener, Notice};
use orderflow_storage::{self as db, dashboard, presence};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use uuid::Uuid;

/// LISTEN/NOTIFY channel of the API instances' idempotency events (replays and mismatches), so
/// that every instance's dashboard sees every instance's conflicts. Nothing is stored. (The
/// channel keeps its older name, so that instances of different versions still hear each other.)
pub const IDEMPOTENCY_EVENTS_CHANNEL: &str = "orderflow_http_events";
/// How often finished commands are fetched and sent, at most.
const BATCH_EVERY: Duration = Duration::from_millis(200);
/// Idempotency events kept in memory for the order timelines.
const IDEMPOTENCY_EVENTS_KEPT: usize = 10_000;
/// Frames a slow dashboard may fall behind by before it skips ahead.
const FEED_CAPACITY: usize = 4096;
/// How far back the charts reach, and how long the hub goes on after the last viewer left.
const HISTORY: Duration = Duration::from_secs(300);

/// One SSE frame, serialized once for every subscriber.
#[derive(Debug)]
pub struct Frame {
    pub event: &'static str,
    pub data: String,
}

/// An idempotency event of the HTTP API (a replay or a mismatch), as broadcast between
/// instances, kept for the order timelines and sent to the dashboards as a `conflict` frame.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdempotencyEvent {
    /// `replay` or `idempotency_mismatch`.
    pub kind: String,
    pub at: chrono::DateTime<chrono::Utc>,
    pub client_id: Uuid,
    pub order_id: Uuid,
    /// The command that holds the key (the winner of a mismatch).
    pub command_id: Uuid,
}

/// Alert thresholds of the contention panel (banners).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Thresholds {
    /// Share of the last minute's finished commands rejected for a conflict.
    pub conflict_rate: f64,
    /// Age of the oldest outbox row, seconds.
    pub outbox_lag_secs: f64,
    /// Age of a partition's oldest unfinished command, seconds.
    pub partition_lag_secs: f64,
}

#[derive(Clone)]
pub struct Hub {
    feed: broadcast::Sender<Arc<Frame>>,
    idempotency_events: Arc<Mutex<VecDeque<IdempotencyEvent>>>,
    window: Arc<Mutex<Window>>,
    pub thresholds: Thresholds,
    /// Heartbeat counters of the last partitions snapshot (messages/s).
    pub rates: RateMemory,
    /// The statistics of the last [`HISTORY`], oldest first.
    history: Arc<Mutex<VecDeque<Arc<Point>>>>,
    /// When someone last watched (None: nobody yet).
    last_watched: Arc<Mutex<Option<Instant>>>,
}

impl Hub {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            feed: broadcast::channel(FEED_CAPACITY).0,
            idempotency_events: Arc::default(),
            window: Arc::default(),
            thresholds,
            rates: RateMemory::default(),
            history: Arc::default(),
            last_watched: Arc::default(),
        }
    }

    /// Starts listening and ticking until `shutdown`.
    pub fn start(&self, tasks: &mut Tasks, state: AppState, shutdown: CancellationToken) {
        tasks.spawn(
            "dashboard feed",
            listen(self.clone(), state.clone(), shutdown.clone()),
        );
        tasks.spawn(
            "desk presence sweep",
            super::presence::sweep(state.clone(), shutdown.clone()),
        );
        tasks.spawn("dashboard ticks", tick(self.clone(), state, shutdown));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Frame>> {
        self.feed.subscribe()
    }

    /// Does anyone watch, or did anyone in the last [`HISTORY`]?
    fn watched(&self) -> bool {
        let mut last = self.last_watched.lock().expect("not poisoned");
        if self.feed.receiver_count() > 0 {
            *last = Some(Instant::now());
            return true;
        }
        last.is_some_and(|at| at.elapsed() < HISTORY)
    }

    /// The statistics of the last five minutes, oldest first.
    pub fn history(&self) -> Vec<Arc<Point>> {
        let mut history = self.history.lock().expect("not poisoned");
        prune_history(&mut history);
        history.iter().cloned().collect()
    }

    fn keep(&self, point: Point) {
        let mut history = self.history.lock().expect("not poisoned");
        history.push_back(Arc::new(point));
        prune_history(&mut history);
    }

    fn send(&self, event: &'static str, data: &impl Serialize) {
        if let Ok(data) = serde_json::to_string(data) {
            let _ = self.feed.send(Arc::new(Frame { event, data }));
        }
    }

    /// The idempotency events about one order still in memory, oldest first.
    pub fn idempotency_events_of(&self, order_id: Uuid) -> Vec<IdempotencyEvent> {
        let events = self.idempotency_events.lock().expect("not poisoned");
        events
            .iter()
            .filter(|e| e.order_id == order_id)
            .cloned()
            .collect()
    }

    fn remember(&self, event: IdempotencyEvent) {
        let mut events = self.idempotency_events.lock().expect("not poisoned");
        if events.len() == IDEMPOTENCY_EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(event);
    }
}

/// Tells every API instance (this one included) about an idempotency event. Best effort: a
/// dashboard detail must never fail the request it describes.
pub async fn announce(db: &sqlx::PgPool, event: &IdempotencyEvent) {
    let payload = serde_json::to_string(event).expect("an event serializes");
    if let Err(e) = db::dashboard::notify(db, IDEMPOTENCY_EVENTS_CHANNEL, &payload).await {
        tracing::debug!(error = %e, "could not announce an idempotency event to the dashboards");
    }
}

fn prune_history(history: &mut VecDeque<Arc<Point>>) {
    let oldest = chrono::Utc::now()
        - chrono::Duration::from_std(HISTORY).expect("five minutes fit a chrono duration");
    while history.front().is_some_and(|p| p.at < oldest) {
        history.pop_front();
    }
}

async fn listen(hub: Hub, state: AppState, shutdown: CancellationToken) {
    let mut listener = Listener::new(
        state.db.clone(),
        &[
            db::COMMAND_DONE_CHANNEL,
            IDEMPOTENCY_EVENTS_CHANNEL,
            presence::PRESENCE_CHANNEL,
        ],
    );
    let mut finished: Vec<Uuid> = Vec::new();
    // Orders whose presence changed since the last flush (a set: one frame per order).
    let mut present: Vec<Uuid> = Vec::new();
    let mut flush = tokio::time::interval(BATCH_EVERY);
    loop {
        tokio::select! {
            notice = listener.next() => match notice {
                Notice::Notification { channel, payload } if channel == IDEMPOTENCY_EVENTS_CHANNEL => {
                    if let Ok(event) = serde_json::from_str::<IdempotencyEvent>(&payload) {
                        hub.remember(event.clone());
                        hub.window.lock().expect("not poisoned").record_idempotency(&event);
                        hub.send("conflict", &event);
                    }
                }
                Notice::Notification { channel, payload } if channel == presence::PRESENCE_CHANNEL => {
                    if hub.watched() && let Ok(id) = payload.parse::<Uuid>() && !present.contains(&id) {
                        present.push(id);
                    }
                }
                Notice::Notification { payload, .. } => {
                    if hub.watched() && let Ok(id) = payload.parse::<Uuid>() {
                        finished.push(id);
                    }
                }
                // A live feed: what finished while the connection was down is not replayed.
                Notice::Listening | Notice::Lost => {}
            },
            _ = flush.tick(), if !finished.is_empty() || !present.is_empty() => {
                let batch = std::mem::take(&mut finished);
                if !batch.is_empty() && let Err(e) = publish_finished(&hub, &state, &batch).await {
                    tracing::warn!(error = %e, "dashboard feed could not read finished commands");
                }
                let orders = std::mem::take(&mut present);
                if !orders.is_empty() {
                    match presence::of_orders(&state.db, &orders).await {
                        Ok(all) => all.iter().for_each(|p| hub.send("presence", p)),
                        Err(e) => tracing::warn!(error = %e, "dashboard feed could not read presence"),
                    }
                }
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Sends the finished commands and their orders' new rows, and feeds the statistics window.
async fn publish_finished(hub: &Hub, state: &AppState, ids: &[Uuid]) -> sqlx::Result<()> {
    let commands = dashboard::finished_commands(&state.db, ids).await?;
    let mut order_ids: Vec<Uuid> = commands.iter().map(|c| c.order_id).collect();
    order_ids.sort_unstable();
    order_ids.dedup();
    let orders = dashboard::orders_by_id(&state.db, &order_ids).await?;
    {
        let mut window = hub.window.lock().expect("not poisoned");
        for command in &commands {
            window.record(Sample::of(command));
        }
    }
    for command in &commands {
        hub.send("command", command);
    }
    for order in &orders {
        hub.send("order", order);
    }
    Ok(())
}

/// The statistics frame every second and the partitions frame every other second, while watched.
async fn tick(hub: Hub, state: AppState, shutdown: CancellationToken) {
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut previous_inserted: Option<(i64, std::time::Instant)> = None;
    let mut partitions_due = true;
    let mut partition_lag: Option<f64> = None;
    loop {
        tokio::select! {
            _ = every_second.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if !hub.watched() {
            previous_inserted = None;
            continue;
        }
        if partitions_due {
            match partitions::snapshot(&state).await {
                Ok(view) => {
                    hub.send("partitions", &view);
                    partition_lag = Some(view.max_lag_secs());
                }
                Err(e) => tracing::warn!(error = %e, "dashboard could not read the partitions"),
            }
        }
        partitions_due = !partitions_due;
        match dashboard::gauges(&state.db).await {
            Ok(gauges) => {
                let now = std::time::Instant::now();
                let accepted_per_s = previous_inserted.map(|(before, at)| {
                    (gauges.commands_inserted - before).max(0) as f64
                        / now.duration_since(at).as_secs_f64().max(0.001)
                });
                previous_inserted = Some((gauges.commands_inserted, now));
                let stats = hub.window.lock().expect("not poisoned").stats(
                    accepted_per_s,
                    &gauges,
                    partition_lag,
                    &hub.thresholds,
                );
                hub.keep(Point::of(&stats));
                hub.send("stats", &stats);
            }
            Err(e) => tracing::warn!(error = %e, "dashboard could not read the gauges"),
        }
    }
}
