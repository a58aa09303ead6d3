//! The outbox relay. It publishes status events to the events exchange in outbox order (hence
//! per-order order), woken by LISTEN/NOTIFY; it deletes rows only after the broker confirmed
//! them. It hands on the trace stored with the command (`traceparent` header): events carry
//! their command's. The command relay is [`crate::command_relay`].

use crate::relay::{BATCH, traceparents};
use orderflow_contract::StatusEvent;
use orderflow_messaging::{Outgoing, Publisher, Topology, json_properties, with_traceparent};
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_storage::listen::{Listener, Notice};
use orderflow_storage::{self as db, outbox};
use serde::Deserialize;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

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
