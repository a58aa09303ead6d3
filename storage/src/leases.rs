//! Partition leases: which worker may write for which partition, fenced by an epoch (see the
//! migration `partition_leases` for the tables and `orderflow_fence`).
//!
//! A worker joins ([`join`]) and renews its membership twice a second ([`renew_member`]); a lease
//! lasts as long as its holder's membership, so renewing touches no lease row (the rows the
//! fences lock change only when a lease moves). Every worker reads the live members
//! ([`live_members`]) and every lease ([`leases`]: those it holds among them), and takes the partitions the shared
//! assignment gives it when they are free or their holder's membership expired ([`take`]). A
//! holder hands a partition over by draining it ([`mark_draining`]) and releasing it
//! ([`release`]). Every transaction that writes for a partition starts with [`fence`].

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use std::time::Duration;
use uuid::Uuid;

/// SQLSTATE raised by `orderflow_fence` when the caller no longer holds a lease.
pub const LEASE_LOST: &str = "OF001";

/// Who holds leases: a worker's name and the process (incarnation) that runs under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub name: String,
    pub incarnation: Uuid,
}

/// A partition's lease as a worker sees it when deciding what to take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub partition: i32,
    pub owner: Option<String>,
    pub incarnation: Option<Uuid>,
    pub epoch: i64,
    pub state: String,
    /// Its holder did not renew it in time (a free lease is not expired).
    pub expired: bool,
}

