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
/// (with its reason and detail), and queues that event in the outbox. A message in hand was
/// published: its arrival stands in for a confirm the API could not record (see
/// [`mark_published`]). `delivered` is `None` for a command finished without its own message in
/// hand (applied ahead of a late message, or failed while another message was being applied).
///
/// It notifies nobody: the caller announces what it finished once its transaction committed
/// ([`announce_finished`]). A NOTIFY in the transaction would take PostgreSQL's notify-queue lock,
/// one for the whole server, at commit and hold it through the commit's WAL flush, so every
/// transaction that finishes commands would commit alone, one flush after the other.
pub async fn finish(
    conn: &mut PgConnection,
    event: &StatusEvent,
    delivered: Option<Delivered>,
) -> sqlx::Result<()> {
    let status = event.status;
    debug_assert!(status.is_final());
    // clock_timestamp(), not now(): now() is the transaction's start, which would make every
    // apply look instantaneous on the timeline. The update and the outbox row are one
    // statement (one round trip). `epoch` is the lease epoch the
    // transaction's fence (`orderflow_fence`) set, `lease_partition` the partition of that lease
    // (after a growth, not always the command's own); null in an unfenced transaction.
    sqlx::query!(
        r#"with finished as (
             update commands set status = $2, reason = $3, detail = $9, result_version = $4,
                                 finished_at = clock_timestamp(), delivered_at = $5, attempt = $6,
                                 published_at = coalesce(published_at, $5),
                                 epoch = nullif(current_setting('orderflow.lease_epoch', true), '')::bigint,
                                 lease_partition = nullif(current_setting('orderflow.lease_partition', true), '')::integer
             where id = $1
             returning order_id)
         insert into outbox (order_id, routing_key, payload)
         select order_id, $7, $8 from finished"#,
        event.command_id.0,
        status.as_str(),
        event.reason.map(Reason::as_str),
        event.version,
        delivered.map(|d| d.at),
        delivered.map(|d| d.attempt.max(1)),
        event.routing_key(),
        event.to_json(),
        event
            .detail
            .as_deref()
            .map(|d| crate::storable_text(d, crate::MAX_STORED_TEXT_BYTES))
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Announces commands that a committed transaction finished ([`finish`]): their ids on the
/// commands-done channel (long-polls, the dashboard) and a wake-up on the outbox channel (the
/// relays). A transaction of its own, outside the one that finished them, so that only it holds
/// the notify-queue lock (see [`finish`]); and since a notification needs no durability, its
/// commit does not wait for the WAL flush (`synchronous_commit` off for it alone), so it holds
/// that lock only for a moment. Should the process die between that commit and this, the
/// relays still find the outbox rows on their next sweep (`worker/src/outbox.rs`) and the
/// long-polls answer at their deadline.
pub async fn announce_finished(db: impl PgExecutor<'_>, ids: &[uuid::Uuid]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"select count(pg_notify($1, id::text)) + count(pg_notify($2, '')) as "notified!"
             from set_config('synchronous_commit', 'off', true) as unflushed,
                  unnest($3::uuid[]) as id"#,
        crate::COMMAND_DONE_CHANNEL,
        crate::OUTBOX_CHANNEL,
        ids
    )
    .fetch_one(db)
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
