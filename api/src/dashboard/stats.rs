//! The contention and throughput figures the dashboard plots: a sliding minute of finished
//! commands and idempotency events, reduced once a second to rates, latency percentiles (HDR
//! histogram), conflicts by reason, the hottest orders and SKUs, and the alerts that are on.
//! Pure: no IO, so it is unit-tested here.

use super::hub::{HttpEvent, Thresholds};
use hdrhistogram::Histogram;
use orderflow_storage::dashboard::{FinishedCommand, Gauges};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use uuid::Uuid;

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
/// Fewer finished commands than this in the window raise no conflict-rate alert (noise).
const MIN_FOR_RATE_ALERT: usize = 20;
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
        }
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
    http: VecDeque<(Instant, String, Uuid)>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
pub struct HotOrder {
    pub order_id: Uuid,
    pub commands: usize,
    pub conflicts: usize,
}

#[derive(Debug, Serialize)]
pub struct HotSku {
    pub sku: String,
    pub reserves: usize,
    /// Reserves that found too little stock.
    pub lost: usize,
}

#[derive(Debug, Serialize)]
pub struct Alert {
    pub kind: &'static str,
    pub message: String,
}

/// The statistics frame.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub at: chrono::DateTime<chrono::Utc>,
    /// Commands recorded per second, cluster-wide (None on the first frame).
    pub accepted_per_s: Option<f64>,
    pub applied_per_s: f64,
    pub rejected_per_s: f64,
    pub failed_per_s: f64,
    /// accept → final status over the last second (None if nothing finished).
    pub latency_ms: Option<Latency>,
    /// Rejections of the last second by reason.
    pub rejections: HashMap<String, usize>,
    /// Conflicts of the last minute by reason (idempotency mismatches included).
    pub conflicts: HashMap<String, usize>,
    /// Share of the last minute's finished commands rejected for a conflict (None: nothing
    /// finished in the last minute, so there is no rate).
    pub conflict_rate: Option<f64>,
    pub finished_last_minute: usize,
    pub hot_orders: Vec<HotOrder>,
    pub hot_skus: Vec<HotSku>,
    pub idempotent_replays: usize,
    pub idempotency_mismatches: usize,
    pub deadlocks: i64,
    pub lock_waits: i64,
    pub outbox_backlog: i64,
    pub outbox_oldest_age_secs: f64,
    pub dead_letters_open: i64,
    pub partition_lag_secs: Option<f64>,
    pub alerts: Vec<Alert>,
}

/// One second of the series the charts plot (a statistics frame, less its lists): what
/// `GET /dashboard/api/stats/history` serves, so that a page opens with the last five minutes.
#[derive(Debug, Serialize)]
pub struct Point {
    pub at: chrono::DateTime<chrono::Utc>,
    pub accepted_per_s: Option<f64>,
    pub applied_per_s: f64,
    pub rejected_per_s: f64,
    pub failed_per_s: f64,
    pub latency_ms: Option<Latency>,
    pub rejections: HashMap<String, usize>,
}

impl Point {
    pub fn of(stats: &Stats) -> Self {
        Self {
            at: stats.at,
            accepted_per_s: stats.accepted_per_s,
            applied_per_s: stats.applied_per_s,
            rejected_per_s: stats.rejected_per_s,
            failed_per_s: stats.failed_per_s,
            latency_ms: stats.latency_ms.clone(),
            rejections: stats.rejections.clone(),
        }
    }
}

impl Window {
    pub fn record(&mut self, sample: Sample) {
        self.samples.push_back(sample);
    }

