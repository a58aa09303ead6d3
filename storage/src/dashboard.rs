//! What the operators' dashboard reads, across clients: the order list, one order's command
//! journeys and events, the partitions' backlog and owners, the dead letters and their redrives,
//! and a few cluster-wide counters. Read-only except for a redrive or an acknowledgement of a
//! dead letter and their audit records.

use chrono::{DateTime, Utc};
use orderflow_domain::{ClientId, CommandId, OrderId};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// One row of the live order table.
#[derive(Clone, Debug, Serialize)]
pub struct OrderSummary {
    pub id: Uuid,
    pub client: String,
    pub customer_id: String,
    pub status: String,
    pub version: i64,
    pub item_count: i32,
    pub total_cents: i64,
    pub currency: String,
    pub updated_at: DateTime<Utc>,
}

/// The most recently changed orders, optionally of one status and/or whose id contains
/// `id_part` (lowercase hex with dashes, as ids are printed).
pub async fn recent_orders(
    db: impl PgExecutor<'_>,
    status: Option<&str>,
    id_part: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<OrderSummary>> {
    sqlx::query_as!(
        OrderSummary,
        r#"select o.id, c.name as client, o.customer_id, o.status, o.version,
                  jsonb_array_length(o.items) as "item_count!", o.total_cents, o.currency, o.updated_at
           from orders o join clients c on c.id = o.client_id
           where ($1::text is null or o.status = $1)
             and ($2::text is null or strpos(o.id::text, $2) > 0)
           order by o.updated_at desc
           limit $3"#,
        status,
        id_part,
        limit
    )
    .fetch_all(db)
    .await
}

/// The summaries of these orders (for live updates of the table).
pub async fn orders_by_id(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> sqlx::Result<Vec<OrderSummary>> {
    sqlx::query_as!(
        OrderSummary,
        r#"select o.id, c.name as client, o.customer_id, o.status, o.version,
                  jsonb_array_length(o.items) as "item_count!", o.total_cents, o.currency, o.updated_at
           from orders o join clients c on c.id = o.client_id
           where o.id = any($1)"#,
        ids
    )
    .fetch_all(db)
    .await
}

/// A command that reached its final status, as the live feed reports it.
#[derive(Clone, Debug, Serialize)]
pub struct FinishedCommand {
    pub id: Uuid,
    pub order_id: Uuid,
    pub kind: String,
    pub status: String,
    pub reason: Option<String>,
    pub partition: i32,
    pub seq: i64,
    pub expected_version: Option<i64>,
    pub result_version: Option<i64>,
    pub accepted_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempt: Option<i32>,
    /// The SKUs of the order (for the hottest-SKU ranking of reserves).
    pub skus: Vec<String>,
}

pub async fn finished_commands(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> sqlx::Result<Vec<FinishedCommand>> {
    sqlx::query_as!(
        FinishedCommand,
        r#"select c.id, c.order_id, c.kind, c.status, c.reason, c.partition, c.seq,
                  c.expected_version, c.result_version, c.accepted_at, c.finished_at, c.attempt,
                  coalesce((select array_agg(i->>'sku')
                            from orders o cross join lateral jsonb_array_elements(o.items) i
                            where o.id = c.order_id), '{}') as "skus!"
           from commands c
           where c.id = any($1) and c.status <> 'accepted'"#,
        ids
    )
    .fetch_all(db)
    .await
}

/// One command's journey, for the order timeline.
#[derive(Clone, Debug, Serialize)]
pub struct CommandJourney {
    pub id: Uuid,
    pub seq: i64,
    pub kind: String,
    pub source: String,
    pub status: String,
    pub reason: Option<String>,
    pub expected_version: Option<i64>,
    pub result_version: Option<i64>,
    pub partition: i32,
    pub received_at: Option<DateTime<Utc>>,
    pub accepted_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub attempt: Option<i32>,
    pub finished_at: Option<DateTime<Utc>>,
    pub traceparent: Option<String>,
    pub body: serde_json::Value,
}

/// Every command of an order, in sequence order.
pub async fn journeys(
    db: impl PgExecutor<'_>,
    order_id: OrderId,
) -> sqlx::Result<Vec<CommandJourney>> {
    sqlx::query_as!(
        CommandJourney,
        "select id, seq, kind, source, status, reason, expected_version, result_version, partition,
                received_at, accepted_at, published_at, delivered_at, attempt, finished_at,
                traceparent, body
         from commands where order_id = $1 order by seq",
        order_id.0
    )
    .fetch_all(db)
    .await
}

/// The order's projection as the dashboard shows it (any client).
pub async fn order(db: impl PgExecutor<'_>, id: OrderId) -> sqlx::Result<Option<OrderSummary>> {
    Ok(orders_by_id(db, &[id.0]).await?.into_iter().next())
}

/// Does the order's stream exist (commands accepted, maybe not created yet)?
pub async fn stream_exists(db: impl PgExecutor<'_>, id: OrderId) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select exists(select 1 from order_streams where order_id = $1) as "exists!""#,
        id.0
    )
    .fetch_one(db)
    .await
}

/// The applied reserve, of another order sharing one of `order_id`'s SKUs, that finished last at
/// or before `at`: who took the stock a rejected reserve wanted.
#[derive(Clone, Debug, Serialize)]
pub struct StockWinner {
    pub command_id: Uuid,
    pub order_id: Uuid,
    pub sku: String,
    pub finished_at: Option<DateTime<Utc>>,
}

pub async fn stock_winner(
    db: impl PgExecutor<'_>,
    order_id: OrderId,
    at: DateTime<Utc>,
) -> sqlx::Result<Option<StockWinner>> {
    sqlx::query_as!(
        StockWinner,
        r#"select c.id as command_id, c.order_id, i->>'sku' as "sku!", c.finished_at
           from commands c
           join orders o on o.id = c.order_id
           cross join lateral jsonb_array_elements(o.items) i
           where c.kind = 'reserve' and c.status = 'applied' and c.finished_at <= $2
             and c.order_id <> $1
             and i->>'sku' in (select j->>'sku' from orders mine
                               cross join lateral jsonb_array_elements(mine.items) j
                               where mine.id = $1)
           order by c.finished_at desc
           limit 1"#,
        order_id.0,
        at
    )
    .fetch_optional(db)
    .await
}

/// Per partition: accepted commands not finished yet, and the oldest one's age in seconds.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionBacklog {
    pub partition: i32,
    pub pending: i64,
    pub oldest_age_secs: f64,
}

pub async fn partition_backlog(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<PartitionBacklog>> {
    sqlx::query_as!(
        PartitionBacklog,
        r#"select partition, count(*) as "pending!",
                  extract(epoch from now() - min(accepted_at))::float8 as "oldest_age_secs!"
           from commands where status = 'accepted'
           group by partition"#
    )
    .fetch_all(db)
    .await
}

/// A worker's latest heartbeat for one partition.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerPartition {
    pub worker: String,
    pub partition: i32,
    pub consuming: bool,
    pub last_delivery_at: Option<DateTime<Utc>>,
    pub delivered: i64,
    pub redelivered: i64,
    pub finished: i64,
    pub heartbeat_at: DateTime<Utc>,
    /// Seconds since the heartbeat (stale rows are workers that stopped).
    pub heartbeat_age_secs: f64,
}

/// Heartbeats no older than `max_age_secs`.
pub async fn worker_partitions(
    db: impl PgExecutor<'_>,
    max_age_secs: f64,
) -> sqlx::Result<Vec<WorkerPartition>> {
    sqlx::query_as!(
        WorkerPartition,
        r#"select worker, partition, consuming, last_delivery_at, delivered, redelivered, finished,
                  heartbeat_at, extract(epoch from now() - heartbeat_at)::float8 as "heartbeat_age_secs!"
           from worker_partitions
           where heartbeat_at > now() - make_interval(secs => $1)
           order by partition, worker"#,
        max_age_secs
    )
    .fetch_all(db)
    .await
}

/// One dead-lettered message.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub command_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub client_id: Option<Uuid>,
    pub partition: i32,
    pub reason: String,
    pub body: String,
    pub dead_lettered_at: DateTime<Utc>,
    pub redriven_at: Option<DateTime<Utc>>,
    pub redriven_as: Option<Uuid>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// The name of the admin who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// Does the client it names still exist, unrevoked? (A redrive sends as that client.)
    pub client_live: bool,
}

