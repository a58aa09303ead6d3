//! What the worker does with a command: lock it (the inbox), find its neighbours in the
//! order's sequence, count its deliveries, and finish it with its status event.

use super::{CommandRow, Stream};
use chrono::{DateTime, Utc};
use orderflow_contract::{CommandStatus, Reason, StatusEvent};
use orderflow_domain::details::OrderDetails;
use orderflow_domain::{ClientId, CommandId, Event, Item, Order, OrderId};
use sqlx::types::Json;
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

/// The [`ForApply`] of a row of [`lock_for_apply`]'s or [`lock_many_for_apply`]'s statement
/// (the same columns).
macro_rules! for_apply {
    ($r:ident) => {{
        let r = $r;
        let order = match (
            r.order_client_id,
            r.order_customer_id,
            r.order_currency,
            r.order_status,
            r.order_version,
            r.order_items,
            r.order_total_cents,
            r.order_created_at,
            r.order_updated_at,
            r.order_details,
        ) {
            (
                Some(client_id),
                Some(customer_id),
                Some(currency),
                Some(status),
                Some(version),
                Some(items),
                Some(total_cents),
                Some(created_at),
                Some(updated_at),
                Some(details),
            ) => Some(Order {
                id: OrderId(r.order_id),
                client_id: ClientId(client_id),
                customer_id: customer_id
                    .try_into()
                    .expect("stored values were validated"),
                currency: currency.try_into().expect("stored values were validated"),
                status: status.parse().expect("the status check constraint"),
                version,
                items: items.0,
                details: details.0,
                tracking_number: r
                    .order_tracking_number
                    .map(|t| t.try_into().expect("stored values were validated")),
                total_cents,
                created_at,
                updated_at,
            }),
            _ => None,
        };
        let stream = Stream {
            processed_seq: r.processed_seq,
            has_parked: r.has_parked,
        };
        ForApply {
            command: command_row!(r),
            stream,
            order,
        }
    }};
}

/// What the apply transaction holds for a command's message once [`lock_for_apply`] returned.
pub struct ForApply {
    pub command: CommandRow,
    /// The command's order's stream.
    pub stream: Stream,
    /// The order (`None`: not created yet).
    pub order: Option<Order>,
}

/// [`lock`], [`lock_stream`](super::lock_stream) and [`orders::lock`](crate::orders::lock) of the
/// command's order in one statement: the first round trip of a message's apply, where it was
/// three. The order row is locked first (inside the lateral subquery), then the command and the
/// stream; nobody else locks an order row together with a command or stream row (the API locks
/// a command and then its stream, as this does), so the order adds no deadlock. Locking the
/// stream and the order of a command that turns out to be done already (a redelivery) costs
/// nothing but the locks, held until the transaction ends.
pub async fn lock_for_apply(
    conn: &mut PgConnection,
    id: CommandId,
) -> sqlx::Result<Option<ForApply>> {
    let row = sqlx::query!(
        r#"select c.id, c.client_id, c.order_id, c.seq, c.kind, c.body, c.expected_version,
                  c.status, c.reason, c.detail, c.result_version, c.partition, c.accepted_at,
                  c.published_at, c.finished_at, c.parked_at, c.actor,
                  s.processed_seq, s.has_parked,
                  o.client_id as "order_client_id?", o.customer_id as "order_customer_id?",
                  o.currency as "order_currency?", o.status as "order_status?",
                  o.version as "order_version?", o.items as "order_items?: Json<Vec<Item>>",
                  o.total_cents as "order_total_cents?", o.created_at as "order_created_at?",
                  o.updated_at as "order_updated_at?",
                  o.details as "order_details?: Json<OrderDetails>",
                  o.tracking_number as "order_tracking_number?"
             from commands c
             join order_streams s on s.order_id = c.order_id
             left join lateral (select client_id, customer_id, currency, status, version, items,
                                       total_cents, created_at, updated_at, details,
                                       tracking_number
                                  from orders where id = c.order_id for update) o on true
            where c.id = $1
              for update of c, s"#,
        id.0
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| for_apply!(r)))
}

