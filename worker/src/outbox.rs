//! The relays. The outbox relay publishes status events to the events exchange in outbox order
//! (hence per-order order), woken by LISTEN/NOTIFY; it deletes rows only after the broker
//! confirmed them. The command relay republishes commands that were recorded but never
//! confirmed to the broker (the API died in between, or the broker was down), and commands the
//! broker confirmed but never delivered (overtaken on their partition); it also fails parked
//! commands that waited too long ([`crate::parked`]). Both hand on the trace stored with the
//! command (`traceparent` header): events carry their command's.

use crate::metrics;
use orderflow_contract::StatusEvent;
use orderflow_messaging::{Outgoing, Publisher, Topology, json_properties, with_traceparent};
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_storage::listen::{Listener, Notice};
use orderflow_storage::{self as db, commands, observability, outbox};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// Rows relayed per transaction.
pub(crate) const BATCH: i64 = 200;

/// Relays the outbox until shutdown.
pub async fn run_outbox_relay(
    db: PgPool,
    publisher: &Publisher,
    topology: &Topology,
    shutdown: CancellationToken,
) {
    let mut listener = Listener::new(db.clone(), &[db::OUTBOX_CHANNEL]);
    loop {
        // Wait until there may be something to relay: any notification, and also (re)gaining
        // the connection, since what was committed while nobody listened notified no one.
        tokio::select! {
            notice = listener.next() => {
                if notice == Notice::Lost {
                    continue;
                }
            }
            _ = shutdown.cancelled() => return,
        }
        // Drain everything committed so far. A short batch means the outbox was empty when it
        // was read; anything committed since then notifies the listener, so no empty pass is
        // needed to be sure.
        loop {
            match relay_batch(&db, publisher, topology).await {
                Ok(relayed) if (relayed as i64) < BATCH => break,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay failed; retrying");
                    if pause(&shutdown, Duration::from_millis(500)).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Sleeps unless shutdown comes first; `true` if it did.
async fn pause(shutdown: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = shutdown.cancelled() => true,
    }
}

/// Publishes up to one batch; returns how many rows were relayed.
pub async fn relay_batch(
    db: &PgPool,
    publisher: &Publisher,
    topology: &Topology,
) -> anyhow::Result<usize> {
    let mut tx = db.begin().await?;
    let rows = outbox::lock_batch(&mut tx, BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let bodies: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| serde_json::to_vec(&r.payload).expect("json values serialize"))
        .collect();
    let command_ids: Vec<Option<Uuid>> = rows
        .iter()
        .map(|r| {
            StatusEvent::deserialize(&r.payload)
                .ok()
                .map(|e| e.command_id.0)
        })
        .collect();
    let traces = traceparents(&mut tx, command_ids.iter().flatten().copied().collect()).await?;
    let messages: Vec<Outgoing> = rows
        .iter()
        .zip(&bodies)
        .zip(&command_ids)
        .map(|((row, body), command_id)| Outgoing {
            routing_key: &row.routing_key,
            body,
            properties: with_traceparent(
                json_properties(),
                command_id
                    .and_then(|id| traces.get(&id))
                    .map(String::as_str),
            ),
        })
        .collect();
    // Events may have no subscriber: not mandatory.
    let results = publisher
        .publish_batch(&topology.events_exchange(), &messages, false)
        .await;
    // Delete the confirmed prefix only: a later event must not leave before an earlier one.
    let confirmed = results.iter().take_while(|r| r.is_ok()).count();
    let ids: Vec<i64> = rows[..confirmed].iter().map(|r| r.id).collect();
    outbox::delete(&mut tx, &ids).await?;
    tx.commit().await?;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        anyhow::bail!("publishing events: {e}");
    }
    Ok(confirmed)
}

/// Every `after / 2` until shutdown: republishes the commands the broker never confirmed and
/// those it overtook (both older than `after`), and fails the commands parked longer than
/// `park_timeout`.
pub async fn run_command_relay(
    db: PgPool,
    publisher: &Publisher,
    topology: &Topology,
    after: Duration,
    park_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(after / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        for which in [Stale::Unconfirmed, Stale::Overtaken] {
            if let Err(e) = republish_stale(&db, publisher, topology, after, which).await {
                tracing::warn!(error = %e, pass = which.label(), "command relay failed; will retry");
            }
        }
        if let Err(e) = crate::parked::fail_expired(&db, publisher, topology, park_timeout).await {
            tracing::warn!(error = %e, "failing expired parked commands failed; will retry");
        }
    }
}

/// Which accepted commands a relay pass publishes again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// Recorded, never confirmed by the broker: the API died (or the broker was down) between
    /// recording and publishing.
    Unconfirmed,
    /// Confirmed, but a message published on its partition after it was delivered first: the
    /// broker dropped it (a full quorum queue can confirm and drop) or requeued it behind.
    Overtaken,
}

impl Stale {
    fn label(self) -> &'static str {
        match self {
            Stale::Unconfirmed => "unconfirmed",
            Stale::Overtaken => "overtaken",
        }
    }
}

/// One pass of the command relay; returns how many commands were republished. A duplicate of
/// a command that did arrive is harmless: the worker's inbox skips it.
pub async fn republish_stale(
    db: &PgPool,
    publisher: &Publisher,
    topology: &Topology,
    after: Duration,
    which: Stale,
) -> anyhow::Result<usize> {
    let mut tx = db.begin().await?;
    let min_age = after.as_millis() as i64;
    let rows = match which {
        Stale::Unconfirmed => commands::lock_unpublished(&mut tx, min_age, BATCH).await?,
        Stale::Overtaken => commands::lock_overtaken(&mut tx, min_age, BATCH).await?,
    };
    if rows.is_empty() {
        return Ok(0);
    }
    let mut bodies = Vec::with_capacity(rows.len());
    let mut keys = Vec::with_capacity(rows.len());
    for row in &rows {
        bodies.push(row.to_message()?.to_bytes());
        keys.push(row.partition.to_string());
    }
    let traces = traceparents(&mut tx, rows.iter().map(|r| r.id.0).collect()).await?;
    let messages: Vec<Outgoing> = rows
        .iter()
        .zip(bodies.iter().zip(&keys))
        .map(|(row, (body, key))| Outgoing {
            routing_key: key,
            body,
            properties: with_traceparent(
                json_properties().with_message_id(row.id.to_string().as_str().into()),
                traces.get(&row.id.0).map(String::as_str),
            ),
        })
        .collect();
    let results = publisher
        .publish_batch(&topology.command_exchange(), &messages, true)
        .await;
    let published: Vec<uuid::Uuid> = rows
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(row, _)| row.id.0)
        .collect();
    match which {
        Stale::Unconfirmed => {
            commands::mark_published(&mut *tx, &published).await?;
        }
        Stale::Overtaken => commands::mark_republished(&mut *tx, &published).await?,
    }
    tx.commit().await?;
    if !published.is_empty() {
        metrics::republished(which.label(), published.len());
        tracing::info!(
            count = published.len(),
            why = which.label(),
            "republished commands"
        );
    }
    Ok(published.len())
}

/// The stored traceparents of these commands, by command id (one query per batch).
async fn traceparents(
    conn: &mut PgConnection,
    command_ids: Vec<Uuid>,
) -> sqlx::Result<HashMap<Uuid, String>> {
    if command_ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(observability::traceparents(conn, &command_ids)
        .await?
        .into_iter()
        .collect())
}
