//! The per-order streams: who owns an order, the next seq, how far the worker has got, and
//! the parked flag.

use orderflow_domain::{ClientId, CommandId, OrderId};
use sqlx::{PgConnection, PgExecutor};

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

/// The last seq of the client's order; `None` if the order is unknown or another client's.
pub async fn last_seq_for_client(
    db: impl PgExecutor<'_>,
    client_id: ClientId,
    order_id: OrderId,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!(
        "select last_seq from order_streams where order_id = $1 and client_id = $2",
        order_id.0,
        client_id.0
    )
    .fetch_optional(db)
    .await
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
