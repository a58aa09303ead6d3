//! The apply transaction, of one message or of a batch: read the messages, begin, apply each
//! (through the inbox, `inbox.rs`), commit, and count what committed.

use super::{Applier, BatchItem, DeliveryInfo, Handled, Outcome, Run, Tally};
use crate::error::{ApplyError, Failure};
use crate::metrics;
use orderflow_contract::{CommandMessage, ContractError, FailureCode};
use orderflow_domain::{Command, CommandKind};
use orderflow_storage::inventory;
use sqlx::PgConnection;
use std::time::Instant;
use tracing::Instrument;

impl Applier {
    /// Handles one message that arrived on `partition`, published by the broker user
    /// `producer` (its `user_id`). `Err` is a database failure: transient ones are retried by
    /// the caller, anything else fails the command (see [`ApplyError`]).
    pub async fn handle(
        &self,
        body: &[u8],
        partition: u16,
        producer: &str,
    ) -> Result<Outcome, ApplyError> {
        let delivery = DeliveryInfo {
            user_id: Some(producer.to_owned()),
            ..DeliveryInfo::default()
        };
        self.apply_delivery(body, partition, &delivery)
            .await
            .map(|handled| handled.outcome)
    }

    /// [`Applier::handle`] with what the consumer knows about the delivery: one message in its
    /// own transaction, timed, and counted once it committed.
    pub async fn apply_delivery(
        &self,
        body: &[u8],
        partition: u16,
        delivery: &DeliveryInfo,
    ) -> Result<Handled, ApplyError> {
        let started = Instant::now();
        let mut tally = Tally::default();
        let result = self
            .message_transaction(body, partition, delivery, &mut tally)
            .await;
        metrics::apply_duration(started.elapsed());
        let outcome = result?;
        // Only `Finished` and `Parked` outcomes committed; every other one rolled back.
        if !outcome.commits() {
            return Ok(Handled {
                outcome,
                finished: 0,
            });
        }
        tally.committed(&self.db).await;
        Ok(Handled {
            outcome,
            finished: tally.finished.len(),
        })
    }

