//! The order projection and its event history.

use crate::pages::PageFrom;
use chrono::{DateTime, Utc};
use orderflow_domain::{ClientId, CommandId, Event, Item, Order, OrderId};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, types::Json};

macro_rules! order_row {
    ($r:expr) => {
        Order {
            id: OrderId($r.id),
            client_id: ClientId($r.client_id),
            customer_id: $r
                .customer_id
                .try_into()
                .expect("stored values were validated"),
            currency: $r
                .currency
                .try_into()
                .expect("stored values were validated"),
            status: $r.status.parse().expect("the status check constraint"),
            version: $r.version,
            items: $r.items.0,
            total_cents: $r.total_cents,
            created_at: $r.created_at,
            updated_at: $r.updated_at,
        }
    };
}

/// Locks the order row for the apply transaction (`None`: not created yet).
pub async fn lock(conn: &mut PgConnection, id: OrderId) -> sqlx::Result<Option<Order>> {
    let row = sqlx::query!(
        r#"select id, client_id, customer_id, currency, status, version,
                  items as "items: Json<Vec<Item>>", total_cents, created_at, updated_at
           from orders where id = $1 for update"#,
        id.0
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| order_row!(r)))
}

/// An order as its client sees it: another client's order does not exist.
pub async fn get_for_client(
    db: impl PgExecutor<'_>,
    client_id: ClientId,
    id: OrderId,
) -> sqlx::Result<Option<Order>> {
    let row = sqlx::query!(
        r#"select id, client_id, customer_id, currency, status, version,
                  items as "items: Json<Vec<Item>>", total_cents, created_at, updated_at
           from orders where id = $1 and client_id = $2"#,
        id.0,
        client_id.0
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| order_row!(r)))
}

/// Which of a client's orders a list shows, besides its own (`None`: any).
#[derive(Clone, Copy, Debug, Default)]
pub struct OrderFilter<'a> {
    pub status: Option<&'a str>,
    pub customer_id: Option<&'a str>,
    /// Created at or after.
    pub created_gte: Option<DateTime<Utc>>,
    /// Created before.
    pub created_lt: Option<DateTime<Utc>>,
}

/// Up to `limit` of the client's orders that pass `filter`, from `from`, newest first (by id:
/// a UUIDv7 the API assigns at intake, so in the order they were created). One range of the
/// index `orders_client (client_id, id)` per page, whatever the client's order count; the
/// filters are checked on the rows that range yields.
pub async fn list_for_client(
    db: impl PgExecutor<'_>,
    client_id: ClientId,
    filter: &OrderFilter<'_>,
    from: PageFrom<OrderId>,
    limit: i64,
) -> sqlx::Result<Vec<Order>> {
    let f = filter;
    let (newer, bound) = from.bound(OrderId(uuid::Uuid::max()));
    if newer {
        let mut orders: Vec<Order> = sqlx::query!(
            r#"select id, client_id, customer_id, currency, status, version,
                      items as "items: Json<Vec<Item>>", total_cents, created_at, updated_at
                 from orders
                where client_id = $1 and id > $7
                  and ($2::text is null or status = $2)
                  and ($3::text is null or customer_id = $3)
                  and ($4::timestamptz is null or created_at >= $4)
                  and ($5::timestamptz is null or created_at < $5)
                order by id asc
                limit $6"#,
            client_id.0,
            f.status,
            f.customer_id,
            f.created_gte,
            f.created_lt,
            limit,
            bound.0
        )
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|r| order_row!(r))
        .collect();
        orders.reverse();
        return Ok(orders);
    }
    let orders = sqlx::query!(
        r#"select id, client_id, customer_id, currency, status, version,
                  items as "items: Json<Vec<Item>>", total_cents, created_at, updated_at
             from orders
            where client_id = $1 and id < $7
              and ($2::text is null or status = $2)
              and ($3::text is null or customer_id = $3)
              and ($4::timestamptz is null or created_at >= $4)
              and ($5::timestamptz is null or created_at < $5)
            order by id desc
            limit $6"#,
        client_id.0,
        f.status,
        f.customer_id,
        f.created_gte,
        f.created_lt,
        limit,
        bound.0
    )
    .fetch_all(db)
    .await?;
    Ok(orders.into_iter().map(|r| order_row!(r)).collect())
}

/// One stored event.
#[derive(Clone, Debug, Serialize)]
pub struct EventRecord {
    pub seq: i64,
    pub command_id: CommandId,
    #[serde(flatten)]
    pub event: Event,
    pub recorded_at: DateTime<Utc>,
}

/// The history of an order, seq ascending.
pub async fn events(db: impl PgExecutor<'_>, order_id: OrderId) -> sqlx::Result<Vec<EventRecord>> {
    let rows = sqlx::query!(
        r#"select seq, command_id, data as "data: Json<Event>", recorded_at
           from order_events where order_id = $1 order by seq"#,
        order_id.0
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| EventRecord {
            seq: r.seq,
            command_id: CommandId(r.command_id),
            event: r.data.0,
            recorded_at: r.recorded_at,
        })
        .collect())
}
