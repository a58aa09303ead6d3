//! The window's figures, rates, rankings and alerts, at a chosen instant.

use super::alerts::MIN_FOR_RATE_ALERT;
use super::*;

const THRESHOLDS: Thresholds = Thresholds {
    conflict_rate: 0.25,
    outbox_lag_secs: 5.0,
    partition_lag_secs: 10.0,
};

fn sample(at: Instant, status: &str, reason: Option<&str>, order: Uuid, skus: &[&str]) -> Sample {
    Sample {
        seen: at,
        status: status.into(),
        reason: reason.map(Into::into),
        order_id: order,
        reserved_skus: skus.iter().map(|s| s.to_string()).collect(),
        latency_ms: Some(2.0),
        by_operator: false,
    }
}

#[test]
fn a_late_frame_counts_what_was_seen_since_the_last_one_over_its_longer_span() {
    let start = Instant::now();
    let order = Uuid::from_u128(1);
    let mut window = Window::default();
    window.record(sample(start, "applied", None, order, &[]));
    let first = window.stats_at(start, None, &Gauges::default(), None, &THRESHOLDS);
    assert_eq!(first.applied_per_s, 1.0);
    // The next tick comes 2.5 s late; what was seen 2 s before it still counts, once.
    window.record(sample(
        start + Duration::from_millis(500),
        "applied",
        None,
        order,
        &[],
    ));
    let late = start + Duration::from_millis(2500);
    let second = window.stats_at(late, None, &Gauges::default(), None, &THRESHOLDS);
    assert_eq!(second.applied_per_s, 1.0 / 2.5);
    let third = window.stats_at(
        late + Duration::from_secs(1),
        None,
        &Gauges::default(),
        None,
        &THRESHOLDS,
    );
    assert_eq!(third.applied_per_s, 0.0, "counted in one frame only");
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
fn operators_edit_conflicts_are_counted_beside_the_apis() {
    let now = Instant::now();
    let order = Uuid::from_u128(1);
    let mut window = Window::default();
    let by_operator = |reason: Option<&str>| Sample {
        by_operator: true,
        ..sample(now, "rejected", reason, order, &[])
    };
    window.record(by_operator(Some("version_conflict")));
    window.record(by_operator(Some("version_conflict")));
    window.record(by_operator(Some("invalid_transition")));
    window.record(sample(
        now,
        "rejected",
        Some("version_conflict"),
        order,
        &[],
    ));
    window.record(sample(now, "applied", None, order, &[]));
    let stats = window.stats_at(now, None, &Gauges::default(), None, &THRESHOLDS);
    assert_eq!(
        stats.edit_conflicts,
        EditConflicts {
            operators: 2,
            api: 1
        }
    );
    assert_eq!(stats.conflicts.get("version_conflict"), Some(&3));
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
