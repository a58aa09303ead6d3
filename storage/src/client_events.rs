//! Reading a client's event feed (`client_events`, written by the outbox relay:
//! [`crate::outbox::pass_on`]). A position is a place in the whole log; a client reads its own
//! events after a position, in order.

use chrono::{DateTime, Utc};
use orderflow_domain::ClientId;
use sqlx::PgExecutor;

/// One event of a client's feed.
#[derive(Clone, Debug)]
pub struct ClientEvent {
    pub position: i64,
    /// The status event's routing key (`command.<status>.<type>`).
    pub kind: String,
    pub payload: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

/// What a read found.
#[derive(Debug)]
pub enum Read {
    /// The client's events after the position asked for, oldest first (at most the limit).
    Events(Vec<ClientEvent>),
    /// Events after the position asked for were pruned: everything up to `pruned_through` is
    /// gone, so reading on from there would skip some without saying.
    Pruned { pruned_through: i64 },
}

/// Up to `limit` of the client's events after `after`, oldest first, read in one snapshot with
/// the log's horizon, so that a read either sees every event after `after` or is told they are
/// gone.
pub async fn read(
    db: impl PgExecutor<'_>,
    client: ClientId,
    after: i64,
    limit: i64,
) -> sqlx::Result<Read> {
    let rows = sqlx::query!(
        r#"select h.pruned_through as "pruned_through!", e.position as "position?",
                  e.type as "kind?", e.payload as "payload?", e.recorded_at as "recorded_at?"
             from client_events_horizon h
             left join lateral (
               select position, type, payload, recorded_at from client_events
                where client_id = $1 and position > $2
                order by position limit $3) e on true
            order by e.position"#,
        client.0,
        after,
        limit
    )
    .fetch_all(db)
    .await?;
    let pruned_through = rows.first().map_or(0, |r| r.pruned_through);
    if after < pruned_through {
        return Ok(Read::Pruned { pruned_through });
    }
    Ok(Read::Events(
        rows.into_iter()
            .filter_map(|r| {
                Some(ClientEvent {
                    position: r.position?,
                    kind: r.kind?,
                    payload: r.payload?,
                    recorded_at: r.recorded_at?,
                })
            })
            .collect(),
    ))
}

/// Where the log stands: what it pruned through, and its last position (the horizon when it is
/// empty): where a feed that starts "from now" starts, and beyond which no position was handed
/// out.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub pruned_through: i64,
    pub head: i64,
}

pub async fn bounds(db: impl PgExecutor<'_>) -> sqlx::Result<Bounds> {
    let row = sqlx::query!(
        r#"select pruned_through as "pruned_through!",
                  greatest((select coalesce(max(position), 0) from client_events),
                           pruned_through) as "head!"
             from client_events_horizon"#
    )
    .fetch_one(db)
    .await?;
    Ok(Bounds {
        pruned_through: row.pruned_through,
        head: row.head,
    })
}
