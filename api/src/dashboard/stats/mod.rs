//! The contention and throughput figures the dashboard plots: a sliding minute of finished
//! commands and idempotency events, reduced once a second to rates, latency percentiles (HDR
//! histogram), conflicts by reason, the hottest orders and SKUs, and the alerts that are on.
//! Pure: no IO, so it is unit-tested here.
//!
//! | module | what |
//! |---|---|
//! | this one | the sliding minute ([`Window`]) and what it reduces to each second |
//! | `frame` | the statistics frame and the charts' points, as sent |
//! | `latency` | latency percentiles |
//! | `alerts` | the alerts that are on |

mod alerts;
mod frame;
mod latency;
#[cfg(test)]
mod tests;

use super::hub::{IdempotencyEvent, Thresholds};
use orderflow_storage::dashboard::{FinishedCommand, Gauges};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub use frame::{Alert, EditConflicts, HotOrder, HotSku, Latency, Point, Stats};
use latency::percentiles;

/// How far back the contention figures look.
const WINDOW: Duration = Duration::from_secs(60);
/// How far back the rates and percentiles look.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Rejection reasons that mean "another command won a race for the same thing".
pub const CONFLICT_REASONS: [&str; 3] = [
    "version_conflict",
    "insufficient_stock",
    "invalid_transition",
];
/// Entries in the hottest-orders and hottest-SKUs lists.
const TOP: usize = 5;

/// One finished command, as much of it as the figures need.
#[derive(Clone, Debug)]
pub struct Sample {
    pub seen: Instant,
    pub status: String,
    pub reason: Option<String>,
    pub order_id: Uuid,
    /// The order's SKUs if this was a reserve (the stock race), else empty.
    pub reserved_skus: Vec<String>,
    /// accept → final status, milliseconds.
    pub latency_ms: Option<f64>,
    /// Made by a person on the desk (an `operator:` actor), not by an API client.
    pub by_operator: bool,
}

impl Sample {
    pub fn of(command: &FinishedCommand) -> Self {
        Self {
            seen: Instant::now(),
            status: command.status.clone(),
            reason: command.reason.clone(),
            order_id: command.order_id,
            reserved_skus: if command.kind == "reserve" {
                command.skus.clone()
            } else {
                Vec::new()
            },
            latency_ms: command
                .finished_at
                .map(|f| (f - command.accepted_at).num_microseconds().unwrap_or(0) as f64 / 1000.0),
            by_operator: command
                .actor
                .as_deref()
                .is_some_and(|a| a.starts_with("operator:")),
        }
    }

    /// An edit that lost to a change made after the version it named.
    fn is_edit_conflict(&self) -> bool {
        self.reason.as_deref() == Some("version_conflict")
    }

    fn is_conflict(&self) -> bool {
        self.reason
            .as_deref()
            .is_some_and(|r| CONFLICT_REASONS.contains(&r))
    }
}

#[derive(Default)]
pub struct Window {
    samples: VecDeque<Sample>,
    /// Idempotency events: when seen, their kind and their order.
    idempotency: VecDeque<(Instant, String, Uuid)>,
    /// When the last frame was made: the next one counts what was seen since, over the time
    /// since. A tick that comes late (a busy machine: the ticker skips missed ticks) then spreads
    /// what it missed over its longer span instead of dropping it; a fixed one-second window
    /// counted nothing seen between one second after a frame and a late next one.
    last_frame: Option<Instant>,
}

impl Window {
    pub fn record(&mut self, sample: Sample) {
        self.samples.push_back(sample);
    }

    pub fn record_idempotency(&mut self, event: &IdempotencyEvent) {
        self.idempotency
            .push_back((Instant::now(), event.kind.clone(), event.order_id));
    }

    fn prune(&mut self, now: Instant) {
        while self
            .samples
            .front()
            .is_some_and(|s| now.duration_since(s.seen) > WINDOW)
        {
            self.samples.pop_front();
        }
        while self
            .idempotency
            .front()
            .is_some_and(|(at, ..)| now.duration_since(*at) > WINDOW)
        {
            self.idempotency.pop_front();
        }
    }

    pub fn stats(
        &mut self,
        accepted_per_s: Option<f64>,
        gauges: &Gauges,
        partition_lag_secs: Option<f64>,
        thresholds: &Thresholds,
    ) -> Stats {
        self.stats_at(
            Instant::now(),
            accepted_per_s,
            gauges,
            partition_lag_secs,
            thresholds,
        )
    }

