//! The transactional outbox: status events written in the apply transaction, relayed to the
//! events exchange in id order by one relay at a time.

use chrono::{DateTime, Utc};
use orderflow_domain::OrderId;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// Any fixed number shared by every relay: holding it (per transaction) means "I am relaying".
const RELAY_LOCK: i64 = 0x6f72_6465_7266_6c6f; // "orderflo"

pub struct OutboxRow {
    pub id: i64,
    pub order_id: OrderId,
    pub routing_key: String,
    pub payload: serde_json::Value,
}

/// Waits for any relay's transaction to end and keeps the others out until this one ends: what
/// appends to the clients' event log must hold it (see [`pass_on`]).
pub async fn lock_relays(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query!(
        "select 1 as locked from pg_advisory_xact_lock($1)",
        RELAY_LOCK
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(())
}

/// Takes the oldest rows for relaying, waiting for any other relay's transaction to end first,
/// so that two relays never interleave (and per-order order holds across processes).
pub async fn lock_batch(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<OutboxRow>> {
    lock_relays(conn).await?;
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

/// Passes relayed rows on: deletes them from the outbox and appends each that is a client's
/// status event to the clients' event log (`client_events`), in outbox order, at the next
/// positions. Called by the relay holding the relays' lock ([`lock_batch`]) until it commits:
/// positions are therefore gapless and in commit order (see the migration `client_events`).
/// Returns the clients whose feeds got something, each once.
pub async fn pass_on(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<Vec<Uuid>> {
    // A row whose payload names no client or command (nothing the worker writes; a hand-made
    // row) is deleted without a place in anyone's feed.
    sqlx::query_scalar!(
        r#"with gone as (
             delete from outbox where id = any($1)
             returning id, order_id, routing_key, payload),
           theirs as (
             select id, order_id, routing_key, payload,
                    (payload->>'client_id')::uuid as client_id,
                    (payload->>'command_id')::uuid as command_id
               from gone
              where payload->>'client_id' ~* $2 and payload->>'command_id' ~* $2),
           head as (
             select greatest((select coalesce(max(position), 0) from client_events),
                             (select pruned_through from client_events_horizon)) as position),
           logged as (
             insert into client_events (position, client_id, order_id, command_id, type, payload)
             select head.position + row_number() over (order by theirs.id), theirs.client_id,
                    theirs.order_id, theirs.command_id, theirs.routing_key, theirs.payload
               from theirs, head
             returning client_id)
         select distinct client_id as "client_id!" from logged"#,
        ids,
        UUID_PATTERN,
    )
    .fetch_all(conn)
    .await
}

/// A UUID's text form, checked before a cast that would fail the whole statement.
const UUID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

/// Tells every API process whose feeds of `clients` have something new (the channel
/// [`crate::CLIENT_EVENTS_CHANNEL`], one notification per client). Outside the relay's
/// transaction and without waiting for a WAL flush, like [`crate::commands::announce_finished`];
/// a notification lost to a crash in between is made good by the feeds' own re-read (see
/// `api/src/routes/events.rs`).
pub async fn announce_client_events(db: impl PgExecutor<'_>, clients: &[Uuid]) -> sqlx::Result<()> {
    if clients.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"select count(pg_notify($1, id::text)) as "notified!"
             from set_config('synchronous_commit', 'off', true) as unflushed,
                  unnest($2::uuid[]) as id"#,
        crate::CLIENT_EVENTS_CHANNEL,
        clients
    )
    .fetch_one(db)
    .await?;
    Ok(())
}

/// Deletes up to `limit` of the oldest client events recorded before `before` (always a prefix
/// of the log: it stops at the first younger one), and moves the horizon past them in the same
/// statement; returns how many it deleted.
pub async fn prune_client_events(
    db: &sqlx::PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<u64> {
    let pruned = sqlx::query_scalar!(
        r#"with first as (
             select position, recorded_at from client_events order by position limit $2),
           doomed as (
             select position from first
              where position < coalesce((select min(position) from first where recorded_at >= $1),
                                        9223372036854775807)),
           gone as (
             delete from client_events where position in (select position from doomed)
             returning position),
           moved as (
             update client_events_horizon
                set pruned_through = greatest(pruned_through, (select max(position) from gone))
              where exists (select from gone))
         select count(*) as "pruned!" from gone"#,
        before,
        limit
    )
    .fetch_one(db)
    .await?;
    Ok(pruned as u64)
}
