//! Commands and the per-order streams that sequence them. The `commands` table is also the
//! worker's inbox: a command whose status is final has been dealt with.

use chrono::{DateTime, Utc};
use orderflow_contract::{
    CONTRACT_VERSION, CommandMessage, CommandStatus, IntakeRefusal, Reason, StatusEvent,
};
use orderflow_domain::{ClientId, CommandId, CommandKind, OrderId};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};

/// Who sent the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Http,
    Amqp,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Amqp => "amqp",
        }
    }
}

/// A command to record.
pub struct NewCommand<'a> {
    pub id: CommandId,
    pub client_id: ClientId,
    pub order_id: OrderId,
    pub kind: CommandKind,
    /// The command as in the contract (`type` + fields).
    pub body: &'a serde_json::Value,
    pub expected_version: Option<i64>,
    pub source: Source,
    pub partition: u16,
    /// When the API received the request (None: straight from the queue).
    pub received_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The W3C traceparent the command arrived with, carried on to the worker.
    pub traceparent: Option<&'a str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CommandRow {
    pub id: CommandId,
    pub client_id: ClientId,
    pub order_id: OrderId,
    pub seq: i64,
    pub kind: CommandKind,
    pub body: serde_json::Value,
    pub expected_version: Option<i64>,
    pub status: CommandStatus,
    /// Why it was rejected or failed.
    pub reason: Option<Reason>,
    /// For people: what went wrong, when it failed.
    pub detail: Option<String>,
    pub result_version: Option<i64>,
    pub partition: i32,
    pub accepted_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Set while the command waits for an earlier command of its order that no worker has
    /// seen yet (a create overtaken by its follow-up).
    pub parked_at: Option<DateTime<Utc>>,
}

impl CommandRow {
    /// The message for this recorded command (the API's publish, the relay's republish).
    pub fn to_message(&self) -> Result<CommandMessage, serde_json::Error> {
        Ok(CommandMessage {
            version: CONTRACT_VERSION,
            command_id: self.id,
            client_id: self.client_id,
            order_id: self.order_id,
            expected_version: self.expected_version,
            command: serde_json::from_value(self.body.clone())?,
        })
    }
}

macro_rules! command_row {
    ($r:expr) => {
        CommandRow {
            id: CommandId($r.id),
            client_id: ClientId($r.client_id),
            order_id: OrderId($r.order_id),
            seq: $r.seq,
            kind: $r.kind.parse().expect("the kind check constraint"),
            body: $r.body,
            expected_version: $r.expected_version,
            status: CommandStatus::parse(&$r.status),
            reason: $r.reason.as_deref().map(Reason::parse),
            detail: $r.detail,
            result_version: $r.result_version,
            partition: $r.partition,
            accepted_at: $r.accepted_at,
            published_at: $r.published_at,
            finished_at: $r.finished_at,
            parked_at: $r.parked_at,
        }
    };
}

/// Opens the stream of a new order (its create command takes seq 1), or takes the seq 1 that a
/// parked follow-up reserved for the create (see [`open_awaiting_stream`]). `false` if the order
/// id is already taken.
pub async fn open_stream(
    db: impl PgExecutor<'_>,
    order_id: OrderId,
    client_id: ClientId,
) -> sqlx::Result<bool> {
    let opened = sqlx::query!(
        "insert into order_streams (order_id, client_id, last_seq) values ($1, $2, 1)
         on conflict (order_id) do update set awaiting_create = false
             where order_streams.awaiting_create and order_streams.client_id = excluded.client_id",
        order_id.0,
        client_id.0
    )
    .execute(db)
    .await?;
    Ok(opened.rows_affected() == 1)
}

/// Opens the stream of an order whose follow-up arrived before its create: seq 1 is reserved
/// for the create, and the follow-up takes seq 2. `false` if the stream exists.
pub async fn open_awaiting_stream(
    db: impl PgExecutor<'_>,
    order_id: OrderId,
    client_id: ClientId,
) -> sqlx::Result<bool> {
    let opened = sqlx::query!(
        "insert into order_streams (order_id, client_id, last_seq, awaiting_create)
         values ($1, $2, 2, true)
         on conflict (order_id) do nothing",
        order_id.0,
        client_id.0
    )
    .execute(db)
    .await?;
    Ok(opened.rows_affected() == 1)
}

/// Hands out the next sequence number of an existing order's stream, holding the stream's row
/// lock until the caller's transaction ends (so sequences commit in order). `None` if the order
/// does not exist for this client.
pub async fn next_seq(
    db: impl PgExecutor<'_>,
    order_id: OrderId,
    client_id: ClientId,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!(
        "update order_streams set last_seq = last_seq + 1
         where order_id = $1 and client_id = $2 returning last_seq",
        order_id.0,
        client_id.0
    )
    .fetch_optional(db)
    .await
}

