//! A recorded command the broker would not take (queue full, broker down): mark it rejected and
//! release its key so that it never runs and a retry starts afresh; and, when that transaction's
//! outcome is unknown, read the command back until it is known.

use crate::state::AppState;
use backon::{BackoffBuilder, ExponentialBuilder};
use orderflow_contract::CommandStatus;
use orderflow_contract::{IntakeRefusal, Reason};
use orderflow_domain::{CommandId, OrderId};
use orderflow_storage::clients::Client;
use orderflow_storage::commands;
use orderflow_storage::idempotency;
use std::time::Duration;

/// What became of a recorded command the broker would not take.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Marked rejected and its key released: it never runs.
    Landed,
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
pub(super) async fn refuse(
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
            Ok(true) => return Ok(Refusal::Landed),
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
        (CommandStatus::Rejected, Some(Reason::Refused(_))) => Some(Refusal::Landed),
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
            Some(Refusal::Landed)
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
            Some(Refusal::Landed)
        );
    }
}
