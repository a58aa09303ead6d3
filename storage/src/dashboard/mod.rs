//! What the operators' dashboard reads, across clients: the order list, one order's command
//! journeys and events, the partitions' backlog and owners, the dead letters and their redrives,
//! and a few cluster-wide counters. Read-only except for a redrive or an acknowledgement of a
//! dead letter and their audit records.

mod dead_letters;
mod gauges;
mod orders;
mod partitions;

pub use dead_letters::*;
pub use gauges::*;
pub use orders::*;
pub use partitions::*;
