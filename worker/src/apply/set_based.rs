//! The usual case of a transaction of several messages, set-based: every message's command is
//! recorded, still accepted, its order's next with nothing parked behind it, and its event has
//! no side effect (no stock, no payment). Then the whole transaction is two statements however
//! many messages it holds: one locks every command with its stream and order
//! ([`commands::lock_many_for_apply`]), the commands are decided one after the other in memory
//! (each order's next command sees the order as the one before left it), and one writes every
//! event, status, outbox row, stream's progress and order's final projection
//! ([`commands::finish_many`]), where the message-by-message path (`inbox.rs`) takes two round
//! trips per message. A transaction's commands cost PostgreSQL one statement's overhead instead
//! of one per message, and the transaction's round trips no longer grow with its size.
//!
//! The moment a message is anything else (a direct producer's command not recorded yet, a
//! redelivered or reused id, a late or parked neighbour, stock or a payment to move), nothing
//! has been written, only locks taken that the same transaction takes again: the caller applies
//! every message the usual way instead.

use super::ending::{Ending, finished, status_event};
use super::inbox::{inbox_sabotaged, same_command};
use super::{Applier, Run, Tally};
use crate::error::ApplyError;
use crate::metrics::FinishedCommand;
use chrono::{DateTime, SubsecRound, Utc};
use orderflow_contract::{CommandMessage, CommandStatus, Reason, StatusEvent};
use orderflow_domain::order::evolve;
use orderflow_domain::{CommandKind, Decided, Event, Order, OrderId, decide};
use orderflow_storage::commands::{self, AppliedEvent, Finishing, ForApply};
use sqlx::PgConnection;
use std::collections::HashMap;

/// Commands whose events never move stock or money (see `crate::effects`).
pub(crate) fn without_effects(kind: CommandKind) -> bool {
    matches!(
        kind,
        CommandKind::Create
            | CommandKind::AddItem
            | CommandKind::RemoveItem
            | CommandKind::Deliver
            | CommandKind::UpdateDetails
            | CommandKind::SetShippingAddress
    )
}

/// An order as the commands decided so far left it.
struct OrderState {
    processed: i64,
    has_parked: bool,
    order: Option<Order>,
    /// An event of this transaction changed it: its projection is written.
    changed: bool,
}

/// How one command ended, owned until the statement that writes them all.
struct Ended {
    status: StatusEvent,
    /// An applied command's event, the order it led to, and when.
    applied: Option<(Event, Order, DateTime<Utc>)>,
    delivered: Option<commands::Delivered>,
    lease: Option<(i32, i64)>,
    counted: FinishedCommand,
}

impl Applier {
    /// Applies every message of `runs` (read as `messages`) set-based, if each is the usual
    /// case. `Ok(Some(finished))`: written, with the commands each run finished; `Ok(None)`:
    /// nothing written, the caller applies them message by message in the same transaction.
    pub(super) async fn apply_set_based(
        &self,
        tx: &mut PgConnection,
        runs: &[Run<'_>],
        messages: &[Vec<CommandMessage>],
        leases: &[(i32, i64)],
        tally: &mut Tally,
    ) -> Result<Option<Vec<usize>>, ApplyError> {
        let all = || messages.iter().flatten();
        if inbox_sabotaged() || !all().all(|m| without_effects(m.command.kind())) {
            return Ok(None);
        }
        let ids: Vec<uuid::Uuid> = all().map(|m| m.command_id.0).collect();
        let mut locked: HashMap<uuid::Uuid, ForApply> =
            commands::lock_many_for_apply(&mut *tx, &ids)
                .await?
                .into_iter()
                .map(|f| (f.command.id.0, f))
                .collect();
        let mut orders: HashMap<OrderId, OrderState> = HashMap::new();
        let mut ended = Vec::with_capacity(ids.len());
        let mut per_run = Vec::with_capacity(runs.len());
        for (n, (run, messages)) in runs.iter().zip(messages).enumerate() {
            let lease = leases.get(n).copied();
            for (item, message) in run.items.iter().zip(messages) {
                // Its lines are logged in the message's span, as on the other path (nothing
                // awaits in here).
                let _span = item.span.enter();
                // Taken out: a second message of the same command finds none (not usual).
                let Some(ForApply {
                    command: row,
                    stream,
                    order,
                }) = locked.remove(&message.command_id.0)
                else {
                    return Ok(None);
                };
                if !same_command(&row, message)
                    || row.status != CommandStatus::Accepted
                    || row.parked_at.is_some()
                {
                    return Ok(None);
                }
                let state = orders.entry(row.order_id).or_insert(OrderState {
                    processed: stream.processed_seq,
                    has_parked: stream.has_parked,
                    order,
                    changed: false,
                });
                if state.has_parked || row.seq != state.processed + 1 {
                    return Ok(None);
                }
                let version = state.order.as_ref().map(|o| o.version);
                // The message's command is the stored one (`same_command`).
                let decided = decide(state.order.as_ref(), &message.command, row.expected_version);
                let (status, reason, applied) = match decided {
                    Ok(Decided::Event(event)) => {
                        // Microseconds: what timestamptz keeps (see `command.rs`).
                        let at = Utc::now().trunc_subsecs(6);
                        let order =
                            evolve(state.order.take(), row.order_id, row.client_id, &event, at);
                        state.order = Some(order.clone());
                        state.changed = true;
                        (CommandStatus::Applied, None, Some((event, order, at)))
                    }
                    Ok(Decided::Unchanged) => {
                        (CommandStatus::Applied, Some(Reason::Unchanged), None)
                    }
                    Err(rejection) => (
                        CommandStatus::Rejected,
                        Some(Reason::Rejected(rejection)),
                        None,
                    ),
                };
                state.processed = row.seq;
                match (&applied, reason) {
                    (Some((_, order, _)), _) => {
                        tracing::debug!(command_id = %row.id, order_id = %row.order_id, version = order.version, "command applied");
                    }
                    (None, Some(Reason::Rejected(rejection))) => {
                        let reason = rejection.as_str();
                        tracing::info!(command_id = %row.id, order_id = %row.order_id, reason, "command rejected");
                    }
                    (None, _) => {
                        tracing::debug!(command_id = %row.id, order_id = %row.order_id, version, "command applied, unchanged");
                    }
                }
                let ending = match (&applied, reason) {
                    (Some((event, order, at)), _) => Ending::Applied {
                        order,
                        event,
                        at: *at,
                    },
                    (None, Some(Reason::Rejected(rejection))) => {
                        Ending::Rejected { rejection, version }
                    }
                    (None, _) => Ending::Unchanged {
                        version: version.expect("only an existing order is unchanged"),
                    },
                };
                let event = status_event(&row, &ending);
                let counted = finished(&row, status, reason);
                ended.push(Ended {
                    status: event,
                    applied,
                    delivered: item.delivery.delivered,
                    lease,
                    counted,
                });
            }
            per_run.push(messages.len());
        }
        let finishing: Vec<Finishing> = ended
            .iter()
            .map(|e| Finishing {
                event: &e.status,
                delivered: e.delivered,
                lease: e.lease,
                applied: e.applied.as_ref().map(|(event, order, at)| AppliedEvent {
                    order,
                    event,
                    at: *at,
                }),
            })
            .collect();
        let projections: Vec<&Order> = orders
            .values()
            .filter(|state| state.changed)
            .filter_map(|state| state.order.as_ref())
            .collect();
        commands::finish_many(&mut *tx, &finishing, &projections).await?;
        tally.finished.extend(ended.into_iter().map(|e| e.counted));
        Ok(Some(per_run))
    }
}
