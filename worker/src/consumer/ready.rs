//! What arrived together: each delivery received (noted, read, given its span), then split into
//! runs. A run of fresh messages is applied in one transaction and acked together; any other
//! message, or a run that cannot commit as a whole, goes on its own (`single.rs`).

use super::Context;
use super::combiner::OwnedItem;
use super::session::Stops;
use super::single::{StartInHand, apply_alone};
use crate::apply::{BatchItem, DeliveryInfo};
use crate::metrics;
use crate::monitor::Stage;
use chrono::Utc;
use lapin::{message::Delivery, options::BasicAckOptions};
use orderflow_contract::CommandMessage;
use orderflow_messaging::header_str;
use orderflow_runtime::telemetry::{self, TRACEPARENT};
use orderflow_storage::commands::Delivered;
use orderflow_storage::observability::NewDeadLetter;
use tracing::field::{Empty, display};

/// A message as it arrived, with the span it is handled in.
pub(super) struct Incoming<'a> {
    pub(super) delivery: &'a Delivery,
    pub(super) message: Option<CommandMessage>,
    pub(super) traceparent: Option<String>,
    /// The message's `user_id` property: the broker user that published it (RabbitMQ refuses a
    /// `user_id` other than the publishing connection's user).
    pub(super) user_id: Option<String>,
    pub(super) received: chrono::DateTime<Utc>,
    /// Carries its partition, command and order ids, and the trace it continues (the message's
    /// `traceparent` header) or starts.
    pub(super) span: tracing::Span,
}

/// Handles messages that arrived together, in order, each acked after its commit. Runs of fresh
/// messages (not redelivered) are applied in one transaction per run and acked together; a
/// redelivered one is handled on its own, since it may have been applied already, or may be
/// the one that keeps killing workers. Told to give back ([`Stops`]), it starts nothing more:
/// the rest stays unacked (acks are cumulative only up to what was applied) and goes back to
/// the queue with the channel.
///
/// `urgent`: a move waits for these messages (the partition was just taken, or is being
/// drained), so a fresh run goes in a transaction of its own at once instead of waiting for the
/// combined transaction in flight and joining the next one (`combiner.rs`).
pub(super) async fn apply_ready(
    ctx: &Context,
    partition: u16,
    deliveries: &[Delivery],
    stops: &Stops,
    in_hand: &StartInHand,
    urgent: bool,
) -> anyhow::Result<()> {
    let mut rest = deliveries;
    while let Some(first) = rest.first() {
        if stops.give_back.is_cancelled() {
            return Ok(());
        }
        let fresh = rest.iter().take_while(|d| !d.redelivered).count();
        if fresh >= 2 || (fresh == 1 && ctx.combiner.is_some()) {
            let (run, after) = rest.split_at(fresh);
            apply_fresh_run(ctx, partition, run, stops, in_hand, urgent).await?;
            rest = after;
        } else {
            // Transient failures are retried until told to give back: a drain that left a
            // started message to the next owner (its redelivery already counted) would repeat
            // its work.
            apply_alone(
                ctx,
                partition,
                receive(ctx, partition, first),
                &stops.give_back,
                in_hand,
            )
            .await?;
            rest = &rest[1..];
        }
    }
    Ok(())
}