/// The owner of an order stream, if it exists.
pub async fn stream_owner(
    db: impl PgExecutor<'_>,
    order_id: OrderId,
) -> sqlx::Result<Option<ClientId>> {
    let owner = sqlx::query_scalar!(
        "select client_id from order_streams where order_id = $1",
        order_id.0
    )
    .fetch_optional(db)
    .await?;
    Ok(owner.map(ClientId))
}

/// An order's stream as the apply transaction sees it.
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    /// Every command up to this seq has been dealt with.
    pub processed_seq: i64,
    /// Some command of the order is parked, waiting for an earlier one.
    pub has_parked: bool,
}

/// Locks an order's stream for the apply transaction.
pub async fn lock_stream(conn: &mut PgConnection, order_id: OrderId) -> sqlx::Result<Stream> {
    let row = sqlx::query!(
        "select processed_seq, has_parked from order_streams where order_id = $1 for update",
        order_id.0
    )
    .fetch_one(conn)
    .await?;
    Ok(Stream {
        processed_seq: row.processed_seq,
        has_parked: row.has_parked,
    })
}

/// Parks a command until the earlier commands of its order are recorded (keeping the time it
/// was first parked), and marks its stream as having parked commands.
pub async fn park(conn: &mut PgConnection, id: CommandId, order_id: OrderId) -> sqlx::Result<()> {
    sqlx::query!(
        "with parked as (
             update commands set parked_at = coalesce(parked_at, clock_timestamp()) where id = $1
         )
         update order_streams set has_parked = true where order_id = $2",
        id.0,
        order_id.0
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that none of the order's commands is parked any more.
pub async fn clear_parked(conn: &mut PgConnection, order_id: OrderId) -> sqlx::Result<()> {
    sqlx::query!(
        "update order_streams set has_parked = false where order_id = $1",
        order_id.0
    )
    .execute(conn)
    .await?;
    Ok(())
}

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

/// Parked commands that have waited longer than `min_age_ms`, locked so one worker takes each.
pub async fn lock_expired_parked(
    conn: &mut PgConnection,
    min_age_ms: i64,
    limit: i64,
) -> sqlx::Result<Vec<CommandRow>> {
    let rows = sqlx::query!(
        "select * from commands
         where status = 'accepted' and parked_at is not null
           and parked_at < now() - make_interval(secs => $1::bigint / 1000.0)
         order by parked_at
         limit $2
         for update skip locked",
        min_age_ms,
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| command_row!(r)).collect())
}

/// Records that every command up to `seq` has been dealt with (`seq` 0: as far as it was), and
/// goes on past the commands after it that are already final: those the API refused (queue full,
/// broker down) after recording them, which no worker will ever see. So an order's room
/// (`last_seq - processed_seq`, see [`record_next`]) never stays taken by refused commands. It
/// stops at the first seq that is not final or not recorded yet.
pub async fn set_processed(
    conn: &mut PgConnection,
    order_id: OrderId,
    seq: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update order_streams s
            set processed_seq = coalesce(
                  (select min(g.seq) - 1
                     from generate_series(greatest(s.processed_seq, $2) + 1, s.last_seq) as g(seq)
                    where not exists (select from commands c
                                       where c.order_id = s.order_id and c.seq = g.seq
                                         and c.status in ('applied', 'rejected', 'failed'))),
                  s.last_seq)
          where s.order_id = $1",
        order_id.0,
        seq
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    command: &NewCommand<'_>,
    seq: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into commands (id, client_id, order_id, seq, kind, body, expected_version, source, partition,
                               received_at, traceparent, published_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, case when $8 = 'amqp' then now() end)",
        command.id.0,
        command.client_id.0,
        command.order_id.0,
        seq,
        command.kind.as_str(),
        command.body,
        command.expected_version,
        command.source.as_str(),
        i32::from(command.partition),
        command.received_at,
        command.traceparent
    )
    .execute(db)
    .await?;
    Ok(())
}

/// What [`record_next`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Intake {
    /// The key is claimed and the command recorded with this seq.
    Recorded(i64),
    /// Nothing was written: the key was claimed before this statement began and names this
    /// command (perhaps another request's: compare the fingerprint).
    KeyTaken {
        fingerprint: Vec<u8>,
        command_id: CommandId,
    },
    /// Nothing was written, and the key names no command this statement could see.
    NotRecorded {
        /// The stream had room and was locked, so the key was claimed by a request that
        /// committed while this one waited (look it up), or released again (try again). False:
        /// no room, or not the client's order.
        stream_locked: bool,
        /// The order's unfinished commands when the statement began; `None`: not this client's
        /// order. Below the cap without `stream_locked`, a concurrent request took the last room while
        /// this one waited (and may have been this key's: look it up).
        pending: Option<i64>,
    },
}

