//! What the worker does with a command: lock it (the inbox), find its neighbours in the
//! order's sequence, count its deliveries, and finish it with its status event.

use super::CommandRow;
use chrono::{DateTime, Utc};
use orderflow_contract::{CommandStatus, Reason, StatusEvent};
use orderflow_domain::{ClientId, CommandId, OrderId};
use sqlx::{PgConnection, PgExecutor};

/// The order's commands after `after_seq`, in order, locked.
pub async fn lock_after(
    conn: &mut PgConnection,
    order_id: OrderId,
    after_seq: i64,
) -> sqlx::Result<Vec<CommandRow>> {
    let rows = sqlx::query!(
        "select * from commands where order_id = $1 and seq > $2 order by seq for update",
        order_id.0,
        after_seq
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| command_row!(r)).collect())
}

/// Reads and locks a command for the apply transaction. The lock orders the worker against the
/// API marking the same command refused (`refuse_unpublished`): exactly one of them wins.
pub async fn lock(conn: &mut PgConnection, id: CommandId) -> sqlx::Result<Option<CommandRow>> {
    let row = sqlx::query!("select * from commands where id = $1 for update", id.0)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| command_row!(r)))
}

/// The commands of an order between two sequence numbers (exclusive), in order, locked.
pub async fn lock_between(
    conn: &mut PgConnection,
    order_id: OrderId,
    after_seq: i64,
    before_seq: i64,
) -> sqlx::Result<Vec<CommandRow>> {
    let rows = sqlx::query!(
        "select * from commands where order_id = $1 and seq > $2 and seq < $3 order by seq for update",
        order_id.0,
        after_seq,
        before_seq
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| command_row!(r)).collect())
}

/// When the worker that finishes a command received the command's own message, and which
/// delivery attempt that was (1 = first), for the command's timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub at: DateTime<Utc>,
    pub attempt: i32,
}

/// Ends a command as its status event says: applied, rejected (with its reason) or failed
/// (with its reason and detail), and queues that event in the outbox. Wakes long-polls and the
/// outbox relay (at commit). A message in hand was published: its arrival stands in for a
/// confirm the API could not record (see [`mark_published`]). `delivered` is `None` for a
/// command finished without its own message in hand (applied ahead of a late message, or failed
/// while another message was being applied).
pub async fn finish(
    conn: &mut PgConnection,
    event: &StatusEvent,
    delivered: Option<Delivered>,
) -> sqlx::Result<()> {
    let status = event.status;
    debug_assert!(status.is_final());
    // clock_timestamp(), not now(): now() is the transaction's start, which would make every
    // apply look instantaneous on the timeline. The update, the outbox row and both
    // notifications are one statement (one round trip). `epoch` is the lease epoch the
    // transaction's fence (`orderflow_fence`) set, `lease_partition` the partition of that lease
    // (after a growth, not always the command's own); null in an unfenced transaction.
    sqlx::query!(
        r#"with finished as (
             update commands set status = $2, reason = $3, detail = $11, result_version = $4,
                                 finished_at = clock_timestamp(), delivered_at = $5, attempt = $6,
                                 published_at = coalesce(published_at, $5),
                                 epoch = nullif(current_setting('orderflow.lease_epoch', true), '')::bigint,
                                 lease_partition = nullif(current_setting('orderflow.lease_partition', true), '')::integer
             where id = $1
             returning id, order_id),
           queued as (
             insert into outbox (order_id, routing_key, payload)
             select order_id, $8, $9 from finished)
         select count(pg_notify($7, id::text)) + count(pg_notify($10, '')) as "notified!"
           from finished"#,
        event.command_id.0,
        status.as_str(),
        event.reason.map(Reason::as_str),
        event.version,
        delivered.map(|d| d.at),
        delivered.map(|d| d.attempt.max(1)),
        crate::COMMAND_DONE_CHANNEL,
        event.routing_key(),
        event.to_json(),
        crate::OUTBOX_CHANNEL,
        event
            .detail
            .as_deref()
            .map(|d| crate::storable_text(d, crate::MAX_STORED_TEXT_BYTES))
    )
    .fetch_one(conn)
    .await?;
    Ok(())
}

/// Withdraws the last start [`note_attempt`] counted for the command: it ended without finishing
/// the command and without its worker failing (a hand-over gave the message back unfinished), so
/// the next start, by whoever holds the partition next, is counted in its place, under its epoch.
pub async fn withdraw_attempt(db: impl PgExecutor<'_>, id: CommandId) -> sqlx::Result<()> {
    sqlx::query!(
        "with gone as (delete from delivery_attempts where command_id = $1 and attempts <= 1)
         update delivery_attempts set attempts = attempts - 1
          where command_id = $1 and attempts > 1",
        id.0
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Counts one more start on a redelivered message; returns the count so far.
pub async fn note_attempt(db: impl PgExecutor<'_>, id: CommandId) -> sqlx::Result<i32> {
    sqlx::query_scalar!(
        "insert into delivery_attempts (command_id, attempts, epoch)
              values ($1, 1, nullif(current_setting('orderflow.lease_epoch', true), '')::bigint)
         on conflict (command_id) do update
             set attempts = delivery_attempts.attempts + 1, last_at = now(), epoch = excluded.epoch
         returning attempts",
        id.0
    )
    .fetch_one(db)
    .await
}
