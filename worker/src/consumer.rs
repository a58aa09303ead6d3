//! The AMQP loop of one partition: consume, hand the messages to the [`Applier`], ack after the
//! commit. Messages are applied one at a time, in order; those the broker has already pushed
//! when a transaction ends (up to `batch_max`, from the prefetch window) are applied together in
//! the next one and acked together after its commit. On shutdown the messages in hand are
//! finished and acked before the channel closes. Each message is handled inside its own span
//! (partition, command and order ids, trace id), which continues the trace named by the
//! message's `traceparent` header.

use crate::apply::{Applier, BatchItem, Delivery as DeliveryInfo, Handled, Outcome, OwnMessage};
use crate::error::{ApplyError, Failure};
use crate::metrics;
use crate::monitor::Monitor;
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use orderflow_contract::{CommandMessage, FailureCode};
use orderflow_domain::CommandId;
use orderflow_messaging::{
    Outgoing, Publisher, REASON_HEADER, SharedConnection, Topology, header_str, json_properties,
};
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_runtime::telemetry::{self, TRACEPARENT};
use orderflow_storage::commands::{self, Delivered};
use orderflow_storage::observability::{self, NewDeadLetter};
use orderflow_storage::{is_data_refused, is_transient};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use tracing::field::{Empty, display};

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
    /// Most messages applied in one transaction (those already pushed when the previous
    /// transaction ended).
    pub batch_max: usize,
    /// A redelivered message that workers started applying more than this many times is
    /// dead-lettered (with a reason, its command failed) before the broker's own delivery limit
    /// would drop it without one.
    pub poison_after_deliveries: i64,
    /// Per-partition state behind the heartbeat and the partition gauges.
    pub monitor: Arc<Monitor>,
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
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _consuming = ctx.monitor.consuming(partition);
    tracing::info!(
        partition,
        queue,
        "consuming (active when the broker makes this consumer the single active one)"
    );
    // Whatever the broker has already pushed arrives together, up to a batch.
    let mut deliveries = consumer.ready_chunks(ctx.batch_max.max(1));
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            next = deliveries.next() => next,
        };
        let Some(ready) = next else {
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
        // Not cancelled by shutdown: the messages in hand are finished and acked first.
        handle_ready(ctx, partition, &received, shutdown).await?;
        if let Some(e) = broken {
            return Err(e.into());
        }
    }
    // Unacked prefetched messages go back to the queue when the channel closes.
    let _ = channel.close(200, "worker shutting down".into()).await;
    Ok(())
}

/// What to do with a message once the database has been written.
enum Verdict {
    Ack,
    /// Dead-letter it, then ack. `recorded`: its `dead_letters` row was written with the
    /// command's failure (one transaction); otherwise it is written now.
    DeadLetter {
        failure: Failure,
        recorded: bool,
    },
}

/// A message as it arrived, with the span it is handled in.
struct Incoming<'a> {
    delivery: &'a Delivery,
    message: Option<CommandMessage>,
    traceparent: Option<String>,
    received: chrono::DateTime<Utc>,
    /// Carries its partition, command and order ids, and the trace it continues (the message's
    /// `traceparent` header) or starts.
    span: tracing::Span,
}

/// Handles messages that arrived together, in order, each acked after its commit. Runs of fresh
/// messages (not redelivered) are applied in one transaction per run and acked together; a
/// redelivered one is handled on its own, since it may have been applied already, or may be
/// the one that keeps killing workers.
async fn handle_ready(
    ctx: &Context,
    partition: u16,
    deliveries: &[Delivery],
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut rest = deliveries;
    while let Some(first) = rest.first() {
        let fresh = rest.iter().take_while(|d| !d.redelivered).count();
        if fresh >= 2 {
            let (run, after) = rest.split_at(fresh);
            handle_batch(ctx, partition, run, shutdown).await?;
            rest = after;
        } else {
            handle(ctx, partition, receive(ctx, partition, first), shutdown).await?;
            rest = &rest[1..];
        }
    }
    Ok(())
}

/// Applies fresh messages in one transaction and acks them together after its commit. When
/// they cannot be committed together (one of them needs more than an apply: a duplicate, a
/// message that is not a command, a command that fails; or the transaction failed), each is
/// handled on its own instead, as if it had arrived alone.
async fn handle_batch(
    ctx: &Context,
    partition: u16,
    deliveries: &[Delivery],
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let incoming: Vec<Incoming> = deliveries
        .iter()
        .map(|delivery| receive(ctx, partition, delivery))
        .collect();
    let items: Vec<BatchItem> = incoming
        .iter()
        .map(|m| BatchItem {
            body: &m.delivery.data,
            delivery: DeliveryInfo {
                delivered: Some(Delivered {
                    at: m.received,
                    attempt: 1,
                }),
                traceparent: m.traceparent.clone(),
            },
            span: m.span.clone(),
        })
        .collect();
    match ctx.applier.handle_batch(&items, partition).await {
        Ok(Some(finished)) => {
            ctx.monitor.finished(partition, finished);
            // The race audit's "worker killed between commit and ack" (`failpoints` builds only).
            fail::fail_point!("consume.after_commit_before_ack", |_| std::process::abort());
            let last = deliveries.last().expect("a batch has messages");
            last.ack(BasicAckOptions { multiple: true }).await?;
            metrics::batch_applied(deliveries.len());
            return Ok(());
        }
        Ok(None) => {
            tracing::debug!(
                partition,
                messages = deliveries.len(),
                "a message of the batch needs handling on its own; applying them one by one"
            );
        }
        Err(e) => {
            tracing::info!(
                partition, messages = deliveries.len(), error = %e,
                "the batch's transaction failed; applying its messages one by one"
            );
        }
    }
    for message in incoming {
        handle(ctx, partition, message, shutdown).await?;
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
        received,
        span,
    }
}

