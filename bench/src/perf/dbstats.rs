//! What PostgreSQL did for a phase, from its own statistics views (no extension needed): the
//! database's transaction and row counters (`pg_stat_database`, read before and after, so per
//! command ratios can be taken), and what its busy backends were waiting on (`pg_stat_activity`,
//! sampled: a poor man's wait-event profile), and each table's row writes
//! (`pg_stat_user_tables`, before and after). Each system has a database of its own, so both
//! are the system's alone (plus the bench's few reads).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Pause between two samples of `pg_stat_activity`.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// How long a busy backend may hold statistics before it reports them: PostgreSQL 15 flushes a
/// backend's pending counters at a transaction's end at most once a second
/// (`PGSTAT_MIN_INTERVAL`). Waiting this long before a reading lets every backend that goes on
/// working report what it did up to the wait. One that fell idle right after a flush reports its
/// last second only after 10 s (`PGSTAT_IDLE_INTERVAL`): so a phase's `pg_stat_*` figures may
/// carry up to a second of its neighbour's work. `write_xacts` and `wal_bytes` are exact.
pub const REPORTING_LAG: Duration = Duration::from_millis(1100);

/// Waits out [`REPORTING_LAG`].
pub async fn settle() {
    tokio::time::sleep(REPORTING_LAG).await;
}

/// The database's counters now (empty if they cannot be read).
pub async fn counters(db: &sqlx::PgPool) -> BTreeMap<String, i64> {
    // Statistics are cached per transaction; this statement is a transaction of its own.
    orderflow_storage::perf::database_counters(db)
        .await
        .map(|counters| counters.into_iter().collect())
        .unwrap_or_default()
}

/// `after - before`, counter by counter.
pub fn delta(
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
) -> BTreeMap<String, i64> {
    after
        .iter()
        .map(|(name, v)| (name.clone(), v - before.get(name).copied().unwrap_or(0)))
        .collect()
}

/// Rows one table had written to it (`pg_stat_user_tables`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RowWrites {
    pub inserted: i64,
    pub updated: i64,
    /// Of `updated`, those that were HOT (no index entry written).
    pub hot_updated: i64,
    pub deleted: i64,
}

impl RowWrites {
    pub fn total(&self) -> i64 {
        self.inserted + self.updated + self.deleted
    }
}

/// Each table's row writes so far (empty if they cannot be read). Like [`counters`], flushed by
/// backends with a lag of up to a second (`stats_fetch_consistency` aside).
pub async fn table_writes(db: &sqlx::PgPool) -> BTreeMap<String, RowWrites> {
    orderflow_storage::perf::table_writes(db)
        .await
        .map(|tables| {
            tables
                .into_iter()
                .map(|t| {
                    let writes = RowWrites {
                        inserted: t.inserted,
                        updated: t.updated,
                        hot_updated: t.hot_updated,
                        deleted: t.deleted,
                    };
                    (t.table, writes)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `after - before`, table by table; tables nothing was written to are left out.
pub fn table_delta(
    before: &BTreeMap<String, RowWrites>,
    after: &BTreeMap<String, RowWrites>,
) -> BTreeMap<String, RowWrites> {
    after
        .iter()
        .filter_map(|(table, a)| {
            let b = before.get(table).copied().unwrap_or_default();
            let d = RowWrites {
                inserted: a.inserted - b.inserted,
                updated: a.updated - b.updated,
                hot_updated: a.hot_updated - b.hot_updated,
                deleted: a.deleted - b.deleted,
            };
            (d.total() > 0).then(|| (table.clone(), d))
        })
        .collect()
}

/// Samples what the database's busy backends wait on until finished.
pub struct Waits {
    seen: Arc<Mutex<BTreeMap<String, u64>>>,
    task: JoinHandle<()>,
}

impl Waits {
    pub fn start(db: sqlx::PgPool) -> Self {
        let seen: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    tick.tick().await;
                    let rows = orderflow_storage::perf::busy_backends_by_wait(&db).await;
                    let Ok(rows) = rows else { continue };
                    let mut seen = seen.lock().expect("not poisoned");
                    *seen.entry("(samples)".into()).or_default() += 1;
                    for (what, n) in rows {
                        *seen.entry(what).or_default() += n as u64;
                    }
                }
            })
        };
        Self { seen, task }
    }

    /// Backend-samples per wait (`(samples)`: how many times the view was read).
    pub fn finish(self) -> BTreeMap<String, u64> {
        self.task.abort();
        std::mem::take(&mut *self.seen.lock().expect("not poisoned"))
    }
}

#[cfg(test)]
mod tests {
    use super::{RowWrites, table_delta};
    use std::collections::BTreeMap;

    fn writes(inserted: i64, updated: i64, hot_updated: i64, deleted: i64) -> RowWrites {
        RowWrites {
            inserted,
            updated,
            hot_updated,
            deleted,
        }
    }

    #[test]
    fn a_tables_writes_are_what_the_phase_added_and_untouched_tables_are_left_out() {
        let before = BTreeMap::from([
            ("commands".to_owned(), writes(10, 5, 2, 0)),
            ("inventory".to_owned(), writes(3, 1, 1, 0)),
        ]);
        let after = BTreeMap::from([
            ("commands".to_owned(), writes(110, 165, 102, 0)),
            ("inventory".to_owned(), writes(3, 1, 1, 0)),
            ("outbox".to_owned(), writes(100, 0, 0, 100)),
        ]);
        let delta = table_delta(&before, &after);
        assert_eq!(
            delta,
            BTreeMap::from([
                ("commands".to_owned(), writes(100, 160, 100, 0)),
                ("outbox".to_owned(), writes(100, 0, 0, 100)),
            ])
        );
        assert_eq!(delta["commands"].total(), 260);
    }
}
