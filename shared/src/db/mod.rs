//! PostgreSQL access: the only place SQL lives. One file per aggregate; every function takes an
//! executor (a pool or a transaction) so callers compose transactions.

pub mod clients;
pub mod commands;
pub mod dashboard;
pub mod idempotency;
pub mod inventory;
pub mod observability;
pub mod orders;
pub mod outbox;
pub mod payments;

use sqlx::{PgPool, migrate::Migrator, postgres::PgPoolOptions};
use std::time::Duration;

/// The embedded migrations (`migrations/` at the repository root).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// LISTEN/NOTIFY channel woken when outbox rows are committed (payload empty).
pub const OUTBOX_CHANNEL: &str = "orderflow_outbox";
/// LISTEN/NOTIFY channel carrying the id of each command that reached a final status.
pub const COMMAND_DONE_CHANNEL: &str = "orderflow_command_done";
/// LISTEN/NOTIFY channel carrying the id of each client whose row changed (a trigger notifies:
/// revocations, rate-limit overrides); API processes drop their cached keys on it.
pub const CLIENTS_CHANNEL: &str = "orderflow_clients";

/// Opens a pool. Connections are made lazily, so a process starts while PostgreSQL restarts and
/// a request fails fast (acquire timeout) instead of hanging.
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(url)
}

/// A round trip to PostgreSQL (readiness).
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("select 1").execute(pool).await.map(|_| ())
}

/// Why the worker refuses to run on this database.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database schema is at migration {found:?} but this build needs {needed}; run `orderflow-api migrate` first"
    )]
    Behind { found: Option<i64>, needed: i64 },
    #[error("could not read the schema version: {0}")]
    Db(#[from] sqlx::Error),
}

/// Checks that every migration this build knows has been applied.
pub async fn check_schema(pool: &PgPool) -> Result<(), SchemaError> {
    let needed = MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .expect("at least one migration");
    let table_exists: bool =
        sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
            .fetch_one(pool)
            .await?;
    let found: Option<i64> = if table_exists {
        sqlx::query_scalar("select max(version) from _sqlx_migrations where success")
            .fetch_one(pool)
            .await?
    } else {
        None
    };
    if found.is_some_and(|v| v >= needed) {
        Ok(())
    } else {
        Err(SchemaError::Behind { found, needed })
    }
}

/// Is this error worth retrying the whole transaction for? Serialization failures, deadlocks,
/// lost connections and an exhausted pool are; constraint violations and bugs are not.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            matches!(
                code.as_ref(),
                // serialization_failure, deadlock_detected, statement_completion_unknown,
                // query_canceled (statement timeout), lock_not_available, read_only_sql_transaction
                // (a failover in progress), admin/crash shutdown, cannot_connect_now
                "40001" | "40P01" | "40003" | "57014" | "55P03" | "25006" | "57P01" | "57P02" | "57P03"
            )
            // connection exceptions; insufficient resources (e.g. too many connections)
            || code.starts_with("08")
            || code.starts_with("53")
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}