/// The latest dead letters, newest first.
pub async fn dead_letters(db: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<DeadLetter>> {
    sqlx::query_as!(
        DeadLetter,
        r#"select d.id, d.command_id, d.order_id, d.client_id, d.partition, d.reason, d.body,
                  d.dead_lettered_at, d.redriven_at, d.redriven_as, d.acknowledged_at,
                  a.name as "acknowledged_by?",
                  exists (select 1 from clients c
                          where c.id = d.client_id and c.revoked_at is null) as "client_live!"
           from dead_letters d left join clients a on a.id = d.acknowledged_by
           order by d.dead_lettered_at desc, d.id desc limit $1"#,
        limit
    )
    .fetch_all(db)
    .await
}

/// One dead letter. (Concurrent redrives of it need no lock: they share an Idempotency-Key, so
/// they yield one command, and only the first [`mark_redriven`] takes. A redrive that races an
/// acknowledgement is still recorded: the letter then reads both, and is closed either way.)
pub async fn dead_letter(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<DeadLetter>> {
    sqlx::query_as!(
        DeadLetter,
        r#"select d.id, d.command_id, d.order_id, d.client_id, d.partition, d.reason, d.body,
                  d.dead_lettered_at, d.redriven_at, d.redriven_as, d.acknowledged_at,
                  a.name as "acknowledged_by?",
                  exists (select 1 from clients c
                          where c.id = d.client_id and c.revoked_at is null) as "client_live!"
           from dead_letters d left join clients a on a.id = d.acknowledged_by
           where d.id = $1"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// Records that a dead letter was re-submitted as `command_id` by `admin`, with the audit entry.
pub async fn mark_redriven(
    conn: &mut PgConnection,
    id: i64,
    command_id: CommandId,
    admin: ClientId,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update dead_letters set redriven_at = now(), redriven_as = $2, redriven_by = $3
         where id = $1 and redriven_at is null",
        id,
        command_id.0,
        admin.0
    )
    .execute(&mut *conn)
    .await?;
    record_action(
        conn,
        admin,
        "redrive_dead_letter",
        &id.to_string(),
        &serde_json::json!({ "command_id": command_id.0 }),
    )
    .await
}

/// Acknowledges an open dead letter (neither redriven nor acknowledged) for `admin`, with the
/// audit entry; when it is acknowledged. None if it was not open.
pub async fn acknowledge(
    conn: &mut PgConnection,
    id: i64,
    admin: ClientId,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    let at = sqlx::query_scalar!(
        "update dead_letters set acknowledged_at = now(), acknowledged_by = $2
         where id = $1 and redriven_at is null and acknowledged_at is null
         returning acknowledged_at as \"acknowledged_at!\"",
        id,
        admin.0
    )
    .fetch_optional(&mut *conn)
    .await?;
    if at.is_some() {
        record_action(
            conn,
            admin,
            "acknowledge_dead_letter",
            &id.to_string(),
            &serde_json::json!({}),
        )
        .await?;
    }
    Ok(at)
}

/// Dead letters neither redriven nor acknowledged.
pub async fn open_dead_letters(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "open!" from dead_letters
           where redriven_at is null and acknowledged_at is null"#
    )
    .fetch_one(db)
    .await
}

/// The commands of an order that are redrives: (command, the dead letter it came from).
pub async fn redrives_of_order(
    db: impl PgExecutor<'_>,
    order_id: OrderId,
) -> sqlx::Result<Vec<(Uuid, i64)>> {
    let rows = sqlx::query!(
        r#"select redriven_as as "command_id!", id from dead_letters
           where order_id = $1 and redriven_as is not null"#,
        order_id.0
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.command_id, r.id)).collect())
}

/// Appends to the admin audit log.
pub async fn record_action(
    db: impl PgExecutor<'_>,
    admin: ClientId,
    action: &str,
    target: &str,
    detail: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into admin_actions (client_id, action, target, detail) values ($1, $2, $3, $4)",
        admin.0,
        action,
        target,
        detail
    )
    .execute(db)
    .await?;
    Ok(())
}

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
