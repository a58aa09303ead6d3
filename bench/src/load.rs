//! Loading what the checker judges: the run's rows from PostgreSQL (scoped to the run's orders
//! and SKUs), plus the dead-letter queue's depth. Plain `sqlx::query_as` with runtime checks, so
//! the bench needs no offline query data; the rows are plain structs the checks take as input.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use orderflow_contract::Reason;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Clone, Debug, sqlx::FromRow)]
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
}

impl CommandRow {
    /// Refused by the API after the broker said no: it never reached a worker.
    pub fn refused(&self) -> bool {
        self.status == "rejected"
            && matches!(
                self.reason.as_deref().map(Reason::parse),
                Some(Reason::Refused(_))
            )
    }
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EventRow {
    pub order_id: Uuid,
    pub seq: i64,
    pub command_id: Uuid,
    pub data: Value,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub client_id: Uuid,
    pub customer_id: String,
    pub currency: String,
    pub status: String,
    pub version: i64,
    pub items: Value,
    pub total_cents: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StockRow {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub shipped: i64,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PaymentRow {
    pub order_id: Uuid,
    pub command_id: Uuid,
    pub kind: String,
    pub amount_cents: i64,
}

/// Everything the checker reads from the stack, for the run's orders and SKUs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub commands: Vec<CommandRow>,
    pub events: Vec<EventRow>,
    pub orders: Vec<OrderRow>,
    pub inventory: Vec<StockRow>,
    pub payments: Vec<PaymentRow>,
    /// `(key, command_id)` of the run's Idempotency-Keys.
    pub idempotency_keys: Vec<(String, Uuid)>,
    pub outbox_rows: i64,
    /// Messages that arrived in the dead-letter queue during the run (`None`: not readable).
    pub dead_letters: Option<i64>,
}

/// Loads the rows of `orders` and `skus` (and the given Idempotency-Keys).
pub async fn snapshot(
    db: &PgPool,
    orders: &[Uuid],
    skus: &[String],
    keys: &[String],
) -> anyhow::Result<Snapshot> {
    // One snapshot for every table: a command a straggling request records (and a worker applies)
    // while this reads must not be seen accepted in one table and applied in another.
    let mut tx = db.begin().await.context("starting the snapshot")?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await
        .context("starting the snapshot")?;
    let commands = sqlx::query_as(
        "select id, order_id, seq, kind, source, status, reason, result_version, finished_at
         from commands where order_id = any($1) order by order_id, seq",
    )
    .bind(orders)
    .fetch_all(&mut *tx)
    .await
    .context("loading commands")?;
    let events = sqlx::query_as(
        "select order_id, seq, command_id, data, recorded_at
         from order_events where order_id = any($1) order by order_id, seq",
    )
    .bind(orders)
    .fetch_all(&mut *tx)
    .await
    .context("loading events")?;
    let order_rows = sqlx::query_as(
        "select id, client_id, customer_id, currency, status, version, items, total_cents,
                created_at, updated_at
         from orders where id = any($1)",
    )
    .bind(orders)
    .fetch_all(&mut *tx)
    .await
    .context("loading orders")?;
    let inventory = sqlx::query_as(
        "select sku, available, reserved, shipped from inventory where sku = any($1) order by sku",
    )
    .bind(skus)
    .fetch_all(&mut *tx)
    .await
    .context("loading inventory")?;
    let payments = sqlx::query_as(
        "select order_id, command_id, kind, amount_cents from payments
         where order_id = any($1) order by id",
    )
    .bind(orders)
    .fetch_all(&mut *tx)
    .await
    .context("loading payments")?;
    let idempotency_keys = sqlx::query_as::<_, (String, Uuid)>(
        "select key, command_id from idempotency_keys where key = any($1)",
    )
    .bind(keys)
    .fetch_all(&mut *tx)
    .await
    .context("loading idempotency keys")?;
    let outbox_rows =
        sqlx::query_scalar::<_, i64>("select count(*) from outbox where order_id = any($1)")
            .bind(orders)
            .fetch_one(&mut *tx)
            .await
            .context("counting outbox rows")?;
    tx.commit().await.context("ending the snapshot")?;
    Ok(Snapshot {
        commands,
        events,
        orders: order_rows,
        inventory,
        payments,
        idempotency_keys,
        outbox_rows,
        dead_letters: None,
    })
}

/// The dead-letter queue's depth, read without consuming (a passive declare).
pub async fn dead_letter_depth(amqp_url: &str, namespace: &str) -> anyhow::Result<i64> {
    let connection = lapin::Connection::connect(amqp_url, Default::default()).await?;
    let channel = connection.create_channel().await?;
    let depth = orderflow_messaging::queue_depth(&channel, &format!("{namespace}.dead-letter"))
        .await
        .context("reading the dead-letter queue's depth")?;
    let _ = connection.close(200, "done".into()).await;
    Ok(i64::from(depth.ready))
}
