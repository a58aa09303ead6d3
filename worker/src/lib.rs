//! orderflow's worker as a library, so tests run the real thing in-process.

pub mod apply;
pub mod assignment;
pub mod command_relay;
pub mod consumer;
pub mod direct;
pub mod effects;
pub mod error;
pub mod leases;
pub mod metrics;
pub mod monitor;
pub mod outbox;
pub mod parked;
pub mod payment;
mod relay;
pub mod startup;
pub mod webhooks;

pub use startup::{Worker, WorkerConfig};