/// The API's intake of a command for an existing order, as one statement (one round trip, and
/// no transaction left open between statements): lock the order's stream if it is the client's
/// and has room (fewer than `max_pending` unfinished commands), claim the Idempotency-Key, take
/// the next seq and insert the command. Each part runs only on what the one before returned, and
/// the statement is atomic: either all of it is written or none. A concurrent request for the
/// same order waits on the stream row, so seqs come out gapless and in commit order; one with
/// the same key (on another order) waits on the key and then finds it taken.
///
/// When nothing is written the statement also says why, as its snapshot saw it: the key's
/// command, or the order's unfinished commands (or that it is not the client's). So a refusal
/// (a full order, a retry of an accepted key) costs the one round trip too.
///
/// Room is counted from the stream's seqs (`last_seq - processed_seq`, the common case, one
/// row); only when that says full are the commands after `processed_seq` that are already final
/// taken off: those the API recorded and the broker then refused, which sit behind a command
/// still pending until the worker moves past them (see [`set_processed`]). A snapshot that misses
/// a refusal committed meanwhile only counts less room, never more.
pub async fn record_next(
    db: impl PgExecutor<'_>,
    command: &NewCommand<'_>,
    key: &str,
    fingerprint: &[u8],
    max_pending: i64,
) -> sqlx::Result<Intake> {
    let row = sqlx::query!(
        r#"with stream as (
             select order_id from order_streams s
              where order_id = $3 and client_id = $2
                and (last_seq - processed_seq < $13
                     or last_seq - processed_seq
                        - (select count(*) from commands c
                            where c.order_id = s.order_id and c.seq > s.processed_seq
                              and c.status <> 'accepted') < $13)
                for update),
           claimed as (
             insert into idempotency_keys (client_id, key, fingerprint, command_id)
             select $2::uuid, $11::text, $12::bytea, $1::uuid from stream
                 on conflict do nothing
             returning command_id),
           numbered as (
             update order_streams set last_seq = last_seq + 1
              where order_id = $3 and exists (select from claimed)
             returning last_seq),
           recorded as (
             insert into commands (id, client_id, order_id, seq, kind, body, expected_version,
                                   source, partition, received_at, traceparent, published_at)
             select $1::uuid, $2::uuid, $3::uuid, last_seq, $4::text, $5::jsonb, $6::bigint,
                    $7::text, $8::int, $9::timestamptz, $10::text,
                    case when $7 = 'amqp' then now() end from numbered
             returning seq)
         select exists (select from stream) as "room!", (select seq from recorded) as seq,
                k.fingerprint as "taken_fingerprint?", k.command_id as "taken_command_id?",
                (select last_seq - processed_seq from order_streams
                  where order_id = $3 and client_id = $2) as pending
           from (select) as statement
           left join idempotency_keys k on k.client_id = $2 and k.key = $11"#,
        command.id.0,
        command.client_id.0,
        command.order_id.0,
        command.kind.as_str(),
        command.body,
        command.expected_version,
        command.source.as_str(),
        i32::from(command.partition),
        command.received_at,
        command.traceparent,
        key,
        fingerprint,
        max_pending
    )
    .fetch_one(db)
    .await?;
    Ok(
        match (row.seq, row.taken_fingerprint, row.taken_command_id) {
            (Some(seq), _, _) => Intake::Recorded(seq),
            (None, Some(fingerprint), Some(id)) => Intake::KeyTaken {
                fingerprint,
                command_id: CommandId(id),
            },
            _ => Intake::NotRecorded {
                stream_locked: row.room,
                pending: row.pending,
            },
        },
    )
}

/// Reads and locks a command for the apply transaction. The lock orders the worker against the
/// API marking the same command refused (`refuse_unpublished`): exactly one of them wins.
pub async fn lock(conn: &mut PgConnection, id: CommandId) -> sqlx::Result<Option<CommandRow>> {
    let row = sqlx::query!("select * from commands where id = $1 for update", id.0)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| command_row!(r)))
}

/// A command as its client sees it: another client's command does not exist.
pub async fn get_for_client(
    db: impl PgExecutor<'_>,
    client_id: ClientId,
    id: CommandId,
) -> sqlx::Result<Option<CommandRow>> {
    let row = sqlx::query!(
        "select * from commands where id = $1 and client_id = $2",
        id.0,
        client_id.0
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| command_row!(r)))
}

