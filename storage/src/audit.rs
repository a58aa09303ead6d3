//! What the race audit's checker reads: the raw rows of a run's orders and SKUs, as stored, in
//! one read-only repeatable-read snapshot (so a command a straggling request records while this
//! reads is not seen accepted in one table and applied in another). Plain structs of plain
//! values: the checker judges the rows, not orderflow's own reading of them.

use chrono::{DateTime, Utc};
use orderflow_contract::{IntakeRefusal, Reason};
use serde_json::Value;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct CommandRow {
    pub id: Uuid,
    pub order_id: Uuid,
    pub seq: i64,
    pub kind: String,
    pub source: String,
    pub status: String,
    pub reason: Option<String>,
    pub result_version: Option<i64>,
    pub finished_at: Option<DateTime<Utc>>,
    pub partition: i32,
    /// The partition lease epoch the finishing transaction was fenced under (null when it
    /// was not fenced by one partition's lease: a refusal, a parked command's timeout).
    pub epoch: Option<i64>,
    /// The partition of that lease: after a growth, the owner of the order's new partition may
    /// finish an earlier command routed to the old one.
    pub lease_partition: Option<i32>,
    /// A `set_shipping_address` command's address (null for every other kind): an applied one
    /// that changed nothing must have asked for the address its order had.
    pub address: Option<serde_json::Value>,
}

impl CommandRow {
    /// Applied without a change (reason `unchanged`): no event, the version where it was.
    pub fn unchanged(&self) -> bool {
        self.status == "applied" && self.reason.as_deref() == Some(Reason::Unchanged.as_str())
    }

    /// Refused by the API after the broker said no: it never reached a worker.
    pub fn refused(&self) -> bool {
        self.status == "rejected"
            && matches!(
                self.reason.as_deref().map(Reason::parse),
                Some(Reason::Refused(_))
            )
    }
}

#[derive(Clone, Debug)]
pub struct EventRow {
    pub order_id: Uuid,
    pub seq: i64,
    pub command_id: Uuid,
    pub data: Value,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct OrderRow {
    pub id: Uuid,
    pub client_id: Uuid,
    pub customer_id: String,
    pub currency: String,
    pub status: String,
    pub version: i64,
    pub items: Value,
    pub total_cents: i64,
    pub details: Value,
    pub tracking_number: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockRow {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub shipped: i64,
}

#[derive(Clone, Debug)]
pub struct PaymentRow {
    pub order_id: Uuid,
    pub command_id: Uuid,
    pub kind: String,
    pub amount_cents: i64,
}

/// A client event of the run's orders (`client_events`: the clients' feeds).
#[derive(Clone, Debug)]
pub struct FeedRow {
    pub position: i64,
    pub order_id: Uuid,
    pub command_id: Uuid,
    pub seq: i64,
    pub status: String,
}

/// The rows of a run, read at one instant.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub commands: Vec<CommandRow>,
    pub events: Vec<EventRow>,
    pub orders: Vec<OrderRow>,
    pub inventory: Vec<StockRow>,
    pub payments: Vec<PaymentRow>,
    /// `(key, command_id)` of the run's Idempotency-Keys.
    pub idempotency_keys: Vec<(String, Uuid)>,
    /// Outbox rows of the run's orders not yet relayed.
    pub outbox_rows: i64,
    /// The clients' feed events of the run's orders, by position.
    pub feed: Vec<FeedRow>,
}

/// Reads the rows of `orders` and `skus` (and the given Idempotency-Keys) in one snapshot.
pub async fn snapshot(
    db: &PgPool,
    orders: &[Uuid],
    skus: &[String],
    keys: &[String],
) -> sqlx::Result<Tables> {
    let mut tx = db.begin().await?;
    sqlx::query!("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let commands = sqlx::query_as!(
        CommandRow,
        r#"select id, order_id, seq, kind, source, status, reason, result_version, finished_at,
                  partition, epoch, lease_partition,
                  case when kind = 'set_shipping_address' then body -> 'address' end as address
             from commands where order_id = any($1) order by order_id, seq"#,
        orders
    )
    .fetch_all(&mut *tx)
    .await?;
    let events = sqlx::query_as!(
        EventRow,
        "select order_id, seq, command_id, data, recorded_at
         from order_events where order_id = any($1) order by order_id, seq",
        orders
    )
    .fetch_all(&mut *tx)
    .await?;
    let order_rows = sqlx::query_as!(
        OrderRow,
        "select id, client_id, customer_id, currency, status, version, items, total_cents,
                details, tracking_number, created_at, updated_at
         from orders where id = any($1)",
        orders
    )
    .fetch_all(&mut *tx)
    .await?;
    let inventory = sqlx::query_as!(
        StockRow,
        "select sku, available, reserved, shipped from inventory where sku = any($1) order by sku",
        skus
    )
    .fetch_all(&mut *tx)
    .await?;
    let payments = sqlx::query_as!(
        PaymentRow,
        "select order_id, command_id, kind, amount_cents from payments
         where order_id = any($1) order by id",
        orders
    )
    .fetch_all(&mut *tx)
    .await?;
    let idempotency_keys = sqlx::query!(
        "select key, command_id from idempotency_keys where key = any($1)",
        keys
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.key, r.command_id))
    .collect();
    let outbox_rows = sqlx::query_scalar!(
        r#"select count(*) as "n!" from outbox where order_id = any($1)"#,
        orders
    )
    .fetch_one(&mut *tx)
    .await?;
    // No index leads with the order (the feeds are read by client): one scan of the log, once
    // per audit.
    let feed = sqlx::query_as!(
        FeedRow,
        r#"select position, order_id, command_id, (payload->>'seq')::bigint as "seq!",
                  payload->>'status' as "status!"
             from client_events where order_id = any($1) order by position"#,
        orders
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Tables {
        commands,
        events,
        orders: order_rows,
        inventory,
        payments,
        idempotency_keys,
        outbox_rows,
        feed,
    })
}

