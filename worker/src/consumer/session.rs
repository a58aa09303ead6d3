//! The consume loop of one partition, and reconnecting after broker failures.

use super::Context;
use super::ready::apply_ready;
use super::single::StartInHand;
use crate::monitor::Stage;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::{
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_storage::is_lease_lost;
use std::sync::Arc;
use std::time::Duration;

/// How a partition's consumer was told to stop. `drain` (a hand-over, or shutdown): cancel the
/// consumer at the broker, finish and ack what was already delivered (retrying transient
/// failures), then end. `give_back` (draining took too long): finish and ack the transaction in flight, start
/// nothing more, and hand the messages not yet started back to the broker unopened (the next
/// owner gets them redelivered; none was applied, none is applied twice), and stop retrying a
/// transient failure (that message stays unacked for the next owner). `abandon` (the lease
/// is lost, or even giving back took too long): end now, acking nothing more, the transaction
/// in flight rolled back. Each implies the ones before it.
#[derive(Clone, Debug)]
pub struct Stops {
    pub drain: CancellationToken,
    pub give_back: CancellationToken,
    pub abandon: CancellationToken,
}

impl Stops {
    pub fn new() -> Self {
        let abandon = CancellationToken::new();
        let give_back = abandon.child_token();
        Self {
            drain: give_back.child_token(),
            give_back,
            abandon,
        }
    }
}

impl Default for Stops {
    fn default() -> Self {
        Self::new()
    }
}

/// Logged (once per refused transaction: the consumer stops after it) when a transaction's
/// fence found the partition's lease taken over. The race audit counts these lines.
pub const FENCED_MESSAGE: &str =
    "a transaction's fence found the partition's lease taken over; stopping without acking";

/// Why a partition's consumer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Told to drain (or abandon): the lease may be released.
    Drained,
    /// A transaction's fence found the lease taken over: nothing more of it was acked.
    LeaseLost,
}

/// Consumes `partition` until told to stop, reconnecting with backoff after broker failures.
pub async fn run(ctx: Arc<Context>, partition: u16, stops: Stops) -> Ended {
    let mut backoff = reconnect_backoff();
    let ended = loop {
        if stops.drain.is_cancelled() {
            break Ended::Drained;
        }
        let session = std::time::Instant::now();
        match consume_on_channel(&ctx, partition, &stops).await {
            Ok(()) => break Ended::Drained,
            Err(e) if lease_lost(&e) => {
                tracing::warn!(partition, error = %e, "{FENCED_MESSAGE}");
                crate::metrics::fenced();
                break Ended::LeaseLost;
            }
            Err(e) => {
                // A session that ran a while was a success: the next failure (another broker
                // restart, hours later) starts again from the shortest delay, not from the
                // longest one the last outage reached.
                if session.elapsed() >= HEALTHY_SESSION {
                    backoff = reconnect_backoff();
                }
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(partition, error = %e, ?delay, "partition consumer stopped; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stops.drain.cancelled() => break Ended::Drained,
                }
            }
        }
    };
    tracing::info!(partition, ?ended, "partition consumer stopped");
    ended
}

/// Whether `error` (or what caused it) is a fence's lease-lost error.
fn lease_lost(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .is_some_and(is_lease_lost)
            || cause
                .downcast_ref::<crate::error::ApplyError>()
                .is_some_and(|e| matches!(e, crate::error::ApplyError::Db(e) if is_lease_lost(e)))
    })
}

/// How often a consumer checks that it is being fed, and how long it may go without a delivery
/// while its queue holds ready messages before it reopens its channel (a channel the broker no
/// longer serves, or a consumer it never made active, would otherwise stall the partition).
const STALL_CHECK: Duration = Duration::from_secs(5);
const STALLED_AFTER: Duration = Duration::from_secs(20);
/// Longest wait for the broker to confirm a consumer's cancel when draining.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// A consumer session at least this long resets the reconnect backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(5);

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .with_jitter()
        .build()
}

/// Opens a channel, consumes the partition's queue on it and hands over what arrives together,
/// until drained (`Ok`) or a failure (`Err`: [`run`] reconnects, or stops if the lease is lost).
/// Draining cancels the consumer at the broker and applies what it had already delivered (the
/// stream ends after the last of them), so a hand-over or a shutdown leaves nothing to redeliver.
async fn consume_on_channel(ctx: &Context, partition: u16, stops: &Stops) -> anyhow::Result<()> {
    ctx.monitor.stage(partition, Stage::Opening);
    let session = async {
        let connection = ctx.connection.get().await?;
        Ok((
            consume_on(ctx, partition, stops, &connection).await,
            connection,
        ))
    };
    let (session, connection) = match session.await {
        Ok(ended) => ended,
        Err(e) => {
            ctx.monitor.stage(partition, Stage::Stopped);
            return Err(e);
        }
    };
    ctx.monitor.stage(partition, Stage::Stopped);
    if let Err(e) = &session
        && e.downcast_ref::<lapin::Error>()
            .is_some_and(orderflow_messaging::is_unanswered)
    {
        // The connection may look connected while its broker no longer answers: the next
        // session opens a new one.
        ctx.connection.discard(&connection).await;
    }
    session
}

