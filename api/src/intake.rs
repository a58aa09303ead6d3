//! Accepting a command: claim the Idempotency-Key, give the command the next seq of its order,
//! record it, commit, publish it with a confirm, answer. Both POST routes go through here. For an
//! existing order the first four are one statement (`commands::record_next`): one round trip,
//! and no transaction held open while the API waits for its turn on a CPU.
//! Requests for one order take turns at a gate in memory (`gates`) before that statement, so a
//! storm on one order queues there instead of on its stream row.
//!
//! A publish the broker did not confirm (queue full, broker down) marks the command rejected
//! before answering 503, so nothing runs later by surprise; the key is released for a retry. If
//! that transaction's outcome is unknown, the command is read back until it is known.
//! If the API dies between commit and publish, the worker's command relay publishes it later
//! and the key's replay answers the 202 the caller never saw.

use crate::dashboard::hub::{self, HttpEvent};
use crate::error::ApiError;
use crate::metrics;
use crate::state::AppState;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backon::{BackoffBuilder, ExponentialBuilder};
use orderflow_contract::CommandMessage;
use orderflow_contract::CommandStatus;
use orderflow_contract::partition::partition_of;
use orderflow_contract::{IntakeRefusal, Reason};
use orderflow_domain::{Command, CommandId, OrderId};
use orderflow_messaging::{PublishError, json_properties, with_traceparent};
use orderflow_runtime::telemetry;
use orderflow_storage::clients::Client;
use orderflow_storage::commands::{self, Intake, NewCommand, Source};
use orderflow_storage::idempotency::{self, Claim};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Which order a command is for.
pub enum Target {
    /// A new order (create): the API has just assigned its id.
    New(OrderId),
    Existing(OrderId),
}

impl Target {
    fn order_id(&self) -> OrderId {
        match self {
            Target::New(id) | Target::Existing(id) => *id,
        }
    }
}

/// One request to accept.
pub struct Submission<'a> {
    pub client: &'a Client,
    pub idempotency_key: &'a str,
    /// Identifies the request for the key: method, route, If-Match and canonical body.
    pub fingerprint: Vec<u8>,
    pub target: Target,
    pub command: Command,
    pub expected_version: Option<i64>,
    /// When the API received the request.
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// The 202 answer (also what a replay answers).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub command_id: CommandId,
    pub order_id: OrderId,
    pub status: CommandStatus,
    #[serde(skip)]
    pub replayed: bool,
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let location = format!("/v1/commands/{}", self.command_id);
        let replayed = self.replayed;
        let mut response = (StatusCode::ACCEPTED, axum::Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(&location).expect("a uuid path is a valid header"),
        );
        if replayed {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

/// The fingerprint of a request: what must match for a key's replay.
pub fn fingerprint(route: &str, if_match: Option<i64>, body: &serde_json::Value) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(route.as_bytes());
    hash.update([0]);
    hash.update(
        if_match
            .map(|v| v.to_string())
            .unwrap_or_default()
            .as_bytes(),
    );
    hash.update([0]);
    // serde_json's maps are sorted, so equal JSON documents serialize identically.
    hash.update(body.to_string().as_bytes());
    hash.finalize().to_vec()
}