    fn stats_at(
        &mut self,
        now: Instant,
        accepted_per_s: Option<f64>,
        gauges: &Gauges,
        partition_lag_secs: Option<f64>,
        thresholds: &Thresholds,
    ) -> Stats {
        self.prune(now);
        // Each sample in exactly one frame: seen after the last frame (or, for the first, within
        // the last second), up to now.
        let since = self.last_frame.filter(|&at| at < now && now - at <= WINDOW);
        self.last_frame = Some(now);
        let span = since.map_or(RATE_WINDOW, |at| now - at);
        let recent: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| match since {
                Some(at) => s.seen > at && s.seen <= now,
                None => now.duration_since(s.seen) <= RATE_WINDOW,
            })
            .collect();
        let per_s = |status: &str| {
            recent.iter().filter(|s| s.status == status).count() as f64 / span.as_secs_f64()
        };
        let mut rejections = HashMap::new();
        for s in recent.iter().filter(|s| s.status == "rejected") {
            *rejections
                .entry(s.reason.clone().unwrap_or_default())
                .or_default() += 1;
        }

        let mut conflicts: HashMap<String, usize> = HashMap::new();
        let mut orders: HashMap<Uuid, (usize, usize)> = HashMap::new();
        let mut skus: HashMap<&str, (usize, usize)> = HashMap::new();
        for s in &self.samples {
            let conflict = s.is_conflict();
            if conflict {
                *conflicts
                    .entry(s.reason.clone().unwrap_or_default())
                    .or_default() += 1;
            }
            let entry = orders.entry(s.order_id).or_default();
            entry.0 += 1;
            entry.1 += usize::from(conflict);
            let lost = s.reason.as_deref() == Some("insufficient_stock");
            for sku in &s.reserved_skus {
                let entry = skus.entry(sku).or_default();
                entry.0 += 1;
                entry.1 += usize::from(lost);
            }
        }
        let count_idempotency = |kind: &str| {
            self.idempotency
                .iter()
                .filter(|(_, k, _)| k == kind)
                .count()
        };
        let mismatches = count_idempotency("idempotency_mismatch");
        if mismatches > 0 {
            conflicts.insert("idempotency_mismatch".into(), mismatches);
        }
        let edit_conflicts = EditConflicts {
            operators: self
                .samples
                .iter()
                .filter(|s| s.is_edit_conflict() && s.by_operator)
                .count(),
            api: self
                .samples
                .iter()
                .filter(|s| s.is_edit_conflict() && !s.by_operator)
                .count(),
        };
        let finished = self.samples.len();
        let race_conflicts = self.samples.iter().filter(|s| s.is_conflict()).count();
        let conflict_rate = (finished > 0).then(|| race_conflicts as f64 / finished as f64);

        let mut hot_orders: Vec<HotOrder> = orders
            .into_iter()
            .map(|(order_id, (commands, conflicts))| HotOrder {
                order_id,
                commands,
                conflicts,
            })
            .collect();
        // Hottest: the most races lost, then the most commands.
        hot_orders.sort_by(|a, b| {
            (b.conflicts, b.commands, a.order_id).cmp(&(a.conflicts, a.commands, b.order_id))
        });
        hot_orders.truncate(TOP);
        let mut hot_skus: Vec<HotSku> = skus
            .into_iter()
            .map(|(sku, (reserves, lost))| HotSku {
                sku: sku.to_owned(),
                reserves,
                lost,
            })
            .collect();
        hot_skus.sort_by(|a, b| (b.lost, b.reserves, &a.sku).cmp(&(a.lost, a.reserves, &b.sku)));
        hot_skus.truncate(TOP);

        let alerts = alerts::alerts(
            conflict_rate,
            finished,
            gauges,
            partition_lag_secs,
            thresholds,
        );

        Stats {
            at: chrono::Utc::now(),
            accepted_per_s,
            applied_per_s: per_s("applied"),
            rejected_per_s: per_s("rejected"),
            failed_per_s: per_s("failed"),
            latency_ms: percentiles(recent.iter().filter_map(|s| s.latency_ms)),
            rejections,
            conflicts,
            conflict_rate,
            edit_conflicts,
            finished_last_minute: finished,
            hot_orders,
            hot_skus,
            idempotent_replays: count_idempotency("replay"),
            idempotency_mismatches: mismatches,
            deadlocks: gauges.deadlocks,
            lock_waits: gauges.lock_waits,
            outbox_backlog: gauges.outbox_backlog,
            outbox_oldest_age_secs: gauges.outbox_oldest_age_secs,
            dead_letters_open: gauges.dead_letters_open,
            partition_lag_secs,
            alerts,
        }
    }
}
