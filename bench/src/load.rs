//! Loading what the checker judges: the run's rows from PostgreSQL (scoped to the run's orders
//! and SKUs; read by `orderflow_storage::audit`, whose statements sqlx checks like every other),
//! plus the dead-letter queue's depth.

use anyhow::Context as _;
use orderflow_storage::audit::{
    self, CommandRow, EventRow, FeedRow, OrderRow, PaymentRow, StockRow,
};
use sqlx::PgPool;
use uuid::Uuid;

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
    /// The clients' feed events of the run's orders (`GET /v1/events`), by position.
    pub feed: Vec<FeedRow>,
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
    let tables = audit::snapshot(db, orders, skus, keys)
        .await
        .context("loading the run's rows")?;
    Ok(Snapshot {
        commands: tables.commands,
        events: tables.events,
        orders: tables.orders,
        inventory: tables.inventory,
        payments: tables.payments,
        idempotency_keys: tables.idempotency_keys,
        outbox_rows: tables.outbox_rows,
        feed: tables.feed,
        dead_letters: None,
    })
}

/// The dead-letter queue's depth, read without consuming (a passive declare).
pub async fn dead_letter_depth(amqp_url: &str, namespace: &str) -> anyhow::Result<i64> {
    let connection = crate::broker::connect(amqp_url).await?;
    let channel = connection.create_channel().await?;
    let depth = orderflow_messaging::queue_depth(&channel, &format!("{namespace}.dead-letter"))
        .await
        .context("reading the dead-letter queue's depth")?;
    let _ = connection.close(200, "done".into()).await;
    Ok(i64::from(depth.ready))
}