impl Lease {
    /// Whether `me` may take it now: it is free, its holder's lease expired, or it is `me`'s own
    /// but not consumed (given up when renewals failed, and renewed since).
    pub fn takeable_by(&self, me: &Holder) -> bool {
        self.state == "free"
            || self.expired
            || (self.owner.as_deref() == Some(&me.name) && self.incarnation == Some(me.incarnation))
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The `application_name` of a worker's sessions: its pool's; its lease keeper's adds " leases".
pub fn worker_sessions_name(worker: &str) -> String {
    format!("orderflow-worker {worker}")
}

/// Ends the sessions of worker `owner` — a lease holder whose membership expired or which is
/// dead — that have been inside a transaction for longer than `older_than`; how many. A holder
/// stopped mid-transaction keeps its lease rows locked FOR SHARE from its fence on, which makes
/// every take of its leases wait. PostgreSQL ends such a session after the worker's
/// `idle_in_transaction_session_timeout` only when it waits for its next request, not when it
/// waits for the rest of one (a pipelined request cut before its Sync), and no other timeout
/// covers that. Ending it is safe: whatever the transaction did for a partition would be refused
/// by its fence once the lease is taken, and unfenced work (the relays) is redone by the live
/// workers. A live process of the same name (a restart) has no transaction that old but one
/// stuck on a lock, which then fails as transient and is retried.
pub async fn end_transactions_of(
    db: impl PgExecutor<'_>,
    owner: &str,
    older_than: Duration,
) -> sqlx::Result<i64> {
    let pool = crate::application_name_of(&worker_sessions_name(owner));
    let keeper = crate::application_name_of(&format!("{} leases", worker_sessions_name(owner)));
    sqlx::query_scalar!(
        r#"select count(*) filter (where pg_terminate_backend(pid)) as "ended!"
             from pg_stat_activity
            where datname = current_database() and pid <> pg_backend_pid()
              and application_name in ($1, $2)
              and xact_start < now() - make_interval(secs => $3)"#,
        pool,
        keeper,
        secs(older_than)
    )
    .fetch_one(db)
    .await
}

/// Creates the lease rows of partitions `0..partitions` that do not exist yet.
pub async fn ensure_partitions(db: impl PgExecutor<'_>, partitions: u16) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into partition_leases (partition)
         select generate_series(0, $1::integer - 1)
         on conflict (partition) do nothing",
        i32::from(partitions)
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Joins the live workers (or rejoins: a new process under an existing name replaces the old
/// one's row, and the old process's renewals then fail).
pub async fn join(db: impl PgExecutor<'_>, me: &Holder, ttl: Duration) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into worker_members (name, incarnation, expires_at, liveness_lock)
         values ($1, $2, now() + make_interval(secs => $3), true)
         on conflict (name) do update
             set incarnation = excluded.incarnation, started_at = now(), heartbeat_at = now(),
                 expires_at = excluded.expires_at, liveness_lock = true",
        me.name,
        me.incarnation,
        secs(ttl)
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Renews this worker's membership; `false` when its row is gone or belongs to a newer process
/// under the same name (this one must then stop).
pub async fn renew_member(
    db: impl PgExecutor<'_>,
    me: &Holder,
    ttl: Duration,
) -> sqlx::Result<bool> {
    let renewed = sqlx::query!(
        "update worker_members
            set heartbeat_at = now(), expires_at = now() + make_interval(secs => $3)
          where name = $1 and incarnation = $2",
        me.name,
        me.incarnation,
        secs(ttl)
    )
    .execute(db)
    .await?;
    Ok(renewed.rows_affected() == 1)
}

/// Leaves the live workers (a graceful stop, after releasing every lease).
pub async fn leave(db: impl PgExecutor<'_>, me: &Holder) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from worker_members where name = $1 and incarnation = $2",
        me.name,
        me.incarnation
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Takes this process's liveness lock on `conn`, a connection kept for nothing else: while its
/// session lasts the others know the process is alive; when the process dies, PostgreSQL ends
/// the session and frees the lock at once (see the migration `member_liveness`). `false` when
/// another session holds it (an earlier liveness session of this process PostgreSQL has not
/// ended yet): try again later.
pub async fn hold_liveness(conn: &mut PgConnection, me: &Holder) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select pg_try_advisory_lock(orderflow_liveness_key($1)) as "held!""#,
        me.incarnation
    )
    .fetch_one(conn)
    .await
}

/// Whether the liveness session on `conn` still answers.
pub async fn liveness_alive(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query!("select 1 as alive").fetch_one(conn).await?;
    Ok(())
}

/// The names of the live workers: membership not expired, and not dead by its liveness lock
/// (free, and no renewal for `grace`).
pub async fn live_members(db: impl PgExecutor<'_>, grace: Duration) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select name from worker_members
          where expires_at > now()
            and incarnation not in
                (select orderflow_dead_members(make_interval(secs => $1)))
          order by name",
        secs(grace)
    )
    .fetch_all(db)
    .await
}

/// Every partition's lease. A lease is expired when its holder (owner and incarnation) has no
/// membership that runs past now (it stopped renewing, left, or a new process replaced it under
/// its name), or is dead by its liveness lock (see [`live_members`]; `grace`).
pub async fn leases(db: impl PgExecutor<'_>, grace: Duration) -> sqlx::Result<Vec<Lease>> {
    sqlx::query_as!(
        Lease,
        r#"select l.partition, l.owner, l.incarnation, l.epoch, l.state,
                  (l.state <> 'free'
                   and (not exists (select 1 from worker_members m
                                     where m.name = l.owner and m.incarnation = l.incarnation
                                       and m.expires_at > now())
                        or l.incarnation in
                           (select orderflow_dead_members(make_interval(secs => $1)))))
                    as "expired!"
             from partition_leases l order by l.partition"#,
        secs(grace)
    )
    .fetch_all(db)
    .await
}

/// Takes `seen` (a lease [`Lease::takeable_by`] `me` when read) with epoch + 1, recording the move;
/// `None` when it changed since (someone else took it, or its holder renewed its membership).
/// The update waits (at most `lock_timeout`) for a fenced transaction of the previous holder
/// still in flight; every later one of them fails its fence.
pub async fn take(
    conn: &mut PgConnection,
    seen: &Lease,
    me: &Holder,
    lock_timeout: Duration,
    grace: Duration,
) -> sqlx::Result<Option<i64>> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let timeout = format!("{}ms", lock_timeout.as_millis().max(1));
    sqlx::query!("select set_config('lock_timeout', $1, true)", timeout)
        .fetch_one(&mut *tx)
        .await?;
    let taken = sqlx::query_scalar!(
        "update partition_leases l
            set owner = $3, incarnation = $4, epoch = epoch + 1, state = 'active',
                changed_at = now()
          where partition = $1 and epoch = $2 and state = $5
            and owner is not distinct from $6 and incarnation is not distinct from $7
            and (state = 'free' or (owner = $3 and incarnation = $4)
                 or not exists (select 1 from worker_members m
                                 where m.name = l.owner and m.incarnation = l.incarnation
                                   and m.expires_at > now())
                 or incarnation in
                    (select orderflow_dead_members(make_interval(secs => $8))))
          returning epoch",
        seen.partition,
        seen.epoch,
        me.name,
        me.incarnation,
        seen.state,
        seen.owner,
        seen.incarnation,
        secs(grace)
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(epoch) = taken else {
        return Ok(None);
    };
    let kind = match (&seen.owner, seen.epoch) {
        (Some(_), _) => "takeover",
        (None, 0) => "first",
        (None, _) => "handover",
    };
    sqlx::query!(
        "insert into partition_moves (partition, epoch, from_owner, to_owner, kind)
         values ($1, $2,
                 coalesce($3, (select to_owner from partition_moves
                                where partition = $1 order by id desc limit 1)),
                 $4, $5)",
        seen.partition,
        epoch,
        seen.owner,
        me.name,
        kind
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(epoch))
}

/// Says that the holder is finishing what it holds of the partition before releasing it.
/// Without waiting: a transaction of the holder's that is in flight for the partition holds the
/// row `FOR SHARE` (its fence), and may itself wait on a row of an order for a long time; the
/// hand-over must not wait behind it (the keeper's round would time out and the drain never
/// start). `false` when the row is busy (or no longer this holder's): the caller tries again.
pub async fn mark_draining(
    db: impl PgExecutor<'_>,
    partition: i32,
    epoch: i64,
    me: &Holder,
) -> sqlx::Result<bool> {
    let marked = sqlx::query!(
        "update partition_leases set state = 'draining', changed_at = now()
          where partition = (select partition from partition_leases
                              where partition = $1 and epoch = $2 and owner = $3
                                and incarnation = $4 and state = 'active'
                                for update skip locked)",
        partition,
        epoch,
        me.name,
        me.incarnation
    )
    .execute(db)
    .await?;
    Ok(marked.rows_affected() == 1)
}

/// Frees a lease this process holds at `epoch` (the epoch stays: the next take bumps it).
pub async fn release(
    db: impl PgExecutor<'_>,
    partition: i32,
    epoch: i64,
    me: &Holder,
) -> sqlx::Result<bool> {
    let released = sqlx::query!(
        "update partition_leases
            set owner = null, incarnation = null, state = 'free', changed_at = now()
          where partition = $1 and epoch = $2 and owner = $3 and incarnation = $4",
        partition,
        epoch,
        me.name,
        me.incarnation
    )
    .execute(db)
    .await?;
    Ok(released.rows_affected() == 1)
}

/// The fence: the first statement of a transaction that writes for `partitions`, held at
/// `epochs` (one per partition). Fails with SQLSTATE [`LEASE_LOST`] unless this process holds
/// each of them at that epoch; otherwise locks them FOR SHARE until the transaction ends, so
/// that no take can complete in between.
pub async fn fence(
    tx: &mut PgConnection,
    partitions: &[i32],
    epochs: &[i64],
    me: &Holder,
) -> sqlx::Result<()> {
    sqlx::query!(
        "select orderflow_fence($1, $2, $3, $4)",
        partitions,
        epochs,
        me.name,
        me.incarnation
    )
    .fetch_one(tx)
    .await?;
    Ok(())
}

/// A lease as the dashboard and the metrics show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LeaseView {
    pub partition: i32,
    pub owner: Option<String>,
    pub epoch: i64,
    pub state: String,
    /// Until when its holder's membership runs (null while free, or when the holder left).
    pub expires_at: Option<DateTime<Utc>>,
    /// Takes of this partition in the last hour.
    pub moves_last_hour: i64,
}

/// Every lease with its moves of the last hour.
pub async fn overview(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<LeaseView>> {
    sqlx::query_as!(
        LeaseView,
        r#"select l.partition, l.owner, l.epoch, l.state, m.expires_at as "expires_at?",
                  (select count(*) from partition_moves mv
                    where mv.partition = l.partition and mv.at > now() - interval '1 hour')
                    as "moves_last_hour!"
             from partition_leases l
             left join worker_members m on m.name = l.owner and m.incarnation = l.incarnation
            order by l.partition"#
    )
    .fetch_all(db)
    .await
}