    /// Applies a partition's ready messages, in order, in one transaction: one commit, and the
    /// caller acks them all after it. `Ok(Some(n))`: committed, every message's command
    /// finished (or parked), `n` commands finished in all. `Ok(None)`: a message needs more than
    /// that (a duplicate, a message that is not a command, a command that fails); nothing was
    /// committed, and the caller handles the messages one by one, each in its own transaction.
    /// `Err`: nothing was committed either.
    pub async fn apply_batch(
        &self,
        items: &[BatchItem<'_>],
        partition: u16,
    ) -> Result<Option<usize>, ApplyError> {
        let run = Run { partition, items };
        let counts = self.apply_combined(std::slice::from_ref(&run)).await?;
        Ok(counts.map(|counts| counts.iter().sum()))
    }

    /// Applies the ready messages of several partitions in one transaction: each partition's
    /// in order, one partition after the other, all committed together (one fence over every
    /// partition's lease, one commit, one announcement) or none. Each partition's messages are
    /// applied under its own lease, recorded on its commands. `Ok(Some(finished))`: committed,
    /// with the commands each run finished; `Ok(None)` and `Err` as for [`Self::apply_batch`]:
    /// nothing was committed, and each run is handled on its own instead. No two runs may be of
    /// one partition.
    pub async fn apply_combined(&self, runs: &[Run<'_>]) -> Result<Option<Vec<usize>>, ApplyError> {
        let started = Instant::now();
        let mut tally = Tally::default();
        let result = self.combined_transaction(runs, &mut tally).await;
        metrics::apply_duration(started.elapsed());
        let Some(finished) = result? else {
            return Ok(None);
        };
        tally.committed(&self.db).await;
        Ok(Some(finished))
    }

    /// The transaction of [`Self::apply_combined`]; `Ok(Some(_))` when it committed.
    async fn combined_transaction(
        &self,
        runs: &[Run<'_>],
        tally: &mut Tally,
    ) -> Result<Option<Vec<usize>>, ApplyError> {
        let mut messages = Vec::with_capacity(runs.len());
        for run in runs {
            let Ok(read) = run
                .items
                .iter()
                .map(|item| self.read_command(item.body, run.partition))
                .collect::<Result<Vec<_>, _>>()
            else {
                return Ok(None);
            };
            messages.push(read);
        }
        let mut tx = self.db.begin().await?;
        // Each run's lease as the fence checks it; what its commands record.
        let leases: Vec<(i32, i64)> = match &self.fence {
            Some(fence) => {
                let leases: Vec<(i32, i64)> = runs
                    .iter()
                    .map(|run| (i32::from(run.partition), fence.epoch(run.partition)))
                    .collect();
                fence.fence_all(&mut tx, &leases).await?;
                leases
            }
            None => Vec::new(),
        };
        if let Some(finished) = self
            .apply_set_based(&mut tx, runs, &messages, &leases, tally)
            .await?
        {
            commit(tx).await?;
            metrics::apply_transaction("set_based");
            return Ok(Some(finished));
        }
        let all: Vec<&CommandMessage> = messages.iter().flatten().collect();
        lock_stock(&mut tx, &all).await?;
        let mut finished = Vec::with_capacity(runs.len());
        for (n, (run, messages)) in runs.iter().zip(&messages).enumerate() {
            tally.lease = leases.get(n).copied();
            let before = tally.finished.len();
            for (item, message) in run.items.iter().zip(messages) {
                let outcome = self
                    .apply_through_inbox(&mut tx, message, run.partition, &item.delivery, tally)
                    .instrument(item.span.clone())
                    .await?;
                if !outcome.commits() {
                    return Ok(None);
                }
            }
            finished.push(tally.finished.len() - before);
        }
        commit(tx).await?;
        metrics::apply_transaction("per_message");
        Ok(Some(finished))
    }

    /// One message's transaction, committed only if its outcome [`Outcome::commits`].
    async fn message_transaction(
        &self,
        body: &[u8],
        partition: u16,
        delivery: &DeliveryInfo,
        tally: &mut Tally,
    ) -> Result<Outcome, ApplyError> {
        let message = match self.read_command(body, partition) {
            Ok(message) => message,
            Err(failure) => return Ok(Outcome::Poison(failure)),
        };
        let mut tx = self.begin_for(partition).await?;
        let outcome = self
            .apply_through_inbox(&mut tx, &message, partition, delivery, tally)
            .await?;
        if outcome.commits() {
            commit(tx).await?;
        }
        Ok(outcome)
    }

    /// The message's command, if the message is a command that belongs on `partition`.
    fn read_command(&self, body: &[u8], partition: u16) -> Result<CommandMessage, Failure> {
        let message = CommandMessage::parse(body)
            .map_err(|e| Failure::new(contract_code(&e), e.to_string()))?;
        let layout = self.layout.get();
        if !layout.belongs(message.order_id, partition) {
            return Err(Failure::new(
                FailureCode::WrongPartition,
                format!(
                    "routed to partition {partition}, but order {} belongs to partition {} (of {})",
                    message.order_id,
                    layout.partition_of(message.order_id),
                    layout.partitions()
                ),
            ));
        }
        Ok(message)
    }
}

/// Commits an apply transaction (of one message or of a batch).
async fn commit(tx: sqlx::Transaction<'_, sqlx::Postgres>) -> sqlx::Result<()> {
    // The race audit's "worker killed inside the transaction" (`failpoints` builds only).
    fail::fail_point!("apply.before_commit", |_| std::process::abort());
    tx.commit().await
}

/// Locks, in SKU order, every stock row that the batch's commands may move, before any of them
/// runs. Each command moves its own SKUs in sorted order; commands one after another in one
/// transaction would not (reserve B, then ship A), and two workers doing that deadlock. Only
/// batches with two or more such commands need it. The SKUs are the orders' lines now plus any
/// line the batch adds first. (A late earlier command applied ahead of its message may still
/// touch another SKU; a deadlock that causes is retried like any other.)
async fn lock_stock(tx: &mut PgConnection, messages: &[&CommandMessage]) -> sqlx::Result<()> {
    let moving: Vec<uuid::Uuid> = messages
        .iter()
        .filter(|m| {
            matches!(
                m.command.kind(),
                CommandKind::Reserve | CommandKind::Ship | CommandKind::Cancel
            )
        })
        .map(|m| m.order_id.0)
        .collect();
    if moving.len() < 2 {
        return Ok(());
    }
    let added: Vec<String> = messages
        .iter()
        .flat_map(|m| match &m.command {
            Command::Create { items, .. } => items
                .as_slice()
                .iter()
                .map(|item| item.sku.as_str().to_owned())
                .collect(),
            Command::AddItem { sku, .. } => vec![sku.as_str().to_owned()],
            _ => Vec::new(),
        })
        .collect();
    inventory::lock_for_orders(tx, &moving, &added).await
}

/// The metric label of a message that is not a valid command.
fn contract_code(error: &ContractError) -> FailureCode {
    match error {
        ContractError::TooLarge(_) => FailureCode::TooLarge,
        ContractError::Version(_) => FailureCode::UnsupportedVersion,
        ContractError::Malformed(_) | ContractError::NegativeVersion => FailureCode::Malformed,
    }
}
