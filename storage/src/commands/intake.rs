//! What the API does with a command: record it (with its seq), read it back for its client,
//! mark the broker's confirm, or refuse it when the broker would not take it.

use super::{CommandRow, NewCommand};
use crate::pages::PageFrom;
use orderflow_contract::{CommandStatus, IntakeRefusal, Reason};
use orderflow_domain::{ClientId, CommandId, OrderId};
use sqlx::PgExecutor;

pub async fn insert(
    db: impl PgExecutor<'_>,
    command: &NewCommand<'_>,
    seq: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into commands (id, client_id, order_id, seq, kind, body, expected_version, source, partition,
                               received_at, traceparent, published_at, actor)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, case when $8 = 'amqp' then now() end, $12)",
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
        command.traceparent,
        command.actor
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
                                   source, partition, received_at, traceparent, published_at,
                                   actor)
             select $1::uuid, $2::uuid, $3::uuid, last_seq, $4::text, $5::jsonb, $6::bigint,
                    $7::text, $8::int, $9::timestamptz, $10::text,
                    case when $7 = 'amqp' then now() end, $14::text from numbered
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
        max_pending,
        command.actor
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

/// One request of a batch for [`record_batch`]: a command for an existing order, with the
/// Idempotency-Key it claims.
pub struct BatchEntry<'a> {
    pub command: NewCommand<'a>,
    pub key: &'a str,
    pub fingerprint: &'a [u8],
}

/// What [`record_batch`] did with one entry.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchIntake {
    /// As [`record_next`] would have answered.
    Done(Intake),
    /// The order's stream had room but another transaction held it (a worker applying the
    /// order's last command, or another API process recording one): not waited for, nothing
    /// written. Record it alone, with [`record_next`], which waits its turn.
    Skipped,
}

