//! The apply transaction: one message in, one PostgreSQL transaction, one outcome out. No AMQP
//! types here; the consumer decides what to do with the message from the [`Outcome`].
//!
//! Per message: record the command if a direct producer sent it; lock it (the inbox: a final
//! status means done); lock the order's stream; apply any earlier accepted commands of the
//! order first (the broker may deliver out of order); apply this one; commit.
//! Per command, inside a savepoint: lock the order row, check the expected version, decide,
//! perform the side effects (stock in sorted SKU order, payment), append the event, write the
//! projection, the command's status and the outbox row. A rejection rolls the savepoint back and
//! records only the rejection.

use crate::error::ApplyError;
use crate::payment::{Charge, GatewayError, PaymentGateway};
use chrono::{SubsecRound, Utc};
use orderflow_shared::contract::CommandMessage;
use orderflow_shared::db::commands::{self, CommandRow, CommandStatus, NewCommand, Source};
use orderflow_shared::db::{clients, inventory, orders, outbox};
use orderflow_shared::domain::event::StockLine;
use orderflow_shared::domain::{
    Command, CommandId, Event, Order, Rejection, decide, order::evolve,
};
use orderflow_shared::partition::partition_of;
use serde_json::json;
use sqlx::{Acquire, PgConnection, PgPool};
use std::sync::Arc;

/// What became of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command reached this final status now.
    Finished(CommandStatus),
    /// The command had already been dealt with (a redelivery, or applied ahead of this message
    /// because a later command of its order arrived first).
    Duplicate,
    /// The message can never be applied; dead-letter it with this reason. It names no recorded
    /// command of its own (or the id belongs to another command), so no command is failed.
    Poison(String),
    /// The command failed earlier (for this reason); its message is dead-lettered again so the
    /// dead-letter queue surely holds it (a crash may have come between the two).
    AlreadyFailed(String),
}

/// Deliberate breakage, for proving that the race audit can fail. Only code can set it (the
/// audit's own tests): no flag or environment variable turns it on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sabotage {
    #[default]
    None,
    /// Ignore the inbox: a redelivered or duplicated command is applied again.
    SkipInbox,
}

/// Applies commands to PostgreSQL.
#[derive(Clone)]
pub struct Applier {
    pub db: PgPool,
    pub gateway: Arc<dyn PaymentGateway>,
    pub partitions: u16,
    pub sabotage: Sabotage,
}

impl Applier {
    /// Handles one message that arrived on `partition`. `Err` is a database failure: transient
    /// ones are retried by the caller, anything else fails the command (see [`ApplyError`]).
    pub async fn handle(&self, body: &[u8], partition: u16) -> Result<Outcome, ApplyError> {
        let message = match CommandMessage::parse(body) {
            Ok(message) => message,
            Err(e) => return Ok(Outcome::Poison(e.to_string())),
        };
        let expected_partition = partition_of(message.order_id, self.partitions);
        if expected_partition != partition {
            return Ok(Outcome::Poison(format!(
                "routed to partition {partition}, but order {} belongs to partition {expected_partition}",
                message.order_id
            )));
        }
        let mut tx = self.db.begin().await?;
        let row = match commands::lock(&mut tx, message.command_id).await? {
            Some(row) => {
                if !same_command(&row, &message) {
                    return Ok(Outcome::Poison(format!(
                        "command_id {} was already used for a different command",
                        row.id
                    )));
                }
                row
            }
            None => match record(&mut tx, &message, partition).await? {
                Ok(row) => row,
                Err(reason) => return Ok(Outcome::Poison(reason)),
            },
        };
        if self.sabotage == Sabotage::SkipInbox && row.status == CommandStatus::Applied {
            let status = self.apply_one(&mut tx, &row).await?;
            tx.commit().await?;
            return Ok(Outcome::Finished(status));
        }
        if row.status == CommandStatus::Failed {
            return Ok(Outcome::AlreadyFailed(row.reason.unwrap_or_default()));
        }
        if row.status.is_final() {
            return Ok(Outcome::Duplicate);
        }
        let processed = commands::lock_stream(&mut tx, row.order_id).await?;
        if row.seq <= processed {
            return Ok(Outcome::Duplicate);
        }
        for earlier in commands::lock_between(&mut tx, row.order_id, processed, row.seq).await? {
            if !earlier.status.is_final() {
                tracing::info!(
                    command_id = %earlier.id, order_id = %earlier.order_id, seq = earlier.seq,
                    "applying an earlier command of the order first (its message is late)"
                );
                self.apply_one(&mut tx, &earlier)
                    .await
                    .map_err(|e| e.blame(earlier.id))?;
            }
        }
        let status = self
            .apply_one(&mut tx, &row)
            .await
            .map_err(|e| e.blame(row.id))?;
        commands::set_processed(&mut tx, row.order_id, row.seq).await?;
        tx.commit().await?;
        Ok(Outcome::Finished(status))
    }

