//! The apply transaction: one message in, one PostgreSQL transaction, one outcome out; or a
//! batch of a partition's ready messages in one transaction, committed only if every one of them
//! finished (or parked). No AMQP types here; the consumer decides what to do with the messages
//! from the [`Outcome`].
//!
//! Per message: lock the command (the inbox: a final status means done), its order's stream and
//! the order row, in one statement (a direct producer's command is recorded first, and its
//! stream and order locked after); apply any earlier accepted commands of the order first (the
//! broker may deliver out of order); apply this one; commit.
//! Per command: check the expected version on the locked order row, decide (nothing written
//! yet), perform the side effects (stock in sorted SKU order, payment; inside a savepoint when
//! they can still reject after writing), then one statement: append the event, write the
//! projection, the command's status (with when and at which attempt its message arrived), the
//! outbox row and, for the order's next command, the stream's progress. A rejection records only
//! itself (and the progress).
//! What a transaction finished is counted in the metrics after it commits, never before.
//!
//! The stages, one file each:
//!
//! 1. `transaction.rs`: the transaction of one message (`Applier::apply_delivery`) or of a
//!    batch (`Applier::apply_batch`): read the message, begin, apply, commit, count.
//! 2. `inbox.rs`: one message inside the transaction (`Applier::apply_through_inbox`): record a
//!    direct producer's command, the inbox check, the order's stream, earlier and parked commands.
//! 3. `command.rs`: one command (`Applier::apply_command`): decide, perform its effects
//!    (`Applier::perform_effects`), append its event.
//! 4. `ending.rs`: how a command ends (`Ending`, `finish`), and failing one
//!    (`Applier::fail_command`).

mod command;
mod ending;
mod inbox;
mod set_based;
mod transaction;

pub(crate) use ending::{Ending, finish, finished, settle};

/// Whether the message's command may move stock or money (or the message is not a command the
/// set-based path could take): such a message is applied message by message, with the stock
/// rows it may move locked from the transaction's start to its commit.
pub fn moves_stock_or_money(body: &[u8]) -> bool {
    CommandMessage::parse(body).map_or(true, |m| !set_based::without_effects(m.command.kind()))
}

use crate::error::Failure;
use crate::leases::Holdings;
use crate::metrics::{self, FinishedCommand};
use crate::payment::PaymentGateway;
use orderflow_contract::{CommandMessage, CommandStatus};
use orderflow_domain::{CommandId, CommandKind};
use orderflow_storage::commands::{self, Delivered};
use orderflow_storage::layout::LayoutCell;
use orderflow_storage::observability::{self, NewDeadLetter};
use sqlx::PgPool;
use std::sync::Arc;

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
pub struct DeliveryInfo {
    /// When this worker received the message and which attempt it is; written on the message's
    /// own command when this transaction finishes it.
    pub delivered: Option<Delivered>,
    /// The message's `traceparent` header, stored with a direct producer's command.
    pub traceparent: Option<String>,
    /// The broker user that published the message (its `user_id` property, which RabbitMQ
    /// validates): a direct producer's command is recorded only for a client it is granted.
    pub user_id: Option<String>,
}

/// What one apply transaction did.
#[derive(Debug)]
pub struct Handled {
    pub outcome: Outcome,
    /// Commands it brought to a final status: the message's own and earlier ones of its order.
    pub finished: usize,
}

/// One partition's messages in a transaction that may write for several
/// ([`Applier::apply_combined`]).
pub struct Run<'a> {
    pub partition: u16,
    pub items: &'a [BatchItem<'a>],
}

/// One message of a batch ([`Applier::apply_batch`]).
pub struct BatchItem<'a> {
    pub body: &'a [u8],
    pub delivery: DeliveryInfo,
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
    /// The partition counts a message may have been routed by (see `Layout::belongs`).
    pub layout: LayoutCell,
    /// The leases this process holds: every transaction it writes for a partition starts with
    /// their fence. `None` for an applier that holds no leases (the benchmark's in-process
    /// ceiling, tests of the apply path alone): its transactions are not fenced.
    pub fence: Option<Arc<Holdings>>,
}

impl Applier {
    /// Begins a transaction that writes for `partition`, fenced (see [`Holdings::fence`]).
    pub(crate) async fn begin_for(
        &self,
        partition: u16,
    ) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = self.db.begin().await?;
        if let Some(fence) = &self.fence {
            fence.fence(&mut tx, partition).await?;
        }
        Ok(tx)
    }

    /// Counts a start of a redelivered message's command (its attempt number), fenced; `None`
    /// when the command is finished already ([`commands::note_attempt`]).
    pub async fn note_attempt(
        &self,
        partition: u16,
        command_id: CommandId,
    ) -> sqlx::Result<Option<i32>> {
        let mut tx = self.begin_for(partition).await?;
        let attempts = commands::note_attempt(&mut *tx, command_id).await?;
        tx.commit().await?;
        Ok(attempts)
    }

    /// Withdraws a counted start that a hand-over interrupted (see
    /// [`commands::withdraw_attempt`]), fenced: a worker whose lease is gone withdraws nothing.
    pub async fn withdraw_attempt(
        &self,
        partition: u16,
        command_id: CommandId,
    ) -> sqlx::Result<()> {
        let mut tx = self.begin_for(partition).await?;
        commands::withdraw_attempt(&mut *tx, command_id).await?;
        tx.commit().await
    }

    /// Records a dead letter of `partition`, fenced.
    pub async fn record_dead_letter(
        &self,
        partition: u16,
        letter: &NewDeadLetter<'_>,
    ) -> sqlx::Result<()> {
        let mut tx = self.begin_for(partition).await?;
        observability::insert_dead_letter(&mut *tx, letter).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// What a transaction did, counted only once it committed.
#[derive(Default)]
struct Tally {
    finished: Vec<FinishedCommand>,
    /// Kinds of the direct producers' commands it recorded.
    recorded: Vec<CommandKind>,
    parked: usize,
    /// The lease, `(partition, epoch)`, that the messages being applied now are applied under,
    /// recorded on each command it finishes; `None` in a transaction of one message, whose fence
    /// set it for the whole transaction (or that is not fenced).
    lease: Option<(i32, i64)>,
}

impl Tally {
    /// Counts what a committed transaction did, and announces the commands it finished
    /// ([`settle`]).
    async fn committed(&self, db: &PgPool) {
        self.recorded
            .iter()
            .copied()
            .for_each(metrics::command_accepted);
        (0..self.parked).for_each(|_| metrics::parked());
        settle(db, &self.finished).await;
    }
}
