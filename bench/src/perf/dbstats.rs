//! What PostgreSQL did for a phase, from its own statistics views (no extension needed): the
//! database's transaction and row counters (`pg_stat_database`, read before and after, so per
//! command ratios can be taken), and what its busy backends were waiting on (`pg_stat_activity`,
//! sampled: a poor man's wait-event profile). Each system has a database of its own, so both
//! are the system's alone (plus the bench's few reads).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Pause between two samples of `pg_stat_activity`.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

const COUNTERS: [&str; 8] = [
    "xact_commit",
    "xact_rollback",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "tup_fetched",
    "blks_read",
    "blks_hit",
];

/// The database's counters now (empty if they cannot be read).
pub async fn counters(db: &sqlx::PgPool) -> BTreeMap<String, i64> {
    let query = format!(
        "select {} from pg_stat_database where datname = current_database()",
        COUNTERS.map(|c| format!("{c}::bigint")).join(", ")
    );
    // Statistics are cached per transaction; this statement is a transaction of its own.
    let row = sqlx::query(sqlx::AssertSqlSafe(query)).fetch_one(db).await;
    let Ok(row) = row else {
        return BTreeMap::new();
    };
    use sqlx::Row as _;
    COUNTERS
        .iter()
        .enumerate()
        .filter_map(|(i, name)| Some((name.to_string(), row.try_get::<i64, _>(i).ok()?)))
        .collect()
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
                    let rows: Result<Vec<(String, i64)>, _> = sqlx::query_as(
                        "select case
                                    when state = 'idle in transaction' then 'Client:idle in transaction'
                                    when wait_event is null then 'CPU (running)'
                                    else wait_event_type || ':' || wait_event
                                end, count(*)
                         from pg_stat_activity
                         where datname = current_database() and pid <> pg_backend_pid()
                           and state in ('active', 'idle in transaction')
                         group by 1",
                    )
                    .fetch_all(&db)
                    .await;
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
