//! What the statistics come to: the statistics frame sent once a second, and the smaller point
//! of it the charts keep for five minutes. Serialized as they are for the dashboard's script.

use serde::Serialize;
use std::collections::HashMap;
use uuid::Uuid;

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
    /// The last minute's edits that lost to a newer version (`version_conflict`), the desk's
    /// operators' apart from the API clients'.
    pub edit_conflicts: EditConflicts,
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

/// Edits rejected `version_conflict` in the last minute, by who made them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EditConflicts {
    /// By people on the desk (`operator:` actors).
    pub operators: usize,
    /// By API clients (and direct producers).
    pub api: usize,
}
