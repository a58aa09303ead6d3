//! The side effects of an event inside the apply transaction: stock moves (in sorted SKU order)
//! and payments. A side effect may still turn the command into a rejection (no stock, payment
//! declined) or reveal a broken invariant (the command fails).

use crate::error::ApplyError;
use crate::payment::{Charge, GatewayError, PaymentGateway};
use orderflow_contract::FailureCode;
use orderflow_domain::event::StockLine;
use orderflow_domain::{Event, Order, Rejection, Sku};
use orderflow_storage::commands::CommandRow;
use orderflow_storage::inventory;
use sqlx::PgConnection;

/// Whether [`perform`] may reject the command after it has written (stock reserved for some
/// SKUs before another ran out; a payment declined): the caller must be able to undo it.
pub fn may_reject(event: &Event) -> bool {
    matches!(
        event,
        Event::StockReserved { .. } | Event::PaymentCaptured { .. }
    )
}

/// Stock and payment for an event. `Ok(Err(_))`: the command is rejected after all.
pub async fn perform(
    gateway: &dyn PaymentGateway,
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
            match gateway.capture(conn, charge).await {
                Ok(()) => {}
                Err(GatewayError::Declined) => return Ok(Err(Rejection::PaymentDeclined)),
                Err(GatewayError::Db(e)) => return Err(e.into()),
            }
        }
        Event::OrderShipped { items, .. } => {
            for line in sorted(items) {
                if !inventory::ship(conn, &line.sku, line.quantity.get()).await? {
                    return Err(missing_reservation(row, &line.sku));
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
                    return Err(missing_reservation(row, &line.sku));
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
                match gateway.refund(conn, charge).await {
                    Ok(()) => {}
                    Err(GatewayError::Declined) => {
                        return Err(ApplyError::broken(
                            row.id,
                            FailureCode::RefundRefused,
                            "the gateway refused a refund",
                        ));
                    }
                    Err(GatewayError::Db(e)) => return Err(e.into()),
                }
            }
        }
        Event::OrderCreated { .. }
        | Event::ItemAdded { .. }
        | Event::ItemRemoved { .. }
        | Event::OrderDelivered {}
        | Event::DetailsChanged { .. } => {}
    }
    Ok(Ok(()))
}

fn missing_reservation(row: &CommandRow, sku: &Sku) -> ApplyError {
    ApplyError::broken(
        row.id,
        FailureCode::InvariantViolated,
        format!("sku {sku} has less reserved stock than this order reserved"),
    )
}

/// Stock lines in SKU order: the one global lock order that keeps concurrent reservations of
/// overlapping SKUs from deadlocking. (Events are built sorted; this keeps it true regardless.)
fn sorted(lines: &[StockLine]) -> Vec<&StockLine> {
    let mut lines: Vec<&StockLine> = lines.iter().collect();
    lines.sort_by(|a, b| a.sku.cmp(&b.sku));
    lines
}
