//! What the performance benchmark (`orderflow-bench perf`) writes and reads besides driving the
//! system: orders seeded set-based in exactly the shape orderflow leaves a created order, probe
//! commands for the long-poll workload, how a phase's commands ended and when each of their
//! stages happened, and PostgreSQL's own statistics for the system's database.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// Seeds `count` pending, empty orders of `client` in one statement, each with its stream, its
/// applied create command (`create`), the projection, the first event (`created`) and the
/// create's place in the client's event feed (after the relays' lock, as the relay appends);
/// returns their ids. The `seed` CTE is materialized, so each order's ids are drawn once for the
/// five inserts; the foreign keys are checked at the end of the statement, when all are in.
pub async fn seed_orders(
    db: &mut PgConnection,
    client: Uuid,
    count: usize,
    create: &Value,
    created: &Value,
) -> sqlx::Result<Vec<Uuid>> {
    let mut tx = sqlx::Connection::begin(db).await?;
    crate::outbox::lock_relays(&mut tx).await?;
    let ids = sqlx::query_scalar!(
        r#"with seed as materialized (
               select gen_random_uuid() as order_id, gen_random_uuid() as command_id
               from generate_series(1, $2::int)
           ), streams as (
               insert into order_streams (order_id, client_id, last_seq, processed_seq)
               select order_id, $1, 1, 1 from seed
           ), created_commands as (
               insert into commands (id, client_id, order_id, seq, kind, body, source, status,
                                     result_version, partition, published_at, finished_at)
               select command_id, $1, order_id, 1, 'create', $3, 'http', 'applied', 1, 0,
                      now(), now()
               from seed
           ), projections as (
               insert into orders (id, client_id, customer_id, currency, status, version, items,
                                   total_cents, created_at, updated_at)
               select order_id, $1, 'perf', 'EUR', 'pending', 1, '[]', 0, now(), now() from seed
           ), events as (
               insert into order_events (order_id, seq, command_id, type, data, recorded_at)
               select order_id, 1, command_id, 'order_created', $4, now() from seed
           ), head as (
               select greatest((select coalesce(max(position), 0) from client_events),
                               (select pruned_through from client_events_horizon)) as position
           ), feed as (
               insert into client_events (position, client_id, order_id, command_id, type, payload)
               select head.position + row_number() over (), $1, order_id, command_id,
                      'command.applied.create',
                      jsonb_build_object('schema_version', 1, 'command_id', command_id,
                                         'order_id', order_id, 'client_id', $1, 'seq', 1,
                                         'type', 'create', 'status', 'applied', 'reason', null,
                                         'version', 1, 'event', $4::jsonb, 'at', now())
                 from seed, head
           )
           select order_id as "order_id!" from seed"#,
        client,
        i32::try_from(count).unwrap_or(i32::MAX),
        create,
        created,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ids)
}

/// Numbers the orders from 1 in `pgbench_orders (n, order_id)`, for the pgbench ceiling's
/// script (`bench/sql/one-command.pgbench`) to draw one by a random integer; how many.
pub async fn number_orders_for_pgbench(db: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query!("drop table if exists pgbench_orders")
        .execute(&mut *db)
        .await?;
    sqlx::query!(
        "create table pgbench_orders as
         select row_number() over (order by id) as n, id as order_id from orders"
    )
    .execute(&mut *db)
    .await?;
    sqlx::query!("alter table pgbench_orders add primary key (n)")
        .execute(&mut *db)
        .await?;
    order_count(db).await
}

/// How many orders the database holds.
pub async fn order_count(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"select count(*) as "n!" from orders"#)
        .fetch_one(db)
        .await
}

/// Refreshes the planner's statistics of the tables seeding grows.
pub async fn analyze_seeded_tables(db: impl PgExecutor<'_>) -> sqlx::Result<()> {
    sqlx::query!("analyze order_streams, commands, orders, order_events")
        .execute(db)
        .await?;
    Ok(())
}

/// `limit` orders drawn at random from the whole table.
pub async fn random_orders(db: impl PgExecutor<'_>, limit: usize) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar!(
        "select id from orders order by random() limit $1",
        i64::try_from(limit).unwrap_or(i64::MAX)
    )
    .fetch_all(db)
    .await
}

/// Records `count` accepted commands (of `body`) on a new order that nothing will ever deliver:
/// they are marked published, so no relay republishes them. Long-poll targets that stay open
/// until [`finish_probes`].
pub async fn probe_commands(
    db: &mut PgConnection,
    client: Uuid,
    count: usize,
    body: &Value,
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar!(
        r#"with stream as (
               insert into order_streams (order_id, client_id, last_seq, processed_seq)
               values (gen_random_uuid(), $1, 1, 1)
               returning order_id
           )
           insert into commands (id, client_id, order_id, seq, kind, body, source, partition,
                                 published_at)
           select gen_random_uuid(), $1, stream.order_id, 1000000 + g, 'add_item', $2, 'http', 0,
                  now()
           from stream, generate_series(1, $3::int) g
           returning id"#,
        client,
        body,
        i32::try_from(count).unwrap_or(i32::MAX),
    )
    .fetch_all(db)
    .await
}