/// How many of `ids` are final (applied, rejected or failed).
pub async fn finished_count(db: impl PgExecutor<'_>, ids: &[Uuid]) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from commands where id = any($1) and status <> 'accepted'"#,
        ids
    )
    .fetch_one(db)
    .await
}

/// Commands of `orders` not final yet, whoever sent them: also those whose sender never saw an
/// answer (a request that timed out after its command was recorded), which the run cannot count
/// among the commands it saw accepted.
pub async fn unfinished_of_orders(db: impl PgExecutor<'_>, orders: &[Uuid]) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from commands where order_id = any($1) and status = 'accepted'"#,
        orders
    )
    .fetch_one(db)
    .await
}

/// Outbox rows of `orders` not yet relayed.
pub async fn outbox_rows(db: impl PgExecutor<'_>, orders: &[Uuid]) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from outbox where order_id = any($1)"#,
        orders
    )
    .fetch_one(db)
    .await
}

/// Has a worker finished a command since `since`, other than one the API refused? (Recovery
/// after a fault: a refusal is finished by the API and says nothing about the workers.)
pub async fn finished_by_a_worker_since(
    db: impl PgExecutor<'_>,
    since: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let refusals = IntakeRefusal::ALL.map(IntakeRefusal::as_str);
    sqlx::query_scalar!(
        r#"select exists (select 1 from commands
                          where finished_at > $1 and coalesce(reason, '') <> all($2)) as "some!""#,
        since,
        &refusals as &[&str]
    )
    .fetch_one(db)
    .await
}

/// Commands the API refused (never enqueued) that nevertheless have an event.
pub async fn refused_then_applied(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    let refusals = IntakeRefusal::ALL.map(IntakeRefusal::as_str);
    sqlx::query_scalar!(
        r#"select count(distinct c.id) as "n!" from commands c
             join order_events e on e.command_id = c.id
           where c.status = 'rejected' and c.reason = any($1)"#,
        &refusals as &[&str]
    )
    .fetch_one(db)
    .await
}

/// How many commands the API refused because a partition was full.
pub async fn queue_full_refusals(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from commands where status = 'rejected' and reason = $1"#,
        IntakeRefusal::QueueFull.as_str()
    )
    .fetch_one(db)
    .await
}

/// The workers consuming right now, the one that took a delivery last first.
pub async fn consuming_workers(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select worker from worker_partitions
         where consuming and heartbeat_at > now() - interval '5 seconds'
         order by last_delivery_at desc nulls last"
    )
    .fetch_all(db)
    .await
}

/// A partition's lease as the audit reads it.
#[derive(Clone, Debug)]
pub struct LeaseRow {
    pub partition: i32,
    /// None: free.
    pub owner: Option<String>,
    pub epoch: i64,
    pub state: String,
}

/// When the live worker `name` joined (its membership row's start); `None` while it has no row.
pub async fn member_started_at(
    db: impl PgExecutor<'_>,
    name: &str,
) -> sqlx::Result<Option<chrono::DateTime<chrono::Utc>>> {
    sqlx::query_scalar("select started_at from worker_members where name = $1")
        .bind(name)
        .fetch_optional(db)
        .await
}