/// [`lock_for_apply`] of several commands in one statement (a combined transaction's messages
/// that are each their order's next): what it returns of each, in no particular order, and
/// nothing of an id it does not know. The rows are locked as [`lock_for_apply`] locks them, one
/// command after the other; commands of one order share its stream and order row.
pub async fn lock_many_for_apply(
    conn: &mut PgConnection,
    ids: &[uuid::Uuid],
) -> sqlx::Result<Vec<ForApply>> {
    let rows = sqlx::query!(
        r#"select c.id, c.client_id, c.order_id, c.seq, c.kind, c.body, c.expected_version,
                  c.status, c.reason, c.detail, c.result_version, c.partition, c.accepted_at,
                  c.published_at, c.finished_at, c.parked_at, c.actor,
                  s.processed_seq, s.has_parked,
                  o.client_id as "order_client_id?", o.customer_id as "order_customer_id?",
                  o.currency as "order_currency?", o.status as "order_status?",
                  o.version as "order_version?", o.items as "order_items?: Json<Vec<Item>>",
                  o.total_cents as "order_total_cents?", o.created_at as "order_created_at?",
                  o.updated_at as "order_updated_at?",
                  o.details as "order_details?: Json<OrderDetails>",
                  o.tracking_number as "order_tracking_number?"
             from commands c
             join order_streams s on s.order_id = c.order_id
             left join lateral (select client_id, customer_id, currency, status, version, items,
                                       total_cents, created_at, updated_at, details,
                                       tracking_number
                                  from orders where id = c.order_id for update) o on true
            where c.id = any($1)
              for update of c, s"#,
        ids
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| for_apply!(r)).collect())
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

/// What else the statement that ends a command writes (see [`finish`]).
#[derive(Clone, Copy)]
pub struct FinishWith<'a> {
    /// An applied command's event: appended to its order's history as event number
    /// `order.version`, recorded at `at`, with the projection `order` it led to. The
    /// projection's timestamps are the events', so a replay rebuilds them.
    pub event: Option<AppliedEvent<'a>>,
    /// The order's stream is processed through the command's seq: what
    /// [`set_processed`](super::set_processed) with that seq writes. Only when the command was
    /// the order's next (the stream was locked at `seq - 1`) and nothing parked waits behind it.
    pub processed: bool,
    /// The lease the transaction writes under, `(partition, epoch)`, recorded on the command.
    /// `None`: the one its fence set for the transaction (`orderflow.lease_epoch`), which a fence
    /// sets only for a transaction of one partition; a transaction that writes for several
    /// names each command's own.
    pub lease: Option<(i32, i64)>,
}

/// An applied command's event and the projection it led to, for [`finish`].
#[derive(Clone, Copy)]
pub struct AppliedEvent<'a> {
    pub order: &'a Order,
    pub event: &'a Event,
    pub at: DateTime<Utc>,
}

