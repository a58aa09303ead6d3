//! One command inside its message's transaction: decided on the locked order before anything is
//! written, then its side effects performed, its event appended and the projection written, and
//! the command finished (`ending.rs`). A rejection writes only itself.

use super::ending::{Ending, finish, finished};
use super::{Applier, Tally};
use crate::effects;
use crate::error::ApplyError;
use chrono::{SubsecRound, Utc};
use orderflow_contract::{CommandStatus, FailureCode, Reason};
use orderflow_domain::{Command, Event, Order, Rejection, decide, order::evolve};
use orderflow_storage::commands::{CommandRow, Delivered};
use orderflow_storage::orders;
use sqlx::{Acquire, PgConnection};

impl Applier {
    /// Applies (or rejects) one command in `tx`: decided on the locked order before anything is
    /// written, so a rejection writes only itself.
    pub(super) async fn apply_command(
        &self,
        tx: &mut PgConnection,
        row: &CommandRow,
        delivered: Option<Delivered>,
        tally: &mut Tally,
    ) -> Result<CommandStatus, ApplyError> {
        let command: Command = serde_json::from_value(row.body.clone()).map_err(|e| {
            ApplyError::broken(
                row.id,
                FailureCode::UnreadableCommand,
                format!("stored command does not parse: {e}"),
            )
        })?;
        let order = orders::lock(&mut *tx, row.order_id).await?;
        let version = order.as_ref().map(|o| o.version);
        let decided = match decide(order.as_ref(), &command, row.expected_version) {
            Ok(event) => self
                .perform_effects(tx, order.as_ref(), &event, row)
                .await?
                .map(|()| event),
            Err(rejection) => Err(rejection),
        };
        let event = match decided {
            Ok(event) => event,
            Err(rejection) => {
                let reason = rejection.as_str();
                tracing::info!(command_id = %row.id, order_id = %row.order_id, reason, "command rejected");
                let status = CommandStatus::Rejected;
                finish(tx, row, Ending::Rejected { rejection, version }, delivered).await?;
                tally
                    .finished
                    .push(finished(row, status, Some(Reason::Rejected(rejection))));
                return Ok(status);
            }
        };
        // Microseconds: what timestamptz keeps, so a replay rebuilds the projection exactly.
        let at = Utc::now().trunc_subsecs(6);
        let order = evolve(order, row.order_id, row.client_id, &event, at);
        orders::record_event(&mut *tx, &order, row.id, &event, at).await?;
        let status = CommandStatus::Applied;
        let ending = Ending::Applied {
            version: order.version,
            event: &event,
        };
        finish(tx, row, ending, delivered).await?;
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
