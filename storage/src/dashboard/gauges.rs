//! Cluster-wide counters for the statistics frame, and the dashboard's own NOTIFY.

use serde::Serialize;
use sqlx::PgExecutor;

/// Cluster-wide figures sampled for the contention and throughput panels.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Gauges {
    /// Rows ever inserted into `commands` (PostgreSQL's statistics; differences give accepted/s).
    pub commands_inserted: i64,
    /// Deadlocks PostgreSQL detected in this database since its statistics were reset.
    pub deadlocks: i64,
    /// Sessions of this database waiting for a lock right now.
    pub lock_waits: i64,
    pub outbox_backlog: i64,
    pub outbox_oldest_age_secs: f64,
    /// Dead letters neither redriven nor acknowledged.
    pub dead_letters_open: i64,
}

pub async fn gauges(db: impl PgExecutor<'_>) -> sqlx::Result<Gauges> {
    sqlx::query_as!(
        Gauges,
        r#"select
             coalesce((select n_tup_ins from pg_stat_user_tables
                       where relid = 'commands'::regclass), 0) as "commands_inserted!",
             coalesce((select deadlocks from pg_stat_database
                       where datname = current_database()), 0) as "deadlocks!",
             (select count(*) from pg_stat_activity
              where datname = current_database() and wait_event_type = 'Lock') as "lock_waits!",
             (select count(*) from outbox) as "outbox_backlog!",
             coalesce((select extract(epoch from now() - min(created_at))::float8 from outbox),
                      0) as "outbox_oldest_age_secs!",
             (select count(*) from dead_letters
              where redriven_at is null and acknowledged_at is null) as "dead_letters_open!""#
    )
    .fetch_one(db)
    .await
}

/// `pg_notify` outside a transaction of the caller's (delivered at once).
pub async fn notify(db: impl PgExecutor<'_>, channel: &str, payload: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "select 1 as notified from pg_notify($1, $2)",
        channel,
        payload
    )
    .fetch_one(db)
    .await?;
    Ok(())
}
