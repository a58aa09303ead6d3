//! The apply transaction: one message in, one PostgreSQL transaction, one outcome out; or a
//! batch of a partition's ready messages in one transaction, committed only if every one of them
//! finished (or parked). No AMQP types here; the consumer decides what to do with the messages
//! from the [`Outcome`].
//!
//! Per message: record the command if a direct producer sent it; lock it (the inbox: a final
//! status means done); lock the order's stream; apply any earlier accepted commands of the
//! order first (the broker may deliver out of order); apply this one; commit.
//! Per command: lock the order row, check the expected version, decide (nothing written yet),
//! perform the side effects (stock in sorted SKU order, payment; inside a savepoint when they can
//! still reject after writing), append the event, write the projection, the command's status
//! (with when and at which attempt its message arrived) and the outbox row. A rejection records
//! only itself.
//! What a transaction finished is counted in the metrics after it commits, never before.

use crate::error::{ApplyError, Failure};
use crate::metrics::{self, FinishedCommand};
use crate::payment::PaymentGateway;
use crate::{direct, effects};
use chrono::{SubsecRound, Utc};
use orderflow_contract::partition::partition_of;
use orderflow_contract::{
    CommandMessage, CommandStatus, ContractError, FailureCode, Reason, STATUS_EVENT_VERSION,
    StatusEvent,
};
use orderflow_domain::{
    Command, CommandId, CommandKind, Event, Order, Rejection, decide, order::evolve,
};
use orderflow_storage::commands::{self, CommandRow, Delivered};
use orderflow_storage::observability::{self, NewDeadLetter};
use orderflow_storage::{inventory, orders};
use sqlx::{Acquire, PgConnection, PgPool};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// What became of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command reached this final status now.
    Finished(CommandStatus),
    /// The command had already been dealt with (a redelivery, or applied ahead of this message
    /// because a later command of its order arrived first).
    Duplicate,
    /// The message can never be applied; dead-letter it. It names no recorded command of its own
    /// (or the id belongs to another command), so no command is failed.
    Poison(Failure),
    /// The command failed earlier (for this reason); its message is dead-lettered again so the
    /// dead-letter queue surely holds it (a crash may have come between the two).
    AlreadyFailed(Failure),
    /// The command is recorded but waits for an earlier command of its order that no worker
    /// has seen yet (a direct producer's create, overtaken by its follow-up). Applied right
    /// after that one; failed by [`crate::parked`] if it never comes.
    Parked,
}

impl Outcome {
    /// Whether its transaction is committed: only a finished or parked command wrote something
    /// to keep; after any other outcome the transaction is rolled back.
    pub fn commits(&self) -> bool {
        matches!(self, Outcome::Finished(_) | Outcome::Parked)
    }
}

/// What the consumer knows about the message being applied; empty for callers without a
/// broker (benchmarks, tests).
#[derive(Clone, Debug, Default)]
pub struct Delivery {
    /// When this worker received the message and which attempt it is; written on the message's
    /// own command when this transaction finishes it.
    pub delivered: Option<Delivered>,
    /// The message's `traceparent` header, stored with a direct producer's command.
    pub traceparent: Option<String>,
}

/// What one apply transaction did.
#[derive(Debug)]
pub struct Handled {
    pub outcome: Outcome,
    /// Commands it brought to a final status: the message's own and earlier ones of its order.
    pub finished: usize,
}

/// One message of a batch ([`Applier::handle_batch`]).
pub struct BatchItem<'a> {
    pub body: &'a [u8],
    pub delivery: Delivery,
    /// The message's own span: its apply is logged inside it.
    pub span: tracing::Span,
}

/// The message in hand when its own command is failed and the message dead-lettered.
pub struct OwnMessage<'a> {
    /// Checked against the recorded command (a stranger reusing the id must not fail it);
    /// `None` when the command is known to be this message's.
    pub message: Option<&'a CommandMessage>,
    pub delivered: Option<Delivered>,
    /// Recorded in the same transaction as the failure.
    pub dead_letter: NewDeadLetter<'a>,
}

