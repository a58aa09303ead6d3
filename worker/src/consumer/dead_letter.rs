//! Dead-lettering: failing the message's own command with its dead-letter record, recording the
//! dead letter when that was not done, and publishing the message to the dead-letter exchange
//! with its reason.

use super::Context;
use crate::apply::OwnMessage;
use crate::error::Failure;
use crate::metrics;
use lapin::{
    message::Delivery,
    types::{AMQPValue, FieldTable},
};
use orderflow_domain::CommandId;
use orderflow_messaging::{Outgoing, REASON_HEADER, json_properties};
use orderflow_storage::observability::NewDeadLetter;
use orderflow_storage::{is_lease_lost, is_transient};

/// On a dead letter the broker alone holds: why PostgreSQL refused its `dead_letters` row.
pub const UNRECORDED_HEADER: &str = "x-orderflow-unrecorded";

/// Fails the message's own command and records its dead letter, in one transaction. `Ok(false)`
/// when PostgreSQL refused that for good: the dead letter is then still to be recorded (or, if
/// that is refused too, left to the broker alone).
pub(super) async fn fail_own_command(
    ctx: &Context,
    partition: u16,
    command_id: CommandId,
    failure: &Failure,
    own: &OwnMessage<'_>,
) -> anyhow::Result<bool> {
    match ctx
        .applier
        .fail_command(partition, command_id, failure, Some(own))
        .await
    {
        Ok(failed) => {
            if failed {
                ctx.monitor.finished(partition, 1);
            }
            Ok(true)
        }
        // Out of reach (it comes back), or the partition's lease is lost (its new owner
        // fails the command): the message stays unacked.
        Err(e) if is_transient(&e) || is_lease_lost(&e) => Err(e.into()),
        Err(e) => {
            tracing::error!(%command_id, error = %e, reason = failure.detail,
                "failing the command was refused; dead-lettering its message without it");
            Ok(false)
        }
    }
}

/// Dead-letters the message: records its `dead_letters` row unless `recorded`, then publishes it
/// to the dead-letter exchange and waits for the confirm. `Err` leaves it unacked.
pub(super) async fn dead_letter(
    ctx: &Context,
    partition: u16,
    delivery: &Delivery,
    failure: &Failure,
    recorded: bool,
) -> anyhow::Result<()> {
    let mut unrecorded = None;
    if !recorded {
        let letter = NewDeadLetter::from_body(partition, &failure.detail, &delivery.data);
        match ctx.applier.record_dead_letter(partition, &letter).await {
            Ok(()) => {}
            // PostgreSQL is out of reach: nothing can be applied anyway; it comes back. Or the
            // lease is lost: the new owner dead-letters the message.
            Err(e) if is_transient(&e) || is_lease_lost(&e) => return Err(e.into()),
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
    publish_dead_letter(ctx, delivery, &failure.detail, unrecorded.as_deref()).await?;
    metrics::dead_lettered(failure.code);
    tracing::warn!(
        reason = failure.detail,
        code = failure.code.as_str(),
        "message dead-lettered"
    );
    Ok(())
}

/// Publishes the message to the dead-letter exchange with the reason, and waits for the confirm.
/// `unrecorded`: why its `dead_letters` row could not be written, if it could not.
async fn publish_dead_letter(
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
