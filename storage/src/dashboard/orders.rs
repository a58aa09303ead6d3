//! Orders across clients: the list, one order's command journeys, finished commands for the
//! live feed, and which order won the last units of a SKU.

use chrono::{DateTime, Utc};
use orderflow_domain::{Item, OrderId};
use serde::Serialize;
use sqlx::PgExecutor;
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
    /// Who made it (see [`crate::commands::actor`]).
    pub actor: Option<String>,
}

pub async fn finished_commands(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> sqlx::Result<Vec<FinishedCommand>> {
    sqlx::query_as!(
        FinishedCommand,
        r#"select c.id, c.order_id, c.kind, c.status, c.reason, c.partition, c.seq,
                  c.expected_version, c.result_version, c.accepted_at, c.finished_at, c.attempt,
                  c.actor,
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
    /// Who made it (see [`crate::commands::actor`]).
    pub actor: Option<String>,
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
                traceparent, body, actor
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

/// The order's lines as its projection has them (none until it is created).
pub async fn order_lines(db: impl PgExecutor<'_>, id: OrderId) -> sqlx::Result<Vec<Item>> {
    let items = sqlx::query_scalar!(
        r#"select items as "items: sqlx::types::Json<Vec<Item>>" from orders where id = $1"#,
        id.0
    )
    .fetch_optional(db)
    .await?;
    Ok(items.map(|i| i.0).unwrap_or_default())
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
