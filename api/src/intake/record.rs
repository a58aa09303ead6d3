//! Recording a submission: claim its Idempotency-Key and record the command with its order's
//! next seq, atomically; or learn that the key was claimed before. A follow-up goes with the
//! next batch ([`crate::records`]), or alone when the batch could not take it. An existing order's requests
//! first pass its rate limit and take turns at its gate.

use super::{Submission, Target};
use crate::error::ApiError;
use crate::metrics;
use crate::records::Pending;
use crate::state::AppState;
use orderflow_domain::{CommandId, OrderId};
use orderflow_storage::commands::{self, Intake, NewCommand};
use orderflow_storage::idempotency::{self, Claim};

/// What recording a submission came to.
pub(super) enum RecordOutcome {
    /// Recorded with this seq; the key is the request's.
    Seq(i64),
    /// The key was claimed before (nothing written): replay what it names.
    KeyTaken {
        fingerprint: Vec<u8>,
        command_id: CommandId,
    },
}

/// Claims the key and records the command with its order's next seq, atomically.
pub(super) async fn record(
    state: &AppState,
    s: &Submission<'_>,
    new: &NewCommand<'_>,
) -> Result<RecordOutcome, ApiError> {
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
) -> Result<RecordOutcome, ApiError> {
    // First with the next batch; alone when the batch could not take it, and on every retry.
    let mut batched = Some(Pending::new(new, s.idempotency_key, &s.fingerprint, max));
    loop {
        let intake = match batched.take() {
            Some(pending) => state.records.record(pending).await,
            None => None,
        };
        let intake = match intake {
            Some(intake) => intake,
            None => {
                commands::record_next(&state.db, new, s.idempotency_key, &s.fingerprint, max)
                    .await?
            }
        };
        let (stream_locked, pending) = match intake {
            Intake::Recorded(seq) => return Ok(RecordOutcome::Seq(seq)),
            // A key claimed before is replayed, even on a busy order.
            Intake::KeyTaken {
                fingerprint,
                command_id,
            } => {
                return Ok(RecordOutcome::KeyTaken {
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
async fn taken(state: &AppState, s: &Submission<'_>) -> Result<Option<RecordOutcome>, ApiError> {
    let found = idempotency::lookup(&state.db, s.client.id, s.idempotency_key).await?;
    Ok(
        found.map(|(fingerprint, command_id)| RecordOutcome::KeyTaken {
            fingerprint,
            command_id,
        }),
    )
}

/// A create: claim the key, open the new order's stream and record its first command.
async fn record_create(
    state: &AppState,
    s: &Submission<'_>,
    new: &NewCommand<'_>,
    id: OrderId,
) -> Result<RecordOutcome, ApiError> {
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
        return Ok(RecordOutcome::KeyTaken {
            fingerprint,
            command_id,
        });
    }
    if !commands::open_stream(&mut *tx, id, s.client.id).await? {
        return Err(anyhow::anyhow!("a fresh UUIDv7 order id {id} was taken").into());
    }
    commands::insert(&mut *tx, new, 1).await?;
    tx.commit().await?;
    Ok(RecordOutcome::Seq(1))
}
