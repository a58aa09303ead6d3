//! The AMQP loop of one partition: consume, hand the messages to the [`Applier`], ack after the
//! commit. Messages are applied one at a time, in order; those the broker has already pushed
//! when a transaction ends (up to `batch_max`, from the prefetch window) are applied together in
//! the next one and acked together after its commit. On shutdown the messages in hand are
//! finished and acked before the channel closes. Each message is handled inside its own span
//! (partition, command and order ids, trace id), which continues the trace named by the
//! message's `traceparent` header.
//!
//! The stages a delivery goes through:
//!
//! 1. **Consume** (`session.rs`, [`run`] → `consume_on_channel`): one channel per partition,
//!    reopened with backoff after a broker failure; the deliveries the broker has already pushed
//!    are taken together, up to `batch_max`.
//! 2. **Receive** (`ready.rs`, `receive`): each delivery is noted on the monitor, read as a
//!    command if it is one, and given its span and accepted `traceparent`.
//! 3. **Split into runs** (`ready.rs`, `apply_ready`): a run of fresh messages (one or more;
//!    two or more without a combiner) is applied as a batch (4a); a redelivered message, or a
//!    fresh one alone without a combiner, on its own (4b).
//! 4. **Apply**:
//!    - a. a batch (`ready.rs`, `apply_fresh_run`): handed to the combiner (`combiner.rs`),
//!      which applies it in one transaction together with the runs other partitions handed
//!      over meanwhile ([`Applier::apply_combined`]); acked with one multiple ack after its
//!      commit. A run the combined transaction could not commit is applied in a transaction of
//!      its own ([`Applier::apply_batch`]), and a batch that cannot commit as a whole goes
//!      message by message through 4b instead.
//!    - b. one message on its own (`single.rs`, `apply_alone` → `apply_and_settle`, inside the
//!      message's span): a redelivery's attempt is counted first (`count_redelivery`), and a
//!      message started too often is given up on (`give_up_redelivered`: its command failed, its
//!      message to be dead-lettered). Otherwise it is applied (`apply_to_verdict`), with
//!      transient failures retried with backoff until shutdown (`apply_retrying` →
//!      [`Applier::apply_delivery`]); a broken command is failed (`fail_own_command`), or, when it
//!      is an earlier command of the order, failed and the message applied again.
//! 5. **Settle** (`single.rs`, `settle`): a message to dead-letter is recorded in `dead_letters`
//!    unless already recorded with its command's failure, published to the dead-letter exchange
//!    with its reason and confirmed (`dead_letter.rs`, `dead_letter`); then the message is acked.
//!    An `Err` anywhere leaves it unacked: the channel is dropped and the broker redelivers it.

mod combiner;
mod dead_letter;
mod ready;
mod session;
mod single;

pub use combiner::{Combiner, MAX_RUNS};
pub use dead_letter::UNRECORDED_HEADER;
pub(crate) use dead_letter::dead_letter_properties;
pub use session::{Ended, FENCED_MESSAGE, Stops, run};

use crate::apply::Applier;
use crate::monitor::Monitor;
use orderflow_messaging::{Publisher, SharedConnection, Topology};
use std::sync::Arc;

/// What every partition consumer of a process shares.
pub struct Context {
    pub applier: Applier,
    pub topology: Topology,
    /// The connection every partition consumer opens its channel on.
    pub connection: SharedConnection,
    /// Confirm-mode channel for dead-lettering.
    pub publisher: Publisher,
    /// Messages the broker may push ahead of the one being applied.
    pub prefetch: u16,
    /// Most messages of a partition applied in one transaction (those already pushed when the
    /// previous transaction ended).
    pub batch_max: usize,
    /// Applies the runs of several partitions in one transaction (`combiner.rs`); `None`: each
    /// partition applies its own.
    pub combiner: Option<Combiner>,
    /// A redelivered message that workers started applying more than this many times is
    /// dead-lettered (with a reason, its command failed) before the broker's own delivery limit
    /// would drop it without one.
    pub poison_after_deliveries: i64,
    /// Per-partition state behind the heartbeat and the partition gauges.
    pub monitor: Arc<Monitor>,
}
