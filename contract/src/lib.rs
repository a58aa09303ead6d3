//! orderflow's wire contract: what a producer publishes to the command exchange
//! ([`CommandMessage`], JSON Schema in `contract/command.schema.json`), where it goes
//! ([`partition::partition_of`]), the statuses a command moves through ([`CommandStatus`]), and
//! what a webhook endpoint may be and receive ([`webhooks`]).
//! It depends on the domain and on nothing that does IO.

mod message;
pub mod partition;
mod reason;
mod status;
mod status_event;
pub mod webhooks;

pub use message::*;
pub use reason::{FailureCode, Reason};
pub use status::{CommandStatus, IntakeRefusal};
pub use status_event::{STATUS_EVENT_VERSION, StatusEvent};
