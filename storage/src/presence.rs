//! The desk's presence (who has an order open) and edit leases (who is editing its details).
//!
//! Both belong to an operator's session and live only while its page renews them (see the
//! migration `20261209000002_presence.sql`): a row past its `expires_at` counts for nothing and
//! [`sweep`] deletes it. Every arrival, departure and change of editor is announced on
//! [`PRESENCE_CHANNEL`] with the order's id (a trigger), so every API process can send the
//! order's new presence to its dashboards at once.
//!
//! The lease warns; it decides nothing. A person editing without it (someone else held it) still
//! sends their change with the version they saw, and the version decides, as for every change.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use std::time::Duration;
use uuid::Uuid;

/// LISTEN/NOTIFY channel of presence changes; the payload is the order's id.
pub const PRESENCE_CHANNEL: &str = "orderflow_presence";

/// Someone with the order open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Present {
    pub name: String,
    pub role: String,
    /// When they opened it.
    pub since: DateTime<Utc>,
}

/// The holder of an order's edit lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Editor {
    pub name: String,
    /// When they started editing.
    pub since: DateTime<Utc>,
    /// When the lease lapses unless its holder renews it.
    pub expires_at: DateTime<Utc>,
}

/// An order's presence: who has it open (by name, earliest first; one row per session) and who
/// holds its edit lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Presence {
    pub order_id: Uuid,
    pub viewers: Vec<Present>,
    pub editor: Option<Editor>,
}

fn millis(ttl: Duration) -> f64 {
    ttl.as_secs_f64() * 1000.0
}

/// The session has the order open until `ttl` from now (opens it, or renews it).
pub async fn arrive(
    db: impl PgExecutor<'_>,
    order_id: Uuid,
    session_hash: &[u8],
    operator_id: Uuid,
    ttl: Duration,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into order_presence (order_id, session_hash, operator_id, expires_at)
         values ($1, $2, $3, now() + $4 * interval '1 millisecond')
         on conflict (order_id, session_hash) do update set expires_at = excluded.expires_at",
        order_id,
        session_hash,
        operator_id,
        millis(ttl)
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The session left the order.
pub async fn leave(
    db: impl PgExecutor<'_>,
    order_id: Uuid,
    session_hash: &[u8],
) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from order_presence where order_id = $1 and session_hash = $2",
        order_id,
        session_hash
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The live presence of each of these orders (an order nobody has open comes back empty).
pub async fn of_orders(db: &sqlx::PgPool, order_ids: &[Uuid]) -> sqlx::Result<Vec<Presence>> {
    let viewers = sqlx::query!(
        r#"select p.order_id, o.name, o.role, p.opened_at
             from order_presence p join operators o on o.id = p.operator_id
            where p.order_id = any($1) and p.expires_at > now()
            order by p.order_id, p.opened_at, o.name"#,
        order_ids
    )
    .fetch_all(db)
    .await?;
    let editors = sqlx::query!(
        r#"select l.order_id, o.name, l.since, l.expires_at
             from order_edit_leases l join operators o on o.id = l.operator_id
            where l.order_id = any($1) and l.expires_at > now()"#,
        order_ids
    )
    .fetch_all(db)
    .await?;
    Ok(order_ids
        .iter()
        .map(|&order_id| Presence {
            order_id,
            viewers: viewers
                .iter()
                .filter(|v| v.order_id == order_id)
                .map(|v| Present {
                    name: v.name.clone(),
                    role: v.role.clone(),
                    since: v.opened_at,
                })
                .collect(),
            editor: editors
                .iter()
                .find(|e| e.order_id == order_id)
                .map(|e| Editor {
                    name: e.name.clone(),
                    since: e.since,
                    expires_at: e.expires_at,
                }),
        })
        .collect())
}

/// What [`claim`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The session holds the lease now (it took it, or already held it and renewed it).
    Yours(Editor),
    /// Someone else holds it.
    Held(Editor),
    /// It changed hands under the claim twice in a row: try again.
    Contended,
}

