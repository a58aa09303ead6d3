//! Parked commands that waited too long. A command is parked when it reached a worker before an
//! earlier command of its order that no worker has seen (a direct producer's follow-up ahead of
//! its create; see [`crate::direct`]). Once the park timeout passes, the earlier command is
//! taken to be lost or never sent: the parked command is dead-lettered with the reason, then
//! failed, with its status event, in one transaction.

use crate::apply::{Ending, finish, finished};
use crate::consumer::dead_letter_properties;
use crate::error::Failure;
use crate::leases::Holdings;
use crate::metrics;
use crate::relay::BATCH;
use lapin::types::FieldTable;
use orderflow_contract::{CommandStatus, FailureCode, Reason};
use orderflow_messaging::{Outgoing, Publisher, Topology};
use orderflow_storage::commands;
use orderflow_storage::observability::{self, NewDeadLetter};
use sqlx::PgPool;
use std::time::Duration;

/// Fails the commands parked for longer than `timeout`; returns how many. With `fence`, only
/// those of the partitions this process holds, in a transaction fenced on their leases.
pub async fn fail_expired(
    db: &PgPool,
    fence: Option<&Holdings>,
    publisher: &Publisher,
    topology: &Topology,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let mut tx = db.begin().await?;
    let held = fence.map(|fence| (fence, fence.held()));
    if let Some((fence, held)) = &held {
        if held.is_empty() {
            return Ok(0);
        }
        fence.fence_all(&mut tx, held).await?;
    }
    let partitions: Option<Vec<i32>> = held
        .as_ref()
        .map(|(_, held)| held.iter().map(|h| h.0).collect());
    let rows = commands::lock_expired_parked(
        &mut tx,
        timeout.as_millis() as i64,
        BATCH,
        partitions.as_deref(),
    )
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let reasons: Vec<String> = rows
        .iter()
        .map(|row| {
            format!(
                "waited {}s for the earlier commands of order {} (seq 1 to {}, its create first), which never arrived",
                timeout.as_secs(),
                row.order_id,
                row.seq - 1
            )
        })
        .collect();
    let bodies = rows
        .iter()
        .map(|row| row.to_message().map(|m| m.to_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let queues: Vec<String> = rows
        .iter()
        .map(|row| topology.partition_queue(row.partition as u16))
        .collect();
    let messages: Vec<Outgoing> = bodies
        .iter()
        .zip(&reasons)
        .zip(&queues)
        .map(|((body, reason), queue)| Outgoing {
            routing_key: "",
            body,
            properties: dead_letter_properties(FieldTable::default(), reason, queue),
        })
        .collect();
    // Dead-lettered first: a crash before the commit leaves an extra dead letter, never a
    // failed command missing from the dead-letter queue.
    let results = publisher
        .publish_batch(&topology.dead_letter_exchange(), &messages, true)
        .await;
    let mut failed = Vec::new();
    for (((row, reason), body), result) in rows.iter().zip(&reasons).zip(&bodies).zip(&results) {
        if result.is_err() {
            continue;
        }
        let failure = Failure::new(FailureCode::ParkedTooLong, reason);
        // Under its partition's lease (the fence covered several: it set none for the
        // transaction).
        let lease = held
            .iter()
            .flat_map(|(_, held)| held.iter())
            .find(|(partition, _)| *partition == row.partition)
            .copied();
        finish(&mut tx, row, Ending::Failed(&failure), None, false, lease).await?;
        let letter = NewDeadLetter::from_body(row.partition as u16, reason, body);
        observability::insert_dead_letter(&mut *tx, &letter).await?;
        let reason = Reason::Failed(FailureCode::ParkedTooLong);
        failed.push(finished(row, CommandStatus::Failed, Some(reason)));
    }
    tx.commit().await?;
    crate::apply::settle(db, &failed).await;
    (0..failed.len()).for_each(|_| metrics::dead_lettered(FailureCode::ParkedTooLong));
    if !failed.is_empty() {
        tracing::warn!(
            count = failed.len(),
            "failed parked commands whose earlier commands never arrived"
        );
    }
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        anyhow::bail!("dead-lettering parked commands: {e}");
    }
    Ok(failed.len())
}