/// Applies fresh messages in one transaction (combined with other partitions' runs, when the
/// worker combines) and acks them together after its commit. When they cannot be committed
/// together (one of them needs more than an apply: a duplicate, a message that is not a
/// command, a command that fails; or the transaction failed), each is handled on its own
/// instead, as if it had arrived alone.
async fn apply_fresh_run(
    ctx: &Context,
    partition: u16,
    deliveries: &[Delivery],
    stops: &Stops,
    in_hand: &StartInHand,
    urgent: bool,
) -> anyhow::Result<()> {
    let mut incoming: Vec<Incoming> = deliveries
        .iter()
        .map(|delivery| receive(ctx, partition, delivery))
        .collect();
    if let Some(combiner) = ctx.combiner.as_ref().filter(|_| !urgent) {
        let owned = incoming
            .iter()
            .map(|m| OwnedItem {
                body: m.delivery.data.clone(),
                delivery: delivery_info(m),
                span: m.span.clone(),
            })
            .collect();
        if let Some(finished) = combiner.apply(partition, owned).await {
            return acked(ctx, partition, deliveries, finished).await;
        }
    }
    if incoming.len() == 1 {
        // Alone, and the combined transaction could not commit it.
        let message = incoming.pop().expect("one message");
        if stops.give_back.is_cancelled() {
            return Ok(());
        }
        return apply_alone(ctx, partition, message, &stops.give_back, in_hand).await;
    }
    let items: Vec<BatchItem> = incoming
        .iter()
        .map(|m| BatchItem {
            body: &m.delivery.data,
            delivery: delivery_info(m),
            span: m.span.clone(),
        })
        .collect();
    match ctx.applier.apply_batch(&items, partition).await {
        Ok(Some(finished)) => return acked(ctx, partition, deliveries, finished).await,
        Ok(None) => {
            tracing::debug!(
                partition,
                messages = deliveries.len(),
                "a message of the batch needs handling on its own; applying them one by one"
            );
        }
        // The lease is gone: nothing of this partition may be acked any more.
        Err(crate::error::ApplyError::Db(e)) if orderflow_storage::is_lease_lost(&e) => {
            return Err(e.into());
        }
        Err(e) => {
            tracing::info!(
                partition, messages = deliveries.len(), error = %e,
                "the batch's transaction failed; applying its messages one by one"
            );
        }
    }
    for message in incoming {
        if stops.give_back.is_cancelled() {
            break;
        }
        apply_alone(ctx, partition, message, &stops.give_back, in_hand).await?;
    }
    Ok(())
}

/// What a fresh message's transaction records of its delivery.
fn delivery_info(message: &Incoming) -> DeliveryInfo {
    DeliveryInfo {
        delivered: Some(Delivered {
            at: message.received,
            attempt: 1,
        }),
        traceparent: message.traceparent.clone(),
        user_id: message.user_id.clone(),
    }
}

/// Acks a committed run of messages (one multiple ack) and counts it.
async fn acked(
    ctx: &Context,
    partition: u16,
    deliveries: &[Delivery],
    finished: usize,
) -> anyhow::Result<()> {
    ctx.monitor.finished(partition, finished);
    // The race audit's "worker killed between commit and ack" (`failpoints` builds only).
    fail::fail_point!("consume.after_commit_before_ack", |_| std::process::abort());
    let last = deliveries.last().expect("a batch has messages");
    ctx.monitor.stage(partition, Stage::Acking);
    orderflow_messaging::ack(&last.acker, BasicAckOptions { multiple: true }).await?;
    ctx.monitor.stage(partition, Stage::Applying);
    if deliveries.len() >= 2 {
        metrics::batch_applied(deliveries.len());
    }
    Ok(())
}

/// Notes the delivery and opens its span.
fn receive<'a>(ctx: &Context, partition: u16, delivery: &'a Delivery) -> Incoming<'a> {
    let received = Utc::now();
    ctx.monitor
        .delivered(partition, delivery.redelivered, received);
    let message = CommandMessage::parse(&delivery.data).ok();
    let span = tracing::info_span!(
        "message",
        partition,
        command_id = Empty,
        order_id = Empty,
        trace_id = Empty,
        redelivered = delivery.redelivered,
    );
    if let Some(m) = &message {
        span.record("command_id", display(m.command_id));
        span.record("order_id", display(m.order_id));
    } else {
        // Not a valid command; name what it claims to be, if it says.
        let claimed = NewDeadLetter::from_body(partition, "", &delivery.data);
        if let Some(id) = claimed.command_id {
            span.record("command_id", display(id));
        }
        if let Some(id) = claimed.order_id {
            span.record("order_id", display(id));
        }
    }
    // Only a well-formed W3C value is kept: it is stored with the command.
    let traceparent = header_str(&delivery.properties, TRACEPARENT)
        .filter(|value| telemetry::trace_id_of(value).is_some());
    telemetry::accept_traceparent(&span, traceparent);
    Incoming {
        delivery,
        message,
        traceparent: traceparent.map(str::to_owned),
        user_id: delivery
            .properties
            .user_id()
            .as_ref()
            .map(|user| user.as_str().to_owned()),
        received,
        span,
    }
}
