//! Events: what happened to an order. Appended to `order_events` with a gapless `seq`; folding them
//! with [`super::order::evolve`] rebuilds the `orders` projection exactly.

use super::details::{DetailField, OrderDetails};
use super::values::{Currency, CustomerId, Item, Note, Quantity, Sku, TrackingNumber, UnitPrice};
use serde::{Deserialize, Serialize};

/// A quantity of one SKU moving between stock buckets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StockLine {
    pub sku: Sku,
    pub quantity: Quantity,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    OrderCreated {
        customer_id: CustomerId,
        currency: Currency,
        items: Vec<Item>,
    },
    ItemAdded {
        sku: Sku,
        quantity: Quantity,
        unit_price_cents: UnitPrice,
    },
    ItemRemoved {
        sku: Sku,
        quantity: Quantity,
    },
    /// `items` is sorted by SKU: the order in which the worker locks inventory rows.
    StockReserved {
        items: Vec<StockLine>,
    },
    PaymentCaptured {
        amount_cents: i64,
        currency: Currency,
    },
    /// The reserved stock leaves the warehouse, with the carrier's tracking number if one was
    /// given.
    OrderShipped {
        items: Vec<StockLine>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tracking_number: Option<TrackingNumber>,
    },
    OrderDelivered {},
    /// Reserved stock (if any) goes back to `available`; a capture (if any) is refunded in full.
    OrderCancelled {
        released: Vec<StockLine>,
        refunded_cents: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<Note>,
    },
    /// The order's details after the change (all of them), and which fields it changed.
    DetailsChanged {
        details: OrderDetails,
        changed: Vec<DetailField>,
    },
}

impl Event {
    /// The spelling stored in `order_events.type` and used in routing keys.
    pub fn name(&self) -> &'static str {
        match self {
            Event::OrderCreated { .. } => "order_created",
            Event::ItemAdded { .. } => "item_added",
            Event::ItemRemoved { .. } => "item_removed",
            Event::StockReserved { .. } => "stock_reserved",
            Event::PaymentCaptured { .. } => "payment_captured",
            Event::OrderShipped { .. } => "order_shipped",
            Event::OrderDelivered {} => "order_delivered",
            Event::OrderCancelled { .. } => "order_cancelled",
            Event::DetailsChanged { .. } => "details_changed",
        }
    }
}
