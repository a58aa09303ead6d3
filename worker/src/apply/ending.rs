//! How a command ends: its final status and status event ([`finish`]), what the metrics count of
//! it ([`finished`]), and failing a command outside its apply ([`Applier::fail_command`]).

use super::inbox::same_command;
use super::{Applier, OwnMessage};
use crate::error::Failure;
use crate::metrics::FinishedCommand;
use chrono::{DateTime, Utc};
use orderflow_contract::{CommandStatus, Reason, STATUS_EVENT_VERSION, StatusEvent};
use orderflow_domain::{CommandId, Event, Order, Rejection};
use orderflow_storage::commands::{self, AppliedEvent, CommandRow, Delivered, FinishWith};
use orderflow_storage::observability;
use sqlx::PgConnection;

impl Applier {
    /// Marks a command of `partition` `failed` if it is still accepted — and, when `own` names its message,
    /// only if the message is that command (a stranger's message must not fail it) — recording
    /// the message's dead letter in the same transaction. Returns whether it failed the command.
    pub async fn fail_command(
        &self,
        partition: u16,
        command_id: CommandId,
        failure: &Failure,
        own: Option<&OwnMessage<'_>>,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.begin_for(partition).await?;
        let failed = fail_command_in(&mut tx, command_id, failure, own).await?;
        if let Some(own) = own {
            observability::insert_dead_letter(&mut *tx, &own.dead_letter).await?;
        }
        tx.commit().await?;
        if let Some(failed) = &failed {
            settle(&self.db, std::slice::from_ref(failed)).await;
        }
        Ok(failed.is_some())
    }
}

/// The failing part of [`Applier::fail_command`], inside its transaction.
async fn fail_command_in(
    tx: &mut PgConnection,
    command_id: CommandId,
    failure: &Failure,
    own: Option<&OwnMessage<'_>>,
) -> Result<Option<FinishedCommand>, sqlx::Error> {
    let Some(row) = commands::lock(tx, command_id).await? else {
        return Ok(None);
    };
    let message = own.and_then(|own| own.message);
    if row.status.is_final() || message.is_some_and(|m| !same_command(&row, m)) {
        return Ok(None);
    }
    let processed = commands::lock_stream(tx, row.order_id).await?.processed_seq;
    let status = CommandStatus::Failed;
    let delivered = own.and_then(|own| own.delivered);
    let next = processed == row.seq - 1;
    finish(tx, &row, Ending::Failed(failure), delivered, next, None).await?;
    Ok(Some(finished(
        &row,
        status,
        Some(Reason::Failed(failure.code)),
    )))
}

/// What follows the commit of a transaction that finished commands: count them, and announce
/// them (see [`commands::announce_finished`]). An announcement that fails is logged, not
/// returned: the transaction stands, the outbox relays' sweep finds its events, and a
/// long-poll answers at its deadline.
pub(crate) async fn settle(db: &sqlx::PgPool, finished: &[FinishedCommand]) {
    finished.iter().for_each(FinishedCommand::record);
    let ids: Vec<uuid::Uuid> = finished.iter().map(|f| f.command_id.0).collect();
    if let Err(e) = commands::announce_finished(db, &ids).await {
        tracing::warn!(
            error = %e, commands = ids.len(),
            "could not announce finished commands; the outbox relays' sweep will find their events"
        );
    }
}

/// What the metrics count of a command that reached `status`.
pub(crate) fn finished(
    row: &CommandRow,
    status: CommandStatus,
    reason: Option<Reason>,
) -> FinishedCommand {
    FinishedCommand {
        command_id: row.id,
        kind: row.kind,
        status,
        reason,
        accepted_at: row.accepted_at,
    }
}

/// The status event of a command that ended so.
pub(crate) fn status_event(row: &CommandRow, ending: &Ending<'_>) -> StatusEvent {
    let (status, reason, detail, version, event) = match ending {
        Ending::Applied { order, event, .. } => (
            CommandStatus::Applied,
            None,
            None,
            Some(order.version),
            Some((*event).clone()),
        ),
        Ending::Rejected { rejection, version } => (
            CommandStatus::Rejected,
            Some(Reason::Rejected(*rejection)),
            None,
            *version,
            None,
        ),
        Ending::Unchanged { version } => (
            CommandStatus::Applied,
            Some(Reason::Unchanged),
            None,
            Some(*version),
            None,
        ),
        Ending::Failed(failure) => (
            CommandStatus::Failed,
            Some(Reason::Failed(failure.code)),
            Some(failure.detail.clone()),
            None,
            None,
        ),
    };
    StatusEvent {
        schema_version: STATUS_EVENT_VERSION,
        command_id: row.id,
        order_id: row.order_id,
        client_id: row.client_id,
        seq: row.seq,
        kind: row.kind,
        status,
        reason,
        detail,
        version,
        event,
        at: Utc::now(),
    }
}

/// How a command ended, for [`finish`].
pub(crate) enum Ending<'a> {
    /// `event` was appended at `at` and led to the projection `order`.
    Applied {
        order: &'a Order,
        event: &'a Event,
        at: DateTime<Utc>,
    },
    Rejected {
        rejection: Rejection,
        version: Option<i64>,
    },
    Failed(&'a Failure),
    /// Applied without a change (see [`orderflow_domain::Decided::Unchanged`]): the order stays
    /// at `version`.
    Unchanged {
        version: i64,
    },
}

/// Records a command's final status and its status event for the outbox; an applied command's
/// event and projection too, and, when `processed` (the command was its order's next), its
/// order's progress: one statement ([`commands::finish`]). `lease`: the lease it is applied
/// under, when the transaction writes for several partitions (see [`FinishWith::lease`]).
pub(crate) async fn finish(
    conn: &mut PgConnection,
    row: &CommandRow,
    ending: Ending<'_>,
    delivered: Option<Delivered>,
    processed: bool,
    lease: Option<(i32, i64)>,
) -> Result<(), sqlx::Error> {
    let applied = match &ending {
        Ending::Applied { order, event, at } => Some(AppliedEvent {
            order,
            event,
            at: *at,
        }),
        _ => None,
    };
    let event = status_event(row, &ending);
    let with = FinishWith {
        event: applied,
        processed,
        lease,
    };
    commands::finish(conn, &event, delivered, with).await
}
