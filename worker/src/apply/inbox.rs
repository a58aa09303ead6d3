//! One message inside its transaction: record the command if a direct producer sent it, the
//! inbox check (a final status means done), the order's stream (earlier commands whose messages
//! are late are applied first; a command whose earlier ones never reached a worker is parked),
//! the message's own command, then the parked commands that were waiting for it.

use super::command::OrderRow;
use super::{Applier, DeliveryInfo, Outcome, Tally};
use crate::direct;
use crate::error::{ApplyError, Failure};
use orderflow_contract::{CommandMessage, CommandStatus, FailureCode};
use orderflow_storage::commands::{self, CommandRow};
use sqlx::PgConnection;

impl Applier {
    /// Applies one message in `tx`. Only a `Finished` or `Parked` outcome may be committed;
    /// after any other one `tx` must be rolled back (it may have written).
    pub(super) async fn apply_through_inbox(
        &self,
        tx: &mut PgConnection,
        message: &CommandMessage,
        partition: u16,
        delivery: &DeliveryInfo,
        tally: &mut Tally,
    ) -> Result<Outcome, ApplyError> {
        // The command, its order's stream and the order, locked by one statement; a direct
        // producer's command is recorded first, and its stream and order locked after.
        let (row, held) = match commands::lock_for_apply(&mut *tx, message.command_id).await? {
            Some(locked) => {
                if !same_command(&locked.command, message) {
                    return Ok(Outcome::Poison(Failure::new(
                        FailureCode::CommandIdReused,
                        format!(
                            "command_id {} was already used for a different command",
                            locked.command.id
                        ),
                    )));
                }
                (locked.command, Some((locked.stream, locked.order)))
            }
            None => match direct::record(&mut *tx, message, partition, delivery).await? {
                Ok(row) => {
                    tally.recorded.push(row.kind);
                    (row, None)
                }
                Err(failure) => return Ok(Outcome::Poison(failure)),
            },
        };
        if inbox_sabotaged() && row.status == CommandStatus::Applied {
            let status = self
                .apply_command(tx, &row, OrderRow::ToLock, delivery.delivered, false, tally)
                .await?;
            return Ok(Outcome::Finished(status));
        }
        if row.status == CommandStatus::Failed {
            let detail = row.detail.unwrap_or_default();
            return Ok(Outcome::AlreadyFailed(Failure::new(
                FailureCode::AlreadyFailed,
                detail,
            )));
        }
        if row.status.is_final() {
            return Ok(Outcome::Duplicate);
        }
        let (stream, order) = match held {
            Some((stream, order)) => (stream, OrderRow::Held(order)),
            None => (
                commands::lock_stream(&mut *tx, row.order_id).await?,
                OrderRow::ToLock,
            ),
        };
        let processed = stream.processed_seq;
        if row.seq <= processed {
            return Ok(Outcome::Duplicate);
        }
        // Earlier commands of the order still to apply; none in the usual case (this is the next).
        let earlier = if row.seq == processed + 1 {
            Vec::new()
        } else {
            commands::lock_between(&mut *tx, row.order_id, processed, row.seq).await?
        };
        if earlier.len() as i64 != row.seq - processed - 1 {
            // An earlier seq is reserved but not recorded: the order's create has not reached
            // any worker yet. Keep this command (recorded, acked) until it does.
            tracing::info!(
                command_id = %row.id, order_id = %row.order_id, seq = row.seq,
                "parking the command until the earlier commands of its order arrive"
            );
            commands::park(&mut *tx, row.id, row.order_id).await?;
            tally.parked += 1;
            return Ok(Outcome::Parked);
        }
        // The usual case: the command is its order's next and nothing parked waits behind it,
        // so its ending also moves the stream on (one statement, see `finish`).
        let next = earlier.is_empty() && !stream.has_parked;
        // The order row as locked is current until an earlier command writes it.
        let mut order = order;
        for earlier in earlier {
            if !earlier.status.is_final() {
                tracing::info!(
                    command_id = %earlier.id, order_id = %earlier.order_id, seq = earlier.seq,
                    "applying an earlier command of the order first (its message is late)"
                );
                // Not its own delivery: its timeline keeps no delivered_at/attempt.
                let held = std::mem::replace(&mut order, OrderRow::ToLock);
                self.apply_command(tx, &earlier, held, None, false, tally)
                    .await
                    .map_err(|e| e.blame(earlier.id))?;
            }
        }
        let status = self
            .apply_command(tx, &row, order, delivery.delivered, next, tally)
            .await
            .map_err(|e| e.blame(row.id))?;
        if next {
            return Ok(Outcome::Finished(status));
        }
        let processed = if stream.has_parked {
            self.apply_parked_after(tx, &row, tally).await?
        } else {
            row.seq
        };
        commands::set_processed(&mut *tx, row.order_id, processed).await?;
        Ok(Outcome::Finished(status))
    }

    /// Applies the parked commands that directly follow `row` (whose own turn just came), in
    /// order, and says how far the order is now processed. Clears the stream's mark once no
    /// parked command is left.
    async fn apply_parked_after(
        &self,
        tx: &mut PgConnection,
        row: &CommandRow,
        tally: &mut Tally,
    ) -> Result<i64, ApplyError> {
        let mut processed = row.seq;
        let later = commands::lock_after(tx, row.order_id, row.seq).await?;
        for next in &later {
            if next.seq != processed + 1 {
                break;
            }
            if !next.status.is_final() {
                // A command recorded but not parked has its message on the way: its turn.
                if next.parked_at.is_none() {
                    break;
                }
                tracing::info!(
                    command_id = %next.id, order_id = %next.order_id, seq = next.seq,
                    "applying a parked command: the commands before it are done"
                );
                self.apply_command(tx, next, OrderRow::ToLock, None, false, tally)
                    .await
                    .map_err(|e| e.blame(next.id))?;
            }
            processed = next.seq;
        }
        let still_parked = later
            .iter()
            .any(|c| c.seq > processed && c.parked_at.is_some() && !c.status.is_final());
        if !still_parked {
            commands::clear_parked(tx, row.order_id).await?;
        }
        Ok(processed)
    }
}

/// Is this message the command recorded under its id (a redelivery), not a reuse of the id?
pub(super) fn same_command(row: &CommandRow, message: &CommandMessage) -> bool {
    row.client_id == message.client_id
        && row.order_id == message.order_id
        && row.expected_version == message.expected_version
        && serde_json::to_value(&message.command).ok().as_ref() == Some(&row.body)
}

/// Deliberate breakage, for proving that the race audit can fail: the failpoint
/// `apply.skip_inbox` (armed with `return`) makes the worker ignore its inbox, so that a
/// redelivered or duplicated command is applied again. It exists only in builds with the
/// `failpoints` feature (the audit's tests and the race audit's binaries), never in a release.
pub(super) fn inbox_sabotaged() -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::eval("apply.skip_inbox", |_| ()).is_some()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        false
    }
}
