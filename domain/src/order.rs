//! The order state machine, event-sourced: [`decide`] turns (state, command) into one event or a
//! typed rejection; [`evolve`] folds an event into the state. Both are pure.
//!
//! ```text
//! pending ─reserve→ reserved ─pay→ paid ─ship→ shipped ─deliver→ delivered
//!    └──────────────┴───────────────┴─cancel→ cancelled
//! ```

use super::command::Command;
use super::details::{self, DetailField, OrderDetails};
use super::event::{Event, StockLine};
use super::ids::{ClientId, OrderId};
use super::values::{Currency, CustomerId, Item, Quantity, TrackingNumber, limits};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Reserved,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::Pending,
        OrderStatus::Reserved,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for OrderStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown order status {s:?}"))
    }
}

/// Why a command was rejected. Machine-readable; the `reason` of a rejected command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    #[error("the order's version is not the version the command expected")]
    VersionConflict,
    #[error("not enough stock to reserve every item")]
    InsufficientStock,
    #[error("the order's status does not allow this command")]
    InvalidTransition,
    #[error("the payment gateway declined the charge")]
    PaymentDeclined,
    #[error("the order does not exist (its create command was not applied)")]
    OrderNotFound,
    #[error("an order with this id already exists")]
    OrderExists,
    #[error("the order has no line with this sku")]
    ItemNotFound,
    #[error("the sku is already on the order at a different unit price")]
    PriceMismatch,
    #[error("an order without items cannot be reserved")]
    EmptyOrder,
    #[error("the order would exceed its limit of lines or the quantity limit of a line")]
    LimitExceeded,
    #[error(
        "the shipping address would not be whole: it needs a name, lines, a city, a postal code and a country"
    )]
    IncompleteAddress,
}

impl Rejection {
    pub const ALL: [Rejection; 11] = [
        Rejection::VersionConflict,
        Rejection::InsufficientStock,
        Rejection::InvalidTransition,
        Rejection::PaymentDeclined,
        Rejection::OrderNotFound,
        Rejection::OrderExists,
        Rejection::ItemNotFound,
        Rejection::PriceMismatch,
        Rejection::EmptyOrder,
        Rejection::LimitExceeded,
        Rejection::IncompleteAddress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::VersionConflict => "version_conflict",
            Rejection::InsufficientStock => "insufficient_stock",
            Rejection::InvalidTransition => "invalid_transition",
            Rejection::PaymentDeclined => "payment_declined",
            Rejection::OrderNotFound => "order_not_found",
            Rejection::OrderExists => "order_exists",
            Rejection::ItemNotFound => "item_not_found",
            Rejection::PriceMismatch => "price_mismatch",
            Rejection::EmptyOrder => "empty_order",
            Rejection::LimitExceeded => "limit_exceeded",
            Rejection::IncompleteAddress => "incomplete_address",
        }
    }
}

/// The projection of one order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub client_id: ClientId,
    pub customer_id: CustomerId,
    pub currency: Currency,
    pub status: OrderStatus,
    /// Equals the seq of the last event.
    pub version: i64,
    pub items: Vec<Item>,
    pub total_cents: i64,
    /// What people edit: shipping address, contact, note.
    pub details: OrderDetails,
    /// The carrier's tracking number, once the order shipped with one.
    pub tracking_number: Option<TrackingNumber>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Order {
    fn line(&self, sku: &super::values::Sku) -> Option<&Item> {
        self.items.iter().find(|i| &i.sku == sku)
    }

    /// The order's lines as stock movements, sorted by SKU (the global lock order).
    pub fn stock_lines(&self) -> Vec<StockLine> {
        let mut lines: Vec<StockLine> = self
            .items
            .iter()
            .map(|i| StockLine {
                sku: i.sku.clone(),
                quantity: i.quantity,
            })
            .collect();
        lines.sort_by(|a, b| a.sku.cmp(&b.sku));
        lines
    }
}

