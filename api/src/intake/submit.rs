//! One submission from start to answer: record it (see [`super::record`]), publish it with a
//! confirm, and answer 202; or, when the broker would not take it, refuse it for good (see
//! [`super::refusal`]) and answer 503. A key seen before is answered by [`super::replay`].

use super::record::{RecordOutcome, record};
use super::refusal::{Refusal, refuse};
use super::replay::{observe_replay, replay};
use super::{Accepted, Submission};
use crate::error::ApiError;
use crate::metrics;
use crate::state::AppState;
use orderflow_contract::CommandMessage;
use orderflow_contract::CommandStatus;
use orderflow_contract::IntakeRefusal;
use orderflow_domain::CommandId;
use orderflow_messaging::{PublishError, json_properties, with_traceparent};
use orderflow_runtime::telemetry;
use orderflow_storage::commands::{NewCommand, Source, actor};

pub async fn submit(state: &AppState, s: Submission<'_>) -> Result<Accepted, ApiError> {
    let command_id = CommandId::new();
    let order_id = s.target.order_id();
    let partition = state.layout.get().partition_of(order_id);
    let body = serde_json::to_value(&s.command).expect("commands serialize");
    // The request's trace, carried in the command row and the message to the worker's span.
    let traceparent = telemetry::traceparent(&tracing::Span::current());
    let actor = s
        .on_behalf
        .clone()
        .unwrap_or_else(|| actor::client(&s.client.name));

    let new = NewCommand {
        id: command_id,
        client_id: s.client.id,
        order_id,
        kind: s.command.kind(),
        body: &body,
        expected_version: s.expected_version,
        source: Source::Http,
        partition,
        received_at: Some(s.received_at),
        traceparent: traceparent.as_deref(),
        actor: Some(&actor),
    };
    let seq = match record(state, &s, &new).await? {
        RecordOutcome::Seq(seq) => seq,
        RecordOutcome::KeyTaken {
            fingerprint,
            command_id,
        } => {
            let answer = replay(state, s.client, &s.fingerprint, &fingerprint, command_id).await;
            observe_replay(state, s.client, command_id, &answer).await;
            return answer;
        }
    };
    // The race audit's "API killed between record and publish" (`failpoints` builds only).
    fail::fail_point!("intake.after_record_before_publish", |_| {
        std::process::abort()
    });

    let message = CommandMessage {
        version: orderflow_contract::CONTRACT_VERSION,
        command_id,
        client_id: s.client.id,
        order_id,
        expected_version: s.expected_version,
        command: s.command,
    };
    let properties = with_traceparent(
        json_properties().with_message_id(command_id.to_string().as_str().into()),
        traceparent.as_deref(),
    );
    let published = metrics::intake_stage(
        "publish",
        state.publisher.publish(
            &state.topology.command_exchange(),
            &partition.to_string(),
            &message.to_bytes(),
            properties,
            true,
        ),
    )
    .await;
    // From here on the command is recorded: a 503 is only allowed once it is certain that the
    // command will never run; anything uncertain answers 202 and leaves it to the relay.
    match published {
        // Recorded later, without the answer waiting for it (`crate::confirms`).
        Ok(()) => state.confirms.record(command_id, chrono::Utc::now()).await,
        Err(error) => {
            let (reason, api_error) = match &error {
                PublishError::Refused => (IntakeRefusal::QueueFull, ApiError::QueueFull),
                PublishError::Unroutable | PublishError::Unavailable(_) => (
                    IntakeRefusal::BrokerUnavailable,
                    ApiError::Unavailable(anyhow::anyhow!("publishing {command_id}: {error}")),
                ),
            };
            match refuse(
                state,
                s.client,
                s.idempotency_key,
                order_id,
                command_id,
                reason,
            )
            .await
            {
                Ok(Refusal::Landed) => return Err(api_error),
                Ok(Refusal::TakenUp) => {
                    tracing::info!(%command_id, "publish failed, but the command was already taken up");
                }
                Err(e) => {
                    // PostgreSQL stayed out of reach: the command may be refused or may still be
                    // published by the relay. A retry with the same key answers which.
                    tracing::error!(%command_id, error = %e, publish_error = %error,
                        "publish failed and what the refusal came to is unknown");
                    return Err(ApiError::Unavailable(anyhow::anyhow!(
                        "command {command_id}: the broker refused it and its refusal could not be \
                         confirmed; retry with the same Idempotency-Key to learn whether it runs"
                    )));
                }
            }
        }
    }
    // Debug, not info: a line per command cost the API a tenth of its CPU per command
    // (`orderflow-bench perf --workloads uniform`, 0.163 against 0.148 ms, 30 MB of log a
    // minute); the command's acceptance is in its row, the metrics and the request's span.
    tracing::debug!(%command_id, %order_id, partition, seq, "command accepted");
    metrics::command_accepted(new.kind.as_str());
    Ok(Accepted {
        command_id,
        order_id,
        status: CommandStatus::Accepted,
        replayed: false,
    })
}