/// Ends a command as its status event says: applied, rejected (with its reason) or failed
/// (with its reason and detail), and queues that event in the outbox; `with` says what else the
/// same statement writes (the applied command's event and projection, the stream's progress).
/// One statement, one round trip, where an applied command took three. A message in hand was
/// published: its arrival stands in for a confirm the API could not record (see
/// [`mark_published`]). `delivered` is `None` for a command finished without its own message in
/// hand (applied ahead of a late message, or failed while another message was being applied).
///
/// The stream's progress reads the commands after this one as the statement's snapshot saw
/// them; this command's own new status is not among them (its seq is where the walk starts), so
/// one statement writes what the two did.
///
/// It notifies nobody: the caller announces what it finished once its transaction committed
/// ([`announce_finished`]). A NOTIFY in the transaction would take PostgreSQL's notify-queue lock,
/// one for the whole server, at commit and hold it through the commit's WAL flush, so every
/// transaction that finishes commands would commit alone, one flush after the other.
pub async fn finish(
    conn: &mut PgConnection,
    event: &StatusEvent,
    delivered: Option<Delivered>,
    with: FinishWith<'_>,
) -> sqlx::Result<()> {
    let status = event.status;
    debug_assert!(status.is_final());
    let applied = with.event;
    let order = applied.map(|a| a.order);
    // clock_timestamp(), not now(): now() is the transaction's start, which would make every
    // apply look instantaneous on the timeline. `epoch` is the lease epoch the command was
    // applied under and `lease_partition` the partition of that lease (after a growth, not
    // always the command's own): `with.lease`, or else what the transaction's fence
    // (`orderflow_fence`) set; null in an unfenced transaction. The event and the
    // projection are written only when `$14` (the event's type) is given, the stream only when
    // `$23` is true.
    sqlx::query!(
        r#"with appended as (
             insert into order_events (order_id, seq, command_id, type, data, recorded_at)
             select $10::uuid, $15::bigint, $1::uuid, $14::text, $21::jsonb, $22::timestamptz
              where $14::text is not null),
           projected as (
             insert into orders (id, client_id, customer_id, currency, status, version, items,
                                 total_cents, created_at, updated_at, details, tracking_number)
             select $10::uuid, $11::uuid, $12::text, $13::text, $16::text, $15::bigint,
                    $17::jsonb, $18::bigint, $19::timestamptz, $20::timestamptz, $24::jsonb,
                    $25::text
              where $14::text is not null
             on conflict (id) do update set status = excluded.status, version = excluded.version,
                 items = excluded.items, total_cents = excluded.total_cents,
                 updated_at = excluded.updated_at, details = excluded.details,
                 tracking_number = excluded.tracking_number),
           finished as (
             update commands set status = $2, reason = $3, detail = $9, result_version = $4,
                                 finished_at = clock_timestamp(), delivered_at = $5, attempt = $6,
                                 published_at = coalesce(published_at, $5),
                                 epoch = coalesce($27::bigint, nullif(current_setting('orderflow.lease_epoch', true), '')::bigint),
                                 lease_partition = coalesce($26::integer, nullif(current_setting('orderflow.lease_partition', true), '')::integer)
             where id = $1
             returning order_id, seq),
           processed as (
             update order_streams s
                set processed_seq = coalesce(
                      (select min(g.seq) - 1
                         from generate_series(greatest(s.processed_seq, f.seq) + 1, s.last_seq) as g(seq)
                        where not exists (select from commands c
                                           where c.order_id = s.order_id and c.seq = g.seq
                                             and c.status in ('applied', 'rejected', 'failed'))),
                      s.last_seq)
               from finished f
              where s.order_id = f.order_id and $23::boolean)
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
            .map(|d| crate::storable_text(d, crate::MAX_STORED_TEXT_BYTES)),
        order.map(|o| o.id.0),
        order.map(|o| o.client_id.0),
        order.map(|o| o.customer_id.as_str()),
        order.map(|o| o.currency.as_str()),
        applied.map(|a| a.event.name()),
        order.map(|o| o.version),
        order.map(|o| o.status.as_str()),
        order.map(|o| Json(&o.items)) as _,
        order.map(|o| o.total_cents),
        order.map(|o| o.created_at),
        order.map(|o| o.updated_at),
        applied.map(|a| Json(a.event)) as _,
        applied.map(|a| a.at),
        with.processed,
        order.map(|o| Json(&o.details)) as _,
        order.and_then(|o| o.tracking_number.as_ref().map(|t| t.as_str())),
        with.lease.map(|(partition, _)| partition),
        with.lease.map(|(_, epoch)| epoch)
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// One command that [`finish_many`] ends: its status event, the arrival of its own message, the
/// lease it was applied under, and an applied command's event.
pub struct Finishing<'a> {
    pub event: &'a StatusEvent,
    pub delivered: Option<Delivered>,
    pub lease: Option<(i32, i64)>,
    pub applied: Option<AppliedEvent<'a>>,
}

