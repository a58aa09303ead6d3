//! The AMQP loop of one partition: consume, hand each message to the [`Applier`], ack after the
//! commit. One message is applied at a time; the prefetch window only keeps the next ones close.
//! On shutdown the message being applied is finished and acked before the channel closes.

use crate::apply::{Applier, Outcome};
use crate::error::ApplyError;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use orderflow_shared::amqp::{
    Outgoing, Publisher, REASON_HEADER, SharedConnection, Topology, json_properties,
};
use orderflow_shared::contract::CommandMessage;
use orderflow_shared::db::commands;
use orderflow_shared::shutdown::CancellationToken;
use std::sync::Arc;
use std::time::Duration;

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
    /// A redelivered message that workers started applying more than this many times is
    /// dead-lettered (with a reason, its command failed) before the broker's own delivery limit
    /// would drop it without one.
    pub poison_after_deliveries: i64,
}

/// Consumes `partition` until shutdown, reconnecting with backoff after broker failures.
pub async fn run(ctx: Arc<Context>, partition: u16, shutdown: CancellationToken) {
    let mut backoff = reconnect_backoff();
    while !shutdown.is_cancelled() {
        match consume(&ctx, partition, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(partition, error = %e, ?delay, "partition consumer stopped; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    tracing::info!(partition, "partition consumer stopped");
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .with_jitter()
        .build()
}

async fn consume(
    ctx: &Context,
    partition: u16,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let connection = ctx.connection.get().await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(ctx.prefetch, BasicQosOptions::default())
        .await?;
    let queue = ctx.topology.partition_queue(partition);
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(
        partition,
        queue,
        "consuming (active when the broker makes this consumer the single active one)"
    );
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the broker cancelled the consumer"),
        };
        // Not cancelled by shutdown: the message in hand is finished and acked first.
        handle(ctx, partition, &delivery, shutdown).await?;
    }
    // Unacked prefetched messages go back to the queue when the channel closes.
    let _ = channel.close(200, "worker shutting down".into()).await;
    Ok(())
}

/// Applies one delivery and acks it; `Err` leaves it unacked (the channel is then dropped and the
/// broker redelivers it to whoever holds the partition next).
async fn handle(
    ctx: &Context,
    partition: u16,
    delivery: &Delivery,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let message = CommandMessage::parse(&delivery.data).ok();
    let dead_letter_reason = match &message {
        // A redelivery: count this start, and give up on a message that keeps killing workers.
        Some(m) if delivery.redelivered => {
            let attempts = commands::note_attempt(&ctx.applier.db, m.command_id).await?;
            if i64::from(attempts) > ctx.poison_after_deliveries {
                let reason = format!(
                    "a worker started applying this message {attempts} times without finishing (it crashed or lost its connection each time)"
                );
                ctx.applier.fail(m.command_id, &reason, Some(m)).await?;
                Some(reason)
            } else {
                apply(ctx, partition, delivery, message.as_ref(), shutdown).await?
            }
        }
        _ => apply(ctx, partition, delivery, message.as_ref(), shutdown).await?,
    };
    if let Some(reason) = dead_letter_reason {
        dead_letter(ctx, delivery, &reason).await?;
        tracing::warn!(partition, reason, command_id = ?message.map(|m| m.command_id), "message dead-lettered");
    }
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// Applies the message; `Some(reason)` if it must be dead-lettered (its command, if recorded, is
/// already marked failed: the database is written before the dead-letter queue).
async fn apply(
    ctx: &Context,
    partition: u16,
    delivery: &Delivery,
    message: Option<&CommandMessage>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<String>> {
    loop {
        match apply_with_retries(ctx, partition, &delivery.data, shutdown).await {
            Ok(Outcome::Finished(_) | Outcome::Duplicate) => return Ok(None),
            Ok(Outcome::Poison(reason) | Outcome::AlreadyFailed(reason)) => {
                return Ok(Some(reason));
            }
            Err(ApplyError::Broken { command_id, reason }) => {
                ctx.applier.fail(command_id, &reason, None).await?;
                if message.is_some_and(|m| m.command_id == command_id) {
                    return Ok(Some(reason));
                }
                // An earlier command of the order broke (its message is late); it is failed
                // now, and this message's command gets its turn.
                tracing::warn!(partition, %command_id, reason, "an earlier command of the order failed");
            }
            Err(ApplyError::Db(e)) => {
                // Transient with shutdown first, or a database error outside any command's apply:
                // leave the message unacked. A repeat is ended by the attempt limit above.
                return Err(e.into());
            }
        }
    }
}

/// Runs the apply transaction, retrying transient failures with backoff while holding the
/// message. Gives up only on shutdown (the message then stays unacked and is redelivered).
async fn apply_with_retries(
    ctx: &Context,
    partition: u16,
    body: &[u8],
    shutdown: &CancellationToken,
) -> Result<Outcome, ApplyError> {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_secs(2))
        .without_max_times()
        .with_jitter()
        .build();
    loop {
        match ctx.applier.handle(body, partition).await {
            Err(e) if e.is_transient() => {
                let delay = delays.next().unwrap_or(Duration::from_secs(2));
                tracing::warn!(partition, error = %e, ?delay, "transient failure; retrying the transaction");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Err(e),
                }
            }
            other => return other,
        }
    }
}

/// Publishes the message to the dead-letter exchange with the reason, and waits for the confirm.
async fn dead_letter(ctx: &Context, delivery: &Delivery, reason: &str) -> anyhow::Result<()> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
    headers.insert(
        "x-orderflow-queue".into(),
        AMQPValue::LongString(delivery.routing_key.as_str().into()),
    );
    let message = Outgoing {
        routing_key: "",
        body: &delivery.data,
        properties: json_properties().with_headers(headers),
    };
    ctx.publisher
        .publish_batch(&ctx.topology.dead_letter_exchange(), &[message], true)
        .await
        .pop()
        .expect("one result per message")?;
    Ok(())
}