    pub fn record_http(&mut self, event: &HttpEvent) {
        self.http
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
            .http
            .front()
            .is_some_and(|(at, ..)| now.duration_since(*at) > WINDOW)
        {
            self.http.pop_front();
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
        let recent: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| now.duration_since(s.seen) <= RATE_WINDOW)
            .collect();
        let per_s = |status: &str| {
            recent.iter().filter(|s| s.status == status).count() as f64 / RATE_WINDOW.as_secs_f64()
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
        let count_http = |kind: &str| self.http.iter().filter(|(_, k, _)| k == kind).count();
        let mismatches = count_http("idempotency_mismatch");
        if mismatches > 0 {
            conflicts.insert("idempotency_mismatch".into(), mismatches);
        }
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

        let mut alerts = Vec::new();
        if let Some(rate) = conflict_rate
            && finished >= MIN_FOR_RATE_ALERT
            && rate > thresholds.conflict_rate
        {
            alerts.push(Alert {
                kind: "conflict_rate",
                message: format!(
                    "{:.0} % of the last minute's {finished} commands lost a race (threshold {:.0} %)",
                    rate * 100.0,
                    thresholds.conflict_rate * 100.0
                ),
            });
        }
        if gauges.dead_letters_open > 0 {
            alerts.push(Alert {
                kind: "dead_letters",
                message: format!(
                    "{} dead-lettered message(s) not redriven",
                    gauges.dead_letters_open
                ),
            });
        }
        if gauges.outbox_oldest_age_secs > thresholds.outbox_lag_secs {
            alerts.push(Alert {
                kind: "outbox_lag",
                message: format!(
                    "the oldest unpublished event is {:.1} s old ({} waiting; threshold {} s)",
                    gauges.outbox_oldest_age_secs,
                    gauges.outbox_backlog,
                    thresholds.outbox_lag_secs
                ),
            });
        }
        if let Some(lag) = partition_lag_secs.filter(|lag| *lag > thresholds.partition_lag_secs) {
            alerts.push(Alert {
                kind: "partition_lag",
                message: format!(
                    "a partition's oldest unfinished command is {lag:.1} s old (threshold {} s)",
                    thresholds.partition_lag_secs
                ),
            });
        }

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
            finished_last_minute: finished,
            hot_orders,
            hot_skus,
            idempotent_replays: count_http("replay"),
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

/// The longest latency told apart (longer ones count as this long).
const HOUR_MICROS: u64 = 3_600_000_000;

/// p50/p90/p99/max of latencies in milliseconds, at microsecond resolution.
fn percentiles(latencies_ms: impl Iterator<Item = f64>) -> Option<Latency> {
    // Bounded explicitly: `new` starts tiny and `saturating_record` does not grow it, which
    // clamped every latency to the first bucket's top.
    let mut histogram = Histogram::<u64>::new_with_bounds(1, HOUR_MICROS, 3)
        .expect("1 µs to an hour at 3 significant figures is valid");
    for ms in latencies_ms {
        histogram.saturating_record((ms.max(0.0) * 1000.0) as u64);
    }
    if histogram.is_empty() {
        return None;
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    Some(Latency {
        p50: ms(histogram.value_at_quantile(0.50)),
        p90: ms(histogram.value_at_quantile(0.90)),
        p99: ms(histogram.value_at_quantile(0.99)),
        max: ms(histogram.max()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const THRESHOLDS: Thresholds = Thresholds {
        conflict_rate: 0.25,
        outbox_lag_secs: 5.0,
        partition_lag_secs: 10.0,
    };

    fn sample(
        at: Instant,
        status: &str,
        reason: Option<&str>,
        order: Uuid,
        skus: &[&str],
    ) -> Sample {
        Sample {
            seen: at,
            status: status.into(),
            reason: reason.map(Into::into),
            order_id: order,
            reserved_skus: skus.iter().map(|s| s.to_string()).collect(),
            latency_ms: Some(2.0),
        }
    }

    #[test]
    fn rates_count_only_the_last_second_and_conflicts_the_last_minute() {
        let now = Instant::now();
        let (hot, cold) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut window = Window::default();
        let old = now - Duration::from_secs(30);
        window.record(sample(old, "rejected", Some("version_conflict"), hot, &[]));
        window.record(sample(now, "applied", None, hot, &[]));
        window.record(sample(now, "rejected", Some("version_conflict"), hot, &[]));
        window.record(sample(now, "applied", None, cold, &[]));
        let stats = window.stats_at(now, Some(3.0), &Gauges::default(), None, &THRESHOLDS);
        assert_eq!((stats.applied_per_s, stats.rejected_per_s), (2.0, 1.0));
        assert_eq!(stats.rejections.get("version_conflict"), Some(&1));
        assert_eq!(stats.conflicts.get("version_conflict"), Some(&2));
        assert_eq!(stats.conflict_rate, Some(0.5));
        assert_eq!(stats.hot_orders[0].order_id, hot);
        assert_eq!(
            (stats.hot_orders[0].commands, stats.hot_orders[0].conflicts),
            (3, 2)
        );
        assert_eq!(stats.latency_ms.map(|l| l.p99), Some(2.0));
    }

    #[test]
    fn the_hottest_order_is_the_one_that_lost_the_most_races() {
        let now = Instant::now();
        let (busy, contended) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut window = Window::default();
        for _ in 0..5 {
            window.record(sample(now, "applied", None, busy, &[]));
        }
        window.record(sample(now, "applied", None, contended, &[]));
        window.record(sample(
            now,
            "rejected",
            Some("version_conflict"),
            contended,
            &[],
        ));
        let stats = window.stats_at(now, None, &Gauges::default(), None, &THRESHOLDS);
        let ranked: Vec<(Uuid, usize, usize)> = stats
            .hot_orders
            .iter()
            .map(|o| (o.order_id, o.commands, o.conflicts))
            .collect();
        assert_eq!(ranked, [(contended, 2, 1), (busy, 5, 0)]);
    }

    #[test]
    fn percentiles_cover_a_queue_that_took_many_seconds() {
        // 98 quick commands and two that waited behind a hot order for half a minute.
        let quick = std::iter::repeat_n(1.5, 98);
        let latency = percentiles(quick.chain([30_000.0, 37_449.0])).unwrap();
        assert!((latency.p50 - 1.5).abs() < 0.01, "{:?}", latency.p50);
        assert!((latency.p99 - 30_000.0).abs() < 30.0, "{:?}", latency.p99);
        assert!((latency.max - 37_449.0).abs() < 37.0, "{:?}", latency.max);
    }

    #[test]
    fn samples_older_than_a_minute_are_forgotten() {
        let now = Instant::now();
        let mut window = Window::default();
        window.record(sample(
            now - Duration::from_secs(61),
            "applied",
            None,
            Uuid::nil(),
            &[],
        ));
        let stats = window.stats_at(now, None, &Gauges::default(), None, &THRESHOLDS);
        assert_eq!(stats.finished_last_minute, 0);
        assert!(stats.latency_ms.is_none());
        assert_eq!(stats.conflict_rate, None, "no rate of nothing");
    }

    #[test]
    fn the_sku_that_loses_the_most_reserves_is_the_hottest() {
        let now = Instant::now();
        let mut window = Window::default();
        let o = Uuid::nil();
        window.record(sample(now, "applied", None, o, &["A", "B"]));
        window.record(sample(
            now,
            "rejected",
            Some("insufficient_stock"),
            o,
            &["B"],
        ));
        window.record(sample(now, "applied", None, o, &["A"]));
        let stats = window.stats_at(now, None, &Gauges::default(), None, &THRESHOLDS);
        assert_eq!(stats.hot_skus[0].sku, "B");
        assert_eq!((stats.hot_skus[0].reserves, stats.hot_skus[0].lost), (2, 1));
        assert_eq!(stats.hot_skus[1].sku, "A");
    }

    #[test]
    fn alerts_fire_only_past_their_thresholds() {
        let now = Instant::now();
        let mut window = Window::default();
        for i in 0..MIN_FOR_RATE_ALERT {
            let reason = (i % 2 == 0).then_some("insufficient_stock");
            let status = if reason.is_some() {
                "rejected"
            } else {
                "applied"
            };
            window.record(sample(now, status, reason, Uuid::nil(), &[]));
        }
        let calm = Gauges::default();
        let kinds = |stats: Stats| stats.alerts.iter().map(|a| a.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds(window.stats_at(now, None, &calm, Some(1.0), &THRESHOLDS)),
            ["conflict_rate"]
        );
        let troubled = Gauges {
            dead_letters_open: 1,
            outbox_oldest_age_secs: 6.0,
            ..Gauges::default()
        };
        let mut quiet = Window::default();
        assert_eq!(
            kinds(quiet.stats_at(now, None, &troubled, Some(11.0), &THRESHOLDS)),
            ["dead_letters", "outbox_lag", "partition_lag"]
        );
        assert!(kinds(quiet.stats_at(now, None, &calm, Some(9.0), &THRESHOLDS)).is_empty());
    }
}