/// Every partition's lease now, in partition order.
pub async fn leases_now(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<LeaseRow>> {
    sqlx::query_as!(
        LeaseRow,
        "select partition, owner, epoch, state from partition_leases order by partition"
    )
    .fetch_all(db)
    .await
}

/// Starts of redelivered command messages so far: each is counted in `delivery_attempts`.
pub async fn redelivered_starts(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select coalesce(sum(attempts), 0)::bigint as "n!" from delivery_attempts"#
    )
    .fetch_one(db)
    .await
}

/// Redelivered starts that repeated work under a lease taken since `since`, as far as the
/// tables can tell: a command whose message was started more than once after a redelivery, or
/// whose redelivered start came under another lease epoch than the one it was finished under
/// (an earlier holder had finished it). A message handed back unopened by a cancelled consumer
/// is started once, under the epoch that finishes it: not counted. Only finished commands the
/// API published are judged: a direct producer may publish a command twice on purpose (the
/// race audit's does), and its second copy is not a redelivery. Starts under leases taken
/// before `since` belong to an earlier fault, and so does a redelivered message whose command was
/// finished before `since` and which was started once since: its work was done before this fault
/// began and left unacked by an earlier one (a worker killed between its commit and its ack, a
/// worker's broker connection closed), whose redeliveries the partition's holders were still
/// working through when this fault began.
pub async fn repeated_starts_since(
    db: impl PgExecutor<'_>,
    since: DateTime<Utc>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from delivery_attempts a join commands c on c.id = a.command_id
           cross join lateral (select coalesce(c.lease_partition, c.partition) as partition) p
           where a.last_at > $1 and c.finished_at is not null and c.source = 'http'
             and (a.attempts <> 1 or a.epoch is distinct from c.epoch)
             and exists (select 1 from partition_moves m
                          where m.partition = p.partition and m.epoch = a.epoch and m.at > $1)
             and (a.attempts <> 1 or c.finished_at > $1)"#,
        since
    )
    .fetch_one(db)
    .await
}

/// For each (partition, epoch) of `watched` that had a command finished by a worker (not a
/// refusal) since `since` — under a later epoch than the one given (its next holder), or under
/// any when none is given —, when the first one finished.
pub async fn partitions_finishing_since(
    db: impl PgExecutor<'_>,
    watched: &[(i32, Option<i64>)],
    since: DateTime<Utc>,
) -> sqlx::Result<Vec<(i32, DateTime<Utc>)>> {
    let (partitions, epochs): (Vec<i32>, Vec<Option<i64>>) = watched.iter().copied().unzip();
    let refusals = IntakeRefusal::ALL.map(IntakeRefusal::as_str);
    let rows = sqlx::query!(
        r#"select w.partition as "partition!", min(c.finished_at) as "first!"
             from commands c
             join unnest($1::integer[], $2::bigint[]) as w(partition, epoch)
               on w.partition = coalesce(c.lease_partition, c.partition)
            where c.finished_at > $3 and (w.epoch is null or c.epoch > w.epoch)
              and coalesce(c.reason, '') <> all($4)
            group by w.partition"#,
        &partitions,
        &epochs as &[Option<i64>],
        since,
        &refusals as &[&str]
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.partition, r.first)).collect())
}

/// Ends the sessions of one worker on `database` (its pool's, `application_name` exactly
/// `application_name`, and its lease keeper's, that name and " leases"); how many it ended.
pub async fn terminate_worker_sessions(
    db: impl PgExecutor<'_>,
    database: &str,
    application_name: &str,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) filter (where pg_terminate_backend(pid)) as "n!" from pg_stat_activity
           where datname = $1 and (application_name = $2 or application_name = $2 || ' leases')"#,
        database,
        application_name
    )
    .fetch_one(db)
    .await
}

/// Ends every session on `database` but this one and those named `spared` (the auditor's);
/// how many it ended. The audit's "PostgreSQL terminates the stack's connections" fault.
pub async fn terminate_sessions(
    db: impl PgExecutor<'_>,
    database: &str,
    spared: &str,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) filter (where pg_terminate_backend(pid)) as "n!" from pg_stat_activity
           where datname = $1 and pid <> pg_backend_pid() and application_name <> $2"#,
        database,
        spared
    )
    .fetch_one(db)
    .await
}
