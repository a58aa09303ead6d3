//! What the command relay reads: commands never confirmed by the broker, confirmed but
//! overtaken on their partition, or parked too long.

use super::CommandRow;
use orderflow_contract::{CommandStatus, Reason};
use orderflow_domain::{ClientId, CommandId, OrderId};
use sqlx::{PgConnection, PgExecutor};

/// Parked commands that have waited longer than `min_age_ms`, locked so one worker takes each.
pub async fn lock_expired_parked(
    conn: &mut PgConnection,
    min_age_ms: i64,
    limit: i64,
    partitions: Option<&[i32]>,
) -> sqlx::Result<Vec<CommandRow>> {
    let rows = sqlx::query!(
        "select * from commands
         where status = 'accepted' and parked_at is not null
           and parked_at < now() - make_interval(secs => $1::bigint / 1000.0)
           and ($3::integer[] is null or partition = any($3))
         order by parked_at
         limit $2
         for update skip locked",
        min_age_ms,
        limit,
        partitions
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| command_row!(r)).collect())
}

/// Accepted commands the broker never confirmed, older than `min_age`: the API died (or the
/// broker was down) between recording and publishing. Locked so that one relay takes each.
/// Read through `commands_pending`, which holds only the accepted commands: no index reads
/// `published_at`, so that the confirm mark writes no index entry (migration
/// `commands_hot_confirm`).
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
/// not parked, locked so that one relay takes each. "Published more than a second later" is
/// read as *accepted* more than a second after this one was published: a command is published
/// after it is accepted, so such a command was published later still, and the test needs no
/// index on `published_at` (`commands_delivered_by_acceptance`; migration
/// `commands_hot_confirm`).
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
                         and later.accepted_at > c.published_at + interval '1 second')
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