/// What a command that is not rejected does. (Returned once per command and taken apart at
/// once: boxing the event would add an allocation for nothing.)
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Decided {
    /// It appends this event (and the order's version moves on by one).
    Event(Event),
    /// It asks for what the order already is (a shipping address it already has): applied,
    /// with no event, and the version stays where it is.
    Unchanged,
}

impl Decided {
    /// The event, if it appends one.
    pub fn event(self) -> Option<Event> {
        match self {
            Decided::Event(event) => Some(event),
            Decided::Unchanged => None,
        }
    }
}

/// Decides what a command does to an order (`None`: no order yet). The caller performs the
/// event's side effects (stock, payment), which may still reject it (`insufficient_stock`,
/// `payment_declined`).
pub fn decide(
    order: Option<&Order>,
    command: &Command,
    expected_version: Option<i64>,
) -> Result<Decided, Rejection> {
    let version = order.map_or(0, |o| o.version);
    if expected_version.is_some_and(|expected| expected != version) {
        return Err(Rejection::VersionConflict);
    }
    let order = match (order, command) {
        (
            None,
            Command::Create {
                customer_id,
                currency,
                items,
            },
        ) => {
            return Ok(Decided::Event(Event::OrderCreated {
                customer_id: customer_id.clone(),
                currency: currency.clone(),
                items: items.as_slice().to_vec(),
            }));
        }
        (Some(_), Command::Create { .. }) => return Err(Rejection::OrderExists),
        (None, _) => return Err(Rejection::OrderNotFound),
        (Some(order), _) => order,
    };
    // The same address again changes nothing, whatever the order's status: what the command
    // asks for is already so.
    if let Command::SetShippingAddress { address } = command
        && order.details.shipping_address.as_ref() == Some(address)
    {
        return Ok(Decided::Unchanged);
    }
    evolution(order, command).map(Decided::Event)
}

/// The event a command appends to an existing order whose version it matched.
fn evolution(order: &Order, command: &Command) -> Result<Event, Rejection> {
    use OrderStatus::*;
    match (order.status, command) {
        (
            Pending,
            Command::AddItem {
                sku,
                quantity,
                unit_price_cents,
            },
        ) => {
            match order.line(sku) {
                Some(line) if line.unit_price_cents != *unit_price_cents => {
                    return Err(Rejection::PriceMismatch);
                }
                Some(line) => {
                    Quantity::try_from(line.quantity.get() + quantity.get())
                        .map_err(|_| Rejection::LimitExceeded)?;
                }
                None if order.items.len() >= limits::ITEMS_MAX => {
                    return Err(Rejection::LimitExceeded);
                }
                None => {}
            }
            Ok(Event::ItemAdded {
                sku: sku.clone(),
                quantity: *quantity,
                unit_price_cents: *unit_price_cents,
            })
        }
        (Pending, Command::RemoveItem { sku, quantity }) => {
            let line = order.line(sku).ok_or(Rejection::ItemNotFound)?;
            let quantity = quantity.unwrap_or(line.quantity);
            if quantity > line.quantity {
                return Err(Rejection::LimitExceeded);
            }
            Ok(Event::ItemRemoved {
                sku: sku.clone(),
                quantity,
            })
        }
        (Pending, Command::Reserve {}) if order.items.is_empty() => Err(Rejection::EmptyOrder),
        (Pending, Command::Reserve {}) => Ok(Event::StockReserved {
            items: order.stock_lines(),
        }),
        (Reserved, Command::Pay {}) => Ok(Event::PaymentCaptured {
            amount_cents: order.total_cents,
            currency: order.currency.clone(),
        }),
        (Paid, Command::Ship { tracking_number }) => Ok(Event::OrderShipped {
            items: order.stock_lines(),
            tracking_number: tracking_number.clone(),
        }),
        (Shipped, Command::Deliver {}) => Ok(Event::OrderDelivered {}),
        // The address may change until the order ships; the contact and the note until it is
        // delivered or cancelled.
        (Pending | Reserved | Paid, Command::UpdateDetails { details: patch })
        | (Shipped, Command::UpdateDetails { details: patch }) => {
            if order.status == Shipped && patch.touches_address() {
                return Err(Rejection::InvalidTransition);
            }
            let (details, changed) = details::merge(&order.details, patch)
                .map_err(|details::IncompleteAddress| Rejection::IncompleteAddress)?;
            Ok(Event::DetailsChanged { details, changed })
        }
        (Pending | Reserved | Paid, Command::SetShippingAddress { address }) => {
            Ok(Event::DetailsChanged {
                details: OrderDetails {
                    shipping_address: Some(address.clone()),
                    ..order.details.clone()
                },
                changed: vec![DetailField::ShippingAddress],
            })
        }
        (Pending | Reserved | Paid, Command::Cancel { reason }) => Ok(Event::OrderCancelled {
            released: if order.status == Pending {
                Vec::new()
            } else {
                order.stock_lines()
            },
            refunded_cents: if order.status == Paid {
                order.total_cents
            } else {
                0
            },
            reason: reason.clone(),
        }),
        _ => Err(Rejection::InvalidTransition),
    }
}

