//! The order projection and its event history.

use crate::pages::PageFrom;
use chrono::{DateTime, Utc};
use orderflow_domain::details::OrderDetails;
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
            details: $r.details.0,
            tracking_number: $r
                .tracking_number
                .map(|t| t.try_into().expect("stored values were validated")),
            created_at: $r.created_at,
            updated_at: $r.updated_at,
        }
    };
}

/// Locks the order row for the apply transaction (`None`: not created yet).
pub async fn lock(conn: &mut PgConnection, id: OrderId) -> sqlx::Result<Option<Order>> {
    let row = sqlx::query!(
        r#"select id, client_id, customer_id, currency, status, version,
                  items as "items: Json<Vec<Item>>", total_cents,
                  details as "details: Json<OrderDetails>", tracking_number,
                  created_at, updated_at
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
                  items as "items: Json<Vec<Item>>", total_cents,
                  details as "details: Json<OrderDetails>", tracking_number,
                  created_at, updated_at
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

impl OrderFilter<'_> {
    /// Whether the filter lets every order through.
    pub fn is_empty(&self) -> bool {
        self.status.is_none()
            && self.customer_id.is_none()
            && self.created_gte.is_none()
            && self.created_lt.is_none()
    }
}

/// The most orders a filtered page reads. Without a bound a filter that matches few of a
/// client's orders read all of them for one page: at 1M orders, 69–92 ms per request
/// (`orderflow-bench perf --workloads growth`), which the client's rate limit alone would let it
/// repeat until PostgreSQL's CPUs were its own. 10,000 rows cost 14–20 ms a page in the same
/// run; 2,000 keep the worst page near a few ordinary requests.
pub const LIST_SCAN_LIMIT: i64 = 2_000;

/// What [`list_for_client`] read.
#[derive(Debug)]
pub struct OrderScan {
    /// The orders that passed the filter, newest first: at most the `limit` asked for.
    pub orders: Vec<Order>,
    /// Set when the read stopped at [`LIST_SCAN_LIMIT`] rows before it found `limit` orders:
    /// the last order it read (passing the filter or not), from which the next page reads on.
    pub stopped_at: Option<OrderId>,
}

/// Up to `limit` of the client's orders that pass `filter`, from `from`, newest first (by id:
/// a UUIDv7 the API assigns at intake, so in the order they were created). One range of the
/// index `orders_client (client_id, id)` per page, whatever the client's order count; the
/// filters are checked on the rows that range yields, and the read stops at `limit` orders or
/// after [`LIST_SCAN_LIMIT`] rows, whichever comes first (then [`OrderScan::stopped_at`] says
/// where). Only a page that came back short with a filter costs a second statement: the
/// place of the range's last row, read from the index alone.
pub async fn list_for_client(
    db: &sqlx::PgPool,
    client_id: ClientId,
    filter: &OrderFilter<'_>,
    from: PageFrom<OrderId>,
    limit: i64,
) -> sqlx::Result<OrderScan> {
    let f = filter;
    let (newer, bound) = from.bound(OrderId(uuid::Uuid::max()));
    // The inner `limit $8` bounds the rows read; both limits stop the read as soon as they are
    // met (nothing is materialized).
    let orders: Vec<Order> = if newer {
        let mut orders: Vec<Order> = sqlx::query!(
            r#"select id, client_id, customer_id, currency, status, version,
                      items as "items!: Json<Vec<Item>>", total_cents,
                      details as "details!: Json<OrderDetails>", tracking_number,
                  created_at, updated_at
                 from (select * from orders
                        where client_id = $1 and id > $7
                        order by id asc
                        limit $8) as scanned
                where ($2::text is null or status = $2)
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
            bound.0,
            LIST_SCAN_LIMIT
        )
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|r| order_row!(r))
        .collect();
        orders.reverse();
        orders
    } else {
        sqlx::query!(
            r#"select id, client_id, customer_id, currency, status, version,
                      items as "items!: Json<Vec<Item>>", total_cents,
                      details as "details!: Json<OrderDetails>", tracking_number,
                  created_at, updated_at
                 from (select * from orders
                        where client_id = $1 and id < $7
                        order by id desc
                        limit $8) as scanned
                where ($2::text is null or status = $2)
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
            bound.0,
            LIST_SCAN_LIMIT
        )
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|r| order_row!(r))
        .collect()
    };
    let short = (orders.len() as i64) < limit;
    let stopped_at = if short && !f.is_empty() {
        // The range's last row within the bound, if the range goes that far (one statement
        // per direction: each reads the index `orders_client` in its own order).
        let edge = if newer {
            sqlx::query_scalar!(
                "select id from orders where client_id = $1 and id > $2
                  order by id asc offset $3::bigint - 1 limit 1",
                client_id.0,
                bound.0,
                LIST_SCAN_LIMIT
            )
            .fetch_optional(db)
            .await?
        } else {
            sqlx::query_scalar!(
                "select id from orders where client_id = $1 and id < $2
                  order by id desc offset $3::bigint - 1 limit 1",
                client_id.0,
                bound.0,
                LIST_SCAN_LIMIT
            )
            .fetch_optional(db)
            .await?
        };
        edge.map(OrderId)
    } else {
        None
    };
    Ok(OrderScan { orders, stopped_at })
}

/// One stored event.
#[derive(Clone, Debug, Serialize)]
pub struct EventRecord {
    pub seq: i64,
    pub command_id: CommandId,
    #[serde(flatten)]
    pub event: Event,
    pub recorded_at: DateTime<Utc>,
    /// Who made the change: its command's actor (see [`crate::commands::actor`]).
    pub actor: Option<String>,
}

/// The history of an order, seq ascending.
pub async fn events(db: impl PgExecutor<'_>, order_id: OrderId) -> sqlx::Result<Vec<EventRecord>> {
    let rows = sqlx::query!(
        r#"select e.seq, e.command_id, e.data as "data: Json<Event>", e.recorded_at,
                  c.actor as "actor?"
             from order_events e left join commands c on c.id = e.command_id
            where e.order_id = $1 order by e.seq"#,
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
            actor: r.actor,
        })
        .collect())
}
