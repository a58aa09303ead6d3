//! The transactional outbox: status events written in the apply transaction, relayed to the
//! events exchange in id order by one relay at a time.

use orderflow_domain::OrderId;
use sqlx::PgConnection;

/// Any fixed number shared by every relay: holding it (per transaction) means "I am relaying".
const RELAY_LOCK: i64 = 0x6f72_6465_7266_6c6f; // "orderflo"

pub struct OutboxRow {
    pub id: i64,
    pub order_id: OrderId,
    pub routing_key: String,
    pub payload: serde_json::Value,
}

/// Takes the oldest rows for relaying, waiting for any other relay's transaction to end first,
/// so that two relays never interleave (and per-order order holds across processes).
pub async fn lock_batch(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query!(
        "select 1 as locked from pg_advisory_xact_lock($1)",
        RELAY_LOCK
    )
    .fetch_one(&mut *conn)
    .await?;
    let rows = sqlx::query!(
        "select id, order_id, routing_key, payload from outbox order by id limit $1",
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| OutboxRow {
            id: r.id,
            order_id: OrderId(r.order_id),
            routing_key: r.routing_key,
            payload: r.payload,
        })
        .collect())
}

pub async fn delete(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query!("delete from outbox where id = any($1)", ids)
        .execute(conn)
        .await?;
    Ok(())
}