async fn consume_on(
    ctx: &Context,
    partition: u16,
    stops: &Stops,
    connection: &lapin::Connection,
) -> anyhow::Result<()> {
    let channel = broker_step("opening a channel", connection.create_channel()).await?;
    let queue = ctx.topology.partition_queue(partition);
    let consumer = async {
        broker_step(
            "setting the prefetch",
            channel.basic_qos(ctx.prefetch, BasicQosOptions::default()),
        )
        .await?;
        broker_step(
            "starting the consumer",
            channel.basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
    };
    let consumer = match consumer.await {
        Ok(consumer) => consumer,
        Err(e) => {
            close_channel(ctx, partition, &channel).await;
            return Err(e);
        }
    };
    let tag = consumer.tag();
    let _consuming = ctx.monitor.consuming(partition);
    ctx.monitor.stage(partition, Stage::Waiting);
    tracing::info!(
        partition,
        queue,
        "consuming (active when the broker makes this consumer the single active one)"
    );
    // Whatever the broker has already pushed arrives together, up to a batch.
    let mut deliveries = consumer.ready_chunks(ctx.batch_max.max(1));
    let in_hand = StartInHand::default();
    let mut watch = tokio::time::interval(STALL_CHECK);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The cancel at the broker, once sent: its answer is awaited beside the deliveries.
    let mut cancel = Cancel::NotSent;
    let mut first_run = true;
    let consumed = async {
        loop {
            let next = tokio::select! {
                biased;
                _ = stops.abandon.cancelled() => return Ok(()),
                _ = stops.give_back.cancelled() => return Ok(()),
                _ = stops.drain.cancelled(), if !cancel.sent() => {
                    ctx.monitor.stage(partition, Stage::Cancelling);
                    cancel.send(&channel, &tag);
                    continue;
                }
                confirmed = cancel.answered(partition) => {
                    if confirmed {
                        ctx.monitor.stage(partition, Stage::Waiting);
                        continue;
                    }
                    return Ok(());
                }
                next = deliveries.next() => next,
                // Only when nothing is ready to hand: a delivery always goes first.
                _ = watch.tick(), if !cancel.sent() => {
                    if ctx.monitor.stalled(partition, STALLED_AFTER) {
                        anyhow::bail!(
                            "messages are ready but none was delivered for {STALLED_AFTER:?}: reopening the channel"
                        );
                    }
                    continue;
                }
            };
            let Some(ready) = next else {
                if cancel.sent() {
                    // Everything delivered before the cancel has been applied and acked.
                    tracing::debug!(
                        partition,
                        "draining: every delivered message applied and acked"
                    );
                    return Ok(());
                }
                anyhow::bail!("the broker cancelled the consumer");
            };
            let mut received = Vec::with_capacity(ready.len());
            let mut broken = None;
            for delivery in ready {
                match delivery {
                    Ok(delivery) => received.push(delivery),
                    Err(e) => {
                        // The ones after it stay unacked; the broker redelivers them.
                        broken = Some(e);
                        break;
                    }
                }
            }
            // Not interrupted by draining: the messages in hand are finished and acked first.
            // But a drain told meanwhile cancels the consumer at once, beside the apply: the
            // broker then stops feeding it while this run commits, and what the drain has left to
            // finish is what was already delivered, not another window sent after this run's ack.
            ctx.monitor.stage(partition, Stage::Applying);
            tracing::debug!(
                partition,
                messages = received.len(),
                draining = cancel.sent(),
                "applying a run"
            );
            // The first run after taking the partition, and a drain's, are what a move waits for.
            let urgent = first_run || cancel.sent();
            first_run = false;
            let applied = apply_ready(ctx, partition, &received, stops, &in_hand, urgent);
            tokio::pin!(applied);
            loop {
                tokio::select! {
                    biased;
                    applied = &mut applied => {
                        // Given back meanwhile: what it did not start goes back to the queue
                        // unopened.
                        applied?;
                        break;
                    }
                    _ = stops.drain.cancelled(), if !cancel.sent() => {
                        cancel.send(&channel, &tag);
                    }
                }
            }
            ctx.monitor.stage(partition, Stage::Waiting);
            watch.reset();
            if let Some(e) = broken {
                return Err(e.into());
            }
            if stops.give_back.is_cancelled() {
                return Ok(());
            }
        }
    };
    // Abandoning ends the session whatever it waits for (an apply, an ack): the transaction in
    // flight rolls back when dropped, and its unacked messages go back to the queue below.
    let consumed = tokio::select! {
        consumed = consumed => consumed,
        _ = stops.abandon.cancelled() => Ok(()),
    };
    // Handed over with a counted start unfinished: it goes back to the queue below, and the next
    // holder's start is the one that counts. (Any other end leaves the count: a message that
    // keeps failing must reach the poison limit.)
    if stops.give_back.is_cancelled()
        && let Some(command_id) = in_hand.take()
    {
        withdraw_start(ctx, partition, command_id).await;
    }
    close_channel(ctx, partition, &channel).await;
    consumed
}

/// How the broker answered a consumer's cancel: `Err` when it did not within [`CANCEL_TIMEOUT`].
type CancelOutcome = Result<lapin::Result<()>, tokio::time::error::Elapsed>;

/// The consumer's cancel at the broker, when draining.
enum Cancel {
    NotSent,
    /// Sent by a task of its own, so that the apply in flight goes on while it is answered.
    Sent(tokio::task::JoinHandle<CancelOutcome>),
    /// Answered (confirmed, or failed and logged).
    Answered,
}

impl Cancel {
    fn sent(&self) -> bool {
        !matches!(self, Cancel::NotSent)
    }

    /// Sends the cancel (once).
    fn send(&mut self, channel: &lapin::Channel, tag: &lapin::types::ShortString) {
        if self.sent() {
            return;
        }
        let (channel, tag) = (channel.clone(), tag.clone());
        *self = Cancel::Sent(tokio::spawn(async move {
            tokio::time::timeout(
                CANCEL_TIMEOUT,
                channel.basic_cancel(tag, BasicCancelOptions::default()),
            )
            .await
        }));
    }

    /// The broker's answer, once it came: whether it confirmed the cancel (a failure or no
    /// answer is logged). Pending unless sent and not yet answered.
    async fn answered(&mut self, partition: u16) -> bool {
        let Cancel::Sent(handle) = self else {
            return std::future::pending().await;
        };
        let outcome = handle.await;
        *self = Cancel::Answered;
        match outcome {
            Ok(Ok(Ok(()))) => {
                tracing::debug!(partition, "draining: the broker confirmed the cancel");
                true
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(partition, error = %e, "cancelling the consumer failed");
                false
            }
            Ok(Err(_)) => {
                tracing::warn!(
                    partition,
                    "the broker did not confirm the consumer's cancel"
                );
                false
            }
            Err(e) => {
                tracing::warn!(partition, error = %e, "cancelling the consumer failed");
                false
            }
        }
    }
}

/// Withdraws the counted start of a message handed back unfinished; the lease is still this
/// worker's (the fence says so), or nothing is written.
async fn withdraw_start(ctx: &Context, partition: u16, command_id: orderflow_domain::CommandId) {
    match ctx.applier.withdraw_attempt(partition, command_id).await {
        Ok(()) => tracing::info!(
            partition, %command_id,
            "a started message goes back unfinished with the hand-over; its start is withdrawn"
        ),
        Err(e) => tracing::warn!(
            partition, %command_id, error = %e,
            "withdrawing the start of a message handed back unfinished failed; the next start counts as its second"
        ),
    }
}

/// One step of a consumer's session (opening its channel, setting the prefetch, starting the
/// consumer, an ack), bounded by [`orderflow_messaging::ANSWER_TIMEOUT`]. Past it the session is
/// over: the channel is dropped (what it holds unacked is redelivered to whoever holds the
/// partition next) and a new one opened after the backoff, on a new connection. No step may wait
/// forever: lapin can leave a request unanswered for good when the connection dies under it (two
/// partitions' acks in flight across a broker restart never completed), and a partition whose
/// consumer waits on it is a silent stall.
pub(super) async fn broker_step<T>(
    what: &'static str,
    step: impl std::future::Future<Output = lapin::Result<T>>,
) -> anyhow::Result<T> {
    Ok(orderflow_messaging::answered(what, step).await?)
}

/// Closes the channel (bounded): unacked messages (abandoned, or after a failure) go back to the
/// queue when it closes; closed explicitly, so that they do at once.
async fn close_channel(ctx: &Context, partition: u16, channel: &lapin::Channel) {
    ctx.monitor.stage(partition, Stage::Closing);
    let close = channel.close(200, "partition consumer stopping".into());
    if let Err(e) = orderflow_messaging::answered("closing the channel", close).await
        && orderflow_messaging::is_unanswered(&e)
    {
        tracing::warn!(
            partition,
            "the broker did not confirm the channel's close; dropping it"
        );
    }
    tracing::debug!(partition, "channel closed");
}
