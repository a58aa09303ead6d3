//! One message on its own, inside its span: count a redelivery's attempt (and give up on a
//! message that keeps killing workers), apply it with retries into a [`Verdict`], and settle it:
//! dead-letter it if it must be, then ack it.

use super::Context;
use super::dead_letter::{dead_letter, fail_own_command};
use super::ready::Incoming;

use crate::apply::{DeliveryInfo, Handled, Outcome, OwnMessage};
use crate::error::{ApplyError, Failure};
use crate::metrics;
use crate::monitor::Stage;
use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::{message::Delivery, options::BasicAckOptions};
use orderflow_contract::{CommandMessage, FailureCode};
use orderflow_domain::CommandId;
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_storage::commands::Delivered;
use orderflow_storage::is_data_refused;
use orderflow_storage::observability::NewDeadLetter;
use std::sync::PoisonError;
use std::time::Duration;
use tracing::Instrument;

/// The command of a redelivered message whose start was counted and that is not finished yet.
/// When a hand-over stops the partition's session with one in hand (given back or abandoned: not
/// a failure of the message, nor of the worker), the session withdraws that start, so that the
/// next holder's start is the one counted: a start that did no work is not a repeat.
#[derive(Default)]
pub(super) struct StartInHand(std::sync::Mutex<Option<CommandId>>);

impl StartInHand {
    fn hold(&self, command: Option<CommandId>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = command;
    }

    pub(super) fn take(&self) -> Option<CommandId> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// What to do with a message once the database has been written.
pub(super) enum Verdict {
    Ack,
    /// Dead-letter it, then ack. `recorded`: its `dead_letters` row was written with the
    /// command's failure (one transaction); otherwise it is written now.
    DeadLetter {
        failure: Failure,
        recorded: bool,
    },
}

/// Applies one message and acks it; `Err` leaves it unacked (the channel is then dropped and the
/// broker redelivers it to whoever holds the partition next). Everything is logged inside the
/// message's span.
pub(super) async fn apply_alone(
    ctx: &Context,
    partition: u16,
    incoming: Incoming<'_>,
    shutdown: &CancellationToken,
    in_hand: &StartInHand,
) -> anyhow::Result<()> {
    let span = incoming.span.clone();
    apply_and_settle(ctx, partition, incoming, shutdown, in_hand)
        .instrument(span)
        .await
}

/// The stages of one message: count a redelivery, apply (or give up on it), settle.
async fn apply_and_settle(
    ctx: &Context,
    partition: u16,
    incoming: Incoming<'_>,
    shutdown: &CancellationToken,
    in_hand: &StartInHand,
) -> anyhow::Result<()> {
    let Incoming {
        delivery,
        message,
        traceparent,
        user_id,
        received,
        span: _,
    } = incoming;
    let message = message.as_ref();
    let attempts = count_redelivery(ctx, partition, delivery, message).await?;
    if attempts.is_some() {
        in_hand.hold(message.map(|m| m.command_id));
    }
    let info = DeliveryInfo {
        delivered: Some(Delivered {
            at: received,
            attempt: attempts.unwrap_or(1),
        }),
        traceparent,
        user_id,
    };
    let verdict = match (message, attempts) {
        (Some(m), Some(attempts)) if i64::from(attempts) > ctx.poison_after_deliveries => {
            give_up_redelivered(ctx, partition, delivery, m, attempts, &info).await?
        }
        _ => apply_to_verdict(ctx, partition, delivery, message, &info, shutdown).await?,
    };
    // Finished (the database says how): the start stands.
    in_hand.hold(None);
    settle(ctx, partition, delivery, verdict).await
}

/// A redelivery: counts this start (the attempt number on the command's timeline); `None` for
/// a first delivery, a message that is not a command, or one whose command is finished already
/// (a copy that can only be an inbox no-op is no start).
async fn count_redelivery(
    ctx: &Context,
    partition: u16,
    delivery: &Delivery,
    message: Option<&CommandMessage>,
) -> anyhow::Result<Option<i32>> {
    Ok(match message {
        Some(m) if delivery.redelivered => {
            ctx.applier.note_attempt(partition, m.command_id).await?
        }
        _ => None,
    })
}

/// A message that workers started applying too often (it keeps killing them): its command is
/// failed, with its dead-letter record, and the message is to be dead-lettered.
async fn give_up_redelivered(
    ctx: &Context,
    partition: u16,
    delivery: &Delivery,
    m: &CommandMessage,
    attempts: i32,
    info: &DeliveryInfo,
) -> anyhow::Result<Verdict> {
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
    let recorded = fail_own_command(ctx, partition, m.command_id, &failure, &own).await?;
    Ok(Verdict::DeadLetter { failure, recorded })
}

/// Applies the message and says what to do with it. A command that breaks is failed here (the
/// database is written before the dead-letter queue), with the dead-letter record when it is
/// the message's own.
async fn apply_to_verdict(
    ctx: &Context,
    partition: u16,
    delivery: &Delivery,
    message: Option<&CommandMessage>,
    info: &DeliveryInfo,
    shutdown: &CancellationToken,
) -> anyhow::Result<Verdict> {
    loop {
        match apply_retrying(ctx, partition, &delivery.data, info, shutdown).await {
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
                    let recorded =
                        fail_own_command(ctx, partition, command_id, &failure, &own).await?;
                    return Ok(Verdict::DeadLetter { failure, recorded });
                }
                // An earlier command of the order broke (its message is late); it is failed
                // now, and this message's command gets its turn.
                if ctx
                    .applier
                    .fail_command(partition, command_id, &failure, None)
                    .await?
                {
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
                let recorded =
                    fail_own_command(ctx, partition, m.command_id, &failure, &own).await?;
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
/// message. Gives up only when `shutdown` fires (the consumer was told to give back its
/// messages, or abandon them: the message then stays unacked and is redelivered).
async fn apply_retrying(
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
        match ctx.applier.apply_delivery(body, partition, info).await {
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

/// Dead-letters the message if the verdict says so, then acks it.
async fn settle(
    ctx: &Context,
    partition: u16,
    delivery: &Delivery,
    verdict: Verdict,
) -> anyhow::Result<()> {
    if let Verdict::DeadLetter { failure, recorded } = verdict {
        ctx.monitor.stage(partition, Stage::DeadLettering);
        dead_letter(ctx, partition, delivery, &failure, recorded).await?;
    }
    // The race audit's "worker killed between commit and ack" (`failpoints` builds only).
    fail::fail_point!("consume.after_commit_before_ack", |_| std::process::abort());
    ctx.monitor.stage(partition, Stage::Acking);
    orderflow_messaging::ack(&delivery.acker, BasicAckOptions::default()).await?;
    ctx.monitor.stage(partition, Stage::Applying);
    Ok(())
}
