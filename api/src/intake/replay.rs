//! A request whose Idempotency-Key was seen before: answer what the key names (the same 202,
//! 409 while the first request is still in flight, 422 for a different request), count it, and
//! tell the dashboards.

use super::Accepted;
use crate::dashboard::hub::{self, IdempotencyEvent};
use crate::error::ApiError;
use crate::metrics;
use crate::state::AppState;
use orderflow_contract::CommandStatus;
use orderflow_contract::{IntakeRefusal, Reason};
use orderflow_domain::CommandId;
use orderflow_storage::clients::Client;
use orderflow_storage::commands;
use std::time::{Duration, Instant};

/// How long past the confirm writer's delay a replay waits for the first request's confirm to
/// be recorded: the writer's own statement, and a request between its commit and its publish.
const MARK_GRACE: Duration = Duration::from_millis(500);

/// Counts a replay or a mismatch and tells the dashboards (of every API instance) about it.
pub(super) async fn observe_replay(
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
    let event = IdempotencyEvent {
        kind: kind.into(),
        at: chrono::Utc::now(),
        client_id: client.id.0,
        order_id: row.order_id.0,
        command_id: command_id.0,
    };
    hub::announce(&state.db, &event).await;
}

/// Answers a request whose key was seen before.
pub(super) async fn replay(
    state: &AppState,
    client: &Client,
    fingerprint: &[u8],
    stored_fingerprint: &[u8],
    command_id: CommandId,
) -> Result<Accepted, ApiError> {
    if fingerprint != stored_fingerprint {
        return Err(ApiError::IdempotencyMismatch);
    }
    // Neither confirmed nor taken up yet: the broker's confirm is recorded a moment after the
    // first request's 202 (`crate::confirms`). This API may hold it; if not (the first request
    // went to another instance, or is still publishing), wait for the mark until it is due,
    // counted from the command's acceptance, before calling the first request still in flight.
    // Plain reads meanwhile: a locking one would make the confirm writer, which skips locked
    // rows, pass this very command over.
    let mut deadline = None;
    let mut pause = Duration::from_millis(10);
    loop {
        let row = commands::get_for_client(&state.db, client.id, command_id)
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!("idempotency key names a missing command {command_id}")
            })?;
        let waiting = row.published_at.is_none() && row.status == CommandStatus::Accepted;
        if waiting && state.confirms.holds(command_id) {
            return Ok(Accepted {
                command_id: row.id,
                order_id: row.order_id,
                status: CommandStatus::Accepted,
                replayed: true,
            });
        }
        // Due `delay` after the confirm, which follows the acceptance: an older command's
        // mark is not coming (skipped for a worker that had it, or lost with its API).
        let deadline = *deadline.get_or_insert_with(|| {
            let age = (chrono::Utc::now() - row.accepted_at)
                .to_std()
                .unwrap_or_default();
            Instant::now() + (state.confirms.written_within() + MARK_GRACE).saturating_sub(age)
        });
        if !waiting || Instant::now() + pause > deadline {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    // Settled: read after any worker applying it commits (its confirm may have been skipped for
    // that worker, which records the publish itself).
    let row = commands::get_for_client_settled(&state.db, client.id, command_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("idempotency key names a missing command {command_id}"))?;
    // Still between its commit and its publish (or its API died there: the relay publishes it
    // later).
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