    /// Marks a command `failed` with `reason`, if it is still accepted — and, when `message` is
    /// given, only if the message is that command (a stranger's message must not fail it).
    pub async fn fail(
        &self,
        command_id: CommandId,
        reason: &str,
        message: Option<&CommandMessage>,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let Some(row) = commands::lock(&mut tx, command_id).await? else {
            return Ok(false);
        };
        if row.status.is_final() || message.is_some_and(|m| !same_command(&row, m)) {
            return Ok(false);
        }
        let processed = commands::lock_stream(&mut tx, row.order_id).await?;
        finish(
            &mut tx,
            &row,
            CommandStatus::Failed,
            Some(reason),
            None,
            None,
        )
        .await?;
        if processed == row.seq - 1 {
            commands::set_processed(&mut tx, row.order_id, row.seq).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Applies (or rejects) one command inside a savepoint of `tx`.
    async fn apply_one(
        &self,
        tx: &mut PgConnection,
        row: &CommandRow,
    ) -> Result<CommandStatus, ApplyError> {
        let command: Command =
            serde_json::from_value(row.body.clone()).map_err(|e| ApplyError::Broken {
                command_id: row.id,
                reason: format!("stored command does not parse: {e}"),
            })?;
        let mut savepoint = tx.begin().await?;
        let order = orders::lock(&mut savepoint, row.order_id).await?;
        let version = order.as_ref().map(|o| o.version);
        let decided = match decide(order.as_ref(), &command, row.expected_version) {
            Ok(event) => self
                .side_effects(&mut savepoint, order.as_ref(), &event, row)
                .await?
                .map(|()| event),
            Err(rejection) => Err(rejection),
        };
        let event = match decided {
            Ok(event) => event,
            Err(rejection) => {
                savepoint.rollback().await?;
                tracing::info!(command_id = %row.id, order_id = %row.order_id, reason = rejection.as_str(), "command rejected");
                finish(
                    tx,
                    row,
                    CommandStatus::Rejected,
                    Some(rejection.as_str()),
                    version,
                    None,
                )
                .await?;
                return Ok(CommandStatus::Rejected);
            }
        };
        // Microseconds: what timestamptz keeps, so a replay rebuilds the projection exactly.
        let at = Utc::now().trunc_subsecs(6);
        let order = evolve(order, row.order_id, row.client_id, &event, at);
        orders::append_event(
            &mut savepoint,
            row.order_id,
            order.version,
            row.id,
            &event,
            at,
        )
        .await?;
        orders::save(&mut savepoint, &order).await?;
        finish(
            &mut savepoint,
            row,
            CommandStatus::Applied,
            None,
            Some(order.version),
            Some(&event),
        )
        .await?;
        savepoint.commit().await?;
        tracing::debug!(command_id = %row.id, order_id = %row.order_id, version = order.version, "command applied");
        Ok(CommandStatus::Applied)
    }

    /// Stock and payment for an event. `Ok(Err(_))`: the command is rejected after all.
    async fn side_effects(
        &self,
        conn: &mut PgConnection,
        order: Option<&Order>,
        event: &Event,
        row: &CommandRow,
    ) -> Result<Result<(), Rejection>, ApplyError> {
        match event {
            Event::StockReserved { items } => {
                for line in sorted(items) {
                    if !inventory::reserve(conn, &line.sku, line.quantity.get()).await? {
                        return Ok(Err(Rejection::InsufficientStock));
                    }
                }
            }
            Event::PaymentCaptured {
                amount_cents,
                currency,
            } => {
                let charge = Charge {
                    command_id: row.id,
                    order_id: row.order_id,
                    amount_cents: *amount_cents,
                    currency: currency.as_str(),
                };
                match self.gateway.capture(conn, charge).await {
                    Ok(()) => {}
                    Err(GatewayError::Declined) => return Ok(Err(Rejection::PaymentDeclined)),
                    Err(GatewayError::Db(e)) => return Err(e.into()),
                }
            }
            Event::OrderShipped { items } => {
                for line in sorted(items) {
                    if !inventory::ship(conn, &line.sku, line.quantity.get()).await? {
                        return Err(ApplyError::Broken {
                            command_id: row.id,
                            reason: format!(
                                "sku {} has less reserved stock than this order reserved",
                                line.sku
                            ),
                        });
                    }
                }
            }
            Event::OrderCancelled {
                released,
                refunded_cents,
                ..
            } => {
                for line in sorted(released) {
                    if !inventory::release(conn, &line.sku, line.quantity.get()).await? {
                        return Err(ApplyError::Broken {
                            command_id: row.id,
                            reason: format!(
                                "sku {} has less reserved stock than this order reserved",
                                line.sku
                            ),
                        });
                    }
                }
                if *refunded_cents > 0 {
                    let currency = order.map(|o| o.currency.as_str()).unwrap_or_default();
                    let charge = Charge {
                        command_id: row.id,
                        order_id: row.order_id,
                        amount_cents: *refunded_cents,
                        currency,
                    };
                    match self.gateway.refund(conn, charge).await {
                        Ok(()) => {}
                        Err(GatewayError::Declined) => {
                            return Err(ApplyError::Broken {
                                command_id: row.id,
                                reason: "the gateway refused a refund".into(),
                            });
                        }
                        Err(GatewayError::Db(e)) => return Err(e.into()),
                    }
                }
            }
            Event::OrderCreated { .. }
            | Event::ItemAdded { .. }
            | Event::ItemRemoved { .. }
            | Event::OrderDelivered {} => {}
        }
        Ok(Ok(()))
    }
}

/// Stock lines in SKU order: the one global lock order that keeps concurrent reservations of
/// overlapping SKUs from deadlocking. (Events are built sorted; this keeps it true regardless.)
fn sorted(lines: &[StockLine]) -> Vec<&StockLine> {
    let mut lines: Vec<&StockLine> = lines.iter().collect();
    lines.sort_by(|a, b| a.sku.cmp(&b.sku));
    lines
}

/// Is this message the command recorded under its id (a redelivery), not a reuse of the id?
fn same_command(row: &CommandRow, message: &CommandMessage) -> bool {
    row.client_id == message.client_id
        && row.order_id == message.order_id
        && row.expected_version == message.expected_version
        && serde_json::to_value(&message.command).ok().as_ref() == Some(&row.body)
}

/// Records a direct producer's command, giving it the next seq of its order.
/// `Ok(Err(reason))`: the message is refused (unknown client, another client's order, …).
async fn record(
    tx: &mut PgConnection,
    message: &CommandMessage,
    partition: u16,
) -> Result<Result<CommandRow, String>, ApplyError> {
    if !clients::exists(&mut *tx, message.client_id).await? {
        return Ok(Err(format!("unknown client {}", message.client_id)));
    }
    let is_create = matches!(message.command, Command::Create { .. });
    let seq = if is_create
        && commands::open_stream(&mut *tx, message.order_id, message.client_id).await?
    {
        Some(1)
    } else {
        commands::next_seq(&mut *tx, message.order_id, message.client_id).await?
    };
    let Some(seq) = seq else {
        return Ok(Err(
            match commands::stream_owner(&mut *tx, message.order_id).await? {
                Some(_) => format!("order {} belongs to another client", message.order_id),
                None => format!("unknown order {}", message.order_id),
            },
        ));
    };
    let body = serde_json::to_value(&message.command).expect("commands serialize");
    let new = NewCommand {
        id: message.command_id,
        client_id: message.client_id,
        order_id: message.order_id,
        kind: message.command.kind(),
        body: &body,
        expected_version: message.expected_version,
        source: Source::Amqp,
        partition,
    };
    commands::insert(&mut *tx, &new, seq).await?;
    let row = commands::lock(tx, message.command_id)
        .await?
        .expect("the command was just inserted");
    Ok(Ok(row))
}

/// Records a command's final status and its status event for the outbox.
async fn finish(
    conn: &mut PgConnection,
    row: &CommandRow,
    status: CommandStatus,
    reason: Option<&str>,
    version: Option<i64>,
    event: Option<&Event>,
) -> Result<(), sqlx::Error> {
    commands::finish(conn, row.id, status, reason, version).await?;
    let payload = json!({
        "command_id": row.id,
        "order_id": row.order_id,
        "client_id": row.client_id,
        "seq": row.seq,
        "type": row.kind,
        "status": status,
        "reason": reason,
        "version": version,
        "event": event,
        "at": Utc::now(),
    });
    let routing_key = format!("command.{}.{}", status.as_str(), row.kind.as_str());
    outbox::push(conn, row.order_id, &routing_key, &payload).await
}
