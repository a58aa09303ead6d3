//! The pure domain: ids, validated values, commands, events and the order state machine.
//! Nothing here does IO; the worker feeds it rows and writes back what it decides.

pub mod command;
pub mod details;
pub mod event;
pub mod ids;
pub mod order;
#[cfg(feature = "openapi")]
mod schema;
pub mod values;

pub use command::{Command, CommandKind};
pub use event::Event;
pub use ids::{ClientId, CommandId, OrderId};
pub use order::{Decided, Order, OrderStatus, Rejection, decide};
pub use values::{Currency, CustomerId, Item, Items, Quantity, Sku, TrackingNumber, UnitPrice};