/// [`finish`] of several commands in one statement, each its order's next with nothing parked
/// behind it (so each moves its order's stream on), none failed: in `endings`' order, their
/// events appended, their statuses and outbox rows written (the outbox in that order), each
/// order's stream moved past its last one, and `projections` (each order's projection after
/// its last event; one per order) written. What [`finish`] writes of each, with one round trip
/// and one statement's overhead for all of them.
pub async fn finish_many(
    conn: &mut PgConnection,
    endings: &[Finishing<'_>],
    projections: &[&Order],
) -> sqlx::Result<()> {
    let mut ids = Vec::with_capacity(endings.len());
    let mut statuses = Vec::with_capacity(endings.len());
    let mut reasons = Vec::with_capacity(endings.len());
    let mut versions = Vec::with_capacity(endings.len());
    let mut delivered_at = Vec::with_capacity(endings.len());
    let mut attempts = Vec::with_capacity(endings.len());
    let mut routing_keys = Vec::with_capacity(endings.len());
    let mut payloads = Vec::with_capacity(endings.len());
    let mut lease_partitions = Vec::with_capacity(endings.len());
    let mut epochs = Vec::with_capacity(endings.len());
    let mut event_orders = Vec::new();
    let mut event_seqs = Vec::new();
    let mut event_commands = Vec::new();
    let mut event_types = Vec::new();
    let mut event_data = Vec::new();
    let mut event_at = Vec::new();
    for ending in endings {
        let event = ending.event;
        debug_assert!(event.status.is_final() && event.status != CommandStatus::Failed);
        ids.push(event.command_id.0);
        statuses.push(event.status.as_str());
        reasons.push(event.reason.map(Reason::as_str));
        versions.push(event.version);
        delivered_at.push(ending.delivered.map(|d| d.at));
        attempts.push(ending.delivered.map(|d| d.attempt.max(1)));
        routing_keys.push(event.routing_key());
        payloads.push(event.to_json());
        lease_partitions.push(ending.lease.map(|(partition, _)| partition));
        epochs.push(ending.lease.map(|(_, epoch)| epoch));
        if let Some(applied) = &ending.applied {
            event_orders.push(applied.order.id.0);
            event_seqs.push(applied.order.version);
            event_commands.push(event.command_id.0);
            event_types.push(applied.event.name());
            event_data.push(Json(applied.event));
            event_at.push(applied.at);
        }
    }
    let order_ids: Vec<uuid::Uuid> = projections.iter().map(|o| o.id.0).collect();
    let clients: Vec<uuid::Uuid> = projections.iter().map(|o| o.client_id.0).collect();
    let customers: Vec<&str> = projections.iter().map(|o| o.customer_id.as_str()).collect();
    let currencies: Vec<&str> = projections.iter().map(|o| o.currency.as_str()).collect();
    let order_statuses: Vec<&str> = projections.iter().map(|o| o.status.as_str()).collect();
    let order_versions: Vec<i64> = projections.iter().map(|o| o.version).collect();
    let items: Vec<Json<&Vec<Item>>> = projections.iter().map(|o| Json(&o.items)).collect();
    let totals: Vec<i64> = projections.iter().map(|o| o.total_cents).collect();
    let created: Vec<DateTime<Utc>> = projections.iter().map(|o| o.created_at).collect();
    let updated: Vec<DateTime<Utc>> = projections.iter().map(|o| o.updated_at).collect();
    let details: Vec<Json<&OrderDetails>> = projections.iter().map(|o| Json(&o.details)).collect();
    let tracking: Vec<Option<&str>> = projections
        .iter()
        .map(|o| o.tracking_number.as_ref().map(|t| t.as_str()))
        .collect();
    // As `finish`: clock_timestamp() for when they ended, the lease given or else the one the
    // fence set; the stream walked on from each order's last command here. One time for every
    // row (an uncorrelated subquery runs once): per row, the update's join order would decide
    // it, and two commands of one order could finish in the reverse of their seq (the race
    // audit's invariant 6 caught one in CI).
    sqlx::query!(
        r#"with input as (
             select *
               from unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[],
                           $6::integer[], $7::text[], $8::jsonb[], $9::integer[], $10::bigint[])
                    with ordinality
                    as i(id, status, reason, result_version, delivered_at, attempt, routing_key,
                         payload, lease_partition, epoch, n)),
           appended as (
             insert into order_events (order_id, seq, command_id, type, data, recorded_at)
             select * from unnest($11::uuid[], $12::bigint[], $13::uuid[], $14::text[],
                                  $15::jsonb[], $16::timestamptz[])),
           projected as (
             insert into orders (id, client_id, customer_id, currency, status, version, items,
                                 total_cents, created_at, updated_at, details, tracking_number)
             select * from unnest($17::uuid[], $18::uuid[], $19::text[], $20::text[], $21::text[],
                                  $22::bigint[], $23::jsonb[], $24::bigint[], $25::timestamptz[],
                                  $26::timestamptz[], $27::jsonb[], $28::text[])
             on conflict (id) do update set status = excluded.status, version = excluded.version,
                 items = excluded.items, total_cents = excluded.total_cents,
                 updated_at = excluded.updated_at, details = excluded.details,
                 tracking_number = excluded.tracking_number),
           finished as (
             update commands c
                set status = i.status, reason = i.reason, detail = null,
                    result_version = i.result_version, finished_at = (select clock_timestamp()),
                    delivered_at = i.delivered_at, attempt = i.attempt,
                    published_at = coalesce(c.published_at, i.delivered_at),
                    epoch = coalesce(i.epoch, nullif(current_setting('orderflow.lease_epoch', true), '')::bigint),
                    lease_partition = coalesce(i.lease_partition, nullif(current_setting('orderflow.lease_partition', true), '')::integer)
               from input i
              where c.id = i.id
             returning c.order_id, c.seq, i.n, i.routing_key, i.payload),
           processed as (
             update order_streams s
                set processed_seq = coalesce(
                      (select min(g.seq) - 1
                         from generate_series(greatest(s.processed_seq, f.seq) + 1, s.last_seq) as g(seq)
                        where not exists (select from commands c
                                           where c.order_id = s.order_id and c.seq = g.seq
                                             and c.status in ('applied', 'rejected', 'failed'))),
                      s.last_seq)
               from (select order_id, max(seq) as seq from finished group by order_id) f
              where s.order_id = f.order_id)
         insert into outbox (order_id, routing_key, payload)
         select order_id, routing_key, payload from finished order by n"#,
        &ids,
        &statuses as &[&str],
        &reasons as &[Option<&str>],
        &versions as &[Option<i64>],
        &delivered_at as &[Option<DateTime<Utc>>],
        &attempts as &[Option<i32>],
        &routing_keys,
        &payloads,
        &lease_partitions as &[Option<i32>],
        &epochs as &[Option<i64>],
        &event_orders,
        &event_seqs,
        &event_commands,
        &event_types as &[&str],
        &event_data as _,
        &event_at,
        &order_ids,
        &clients,
        &customers as &[&str],
        &currencies as &[&str],
        &order_statuses as &[&str],
        &order_versions,
        &items as _,
        &totals,
        &created,
        &updated,
        &details as _,
        &tracking as &[Option<&str>]
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

/// Counts one more start on a redelivered message; returns the count so far. `None`: the
/// command is finished already (another copy of its message applied or failed it, or its
/// worker died between the commit and the ack), so this start can do no work and is not
/// counted: the message is only an inbox no-op to be acked. A command not recorded yet (a
/// direct producer's first copy) is counted.
pub async fn note_attempt(db: impl PgExecutor<'_>, id: CommandId) -> sqlx::Result<Option<i32>> {
    sqlx::query_scalar!(
        "insert into delivery_attempts (command_id, attempts, epoch)
         select $1, 1, nullif(current_setting('orderflow.lease_epoch', true), '')::bigint
          where not exists (select 1 from commands where id = $1 and finished_at is not null)
         on conflict (command_id) do update
             set attempts = delivery_attempts.attempts + 1, last_at = now(), epoch = excluded.epoch
         returning attempts",
        id.0
    )
    .fetch_optional(db)
    .await
}