/// [`record_next`] for many requests in one statement (group commit at intake: one round trip
/// and one commit for every request that arrived while the previous batch was written). The
/// entries must be for distinct orders. Each entry is recorded or not as [`record_next`] would
/// record it alone, with one difference: an order's stream that another transaction holds is
/// skipped (`skip locked`) instead of waited for, so a batch never waits on a stream row and
/// never takes part in a deadlock over them (a worker's batch locks its orders' streams in
/// message order). The statement can still wait on a key that another transaction inserted and
/// has not committed (one key sent twice at once), as the single statement does; it claims its
/// keys in key order, so two batches waiting on each other's keys wait in the same order and
/// cannot deadlock either. The answer has one entry per input, in input order.
pub async fn record_batch(
    db: impl PgExecutor<'_>,
    entries: &[BatchEntry<'_>],
    max_pending: i64,
) -> sqlx::Result<Vec<BatchIntake>> {
    let ids: Vec<uuid::Uuid> = entries.iter().map(|e| e.command.id.0).collect();
    let clients: Vec<uuid::Uuid> = entries.iter().map(|e| e.command.client_id.0).collect();
    let orders: Vec<uuid::Uuid> = entries.iter().map(|e| e.command.order_id.0).collect();
    let kinds: Vec<&str> = entries.iter().map(|e| e.command.kind.as_str()).collect();
    let bodies: Vec<&serde_json::Value> = entries.iter().map(|e| e.command.body).collect();
    let versions: Vec<Option<i64>> = entries.iter().map(|e| e.command.expected_version).collect();
    let sources: Vec<&str> = entries.iter().map(|e| e.command.source.as_str()).collect();
    let partitions: Vec<i32> = entries
        .iter()
        .map(|e| i32::from(e.command.partition))
        .collect();
    let received: Vec<Option<chrono::DateTime<chrono::Utc>>> =
        entries.iter().map(|e| e.command.received_at).collect();
    let traceparents: Vec<Option<&str>> = entries.iter().map(|e| e.command.traceparent).collect();
    let keys: Vec<&str> = entries.iter().map(|e| e.key).collect();
    let fingerprints: Vec<&[u8]> = entries.iter().map(|e| e.fingerprint).collect();
    let actors: Vec<Option<&str>> = entries.iter().map(|e| e.command.actor).collect();
    let rows = sqlx::query!(
        r#"with input as (
             select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::jsonb[],
                                  $6::bigint[], $7::text[], $8::int[], $9::timestamptz[],
                                  $10::text[], $11::text[], $12::bytea[], $14::text[])
                      with ordinality as i (id, client_id, order_id, kind, body, expected_version,
                                            source, partition, received_at, traceparent, key,
                                            fingerprint, actor, n)),
           stream as (
             select s.order_id from order_streams s
              where (s.order_id, s.client_id) in (select order_id, client_id from input)
                and (last_seq - processed_seq < $13
                     or last_seq - processed_seq
                        - (select count(*) from commands c
                            where c.order_id = s.order_id and c.seq > s.processed_seq
                              and c.status <> 'accepted') < $13)
                for update of s skip locked),
           claimed as (
             insert into idempotency_keys (client_id, key, fingerprint, command_id)
             select i.client_id, i.key, i.fingerprint, i.id
               from input i join stream using (order_id)
              order by i.client_id, i.key, i.n
                 on conflict do nothing
             returning command_id),
           numbered as (
             update order_streams s set last_seq = s.last_seq + 1
               from input i join claimed c on c.command_id = i.id
              where s.order_id = i.order_id
             returning s.order_id, s.last_seq),
           recorded as (
             insert into commands (id, client_id, order_id, seq, kind, body, expected_version,
                                   source, partition, received_at, traceparent, published_at,
                                   actor)
             select i.id, i.client_id, i.order_id, n.last_seq, i.kind, i.body, i.expected_version,
                    i.source, i.partition, i.received_at, i.traceparent,
                    case when i.source = 'amqp' then now() end, i.actor
               from input i join numbered n using (order_id)
             returning id, seq)
         select i.n as "n!", exists (select from stream where stream.order_id = i.order_id) as "locked!",
                r.seq as "seq?", k.fingerprint as "taken_fingerprint?",
                k.command_id as "taken_command_id?",
                s.last_seq - s.processed_seq as "pending?",
                coalesce(s.last_seq - s.processed_seq < $13
                         or s.last_seq - s.processed_seq
                            - (select count(*) from commands c
                                where c.order_id = s.order_id and c.seq > s.processed_seq
                                  and c.status <> 'accepted') < $13, false) as "room!"
           from input i
           left join recorded r on r.id = i.id
           left join idempotency_keys k on k.client_id = i.client_id and k.key = i.key
           left join order_streams s on s.order_id = i.order_id and s.client_id = i.client_id
          order by i.n"#,
        &ids,
        &clients,
        &orders,
        &kinds as &[&str],
        &bodies as &[&serde_json::Value],
        &versions as &[Option<i64>],
        &sources as &[&str],
        &partitions,
        &received as &[Option<chrono::DateTime<chrono::Utc>>],
        &traceparents as &[Option<&str>],
        &keys as &[&str],
        &fingerprints as &[&[u8]],
        max_pending,
        &actors as &[Option<&str>]
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |row| match (row.seq, row.taken_fingerprint, row.taken_command_id) {
                (Some(seq), _, _) => BatchIntake::Done(Intake::Recorded(seq)),
                (None, Some(fingerprint), Some(id)) => BatchIntake::Done(Intake::KeyTaken {
                    fingerprint,
                    command_id: CommandId(id),
                }),
                // Room in the statement's snapshot, but the stream was not locked: another
                // transaction held it (or took the room meanwhile; alone, the request finds out).
                _ if !row.locked && row.room => BatchIntake::Skipped,
                _ => BatchIntake::Done(Intake::NotRecorded {
                    stream_locked: row.locked,
                    pending: row.pending,
                }),
            },
        )
        .collect())
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