pub async fn submit(state: &AppState, s: Submission<'_>) -> Result<Accepted, ApiError> {
    let command_id = CommandId::new();
    let order_id = s.target.order_id();
    let partition = partition_of(order_id, state.topology.partitions);
    let body = serde_json::to_value(&s.command).expect("commands serialize");
    // The request's trace, carried in the command row and the message to the worker's span.
    let traceparent = telemetry::traceparent(&tracing::Span::current());

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
    };
    let seq = match record(state, &s, &new).await? {
        Recorded::Seq(seq) => seq,
        Recorded::KeyTaken {
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
        Ok(()) => {
            let marked = metrics::intake_stage("mark", state.confirms.record(command_id));
            if let Err(e) = marked.await {
                // The broker has it; the relay may republish it, which the inbox makes harmless.
                tracing::warn!(%command_id, error = %e, "could not record the broker's confirm");
            }
        }
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
                Ok(Refusal::Recorded) => return Err(api_error),
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
    tracing::info!(%command_id, %order_id, partition, seq, "command accepted");
    metrics::command_accepted(new.kind.as_str());
    Ok(Accepted {
        command_id,
        order_id,
        status: CommandStatus::Accepted,
        replayed: false,
    })
}

/// What recording a submission came to.
enum Recorded {
    /// Recorded with this seq; the key is the request's.
    Seq(i64),
    /// The key was claimed before (nothing written): replay what it names.
    KeyTaken {
        fingerprint: Vec<u8>,
        command_id: CommandId,
    },
}

/// Claims the key and records the command with its order's next seq, atomically.
async fn record(
    state: &AppState,
    s: &Submission<'_>,
    new: &NewCommand<'_>,
) -> Result<Recorded, ApiError> {
    let id = match s.target {
        Target::New(id) => {
            return metrics::intake_stage("record", record_create(state, s, new, id)).await;
        }
        Target::Existing(id) => id,
    };
    // The order's own rate first: a storm's excess costs nothing but this check. (A retry of an
    // accepted command refused here is replayed once the client comes back after Retry-After.)
    state.limits.check_order(s.client.id, id)?;
    let max = state.limits.max_pending_per_order();
    // Requests for one order take turns here rather than on its stream row (see `gates`). More
    // waiting than the order could take commands are turned away without the intake statement,
    // but a retry of an accepted command is still replayed.
    let queue = usize::try_from(max).unwrap_or(usize::MAX);
    let Some(_pass) =
        metrics::intake_stage("gate", state.gates.enter(s.client.id, id, queue)).await
    else {
        return match taken(state, s).await? {
            Some(taken) => Ok(taken),
            None => Err(ApiError::OrderBusy(max)),
        };
    };
    metrics::intake_stage("record", record_next(state, s, new, max)).await
}

/// The intake statement for an existing order (the request's turn at its gate), until it
/// records the command or says why not.
async fn record_next(
    state: &AppState,
    s: &Submission<'_>,
    new: &NewCommand<'_>,
    max: i64,
) -> Result<Recorded, ApiError> {
    loop {
        let (stream_locked, pending) =
            match commands::record_next(&state.db, new, s.idempotency_key, &s.fingerprint, max)
                .await?
            {
                Intake::Recorded(seq) => return Ok(Recorded::Seq(seq)),
                // A key claimed before is replayed, even on a busy order.
                Intake::KeyTaken {
                    fingerprint,
                    command_id,
                } => {
                    return Ok(Recorded::KeyTaken {
                        fingerprint,
                        command_id,
                    });
                }
                Intake::NotRecorded {
                    stream_locked,
                    pending,
                } => (stream_locked, pending),
            };
        match pending {
            None => return Err(ApiError::NotFound("order")),
            // Full before this request looked (the storm's common case). A request with this
            // key that committed after the statement's snapshot is not seen here; the client's
            // next retry replays it.
            Some(pending) if !stream_locked && pending >= max => {
                return Err(ApiError::OrderBusy(max));
            }
            _ => {}
        }
        // Something committed while the statement waited for the stream: perhaps a request with
        // this key (replay it), perhaps another that took the last room.
        if let Some(taken) = taken(state, s).await? {
            return Ok(taken);
        }
        if !stream_locked {
            return Err(ApiError::OrderBusy(max));
        }
        // Taken, then released by a request the broker refused: try again.
    }
}

/// The command the request's key already names, if it names one.
async fn taken(state: &AppState, s: &Submission<'_>) -> Result<Option<Recorded>, ApiError> {
    let found = idempotency::lookup(&state.db, s.client.id, s.idempotency_key).await?;
    Ok(found.map(|(fingerprint, command_id)| Recorded::KeyTaken {
        fingerprint,
        command_id,
    }))
}

/// A create: claim the key, open the new order's stream and record its first command.
async fn record_create(
    state: &AppState,
    s: &Submission<'_>,
    new: &NewCommand<'_>,
    id: OrderId,
) -> Result<Recorded, ApiError> {
    let mut tx = state.db.begin().await?;
    let claim = idempotency::claim(
        &mut tx,
        s.client.id,
        s.idempotency_key,
        &s.fingerprint,
        new.id,
    )
    .await?;
    if let Claim::Existing {
        fingerprint,
        command_id,
    } = claim
    {
        tx.rollback().await?;
        return Ok(Recorded::KeyTaken {
            fingerprint,
            command_id,
        });
    }
    if !commands::open_stream(&mut *tx, id, s.client.id).await? {
        return Err(anyhow::anyhow!("a fresh UUIDv7 order id {id} was taken").into());
    }
    commands::insert(&mut *tx, new, 1).await?;
    tx.commit().await?;
    Ok(Recorded::Seq(1))
}

/// What became of a recorded command the broker would not take.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Marked rejected and its key released: it never runs.
    Recorded,
    /// Published or taken up meanwhile (by the relay, or a worker behind it): it runs.
    TakenUp,
}

