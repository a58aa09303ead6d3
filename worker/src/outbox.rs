//! The outbox relay. It publishes status events to the events exchange in outbox order, an
//! order's next event only once the broker confirmed its previous one (hence per-order order
//! whatever the broker refuses), woken by LISTEN/NOTIFY (and a sweep every
//! [`SWEEP_EVERY`], for rows whose transaction's announcement never came); it deletes rows only
//! after the broker confirmed them. It hands on the trace stored with the command (`traceparent` header): events carry
//! their command's. The command relay is [`crate::command_relay`].

use crate::relay::{BATCH, traceparents};
use orderflow_contract::StatusEvent;
use orderflow_domain::OrderId;
use orderflow_messaging::{
    Outgoing, PublishError, Publisher, Topology, json_properties, with_traceparent,
};
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_storage::listen::{Listener, Notice};
use orderflow_storage::{self as db, outbox};
use serde::Deserialize;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// Longest a committed outbox row waits when nobody announced it: the workers announce what
/// they finished after the commit, in a transaction of its own (`commands::announce_finished`),
/// and a worker that died in between announced nothing.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How often the relay prunes the clients' event log of what is older than its retention, and
/// how many rows one pass deletes at most (a pass that deleted that many runs again at once).
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_BATCH: i64 = 10_000;

/// Relays the outbox until shutdown, and keeps the clients' event log (which every relayed
/// status event joins) to `retention`. `feed_grew` is told whenever events were relayed (and so
/// joined the log): this worker's webhook deliveries wait on it.
pub async fn run_outbox_relay(
    db: PgPool,
    publisher: &Publisher,
    topology: &Topology,
    retention: Duration,
    feed_grew: &tokio::sync::Notify,
    shutdown: CancellationToken,
) {
    let mut listener = Listener::new(db.clone(), &[db::OUTBOX_CHANNEL]);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Wait until there may be something to relay: any notification, (re)gaining the
        // connection, since what was committed while nobody listened notified no one, or the
        // sweep, since a commit's announcement may never have come.
        tokio::select! {
            notice = listener.next() => {
                if notice == Notice::Lost {
                    continue;
                }
            }
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = prune.tick() => prune_client_events(&db, retention).await,
            _ = shutdown.cancelled() => return,
        }
        // Drain everything committed so far. A short batch means the outbox was empty when it
        // was read; anything announced since then notifies the listener.
        loop {
            let relayed = relay_batch(&db, publisher, topology).await;
            if matches!(relayed, Ok(n) if n > 0) {
                feed_grew.notify_one();
            }
            match relayed {
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

/// Deletes the clients' events older than `retention`, a batch at a time. Every worker's relay
/// does it; two at once delete disjoint rows or wait for each other, and a failure waits for the
/// next round.
async fn prune_client_events(db: &PgPool, retention: Duration) {
    let Ok(retention) = chrono::Duration::from_std(retention) else {
        return;
    };
    // Webhook endpoints whose clients were idle follow the feed's head first, so that only an
    // endpoint that really lagged finds its cursor behind what the prune leaves.
    if let Err(e) = orderflow_storage::webhooks::advance_idle_cursors(db).await {
        tracing::warn!(error = %e, "moving idle webhook endpoints' cursors failed; pruning later");
        return;
    }
    loop {
        match outbox::prune_client_events(db, chrono::Utc::now() - retention, PRUNE_BATCH).await {
            Ok(n) if n as i64 == PRUNE_BATCH => continue,
            Ok(n) => {
                if n > 0 {
                    tracing::info!(pruned = n, "pruned the clients' event log");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "pruning the clients' event log failed");
                return;
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
    let message = |i: usize| Outgoing {
        routing_key: &rows[i].routing_key,
        body: &bodies[i],
        properties: with_traceparent(
            json_properties(),
            command_ids[i]
                .and_then(|id| traces.get(&id))
                .map(String::as_str),
        ),
    };
    // An order never has two events in flight: its k-th row of the batch goes out in wave k,
    // and only if its earlier ones were confirmed. A publish the broker refuses or leaves
    // unconfirmed while it confirms a later one (a quorum queue that loses its leader nacks
    // what it held and takes what comes next) would otherwise let the order's later event
    // overtake it: the race audit saw seqs 51, 52 arrive before 40..50 of one order when a
    // broker node was cut off. Most batches are one wave (one event per order).
    let waves = waves(&rows);
    let mut held: HashSet<OrderId> = HashSet::new();
    let mut confirmed = Vec::with_capacity(rows.len());
    let mut failure = None;
    for wave in waves {
        let wave: Vec<usize> = wave
            .into_iter()
            .filter(|&i| !held.contains(&rows[i].order_id))
            .collect();
        if wave.is_empty() {
            break;
        }
        let messages: Vec<Outgoing> = wave.iter().map(|&i| message(i)).collect();
        // Events may have no subscriber: not mandatory.
        let results = publisher
            .publish_batch(&topology.events_exchange(), &messages, false)
            .await;
        let mut unavailable = false;
        for (&i, result) in wave.iter().zip(results) {
            match result {
                Ok(()) => confirmed.push(rows[i].id),
                Err(e) => {
                    held.insert(rows[i].order_id);
                    unavailable |= matches!(e, PublishError::Unavailable(_));
                    failure.get_or_insert(e);
                }
            }
        }
        // A broker that did not answer gets no further wave: each may wait the whole confirm
        // timeout with this transaction open.
        if unavailable {
            break;
        }
    }
    let clients = outbox::pass_on(&mut tx, &confirmed).await?;
    tx.commit().await?;
    // The clients' feeds wait for this; a failure here only delays them until their own re-read.
    if let Err(e) = outbox::announce_client_events(db, &clients).await {
        tracing::warn!(error = %e, "announcing new client events failed");
    }
    if let Some(e) = failure {
        anyhow::bail!("publishing events: {e}");
    }
    Ok(confirmed.len())
}

/// The batch's rows by wave: wave k holds, in outbox order, each order's k-th row.
fn waves(rows: &[outbox::OutboxRow]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<OrderId, usize> = HashMap::new();
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let k = seen.entry(row.order_id).or_default();
        if *k == waves.len() {
            waves.push(Vec::new());
        }
        waves[*k].push(i);
        *k += 1;
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, order: u128) -> outbox::OutboxRow {
        outbox::OutboxRow {
            id,
            order_id: OrderId(Uuid::from_u128(order)),
            routing_key: String::new(),
            payload: serde_json::Value::Null,
        }
    }

    #[test]
    fn each_orders_kth_row_goes_in_wave_k_in_outbox_order() {
        let rows = [
            row(1, 7),
            row(2, 8),
            row(3, 7),
            row(4, 9),
            row(5, 7),
            row(6, 8),
        ];
        assert_eq!(waves(&rows), [vec![0, 1, 3], vec![2, 5], vec![4]]);
        assert_eq!(waves(&rows[..2]), [vec![0, 1]]);
        assert!(waves(&[]).is_empty());
    }
}
