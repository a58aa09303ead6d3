//! What every orderflow process needs to run, whatever it does: its shared configuration,
//! logs, metrics and traces, the shutdown signal, and (for the race audit's builds) failpoints.

pub mod config;
#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;