/// Applies one message and acks it; `Err` leaves it unacked (the channel is then dropped and the
/// broker redelivers it to whoever holds the partition next). Everything is logged inside the
/// message's span.
async fn handle(
    ctx: &Context,
    partition: u16,
    incoming: Incoming<'_>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Incoming {
        delivery,
        message,
        traceparent,
        received,
        span,
    } = incoming;
    process(
        ctx,
        partition,
        delivery,
        message.as_ref(),
        traceparent,
        received,
        shutdown,
    )
    .instrument(span)
    .await
}

async fn process(
    ctx: &Context,
    partition: u16,
    delivery: &Delivery,
    message: Option<&CommandMessage>,
    traceparent: Option<String>,
    received: chrono::DateTime<Utc>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // A redelivery: count this start (the attempt number on the command's timeline), and give
    // up on a message that keeps killing workers.
    let attempts = match message {
        Some(m) if delivery.redelivered => {
            Some(commands::note_attempt(&ctx.applier.db, m.command_id).await?)
        }
        _ => None,
    };
    let info = DeliveryInfo {
        delivered: Some(Delivered {
            at: received,
            attempt: attempts.unwrap_or(1),
        }),
        traceparent,
    };
    let verdict = match (message, attempts) {
        (Some(m), Some(attempts)) if i64::from(attempts) > ctx.poison_after_deliveries => {
            let failure = Failure::new(
                FailureCode::DeliveryLimit,
                format!(
                    "a worker started applying this message {attempts} times without finishing (it crashed or lost its connection each time)"
                ),
            );
            let own = OwnMessage {
                message: Some(m),
                delivered: info.delivered,
                dead_letter: NewDeadLetter::from_body(partition, &failure.detail, &delivery.data),
            };
            let recorded = fail_own(ctx, partition, m.command_id, &failure, &own).await?;
            Verdict::DeadLetter { failure, recorded }
        }
        _ => apply(ctx, partition, delivery, message, &info, shutdown).await?,
    };
    if let Verdict::DeadLetter { failure, recorded } = verdict {
        let mut unrecorded = None;
        if !recorded {
            let letter = NewDeadLetter::from_body(partition, &failure.detail, &delivery.data);
            match observability::insert_dead_letter(&ctx.applier.db, &letter).await {
                Ok(_) => {}
                // PostgreSQL is out of reach: nothing can be applied anyway; it comes back.
                Err(e) if is_transient(&e) => return Err(e.into()),
                // Refused for good: the broker's dead letter is then the only record, with the
                // reason and why it is not in the table in its headers. The partition goes on.
                Err(e) => {
                    tracing::error!(error = %e, reason = failure.detail,
                        "the dead letter's record was refused; dead-lettering through the broker only");
                    metrics::dead_letter_unrecorded();
                    unrecorded = Some(e.to_string());
                }
            }
        }
        dead_letter(ctx, delivery, &failure.detail, unrecorded.as_deref()).await?;
        metrics::dead_lettered(failure.code);
        tracing::warn!(
            reason = failure.detail,
            code = failure.code.as_str(),
            "message dead-lettered"
        );
    }
    // The race audit's "worker killed between commit and ack" (`failpoints` builds only).
    fail::fail_point!("consume.after_commit_before_ack", |_| std::process::abort());
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// Applies the message and says what to do with it. A command that breaks is failed here (the
/// database is written before the dead-letter queue), with the dead-letter record when it is
/// the message's own.
async fn apply(
    ctx: &Context,
    partition: u16,
    delivery: &Delivery,
    message: Option<&CommandMessage>,
    info: &DeliveryInfo,
    shutdown: &CancellationToken,
) -> anyhow::Result<Verdict> {
    loop {
        match apply_with_retries(ctx, partition, &delivery.data, info, shutdown).await {
            Ok(handled) => {
                ctx.monitor.finished(partition, handled.finished);
                return Ok(match handled.outcome {
                    // Parked: the command is safe in PostgreSQL; its turn comes with the
                    // earlier command it waits for.
                    Outcome::Finished(_) | Outcome::Parked => Verdict::Ack,
                    Outcome::Duplicate => {
                        metrics::inbox_duplicate();
                        Verdict::Ack
                    }
                    Outcome::Poison(failure) | Outcome::AlreadyFailed(failure) => {
                        Verdict::DeadLetter {
                            failure,
                            recorded: false,
                        }
                    }
                });
            }
            Err(ApplyError::Broken {
                command_id,
                failure,
            }) => {
                if message.is_some_and(|m| m.command_id == command_id) {
                    let own = OwnMessage {
                        message: None,
                        delivered: info.delivered,
                        dead_letter: NewDeadLetter::from_body(
                            partition,
                            &failure.detail,
                            &delivery.data,
                        ),
                    };
                    let recorded = fail_own(ctx, partition, command_id, &failure, &own).await?;
                    return Ok(Verdict::DeadLetter { failure, recorded });
                }
                // An earlier command of the order broke (its message is late); it is failed
                // now, and this message's command gets its turn.
                if ctx.applier.fail(command_id, &failure, None).await? {
                    ctx.monitor.finished(partition, 1);
                }
                tracing::warn!(%command_id, reason = failure.detail, "an earlier command of the order failed");
            }
            Err(ApplyError::Db(e)) if is_data_refused(&e) => {
                // PostgreSQL refuses what this message would store (a value it cannot hold, a
                // constraint): it would every time. Its command fails (if it was recorded) and the
                // message is dead-lettered, so the partition goes on.
                let failure = Failure::new(
                    FailureCode::StorageRefused,
                    format!("PostgreSQL refused to store this message's command: {e}"),
                );
                let Some(m) = message else {
                    return Ok(Verdict::DeadLetter {
                        failure,
                        recorded: false,
                    });
                };
                let own = OwnMessage {
                    message: Some(m),
                    delivered: info.delivered,
                    dead_letter: NewDeadLetter::from_body(
                        partition,
                        &failure.detail,
                        &delivery.data,
                    ),
                };
                let recorded = fail_own(ctx, partition, m.command_id, &failure, &own).await?;
                return Ok(Verdict::DeadLetter { failure, recorded });
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
    info: &DeliveryInfo,
    shutdown: &CancellationToken,
) -> Result<Handled, ApplyError> {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_secs(2))
        .without_max_times()
        .with_jitter()
        .build();
    loop {
        match ctx.applier.handle_delivery(body, partition, info).await {
            Err(e) if e.is_transient() => {
                metrics::tx_retry(e.retry_cause());
                let delay = delays.next().unwrap_or(Duration::from_secs(2));
                tracing::warn!(error = %e, ?delay, "transient failure; retrying the transaction");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Err(e),
                }
            }
            other => return other,
        }
    }
}

/// Fails the message's own command and records its dead letter, in one transaction. `Ok(false)`
/// when PostgreSQL refused that for good: the dead letter is then still to be recorded (or, if
/// that is refused too, left to the broker alone).
async fn fail_own(
    ctx: &Context,
    partition: u16,
    command_id: CommandId,
    failure: &Failure,
    own: &OwnMessage<'_>,
) -> anyhow::Result<bool> {
    match ctx.applier.fail(command_id, failure, Some(own)).await {
        Ok(failed) => {
            if failed {
                ctx.monitor.finished(partition, 1);
            }
            Ok(true)
        }
        Err(e) if is_transient(&e) => Err(e.into()),
        Err(e) => {
            tracing::error!(%command_id, error = %e, reason = failure.detail,
                "failing the command was refused; dead-lettering its message without it");
            Ok(false)
        }
    }
}

/// Publishes the message to the dead-letter exchange with the reason, and waits for the confirm.
/// `unrecorded`: why its `dead_letters` row could not be written, if it could not.
async fn dead_letter(
    ctx: &Context,
    delivery: &Delivery,
    reason: &str,
    unrecorded: Option<&str>,
) -> anyhow::Result<()> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    if let Some(why) = unrecorded {
        headers.insert(UNRECORDED_HEADER.into(), AMQPValue::LongString(why.into()));
    }
    let message = Outgoing {
        routing_key: "",
        body: &delivery.data,
        properties: dead_letter_properties(headers, reason, delivery.routing_key.as_str()),
    };
    ctx.publisher
        .publish_batch(&ctx.topology.dead_letter_exchange(), &[message], true)
        .await
        .pop()
        .expect("one result per message")?;
    Ok(())
}

/// On a dead letter the broker alone holds: why PostgreSQL refused its `dead_letters` row.
pub const UNRECORDED_HEADER: &str = "x-orderflow-unrecorded";

/// A dead letter's properties: the message's own headers plus why it was dead-lettered and the
/// partition queue it came from.
pub(crate) fn dead_letter_properties(
    mut headers: FieldTable,
    reason: &str,
    queue: &str,
) -> lapin::BasicProperties {
    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
    headers.insert(
        "x-orderflow-queue".into(),
        AMQPValue::LongString(queue.into()),
    );
    json_properties().with_headers(headers)
}
