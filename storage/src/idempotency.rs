//! Idempotency-Key records (Stripe semantics, scoped per client). The stored response is derived
//! from the command the key names, so a record cannot disagree with its command.

use orderflow_domain::{ClientId, CommandId};
use sqlx::PgExecutor;

/// What a key was found to mean.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is new and now belongs to this request (and `command_id`).
    New,
    /// The key was used before, for this fingerprint and command.
    Existing {
        fingerprint: Vec<u8>,
        command_id: CommandId,
    },
}

/// Claims `key` for a request. Run inside the transaction that records the command: a concurrent
/// request with the same key waits on the primary key until this one commits, then sees it.
/// A key can also vanish between the conflict and the read (its request was refused by the
/// broker and released it): then the claim is simply tried again.
pub async fn claim(
    conn: &mut sqlx::PgConnection,
    client_id: ClientId,
    key: &str,
    fingerprint: &[u8],
    command_id: CommandId,
) -> sqlx::Result<Claim> {
    loop {
        let inserted = sqlx::query!(
            "insert into idempotency_keys (client_id, key, fingerprint, command_id)
             values ($1, $2, $3, $4) on conflict do nothing",
            client_id.0,
            key,
            fingerprint,
            command_id.0
        )
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Claim::New);
        }
        if let Some((fingerprint, command_id)) = lookup(&mut *conn, client_id, key).await? {
            return Ok(Claim::Existing {
                fingerprint,
                command_id,
            });
        }
    }
}

/// The fingerprint and command of a key already claimed, if it is (still) there.
pub async fn lookup(
    db: impl PgExecutor<'_>,
    client_id: ClientId,
    key: &str,
) -> sqlx::Result<Option<(Vec<u8>, CommandId)>> {
    let row = sqlx::query!(
        "select fingerprint, command_id from idempotency_keys where client_id = $1 and key = $2",
        client_id.0,
        key
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.fingerprint, CommandId(r.command_id))))
}

/// Forgets a key whose request did not succeed (the broker refused it), so a retry may use it.
/// Only if it still names `command_id`.
pub async fn release(
    db: impl PgExecutor<'_>,
    client_id: ClientId,
    key: &str,
    command_id: CommandId,
) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from idempotency_keys where client_id = $1 and key = $2 and command_id = $3",
        client_id.0,
        key,
        command_id.0
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes keys older than the retention; returns how many.
pub async fn purge_older_than(db: impl PgExecutor<'_>, retention_secs: i64) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        "delete from idempotency_keys where created_at < now() - make_interval(secs => $1::bigint)",
        retention_secs
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