/// How long the intake keeps asking what a refusal came to when its transaction's outcome is
/// unknown (its connection died around the commit).
const REFUSAL_SETTLE: Duration = Duration::from_secs(10);

/// Refuses the command. When the refusing transaction fails, it may still have committed (a
/// connection cut between the commit and its answer): the command is read again, on another
/// connection and after any transaction still holding it, until it is known whether the refusal
/// landed. Only a command read as still accepted and unpublished is refused again.
async fn refuse(
    state: &AppState,
    client: &Client,
    key: &str,
    order_id: OrderId,
    command_id: CommandId,
    reason: IntakeRefusal,
) -> Result<Refusal, sqlx::Error> {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(1))
        .with_total_delay(Some(REFUSAL_SETTLE))
        .without_max_times()
        .with_jitter()
        .build();
    loop {
        let mut error = match refuse_once(state, client, key, order_id, command_id, reason).await {
            Ok(true) => return Ok(Refusal::Recorded),
            Ok(false) => return Ok(Refusal::TakenUp),
            Err(e) => e,
        };
        tracing::warn!(%command_id, %error, "refusing the command failed; reading what it came to");
        loop {
            let Some(delay) = delays.next() else {
                return Err(error);
            };
            tokio::time::sleep(delay).await;
            match commands::get_for_client_settled(&state.db, client.id, command_id).await {
                Ok(Some(row)) => {
                    match settled_refusal(row.status, row.reason, row.published_at.is_some()) {
                        Some(refusal) => return Ok(refusal),
                        // The refusal did not land: try it again.
                        None => break,
                    }
                }
                Ok(None) => return Err(sqlx::Error::RowNotFound),
                Err(e) => error = e,
            }
        }
    }
}

/// What a command read after a failed refusal says about it; `None` while it is still accepted
/// and unpublished (the refusal did not land and nothing took it up).
fn settled_refusal(
    status: CommandStatus,
    reason: Option<Reason>,
    published: bool,
) -> Option<Refusal> {
    match (status, reason) {
        (CommandStatus::Rejected, Some(Reason::Refused(_))) => Some(Refusal::Recorded),
        (CommandStatus::Accepted, _) if !published => None,
        _ => Some(Refusal::TakenUp),
    }
}

/// Marks the command rejected, releases its key and gives its room back to the order, in one
/// transaction: a concurrent replay sees either the key with an undecided command (409) or no key
/// at all. `false` when the command was no longer accepted and unpublished.
///
/// Once the command is final, the order's processed seq moves past it if nothing before it is
/// pending (otherwise the worker moves past it when it finishes the one before). The command is
/// locked before the stream, in the order a worker applying its own message locks them.
async fn refuse_once(
    state: &AppState,
    client: &Client,
    key: &str,
    order_id: OrderId,
    command_id: CommandId,
    reason: IntakeRefusal,
) -> Result<bool, sqlx::Error> {
    let mut tx = state.db.begin().await?;
    if !commands::refuse_unpublished(&mut *tx, command_id, reason).await? {
        return Ok(false);
    }
    idempotency::release(&mut *tx, client.id, key, command_id).await?;
    commands::set_processed(&mut tx, order_id, 0).await?;
    tx.commit().await?;
    Ok(true)
}

