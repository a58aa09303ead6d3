//! Stock per SKU. Every movement is one conditional `update`, so `available` can never go
//! below zero whatever runs concurrently; callers take SKUs in sorted order (the lock order).

use orderflow_domain::Sku;
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Stock {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub shipped: i64,
}

/// Moves `quantity` from available to reserved if that much is available. `false` otherwise
/// (including an unknown SKU, which has no stock).
pub async fn reserve(conn: &mut PgConnection, sku: &Sku, quantity: i64) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update inventory set available = available - $2, reserved = reserved + $2, updated_at = now()
         where sku = $1 and available >= $2",
        sku.as_str(),
        quantity
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves `quantity` from reserved back to available (a cancelled reservation).
pub async fn release(conn: &mut PgConnection, sku: &Sku, quantity: i64) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update inventory set available = available + $2, reserved = reserved - $2, updated_at = now()
         where sku = $1 and reserved >= $2",
        sku.as_str(),
        quantity
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves `quantity` from reserved to shipped (the goods left).
pub async fn ship(conn: &mut PgConnection, sku: &Sku, quantity: i64) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "update inventory set reserved = reserved - $2, shipped = shipped + $2, updated_at = now()
         where sku = $1 and reserved >= $2",
        sku.as_str(),
        quantity
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Locks the stock rows of the orders' lines and of `skus`, in SKU order (the lock order), for
/// a transaction that will move several orders' stock.
pub async fn lock_for_orders(
    conn: &mut PgConnection,
    order_ids: &[uuid::Uuid],
    skus: &[String],
) -> sqlx::Result<()> {
    sqlx::query!(
        "select sku from inventory
         where sku in (select line->>'sku' from orders, jsonb_array_elements(items) line
                       where id = any($1)
                       union
                       select unnest($2::text[]))
         order by sku
         for update",
        order_ids,
        skus
    )
    .fetch_all(conn)
    .await?;
    Ok(())
}

/// Sets the available stock of a SKU (an admin's restock or count), creating the SKU if new.
pub async fn set_available(
    db: impl PgExecutor<'_>,
    sku: &Sku,
    available: i64,
) -> sqlx::Result<Stock> {
    let row = sqlx::query_as!(
        Stock,
        "insert into inventory (sku, available) values ($1, $2)
         on conflict (sku) do update set available = excluded.available, updated_at = now()
         returning sku, available, reserved, shipped",
        sku.as_str(),
        available
    )
    .fetch_one(db)
    .await?;
    Ok(row)
}

pub async fn get(db: impl PgExecutor<'_>, sku: &Sku) -> sqlx::Result<Option<Stock>> {
    sqlx::query_as!(
        Stock,
        "select sku, available, reserved, shipped from inventory where sku = $1",
        sku.as_str()
    )
    .fetch_optional(db)
    .await
}

/// A page of stock, in SKU order: the SKUs after `after` (all when `None`) whose name contains
/// `containing` (any when `None`), at most `limit`.
pub async fn list(
    db: impl PgExecutor<'_>,
    after: Option<&str>,
    containing: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<Stock>> {
    sqlx::query_as!(
        Stock,
        "select sku, available, reserved, shipped from inventory
          where ($1::text is null or sku > $1)
            and ($2::text is null or strpos(lower(sku), lower($2)) > 0)
          order by sku limit $3",
        after,
        containing,
        limit
    )
    .fetch_all(db)
    .await
}
