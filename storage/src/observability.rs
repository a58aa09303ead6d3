//! What the worker writes and samples so that people can see it work: the record of every
//! message it dead-lettered, its per-partition heartbeat, the cheap queries behind its sampled
//! gauges, and the stored traceparents its relays hand on. The dashboard's reads of the same
//! tables are in [`super::dashboard`].

use chrono::{DateTime, Utc};
use orderflow_contract::MAX_MESSAGE_BYTES;
use sqlx::PgExecutor;
use uuid::Uuid;

/// A message being dead-lettered, for the `dead_letters` table.
pub struct NewDeadLetter<'a> {
    /// Ids read from the message where it has them (a malformed message may have none).
    pub command_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub client_id: Option<Uuid>,
    pub partition: u16,
    pub reason: &'a str,
    /// The message body as received.
    pub body: &'a [u8],
}

impl<'a> NewDeadLetter<'a> {
    /// Reads what ids it can from a message body, whether or not it is a valid command: a
    /// message refused for its version or an unknown field still names its command and order.
    pub fn from_body(partition: u16, reason: &'a str, body: &'a [u8]) -> Self {
        let value: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let id = |field: &str| {
            value
                .as_ref()
                .and_then(|v| v.get(field))
                .and_then(serde_json::Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
        };
        Self {
            command_id: id("command_id"),
            order_id: id("order_id"),
            client_id: id("client_id"),
            partition,
            reason,
            body,
        }
    }
}

/// A message body as text for people: invalid UTF-8 replaced, NUL (which `text` cannot hold)
/// replaced, cut at a character boundary to at most 64 KiB.
pub fn body_text(body: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(body).replace('\0', "\u{FFFD}");
    if text.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Records a dead-lettered message; returns its id.
pub async fn insert_dead_letter(
    db: impl PgExecutor<'_>,
    letter: &NewDeadLetter<'_>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        "insert into dead_letters (command_id, order_id, client_id, partition, reason, body)
         values ($1, $2, $3, $4, $5, $6)
         returning id",
        letter.command_id,
        letter.order_id,
        letter.client_id,
        i32::from(letter.partition),
        super::storable_text(letter.reason, super::MAX_STORED_TEXT_BYTES),
        body_text(letter.body)
    )
    .fetch_one(db)
    .await
}

/// One partition as one worker sees it, for the heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionBeat {
    pub partition: i32,
    /// The worker has a consumer on the partition's queue (active or standby).
    pub consuming: bool,
    pub last_delivery_at: Option<DateTime<Utc>>,
    pub delivered: i64,
    pub redelivered: i64,
    pub finished: i64,
}

/// Upserts a worker's view of all its partitions in one statement.
pub async fn heartbeat(
    db: impl PgExecutor<'_>,
    worker: &str,
    beats: &[PartitionBeat],
) -> sqlx::Result<()> {
    let partitions: Vec<i32> = beats.iter().map(|b| b.partition).collect();
    let consuming: Vec<bool> = beats.iter().map(|b| b.consuming).collect();
    let last_delivery_at: Vec<Option<DateTime<Utc>>> =
        beats.iter().map(|b| b.last_delivery_at).collect();
    let delivered: Vec<i64> = beats.iter().map(|b| b.delivered).collect();
    let redelivered: Vec<i64> = beats.iter().map(|b| b.redelivered).collect();
    let finished: Vec<i64> = beats.iter().map(|b| b.finished).collect();
    sqlx::query!(
        "insert into worker_partitions
             (worker, partition, consuming, last_delivery_at, delivered, redelivered, finished,
              heartbeat_at)
         select $1, b.partition, b.consuming, b.last_delivery_at, b.delivered, b.redelivered,
                b.finished, now()
         from unnest($2::integer[], $3::boolean[], $4::timestamptz[], $5::bigint[], $6::bigint[],
                     $7::bigint[])
              as b (partition, consuming, last_delivery_at, delivered, redelivered, finished)
         on conflict (worker, partition) do update
             set consuming = excluded.consuming, last_delivery_at = excluded.last_delivery_at,
                 delivered = excluded.delivered, redelivered = excluded.redelivered,
                 finished = excluded.finished, heartbeat_at = excluded.heartbeat_at",
        worker,
        &partitions,
        &consuming,
        &last_delivery_at as &[Option<DateTime<Utc>>],
        &delivered,
        &redelivered,
        &finished
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Outbox rows waiting for the relay, and the oldest one's age in seconds (0 when empty).
pub async fn outbox_backlog(db: impl PgExecutor<'_>) -> sqlx::Result<(i64, f64)> {
    let row = sqlx::query!(
        r#"select count(*) as "rows!",
                  coalesce(extract(epoch from now() - min(created_at))::float8, 0) as "oldest_age_secs!"
           from outbox"#
    )
    .fetch_one(db)
    .await?;
    Ok((row.rows, row.oldest_age_secs))
}

/// For partitions `0..partitions`: the age in seconds of the oldest command still `accepted`
/// (0 when none). One probe of the partial index `commands_pending` per partition, so the cost
/// does not grow with the backlog.
pub async fn oldest_pending(db: impl PgExecutor<'_>, partitions: u16) -> sqlx::Result<Vec<f64>> {
    sqlx::query_scalar!(
        r#"select coalesce(extract(epoch from now() - (
                      select min(accepted_at) from commands
                      where status = 'accepted' and partition = p))::float8, 0) as "age!"
           from generate_series(0, $1 - 1) as p
           order by p"#,
        i32::from(partitions)
    )
    .fetch_all(db)
    .await
}

/// The traceparents stored with these commands (those that have one).
pub async fn traceparents(
    db: impl PgExecutor<'_>,
    command_ids: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, String)>> {
    let rows = sqlx::query!(
        r#"select id, traceparent as "traceparent!" from commands
           where id = any($1) and traceparent is not null"#,
        command_ids
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.traceparent)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_text_is_cut_at_a_character_boundary_and_holds_no_nul() {
        let mut body = vec![b'a'; MAX_MESSAGE_BYTES - 1];
        body.extend_from_slice("é\0".as_bytes());
        let text = body_text(&body);
        assert!(text.len() <= MAX_MESSAGE_BYTES);
        assert!(text.ends_with('a'), "the 2-byte 'é' would cross the limit");
        assert_eq!(body_text(b"x\0y\xff"), "x\u{FFFD}y\u{FFFD}");
    }

    #[test]
    fn ids_are_read_from_messages_that_are_not_valid_commands() {
        let id = Uuid::new_v4();
        let body = format!(r#"{{"version": 9, "command_id": "{id}", "order_id": "nope"}}"#);
        let letter = NewDeadLetter::from_body(3, "r", body.as_bytes());
        assert_eq!(letter.command_id, Some(id));
        assert_eq!(letter.order_id, None);
        assert_eq!(
            NewDeadLetter::from_body(3, "r", b"\x00garbage").command_id,
            None
        );
    }
}
