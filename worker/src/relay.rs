//! What the relays share ([`crate::outbox`], [`crate::command_relay`], and the parked commands'
//! expiry, [`crate::parked`]): the batch size and the traces stored with the commands.

use orderflow_storage::observability;
use sqlx::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

/// Rows relayed per transaction.
pub(crate) const BATCH: i64 = 200;

/// The stored traceparents of these commands, by command id (one query per batch).
pub(crate) async fn traceparents(
    conn: &mut PgConnection,
    command_ids: Vec<Uuid>,
) -> sqlx::Result<HashMap<Uuid, String>> {
    if command_ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(observability::traceparents(conn, &command_ids)
        .await?
        .into_iter()
        .collect())
}