/// Records the broker's confirms of `ids`, received at `at` (one time per id); returns the ids
/// it marked. Rows locked by a worker are skipped, not waited for: the worker is applying that
/// command, and [`finish`] records when its message arrived, and a replay of the command's key
/// waits for that worker ([`get_for_client_settled`]). Ids already marked (or finished: a
/// finished command records its publish) are not returned either, and cost no write.
pub async fn mark_published(
    db: impl PgExecutor<'_>,
    ids: &[uuid::Uuid],
    at: &[chrono::DateTime<chrono::Utc>],
) -> sqlx::Result<Vec<uuid::Uuid>> {
    sqlx::query_scalar!(
        "update commands c set published_at = confirmed.at
           from unnest($1::uuid[], $2::timestamptz[]) as confirmed(id, at)
          where c.id = confirmed.id
            and c.id in (select id from commands
                          where id = any($1) and published_at is null
                          for update skip locked)
         returning c.id",
        ids,
        at
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
        crate::COMMAND_DONE_CHANNEL
    )
    .fetch_one(db)
    .await?;
    Ok(done == 1)
}

/// What [`list_for_order`] read.
#[derive(Debug)]
pub struct CommandScan {
    /// The commands that passed the filter, latest first: at most the `limit` asked for.
    pub commands: Vec<CommandRow>,
    /// Set when a filtered read stopped at [`crate::orders::LIST_SCAN_LIMIT`] commands before
    /// it found `limit`: the last seq it read, from which the next page reads on.
    pub stopped_at: Option<i64>,
}

/// Up to `limit` of the order's commands (of `status`, when given), from `from` (a seq), latest
/// first; none unless the order is the client's. `last_seq` is the order's (its stream's).
///
/// An order's commands have the seqs 1 to `last_seq` without a gap, so a page reads one range of
/// `commands (order_id, seq)` of at most [`crate::orders::LIST_SCAN_LIMIT`] seqs: a filter that
/// matches few of an order's commands reads that many, not all of them (an order's commands are
/// not bounded in number), and the page says where it stopped.
pub async fn list_for_order(
    db: impl PgExecutor<'_>,
    client_id: ClientId,
    order_id: OrderId,
    status: Option<CommandStatus>,
    from: PageFrom<i64>,
    limit: i64,
    last_seq: i64,
) -> sqlx::Result<CommandScan> {
    let scan = crate::orders::LIST_SCAN_LIMIT;
    let filtered = status.is_some();
    let status = status.map(CommandStatus::as_str);
    let (newer, bound) = from.bound(i64::MAX);
    // The seqs the page may read, both ends included.
    let (low, high) = if newer {
        let low = bound.saturating_add(1).max(1);
        (low, low.saturating_add(scan - 1).min(last_seq))
    } else {
        let high = bound.saturating_sub(1).min(last_seq);
        (high.saturating_sub(scan - 1).max(1), high)
    };
    let commands: Vec<CommandRow> = if newer {
        let mut rows: Vec<CommandRow> = sqlx::query!(
            "select * from commands
              where order_id = $1 and client_id = $2 and ($3::text is null or status = $3)
                and seq between $5 and $6
              order by seq asc limit $4",
            order_id.0,
            client_id.0,
            status,
            limit,
            low,
            high
        )
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|r| command_row!(r))
        .collect();
        rows.reverse();
        rows
    } else {
        sqlx::query!(
            "select * from commands
              where order_id = $1 and client_id = $2 and ($3::text is null or status = $3)
                and seq between $5 and $6
              order by seq desc limit $4",
            order_id.0,
            client_id.0,
            status,
            limit,
            low,
            high
        )
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|r| command_row!(r))
        .collect()
    };
    let short = (commands.len() as i64) < limit;
    // Stopped short of the order's first or last command: more may lie beyond.
    let stopped_at = match (filtered && short, newer) {
        (true, true) if high < last_seq => Some(high),
        (true, false) if low > 1 => Some(low),
        _ => None,
    };
    Ok(CommandScan {
        commands,
        stopped_at,
    })
}