/// Counts a replay or a mismatch and tells the dashboards (of every API instance) about it.
async fn observe_replay(
    state: &AppState,
    client: &Client,
    command_id: CommandId,
    answer: &Result<Accepted, ApiError>,
) {
    let kind = match answer {
        Ok(accepted) if accepted.replayed => {
            metrics::idempotent_replay();
            "replay"
        }
        Err(ApiError::IdempotencyMismatch) => {
            metrics::idempotency_mismatch();
            "idempotency_mismatch"
        }
        _ => return,
    };
    let Ok(Some(row)) = commands::get_for_client(&state.db, client.id, command_id).await else {
        return;
    };
    let event = HttpEvent {
        kind: kind.into(),
        at: chrono::Utc::now(),
        client_id: client.id.0,
        order_id: row.order_id.0,
        command_id: command_id.0,
    };
    hub::announce(&state.db, &event).await;
}

/// Answers a request whose key was seen before.
async fn replay(
    state: &AppState,
    client: &Client,
    fingerprint: &[u8],
    stored_fingerprint: &[u8],
    command_id: CommandId,
) -> Result<Accepted, ApiError> {
    if fingerprint != stored_fingerprint {
        return Err(ApiError::IdempotencyMismatch);
    }
    // Settled: read after any worker applying it commits (its confirm may have been skipped for
    // that worker, which records the publish itself).
    let row = commands::get_for_client_settled(&state.db, client.id, command_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("idempotency key names a missing command {command_id}"))?;
    // Neither confirmed by the broker nor taken up by a worker yet: the first request is
    // still between its commit and its publish.
    if row.published_at.is_none() && row.status == CommandStatus::Accepted {
        return Err(ApiError::IdempotencyInFlight);
    }
    // Refused commands release their key in the same transaction, so this is only reachable if
    // that transaction's outcome was unknown to its request; answer what the refusal meant.
    match row.reason {
        Some(Reason::Refused(IntakeRefusal::QueueFull)) => return Err(ApiError::QueueFull),
        Some(Reason::Refused(IntakeRefusal::BrokerUnavailable)) => {
            return Err(ApiError::Unavailable(anyhow::anyhow!(
                "command {command_id} was refused by the broker"
            )));
        }
        _ => {}
    }
    Ok(Accepted {
        command_id: row.id,
        order_id: row.order_id,
        status: CommandStatus::Accepted,
        replayed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUEUE_FULL: Reason = Reason::Refused(IntakeRefusal::QueueFull);
    const UNCONFIRMED: Reason = Reason::Refused(IntakeRefusal::BrokerUnavailable);
    const NO_STOCK: Reason = Reason::Rejected(orderflow_domain::Rejection::InsufficientStock);

    #[test]
    fn a_refusal_that_landed_is_told_from_one_that_did_not_and_from_a_command_that_ran() {
        // Rejected as refused: the refusal committed.
        assert_eq!(
            settled_refusal(CommandStatus::Rejected, Some(QUEUE_FULL), false),
            Some(Refusal::Recorded)
        );
        // Still accepted and unpublished: the refusal rolled back; refuse again.
        assert_eq!(settled_refusal(CommandStatus::Accepted, None, false), None);
        // Published by the relay meanwhile, or applied, or rejected by the worker on its
        // merits: it ran (or runs), so the answer is 202.
        assert_eq!(
            settled_refusal(CommandStatus::Accepted, None, true),
            Some(Refusal::TakenUp)
        );
        assert_eq!(
            settled_refusal(CommandStatus::Applied, None, true),
            Some(Refusal::TakenUp)
        );
        assert_eq!(
            settled_refusal(CommandStatus::Rejected, Some(NO_STOCK), true),
            Some(Refusal::TakenUp)
        );
        // Refused either way, it never runs: never a 202.
        assert_eq!(
            settled_refusal(CommandStatus::Rejected, Some(UNCONFIRMED), false),
            Some(Refusal::Recorded)
        );
    }
}