/// [`get_for_client`] once no transaction is writing the command: waits for a worker applying
/// it (or an API refusing it) to commit, so a replay of its key reads how that ended. (The API
/// skips recording the broker's confirm on a row a worker holds; see [`mark_published`].)
pub async fn get_for_client_settled(
    db: impl PgExecutor<'_>,
    client_id: ClientId,
    id: CommandId,
) -> sqlx::Result<Option<CommandRow>> {
    let row = sqlx::query!(
        "select * from commands where id = $1 and client_id = $2 for share",
        id.0,
        client_id.0
    )
    .fetch_optional(db)
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

/// Records the broker's confirm; returns the ids it marked. Rows locked by a worker are
/// skipped, not waited for: the worker is applying that command, and [`finish`] records when
/// its message arrived, and a replay of the command's key waits for that worker
/// ([`get_for_client_settled`]). Ids already marked are not returned either.
pub async fn mark_published(
    db: impl PgExecutor<'_>,
    ids: &[uuid::Uuid],
) -> sqlx::Result<Vec<uuid::Uuid>> {
    sqlx::query_scalar!(
        "update commands set published_at = now()
         where id in (select id from commands
                      where id = any($1) and published_at is null
                      for update skip locked)
         returning id",
        ids
    )
    .fetch_all(db)
    .await
}

/// Marks a command the broker did not take so that nothing ever runs it: rejected with
/// `reason`. Returns `false` if it was published (by the relay) or applied (ahead of its message,
/// by a later command of its order) meanwhile: then it stands, and the caller says so.
pub async fn refuse_unpublished(
    db: impl PgExecutor<'_>,
    id: CommandId,
    reason: IntakeRefusal,
) -> sqlx::Result<bool> {
    let done = sqlx::query_scalar!(
        "with refused as (
             update commands set status = 'rejected', reason = $2, finished_at = now()
             where id = $1 and published_at is null and status = 'accepted'
             returning id
         )
         select count(pg_notify($3, id::text)) as \"refused!\" from refused",
        id.0,
        reason.as_str(),
        super::COMMAND_DONE_CHANNEL
    )
    .fetch_one(db)
    .await?;
    Ok(done == 1)
}

/// Accepted commands the broker never confirmed, older than `min_age`: the API died (or the
/// broker was down) between recording and publishing. Locked so that one relay takes each.
pub async fn lock_unpublished(
    conn: &mut PgConnection,
    min_age_ms: i64,
    limit: i64,
) -> sqlx::Result<Vec<CommandRow>> {
    let rows = sqlx::query!(
        "select * from commands
         where published_at is null and status = 'accepted'
           and accepted_at < now() - make_interval(secs => $1::bigint / 1000.0)
         order by accepted_at
         limit $2
         for update skip locked",
        min_age_ms,
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| command_row!(r)).collect())
}

/// Accepted commands whose confirmed message no worker received while a message published
/// on the same partition more than a second later was delivered: the broker dropped it (see the
/// migration `parked_and_overtaken`) or requeued it behind later ones. Older than `min_age_ms`,
/// not parked, locked so that one relay takes each.
pub async fn lock_overtaken(
    conn: &mut PgConnection,
    min_age_ms: i64,
    limit: i64,
) -> sqlx::Result<Vec<CommandRow>> {
    let rows = sqlx::query!(
        "select * from commands c
         where c.status = 'accepted' and c.published_at is not null and c.parked_at is null
           and c.published_at < now() - make_interval(secs => $1::bigint / 1000.0)
           and exists (select 1 from commands later
                       where later.partition = c.partition and later.delivered_at is not null
                         and later.published_at > c.published_at + interval '1 second')
         order by c.published_at
         limit $2
         for update skip locked",
        min_age_ms,
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| command_row!(r)).collect())
}

/// Records that overtaken commands were published again (now), so that only a message
/// delivered after this publish makes them overtaken again.
pub async fn mark_republished(db: impl PgExecutor<'_>, ids: &[uuid::Uuid]) -> sqlx::Result<()> {
    sqlx::query!(
        "update commands set published_at = now() where id = any($1) and status = 'accepted'",
        ids
    )
    .execute(db)
    .await?;
    Ok(())
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
    // notifications are one statement (one round trip).
    sqlx::query!(
        r#"with finished as (
             update commands set status = $2, reason = $3, detail = $11, result_version = $4,
                                 finished_at = clock_timestamp(), delivered_at = $5, attempt = $6,
                                 published_at = coalesce(published_at, $5)
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
        super::COMMAND_DONE_CHANNEL,
        event.routing_key(),
        event.to_json(),
        super::OUTBOX_CHANNEL,
        event
            .detail
            .as_deref()
            .map(|d| super::storable_text(d, super::MAX_STORED_TEXT_BYTES))
    )
    .fetch_one(conn)
    .await?;
    Ok(())
}

/// Counts one more start on a redelivered message; returns the count so far.
pub async fn note_attempt(db: impl PgExecutor<'_>, id: CommandId) -> sqlx::Result<i32> {
    sqlx::query_scalar!(
        "insert into delivery_attempts (command_id, attempts) values ($1, 1)
         on conflict (command_id) do update
             set attempts = delivery_attempts.attempts + 1, last_at = now()
         returning attempts",
        id.0
    )
    .fetch_one(db)
    .await
}