/// Takes the order's edit lease for the session until `ttl` from now: when nobody holds it, when
/// its holder's lapsed, or when the session holds it already (then it is renewed and keeps its
/// `since`).
pub async fn claim(
    db: &sqlx::PgPool,
    order_id: Uuid,
    session_hash: &[u8],
    operator_id: Uuid,
    ttl: Duration,
) -> sqlx::Result<Claim> {
    // Two rounds at most: a holder seen by the first may let go before it is read.
    for _ in 0..2 {
        let taken = sqlx::query!(
            r#"with taken as (
                 insert into order_edit_leases (order_id, session_hash, operator_id, expires_at)
                 values ($1, $2, $3, now() + $4 * interval '1 millisecond')
                 on conflict (order_id) do update
                    set session_hash = excluded.session_hash, operator_id = excluded.operator_id,
                        since = case when order_edit_leases.session_hash = excluded.session_hash
                                     then order_edit_leases.since else excluded.since end,
                        expires_at = excluded.expires_at
                  where order_edit_leases.session_hash = excluded.session_hash
                     or order_edit_leases.expires_at <= now()
                 returning operator_id, since, expires_at)
               select o.name, t.since, t.expires_at from taken t join operators o on o.id = t.operator_id"#,
            order_id,
            session_hash,
            operator_id,
            millis(ttl)
        )
        .fetch_optional(db)
        .await?;
        if let Some(t) = taken {
            return Ok(Claim::Yours(Editor {
                name: t.name,
                since: t.since,
                expires_at: t.expires_at,
            }));
        }
        if let Some(editor) = of_orders(db, &[order_id])
            .await?
            .pop()
            .and_then(|p| p.editor)
        {
            return Ok(Claim::Held(editor));
        }
    }
    Ok(Claim::Contended)
}

/// Renews the session's lease on the order until `ttl` from now; `None` when the session no
/// longer holds it (an admin broke it, or it lapsed and someone else took it).
pub async fn renew(
    db: impl PgExecutor<'_>,
    order_id: Uuid,
    session_hash: &[u8],
    ttl: Duration,
) -> sqlx::Result<Option<Editor>> {
    let renewed = sqlx::query!(
        r#"with renewed as (
             update order_edit_leases set expires_at = now() + $3 * interval '1 millisecond'
              where order_id = $1 and session_hash = $2 and expires_at > now()
              returning operator_id, since, expires_at)
           select o.name, r.since, r.expires_at from renewed r join operators o on o.id = r.operator_id"#,
        order_id,
        session_hash,
        millis(ttl)
    )
    .fetch_optional(db)
    .await?;
    Ok(renewed.map(|r| Editor {
        name: r.name,
        since: r.since,
        expires_at: r.expires_at,
    }))
}

/// Lets go of the session's lease on the order (nothing when it holds none).
pub async fn release(
    db: impl PgExecutor<'_>,
    order_id: Uuid,
    session_hash: &[u8],
) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "delete from order_edit_leases where order_id = $1 and session_hash = $2",
        order_id,
        session_hash
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Breaks whoever's lease on the order (an admin's act; the caller records it): the name of the
/// holder it broke and since when, if a live one was there.
pub async fn break_lease(
    db: impl PgExecutor<'_>,
    order_id: Uuid,
) -> sqlx::Result<Option<(String, DateTime<Utc>)>> {
    let broken = sqlx::query!(
        r#"with broken as (
             delete from order_edit_leases where order_id = $1
             returning operator_id, since, expires_at)
           select o.name, b.since from broken b join operators o on o.id = b.operator_id
            where b.expires_at > now()"#,
        order_id
    )
    .fetch_optional(db)
    .await?;
    Ok(broken.map(|b| (b.name, b.since)))
}

/// Deletes the presence rows and leases whose time passed (their pages stopped renewing: closed
/// without saying so, or cut off); the trigger announces each order. Returns how many.
pub async fn sweep(db: &sqlx::PgPool) -> sqlx::Result<u64> {
    let viewers = sqlx::query!("delete from order_presence where expires_at <= now()")
        .execute(db)
        .await?;
    let leases = sqlx::query!("delete from order_edit_leases where expires_at <= now()")
        .execute(db)
        .await?;
    Ok(viewers.rows_affected() + leases.rows_affected())
}