/// Folds one event into the state. `at` is when the event was recorded.
///
/// # Panics
/// On an event that cannot follow the state (e.g. `item_added` before `order_created`): the events
/// table is written only through [`decide`], so this is a corrupted history, not an input error.
pub fn evolve(
    order: Option<Order>,
    id: OrderId,
    client_id: ClientId,
    event: &Event,
    at: DateTime<Utc>,
) -> Order {
    let mut order = match (order, event) {
        (
            None,
            Event::OrderCreated {
                customer_id,
                currency,
                items,
            },
        ) => {
            return Order {
                id,
                client_id,
                customer_id: customer_id.clone(),
                currency: currency.clone(),
                status: OrderStatus::Pending,
                version: 1,
                total_cents: items.iter().map(Item::line_total_cents).sum(),
                items: items.clone(),
                details: OrderDetails::default(),
                tracking_number: None,
                created_at: at,
                updated_at: at,
            };
        }
        (Some(order), _) => order,
        (None, event) => panic!("order {id}: {} without order_created", event.name()),
    };
    match event {
        Event::OrderCreated { .. } => panic!("order {id}: order_created twice"),
        Event::ItemAdded {
            sku,
            quantity,
            unit_price_cents,
        } => match order.items.iter_mut().find(|i| &i.sku == sku) {
            Some(line) => {
                line.quantity = Quantity::try_from(line.quantity.get() + quantity.get())
                    .expect("decide checked the quantity limit");
            }
            None => order.items.push(Item {
                sku: sku.clone(),
                quantity: *quantity,
                unit_price_cents: *unit_price_cents,
            }),
        },
        Event::ItemRemoved { sku, quantity } => {
            let line = order
                .items
                .iter_mut()
                .find(|i| &i.sku == sku)
                .expect("decide checked the line exists");
            match Quantity::try_from(line.quantity.get() - quantity.get()) {
                Ok(left) => line.quantity = left,
                Err(_) => order.items.retain(|i| &i.sku != sku),
            }
        }
        Event::StockReserved { .. } => order.status = OrderStatus::Reserved,
        Event::PaymentCaptured { .. } => order.status = OrderStatus::Paid,
        Event::OrderShipped {
            tracking_number, ..
        } => {
            order.status = OrderStatus::Shipped;
            order.tracking_number = tracking_number.clone();
        }
        Event::OrderDelivered {} => order.status = OrderStatus::Delivered,
        Event::OrderCancelled { .. } => order.status = OrderStatus::Cancelled,
        Event::DetailsChanged { details, .. } => order.details = details.clone(),
    }
    order.total_cents = order.items.iter().map(Item::line_total_cents).sum();
    order.version += 1;
    order.updated_at = at;
    order
}

#[cfg(test)]
mod tests;
