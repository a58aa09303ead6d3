//! orderflow's HTTP API as a library, so tests run the real thing in-process.

pub mod admission;
pub mod cli;
pub mod confirms;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod gates;
pub mod intake;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod notifications;
pub mod openapi;
pub mod operators;
pub mod pagination;
pub mod partitions;
pub mod records;
pub mod routes;
pub mod serve;
pub mod startup;
pub mod state;
pub mod waiters;

pub use startup::{ApiConfig, Application};
