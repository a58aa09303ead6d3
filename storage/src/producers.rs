//! Direct producers' grants: which broker user may publish commands for which client. The
//! worker checks a direct producer's command against them before recording it; RabbitMQ
//! vouches for the broker user (a message's `user_id` must be its connection's user).

use orderflow_domain::ClientId;
use sqlx::PgExecutor;

/// One grant, as `orderflow-api producer list` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub broker_user: String,
    pub client_id: ClientId,
    pub client_name: String,
    pub granted_at: chrono::DateTime<chrono::Utc>,
}

/// What [`grant`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granted {
    /// The grant is new.
    Granted,
    /// The broker user already had it.
    AlreadyGranted,
    /// No live client has this id: nothing written.
    UnknownClient,
}

/// Lets `broker_user` publish commands for `client_id`.
pub async fn grant(
    db: impl PgExecutor<'_>,
    broker_user: &str,
    client_id: ClientId,
) -> sqlx::Result<Granted> {
    // One statement: the client is checked and the grant written together, so a grant for a
    // client revoked meanwhile is never written.
    let row = sqlx::query!(
        r#"with client as (select id from clients where id = $2 and revoked_at is null),
                granted as (
                    insert into producer_grants (broker_user, client_id)
                    select $1, id from client
                        on conflict do nothing
                    returning 1)
           select exists (select 1 from client) as "client!",
                  exists (select 1 from granted) as "granted!""#,
        broker_user,
        client_id.0
    )
    .fetch_one(db)
    .await?;
    Ok(match (row.client, row.granted) {
        (false, _) => Granted::UnknownClient,
        (true, true) => Granted::Granted,
        (true, false) => Granted::AlreadyGranted,
    })
}

/// Takes a grant back; `false` if there was none. Commands already recorded stay recorded.
pub async fn revoke(
    db: impl PgExecutor<'_>,
    broker_user: &str,
    client_id: ClientId,
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "delete from producer_grants where broker_user = $1 and client_id = $2",
        broker_user,
        client_id.0
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// May `broker_user` publish commands for `client_id`? A name PostgreSQL could not store (a
/// NUL in it) was never granted: no query for it.
pub async fn is_granted(
    db: impl PgExecutor<'_>,
    broker_user: &str,
    client_id: ClientId,
) -> sqlx::Result<bool> {
    if broker_user.contains('\0') {
        return Ok(false);
    }
    sqlx::query_scalar!(
        r#"select exists (select 1 from producer_grants
                           where broker_user = $1 and client_id = $2) as "granted!""#,
        broker_user,
        client_id.0
    )
    .fetch_one(db)
    .await
}

/// Every grant, by broker user then client.
pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Grant>> {
    let rows = sqlx::query!(
        "select g.broker_user, g.client_id, c.name as client_name, g.granted_at
           from producer_grants g join clients c on c.id = g.client_id
          order by g.broker_user, g.client_id"
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Grant {
            broker_user: r.broker_user,
            client_id: ClientId(r.client_id),
            client_name: r.client_name,
            granted_at: r.granted_at,
        })
        .collect())
}
