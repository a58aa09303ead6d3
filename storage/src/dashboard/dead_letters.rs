//! The dead letters: list, one letter, redrive and acknowledgement with their audit records.

use chrono::{DateTime, Utc};
use orderflow_domain::{ClientId, CommandId, OrderId};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// One dead-lettered message.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub command_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub client_id: Option<Uuid>,
    pub partition: i32,
    pub reason: String,
    pub body: String,
    pub dead_lettered_at: DateTime<Utc>,
    pub redriven_at: Option<DateTime<Utc>>,
    pub redriven_as: Option<Uuid>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// The name of the admin who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// Does the client it names still exist, unrevoked? (A redrive sends as that client.)
    pub client_live: bool,
}

/// The latest dead letters, newest first.
pub async fn dead_letters(db: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<DeadLetter>> {
    sqlx::query_as!(
        DeadLetter,
        r#"select d.id, d.command_id, d.order_id, d.client_id, d.partition, d.reason, d.body,
                  d.dead_lettered_at, d.redriven_at, d.redriven_as, d.acknowledged_at,
                  coalesce(a.name, 'operator ' || o.name) as "acknowledged_by?",
                  exists (select 1 from clients c
                          where c.id = d.client_id and c.revoked_at is null) as "client_live!"
           from dead_letters d left join clients a on a.id = d.acknowledged_by
                left join operators o on o.id = d.acknowledged_by_operator
           order by d.dead_lettered_at desc, d.id desc limit $1"#,
        limit
    )
    .fetch_all(db)
    .await
}

/// One dead letter. (Concurrent redrives of it need no lock: they share an Idempotency-Key, so
/// they yield one command, and only the first [`mark_redriven`] takes. A redrive that races an
/// acknowledgement is still recorded: the letter then reads both, and is closed either way.)
pub async fn dead_letter(db: impl PgExecutor<'_>, id: i64) -> sqlx::Result<Option<DeadLetter>> {
    sqlx::query_as!(
        DeadLetter,
        r#"select d.id, d.command_id, d.order_id, d.client_id, d.partition, d.reason, d.body,
                  d.dead_lettered_at, d.redriven_at, d.redriven_as, d.acknowledged_at,
                  coalesce(a.name, 'operator ' || o.name) as "acknowledged_by?",
                  exists (select 1 from clients c
                          where c.id = d.client_id and c.revoked_at is null) as "client_live!"
           from dead_letters d left join clients a on a.id = d.acknowledged_by
                left join operators o on o.id = d.acknowledged_by_operator
           where d.id = $1"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// Who acted on the dashboard: an admin API key's client, or a signed-in operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    Client(ClientId),
    Operator(Uuid),
}

impl Actor {
    fn client(self) -> Option<Uuid> {
        match self {
            Actor::Client(id) => Some(id.0),
            Actor::Operator(_) => None,
        }
    }

    fn operator(self) -> Option<Uuid> {
        match self {
            Actor::Operator(id) => Some(id),
            Actor::Client(_) => None,
        }
    }
}

/// Records that a dead letter was re-submitted as `command_id` by `admin`, with the audit entry.
pub async fn mark_redriven(
    conn: &mut PgConnection,
    id: i64,
    command_id: CommandId,
    admin: Actor,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update dead_letters
            set redriven_at = now(), redriven_as = $2, redriven_by = $3, redriven_by_operator = $4
         where id = $1 and redriven_at is null",
        id,
        command_id.0,
        admin.client(),
        admin.operator()
    )
    .execute(&mut *conn)
    .await?;
    record_action(
        conn,
        admin,
        "redrive_dead_letter",
        &id.to_string(),
        &serde_json::json!({ "command_id": command_id.0 }),
    )
    .await
}

/// Acknowledges an open dead letter (neither redriven nor acknowledged) for `admin`, with the
/// audit entry; when it is acknowledged. None if it was not open.
pub async fn acknowledge(
    conn: &mut PgConnection,
    id: i64,
    admin: Actor,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    let at = sqlx::query_scalar!(
        "update dead_letters
            set acknowledged_at = now(), acknowledged_by = $2, acknowledged_by_operator = $3
         where id = $1 and redriven_at is null and acknowledged_at is null
         returning acknowledged_at as \"acknowledged_at!\"",
        id,
        admin.client(),
        admin.operator()
    )
    .fetch_optional(&mut *conn)
    .await?;
    if at.is_some() {
        record_action(
            conn,
            admin,
            "acknowledge_dead_letter",
            &id.to_string(),
            &serde_json::json!({}),
        )
        .await?;
    }
    Ok(at)
}

/// Dead letters neither redriven nor acknowledged.
pub async fn open_dead_letters(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "open!" from dead_letters
           where redriven_at is null and acknowledged_at is null"#
    )
    .fetch_one(db)
    .await
}

/// The commands of an order that are redrives: (command, the dead letter it came from).
pub async fn redrives_of_order(
    db: impl PgExecutor<'_>,
    order_id: OrderId,
) -> sqlx::Result<Vec<(Uuid, i64)>> {
    let rows = sqlx::query!(
        r#"select redriven_as as "command_id!", id from dead_letters
           where order_id = $1 and redriven_as is not null"#,
        order_id.0
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.command_id, r.id)).collect())
}

/// Appends to the admin audit log.
pub async fn record_action(
    db: impl PgExecutor<'_>,
    admin: Actor,
    action: &str,
    target: &str,
    detail: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into admin_actions (client_id, operator_id, action, target, detail)
         values ($1, $2, $3, $4, $5)",
        admin.client(),
        admin.operator(),
        action,
        target,
        detail
    )
    .execute(db)
    .await?;
    Ok(())
}
