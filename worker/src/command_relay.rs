//! The command relay. It republishes commands that were recorded but never confirmed to the
//! broker (the API died in between, or the broker was down), and commands the broker confirmed
//! but never delivered (overtaken on their partition); it also fails parked commands that waited
//! too long ([`crate::parked`]). It hands on the trace stored with the command (`traceparent`
//! header).

use crate::leases::Holdings;
use crate::metrics;
use crate::relay::{BATCH, traceparents};
use orderflow_messaging::{Outgoing, Publisher, Topology, json_properties, with_traceparent};
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_storage::commands;
use sqlx::PgPool;
use std::time::Duration;

/// Every `after / 2` until shutdown: republishes the commands the broker never confirmed and
/// those it overtook (both older than `after`), and fails the commands parked longer than
/// `park_timeout`.
pub async fn run_command_relay(
    db: PgPool,
    publisher: &Publisher,
    topology: &Topology,
    after: Duration,
    park_timeout: Duration,
    fence: Option<&Holdings>,
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
        if let Err(e) =
            crate::parked::fail_expired(&db, fence, publisher, topology, park_timeout).await
        {
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
            let now = vec![chrono::Utc::now(); published.len()];
            commands::mark_published(&mut *tx, &published, &now).await?;
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
