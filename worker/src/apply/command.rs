//! One command inside its message's transaction: decided on the locked order before anything is
//! written, then its side effects performed, its event appended and the projection written, and
//! the command finished (`ending.rs`). A rejection writes only itself.

use super::ending::{Ending, finish, finished};
use super::{Applier, Tally};
use crate::effects;
use crate::error::ApplyError;
use chrono::{SubsecRound, Utc};
use orderflow_contract::{CommandStatus, FailureCode, Reason};
use orderflow_domain::{Command, Decided, Event, Order, Rejection, decide, order::evolve};
use orderflow_storage::commands::{CommandRow, Delivered};
use orderflow_storage::orders;
use sqlx::{Acquire, PgConnection};

/// The order row of a command about to be applied. (One lives on the stack per command being
/// applied, mostly `Held`: boxing the order would add an allocation for nothing.)
#[allow(clippy::large_enum_variant)]
pub(super) enum OrderRow {
    /// Locked and read by the transaction already, unchanged since (`None`: not created yet).
    Held(Option<Order>),
    /// Still to lock and read.
    ToLock,
}

impl Applier {
    /// Applies (or rejects) one command in `tx`: decided on the locked order before anything is
    /// written, so a rejection writes only itself. `order` is the order row if `tx` has already
    /// locked and read it with nothing written to it since; `processed`: the command is its
    /// order's next and nothing waits behind it, so its ending also moves the order's stream on
    /// (see [`finish`]).
    pub(super) async fn apply_command(
        &self,
        tx: &mut PgConnection,
        row: &CommandRow,
        order: OrderRow,
        delivered: Option<Delivered>,
        processed: bool,
        tally: &mut Tally,
    ) -> Result<CommandStatus, ApplyError> {
        let command: Command = serde_json::from_value(row.body.clone()).map_err(|e| {
            ApplyError::broken(
                row.id,
                FailureCode::UnreadableCommand,
                format!("stored command does not parse: {e}"),
            )
        })?;
        let order = match order {
            OrderRow::Held(order) => order,
            OrderRow::ToLock => orders::lock(&mut *tx, row.order_id).await?,
        };
        let version = order.as_ref().map(|o| o.version);
        let decided = match decide(order.as_ref(), &command, row.expected_version) {
            Ok(Decided::Event(event)) => self
                .perform_effects(tx, order.as_ref(), &event, row)
                .await?
                .map(|()| event),
            Ok(Decided::Unchanged) => {
                // Applied, and nothing to write but its status: no event, no projection change.
                let version = version.expect("only an existing order is unchanged");
                let status = CommandStatus::Applied;
                finish(
                    tx,
                    row,
                    Ending::Unchanged { version },
                    delivered,
                    processed,
                    tally.lease,
                )
                .await?;
                tally
                    .finished
                    .push(finished(row, status, Some(Reason::Unchanged)));
                tracing::debug!(command_id = %row.id, order_id = %row.order_id, version, "command applied, unchanged");
                return Ok(status);
            }
            Err(rejection) => Err(rejection),
        };
        let event = match decided {
            Ok(event) => event,
            Err(rejection) => {
                let reason = rejection.as_str();
                tracing::info!(command_id = %row.id, order_id = %row.order_id, reason, "command rejected");
                let status = CommandStatus::Rejected;
                let ending = Ending::Rejected { rejection, version };
                finish(tx, row, ending, delivered, processed, tally.lease).await?;
                tally
                    .finished
                    .push(finished(row, status, Some(Reason::Rejected(rejection))));
                return Ok(status);
            }
        };
        // Microseconds: what timestamptz keeps, so a replay rebuilds the projection exactly.
        let at = Utc::now().trunc_subsecs(6);
        let order = evolve(order, row.order_id, row.client_id, &event, at);
        let status = CommandStatus::Applied;
        let ending = Ending::Applied {
            order: &order,
            event: &event,
            at,
        };
        finish(tx, row, ending, delivered, processed, tally.lease).await?;
        tally.finished.push(finished(row, status, None));
        tracing::debug!(command_id = %row.id, order_id = %row.order_id, version = order.version, "command applied");
        Ok(status)
    }

    /// The event's side effects. Those that can still reject the command after writing (stock
    /// partly reserved, a declined payment) run in a savepoint that the rejection rolls back;
    /// the others write nothing that a rejection would have to undo.
    async fn perform_effects(
        &self,
        tx: &mut PgConnection,
        order: Option<&Order>,
        event: &Event,
        row: &CommandRow,
    ) -> Result<Result<(), Rejection>, ApplyError> {
        if !effects::may_reject(event) {
            return effects::perform(&*self.gateway, tx, order, event, row).await;
        }
        let mut savepoint = tx.begin().await?;
        let performed = effects::perform(&*self.gateway, &mut savepoint, order, event, row).await?;
        if performed.is_ok() {
            savepoint.commit().await?;
        } else {
            savepoint.rollback().await?;
        }
        Ok(performed)
    }
}