/// Applies commands to PostgreSQL.
#[derive(Clone)]
pub struct Applier {
    pub db: PgPool,
    pub gateway: Arc<dyn PaymentGateway>,
    pub partitions: u16,
}

/// What a transaction did, counted only once it committed.
#[derive(Default)]
struct Tally {
    finished: Vec<FinishedCommand>,
    /// Kinds of the direct producers' commands it recorded.
    recorded: Vec<CommandKind>,
    parked: usize,
}

impl Tally {
    /// Counts what a committed transaction did.
    fn record(&self) {
        self.recorded
            .iter()
            .copied()
            .for_each(metrics::command_accepted);
        self.finished.iter().for_each(FinishedCommand::record);
        (0..self.parked).for_each(|_| metrics::parked());
    }
}

impl Applier {
    /// Handles one message that arrived on `partition`. `Err` is a database failure: transient
    /// ones are retried by the caller, anything else fails the command (see [`ApplyError`]).
    pub async fn handle(&self, body: &[u8], partition: u16) -> Result<Outcome, ApplyError> {
        self.handle_delivery(body, partition, &Delivery::default())
            .await
            .map(|handled| handled.outcome)
    }

    /// [`Applier::handle`] with what the consumer knows about the delivery.
    pub async fn handle_delivery(
        &self,
        body: &[u8],
        partition: u16,
        delivery: &Delivery,
    ) -> Result<Handled, ApplyError> {
        let started = Instant::now();
        let mut tally = Tally::default();
        let result = self
            .transaction(body, partition, delivery, &mut tally)
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
        tally.record();
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
    pub async fn handle_batch(
        &self,
        items: &[BatchItem<'_>],
        partition: u16,
    ) -> Result<Option<usize>, ApplyError> {
        let started = Instant::now();
        let mut tally = Tally::default();
        let result = self.batch_transaction(items, partition, &mut tally).await;
        metrics::apply_duration(started.elapsed());
        if !result? {
            return Ok(None);
        }
        tally.record();
        Ok(Some(tally.finished.len()))
    }

    async fn batch_transaction(
        &self,
        items: &[BatchItem<'_>],
        partition: u16,
        tally: &mut Tally,
    ) -> Result<bool, ApplyError> {
        let Ok(messages) = items
            .iter()
            .map(|item| self.read(item.body, partition))
            .collect::<Result<Vec<_>, _>>()
        else {
            return Ok(false);
        };
        let mut tx = self.db.begin().await?;
        lock_stock(&mut tx, &messages).await?;
        for (item, message) in items.iter().zip(&messages) {
            let outcome = self
                .apply_message(&mut tx, message, partition, &item.delivery, tally)
                .instrument(item.span.clone())
                .await?;
            if !outcome.commits() {
                return Ok(false);
            }
        }
        commit(tx).await?;
        Ok(true)
    }

    async fn transaction(
        &self,
        body: &[u8],
        partition: u16,
        delivery: &Delivery,
        tally: &mut Tally,
    ) -> Result<Outcome, ApplyError> {
        let message = match self.read(body, partition) {
            Ok(message) => message,
            Err(failure) => return Ok(Outcome::Poison(failure)),
        };
        let mut tx = self.db.begin().await?;
        let outcome = self
            .apply_message(&mut tx, &message, partition, delivery, tally)
            .await?;
        if outcome.commits() {
            commit(tx).await?;
        }
        Ok(outcome)
    }

    /// The message's command, if the message is a command that belongs on `partition`.
    fn read(&self, body: &[u8], partition: u16) -> Result<CommandMessage, Failure> {
        let message = CommandMessage::parse(body)
            .map_err(|e| Failure::new(contract_code(&e), e.to_string()))?;
        let expected_partition = partition_of(message.order_id, self.partitions);
        if expected_partition != partition {
            return Err(Failure::new(
                FailureCode::WrongPartition,
                format!(
                    "routed to partition {partition}, but order {} belongs to partition {expected_partition}",
                    message.order_id
                ),
            ));
        }
        Ok(message)
    }

    /// Applies one message in `tx`. Only a `Finished` or `Parked` outcome may be committed;
    /// after any other one `tx` must be rolled back (it may have written).
    async fn apply_message(
        &self,
        tx: &mut PgConnection,
        message: &CommandMessage,
        partition: u16,
        delivery: &Delivery,
        tally: &mut Tally,
    ) -> Result<Outcome, ApplyError> {
        let row = match commands::lock(&mut *tx, message.command_id).await? {
            Some(row) => {
                if !same_command(&row, message) {
                    return Ok(Outcome::Poison(Failure::new(
                        FailureCode::CommandIdReused,
                        format!(
                            "command_id {} was already used for a different command",
                            row.id
                        ),
                    )));
                }
                row
            }
            None => match direct::record(&mut *tx, message, partition, delivery).await? {
                Ok(row) => {
                    tally.recorded.push(row.kind);
                    row
                }
                Err(failure) => return Ok(Outcome::Poison(failure)),
            },
        };
        if inbox_sabotaged() && row.status == CommandStatus::Applied {
            let status = self.apply_one(tx, &row, delivery.delivered, tally).await?;
            return Ok(Outcome::Finished(status));
        }
        if row.status == CommandStatus::Failed {
            let detail = row.detail.unwrap_or_default();
            return Ok(Outcome::AlreadyFailed(Failure::new(
                FailureCode::AlreadyFailed,
                detail,
            )));
        }
        if row.status.is_final() {
            return Ok(Outcome::Duplicate);
        }
        let stream = commands::lock_stream(&mut *tx, row.order_id).await?;
        let processed = stream.processed_seq;
        if row.seq <= processed {
            return Ok(Outcome::Duplicate);
        }
        // Earlier commands of the order still to apply; none in the usual case (this is the next).
        let earlier = if row.seq == processed + 1 {
            Vec::new()
        } else {
            commands::lock_between(&mut *tx, row.order_id, processed, row.seq).await?
        };
        if earlier.len() as i64 != row.seq - processed - 1 {
            // An earlier seq is reserved but not recorded: the order's create has not reached
            // any worker yet. Keep this command (recorded, acked) until it does.
            tracing::info!(
                command_id = %row.id, order_id = %row.order_id, seq = row.seq,
                "parking the command until the earlier commands of its order arrive"
            );
            commands::park(&mut *tx, row.id, row.order_id).await?;
            tally.parked += 1;
            return Ok(Outcome::Parked);
        }
        for earlier in earlier {
            if !earlier.status.is_final() {
                tracing::info!(
                    command_id = %earlier.id, order_id = %earlier.order_id, seq = earlier.seq,
                    "applying an earlier command of the order first (its message is late)"
                );
                // Not its own delivery: its timeline keeps no delivered_at/attempt.
                self.apply_one(tx, &earlier, None, tally)
                    .await
                    .map_err(|e| e.blame(earlier.id))?;
            }
        }
        let status = self
            .apply_one(tx, &row, delivery.delivered, tally)
            .await
            .map_err(|e| e.blame(row.id))?;
        let processed = if stream.has_parked {
            self.apply_parked_after(tx, &row, tally).await?
        } else {
            row.seq
        };
        commands::set_processed(&mut *tx, row.order_id, processed).await?;
        Ok(Outcome::Finished(status))
    }

    /// Applies the parked commands that directly follow `row` (whose own turn just came), in
    /// order, and says how far the order is now processed. Clears the stream's mark once no
    /// parked command is left.
    async fn apply_parked_after(
        &self,
        tx: &mut PgConnection,
        row: &CommandRow,
        tally: &mut Tally,
    ) -> Result<i64, ApplyError> {
        let mut processed = row.seq;
        let later = commands::lock_after(tx, row.order_id, row.seq).await?;
        for next in &later {
            if next.seq != processed + 1 {
                break;
            }
            if !next.status.is_final() {
                // A command recorded but not parked has its message on the way: its turn.
                if next.parked_at.is_none() {
                    break;
                }
                tracing::info!(
                    command_id = %next.id, order_id = %next.order_id, seq = next.seq,
                    "applying a parked command: the commands before it are done"
                );
                self.apply_one(tx, next, None, tally)
                    .await
                    .map_err(|e| e.blame(next.id))?;
            }
            processed = next.seq;
        }
        let still_parked = later
            .iter()
            .any(|c| c.seq > processed && c.parked_at.is_some() && !c.status.is_final());
        if !still_parked {
            commands::clear_parked(tx, row.order_id).await?;
        }
        Ok(processed)
    }

    /// Marks a command `failed` if it is still accepted — and, when `own` names its message,
    /// only if the message is that command (a stranger's message must not fail it) — recording
    /// the message's dead letter in the same transaction. Returns whether it failed the command.
    pub async fn fail(
        &self,
        command_id: CommandId,
        failure: &Failure,
        own: Option<&OwnMessage<'_>>,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let failed = fail_in(&mut tx, command_id, failure, own).await?;
        if let Some(own) = own {
            observability::insert_dead_letter(&mut *tx, &own.dead_letter).await?;
        }
        tx.commit().await?;
        if let Some(failed) = &failed {
            failed.record();
        }
        Ok(failed.is_some())
    }

    /// The event's side effects. Those that can still reject the command after writing (stock
    /// partly reserved, a declined payment) run in a savepoint that the rejection rolls back;
    /// the others write nothing that a rejection would have to undo.
    async fn perform(
        &self,
        tx: &mut PgConnection,
        order: Option<&Order>,
        event: &Event,
        row: &CommandRow,
    ) -> Result<Result<(), Rejection>, ApplyError> {
        if !effects::may_reject(event) {
            return effects::perform(&*self.gateway, tx, order, event, row).await;
        }
        let mut savepoint = tx.begin().await?;
        let performed = effects::perform(&*self.gateway, &mut savepoint, order, event, row).await?;
        if performed.is_ok() {
            savepoint.commit().await?;
        } else {
            savepoint.rollback().await?;
        }
        Ok(performed)
    }

    /// Applies (or rejects) one command in `tx`: decided on the locked order before anything is
    /// written, so a rejection writes only itself.
    async fn apply_one(
        &self,
        tx: &mut PgConnection,
        row: &CommandRow,
        delivered: Option<Delivered>,
        tally: &mut Tally,
    ) -> Result<CommandStatus, ApplyError> {
        let command: Command = serde_json::from_value(row.body.clone()).map_err(|e| {
            ApplyError::broken(
                row.id,
                FailureCode::UnreadableCommand,
                format!("stored command does not parse: {e}"),
            )
        })?;
        let order = orders::lock(&mut *tx, row.order_id).await?;
        let version = order.as_ref().map(|o| o.version);
        let decided = match decide(order.as_ref(), &command, row.expected_version) {
            Ok(event) => self
                .perform(tx, order.as_ref(), &event, row)
                .await?
                .map(|()| event),
            Err(rejection) => Err(rejection),
        };
        let event = match decided {
            Ok(event) => event,
            Err(rejection) => {
                let reason = rejection.as_str();
                tracing::info!(command_id = %row.id, order_id = %row.order_id, reason, "command rejected");
                let status = CommandStatus::Rejected;
                finish(tx, row, Ending::Rejected { rejection, version }, delivered).await?;
                tally
                    .finished
                    .push(finished(row, status, Some(Reason::Rejected(rejection))));
                return Ok(status);
            }
        };
        // Microseconds: what timestamptz keeps, so a replay rebuilds the projection exactly.
        let at = Utc::now().trunc_subsecs(6);
        let order = evolve(order, row.order_id, row.client_id, &event, at);
        orders::record_event(&mut *tx, &order, row.id, &event, at).await?;
        let status = CommandStatus::Applied;
        let ending = Ending::Applied {
            version: order.version,
            event: &event,
        };
        finish(tx, row, ending, delivered).await?;
        tally.finished.push(finished(row, status, None));
        tracing::debug!(command_id = %row.id, order_id = %row.order_id, version = order.version, "command applied");
        Ok(status)
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
async fn lock_stock(tx: &mut PgConnection, messages: &[CommandMessage]) -> sqlx::Result<()> {
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

/// The failing part of [`Applier::fail`], inside its transaction.
async fn fail_in(
    tx: &mut PgConnection,
    command_id: CommandId,
    failure: &Failure,
    own: Option<&OwnMessage<'_>>,
) -> Result<Option<FinishedCommand>, sqlx::Error> {
    let Some(row) = commands::lock(tx, command_id).await? else {
        return Ok(None);
    };
    let message = own.and_then(|own| own.message);
    if row.status.is_final() || message.is_some_and(|m| !same_command(&row, m)) {
        return Ok(None);
    }
    let processed = commands::lock_stream(tx, row.order_id).await?.processed_seq;
    let status = CommandStatus::Failed;
    let delivered = own.and_then(|own| own.delivered);
    finish(tx, &row, Ending::Failed(failure), delivered).await?;
    if processed == row.seq - 1 {
        commands::set_processed(tx, row.order_id, row.seq).await?;
    }
    Ok(Some(finished(
        &row,
        status,
        Some(Reason::Failed(failure.code)),
    )))
}

pub(crate) fn finished(
    row: &CommandRow,
    status: CommandStatus,
    reason: Option<Reason>,
) -> FinishedCommand {
    FinishedCommand {
        kind: row.kind,
        status,
        reason,
        accepted_at: row.accepted_at,
    }
}

/// The metric label of a message that is not a valid command.
fn contract_code(error: &ContractError) -> FailureCode {
    match error {
        ContractError::TooLarge(_) => FailureCode::TooLarge,
        ContractError::Version(_) => FailureCode::UnsupportedVersion,
        ContractError::Malformed(_) | ContractError::NegativeVersion => FailureCode::Malformed,
    }
}

/// Is this message the command recorded under its id (a redelivery), not a reuse of the id?
fn same_command(row: &CommandRow, message: &CommandMessage) -> bool {
    row.client_id == message.client_id
        && row.order_id == message.order_id
        && row.expected_version == message.expected_version
        && serde_json::to_value(&message.command).ok().as_ref() == Some(&row.body)
}

/// How a command ended, for [`finish`].
pub(crate) enum Ending<'a> {
    Applied {
        version: i64,
        event: &'a Event,
    },
    Rejected {
        rejection: Rejection,
        version: Option<i64>,
    },
    Failed(&'a Failure),
}

/// Records a command's final status and its status event for the outbox.
pub(crate) async fn finish(
    conn: &mut PgConnection,
    row: &CommandRow,
    ending: Ending<'_>,
    delivered: Option<Delivered>,
) -> Result<(), sqlx::Error> {
    let (status, reason, detail, version, event) = match ending {
        Ending::Applied { version, event } => (
            CommandStatus::Applied,
            None,
            None,
            Some(version),
            Some(event.clone()),
        ),
        Ending::Rejected { rejection, version } => (
            CommandStatus::Rejected,
            Some(Reason::Rejected(rejection)),
            None,
            version,
            None,
        ),
        Ending::Failed(failure) => (
            CommandStatus::Failed,
            Some(Reason::Failed(failure.code)),
            Some(failure.detail.clone()),
            None,
            None,
        ),
    };
    let event = StatusEvent {
        schema_version: STATUS_EVENT_VERSION,
        command_id: row.id,
        order_id: row.order_id,
        client_id: row.client_id,
        seq: row.seq,
        kind: row.kind,
        status,
        reason,
        detail,
        version,
        event,
        at: Utc::now(),
    };
    commands::finish(conn, &event, delivered).await
}

/// Deliberate breakage, for proving that the race audit can fail: the failpoint
/// `apply.skip_inbox` (armed with `return`) makes the worker ignore its inbox, so that a
/// redelivered or duplicated command is applied again. It exists only in builds with the
/// `failpoints` feature (the audit's tests and the race audit's binaries), never in a release.
fn inbox_sabotaged() -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::eval("apply.skip_inbox", |_| ()).is_some()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        false
    }
}
