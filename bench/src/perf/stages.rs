//! Where orderflow's accept→applied time goes, command by command, from the timestamps the
//! services record: the API's `received_at` (request in) and `accepted_at` (its transaction's
//! start), the worker's `delivered_at` (message in) and `finished_at` (its apply transaction's
//! start), and the commit seen on the NOTIFY channel. Read leniently: a schema without these
//! columns yields no breakdown rather than a failed run.

use super::stats::Latency;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// The stages, in order, each named for the report.
pub const STAGES: [&str; 4] = [
    "1 API: request → its transaction",
    "2 record, commit, publish, confirm, broker → worker",
    "3 worker: message → apply starts (queued behind its partition)",
    "4 apply transaction → commit",
];

fn us(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    (to - from).num_microseconds().unwrap_or(0).max(0) as u64
}

/// Percentiles of each stage over the commands `ids` (whose commits are in `commits`).
pub async fn breakdown(
    db: &sqlx::PgPool,
    ids: &[Uuid],
    commits: &HashMap<Uuid, DateTime<Utc>>,
) -> BTreeMap<String, Latency> {
    let mut stages: [Vec<u64>; 4] = Default::default();
    for chunk in ids.chunks(20_000) {
        let rows = match orderflow_storage::perf::stage_times(db, chunk).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, "no stage timestamps");
                return BTreeMap::new();
            }
        };
        for row in rows {
            let (Some(received), Some(delivered), Some(started), Some(&committed)) = (
                row.received_at,
                row.delivered_at,
                row.finished_at,
                commits.get(&row.id),
            ) else {
                continue;
            };
            stages[0].push(us(received, row.accepted_at));
            stages[1].push(us(row.accepted_at, delivered));
            stages[2].push(us(delivered, started));
            stages[3].push(us(started, committed));
        }
    }
    STAGES
        .iter()
        .zip(stages)
        .filter(|(_, values)| !values.is_empty())
        .map(|(name, values)| (name.to_string(), Latency::from_values(values).0))
        .collect()
}