/// Rejects the probes still open and notifies their ids on the commands-done channel (delivered
/// at commit), which wakes their long-polls. How many it woke.
pub async fn finish_probes(db: impl PgExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"with done as (
               update commands set status = 'rejected', reason = 'perf_probe', finished_at = now()
               where id = any($1) and status = 'accepted'
               returning id
           )
           select count(pg_notify($2, id::text)) as "n!" from done"#,
        ids,
        crate::COMMAND_DONE_CHANNEL,
    )
    .fetch_one(db)
    .await
}

/// How many commands are still accepted (not yet applied, rejected or failed).
pub async fn accepted_count(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"select count(*) as "n!" from commands where status = 'accepted'"#)
        .fetch_one(db)
        .await
}

/// How one command ended, and when.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub id: Uuid,
    pub order_id: Uuid,
    pub status: String,
    pub accepted_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub partition: i32,
}

/// The outcomes of the commands `ids` (those that exist).
pub async fn outcomes(db: impl PgExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<Vec<Outcome>> {
    sqlx::query_as!(
        Outcome,
        "select id, order_id, status, accepted_at, finished_at, partition
         from commands where id = any($1)",
        ids
    )
    .fetch_all(db)
    .await
}

/// When each stage of one command happened: the API's `received_at` (request in) and
/// `accepted_at` (its transaction's start), the worker's `delivered_at` (message in) and
/// `finished_at` (its apply transaction's start).
#[derive(Clone, Debug)]
pub struct StageTimes {
    pub id: Uuid,
    pub received_at: Option<DateTime<Utc>>,
    pub accepted_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The stage times of the commands `ids`.
pub async fn stage_times(db: impl PgExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<Vec<StageTimes>> {
    sqlx::query_as!(
        StageTimes,
        "select id, received_at, accepted_at, delivered_at, finished_at
         from commands where id = any($1)",
        ids
    )
    .fetch_all(db)
    .await
}

/// The id of the client named `name`, if there is one.
pub async fn client_named(db: impl PgExecutor<'_>, name: &str) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar!("select id from clients where name = $1", name)
        .fetch_optional(db)
        .await
}

/// The database's own transaction, row and block counters (`pg_stat_database`), by name, and
/// two exact server-wide ones: `write_xacts`, the next transaction id (each transaction that
/// writes takes one as it writes: the difference of two readings counts them at once, where the
/// statistics lag), and `wal_bytes`, the write-ahead log's position. Statistics are cached per
/// transaction: call it outside one, so each call reads them anew.
pub async fn database_counters(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(String, i64)>> {
    let row = sqlx::query!(
        r#"select xact_commit as "xact_commit!", xact_rollback as "xact_rollback!",
                  tup_inserted as "tup_inserted!", tup_updated as "tup_updated!",
                  tup_deleted as "tup_deleted!", tup_fetched as "tup_fetched!",
                  blks_read as "blks_read!", blks_hit as "blks_hit!",
                  pg_snapshot_xmax(pg_current_snapshot())::text::bigint as "write_xacts!",
                  (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint as "wal_bytes!"
           from pg_stat_database where datname = current_database()"#
    )
    .fetch_one(db)
    .await?;
    Ok(vec![
        ("write_xacts".into(), row.write_xacts),
        ("wal_bytes".into(), row.wal_bytes),
        ("xact_commit".into(), row.xact_commit),
        ("xact_rollback".into(), row.xact_rollback),
        ("tup_inserted".into(), row.tup_inserted),
        ("tup_updated".into(), row.tup_updated),
        ("tup_deleted".into(), row.tup_deleted),
        ("tup_fetched".into(), row.tup_fetched),
        ("blks_read".into(), row.blks_read),
        ("blks_hit".into(), row.blks_hit),
    ])
}

/// Row writes to one table since the statistics were reset (`pg_stat_user_tables`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableWrites {
    pub table: String,
    pub inserted: i64,
    pub updated: i64,
    /// Of `updated`, those that were HOT (no index touched).
    pub hot_updated: i64,
    pub deleted: i64,
}

/// Row writes per table of the current database's user tables, by table name.
pub async fn table_writes(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<TableWrites>> {
    sqlx::query_as!(
        TableWrites,
        r#"select relname as "table!", n_tup_ins as "inserted!", n_tup_upd as "updated!",
                  n_tup_hot_upd as "hot_updated!", n_tup_del as "deleted!"
           from pg_stat_user_tables
           where schemaname = 'public' and relname not like '\_sqlx%'
           order by relname"#
    )
    .fetch_all(db)
    .await
}

/// What the database's busy backends (other than this one) wait on right now, with how many
/// wait on each: `CPU (running)`, `Client:idle in transaction`, or `type:event`.
pub async fn busy_backends_by_wait(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"select case
                      when state = 'idle in transaction' then 'Client:idle in transaction'
                      when wait_event is null then 'CPU (running)'
                      else wait_event_type || ':' || wait_event
                  end as "wait!", count(*) as "n!"
           from pg_stat_activity
           where datname = current_database() and pid <> pg_backend_pid()
             and state in ('active', 'idle in transaction')
           group by 1"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.wait, r.n)).collect())
}
