//! orderflow's shared crate: what the API and the worker must agree on — the domain, the wire
//! contract, the partition function, configuration, and every SQL statement (in [`db`]).

pub mod amqp;
pub mod config;
pub mod contract;
pub mod db;
pub mod domain;
#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod partition;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
