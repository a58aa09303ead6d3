//! Commands from direct producers (other services publishing the contract straight to the
//! command exchange): the worker records them on first sight, as the API records its own, with
//! the next sequence number of their order and the trace they came with. A follow-up that
//! arrives before its order's create is recorded too, behind a seq reserved for the create, and
//! parked until the create comes (or the park timeout fails it).

use crate::apply::DeliveryInfo;
use crate::error::{ApplyError, Failure};
use orderflow_contract::{CommandMessage, FailureCode};
use orderflow_domain::Command;
use orderflow_storage::commands::{self, CommandRow, NewCommand, Source};
use orderflow_storage::{clients, producers};
use sqlx::PgConnection;

/// Records a direct producer's command, giving it the next seq of its order.
/// `Ok(Err(failure))`: the message is refused (unknown client, another client's order, …).
pub(crate) async fn record(
    tx: &mut PgConnection,
    message: &CommandMessage,
    partition: u16,
    delivery: &DeliveryInfo,
) -> Result<Result<CommandRow, Failure>, ApplyError> {
    // Who published it, as the broker vouches (it refuses a `user_id` that is not the
    // publishing connection's user): a producer acts only for the clients it is granted.
    let Some(producer) = delivery.user_id.as_deref() else {
        let reason = "the message has no user_id property: a direct producer sets it to its \
                      broker user, which must be granted the client (orderflow-api producer grant)";
        return Ok(Err(Failure::new(FailureCode::ProducerUnidentified, reason)));
    };
    if !clients::exists(&mut *tx, message.client_id).await? {
        let reason = format!("unknown client {}", message.client_id);
        return Ok(Err(Failure::new(FailureCode::UnknownClient, reason)));
    }
    if !producers::is_granted(&mut *tx, producer, message.client_id).await? {
        let reason = format!(
            "broker user {} is not granted client {} (orderflow-api producer grant)",
            producer, message.client_id
        );
        return Ok(Err(Failure::new(FailureCode::ProducerNotGranted, reason)));
    }
    let is_create = matches!(message.command, Command::Create { .. });
    let seq = if is_create
        && commands::open_stream(&mut *tx, message.order_id, message.client_id).await?
    {
        Some(1)
    } else {
        commands::next_seq(&mut *tx, message.order_id, message.client_id).await?
    };
    let seq = match seq {
        Some(seq) => seq,
        None => {
            let order_id = message.order_id;
            match commands::stream_owner(&mut *tx, order_id).await? {
                Some(_) => {
                    let reason = format!("order {order_id} belongs to another client");
                    return Ok(Err(Failure::new(FailureCode::ForeignOrder, reason)));
                }
                // A follow-up ahead of its create (the broker reordered them after a worker
                // died): seq 1 waits for the create, and this command is parked behind it.
                None if !is_create
                    && commands::open_awaiting_stream(&mut *tx, order_id, message.client_id)
                        .await? =>
                {
                    2
                }
                None => {
                    let reason = format!("unknown order {order_id}");
                    return Ok(Err(Failure::new(FailureCode::UnknownOrder, reason)));
                }
            }
        }
    };
    // The producer's trace, or else the one this worker started for the message (the span
    // being applied): the command's status events carry it on.
    let traceparent = delivery
        .traceparent
        .clone()
        .or_else(|| orderflow_runtime::telemetry::traceparent(&tracing::Span::current()));
    let body = serde_json::to_value(&message.command).expect("commands serialize");
    let actor = delivery.user_id.as_deref().map(commands::actor::producer);
    let new = NewCommand {
        id: message.command_id,
        client_id: message.client_id,
        order_id: message.order_id,
        kind: message.command.kind(),
        body: &body,
        expected_version: message.expected_version,
        source: Source::Amqp,
        partition,
        // Straight from the queue: there was no HTTP request.
        received_at: None,
        traceparent: traceparent.as_deref(),
        actor: actor.as_deref(),
    };
    commands::insert(&mut *tx, &new, seq).await?;
    let row = commands::lock(tx, message.command_id)
        .await?
        .expect("the command was just inserted");
    Ok(Ok(row))
}
