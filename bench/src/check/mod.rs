//! The checker: pure functions from what was observed (requests, direct commands, status events)
//! and what was loaded (rows) to each invariant's violations. No IO here, so every check is unit
//! tested with hand-made violating data: each check is known to be able to fail.

pub mod effects;
pub mod history;
pub mod http;
pub mod leases;
pub mod lifecycle;
pub mod stock;

use crate::events::StatusEvent;
use crate::load::Snapshot;
use crate::record::Observations;
use serde::Serialize;

/// Examples kept per invariant (the count is always complete).
const EXAMPLES: usize = 5;

/// One invariant's result.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub id: u8,
    pub name: &'static str,
    pub violations: u64,
    pub examples: Vec<String>,
}

impl Verdict {
    pub fn new(id: u8, name: &'static str) -> Self {
        Self {
            id,
            name,
            violations: 0,
            examples: Vec::new(),
        }
    }

    pub fn violation(&mut self, example: impl FnOnce() -> String) {
        self.violations += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(example());
        }
    }

    pub fn passed(&self) -> bool {
        self.violations == 0
    }
}

/// Everything the checks look at.
pub struct Input<'a> {
    pub snapshot: &'a Snapshot,
    pub observed: &'a Observations,
    /// Status events received from the events exchange during the run.
    pub events: &'a [StatusEvent],
}

/// Runs every check, in invariant order.
pub fn check_all(input: &Input<'_>) -> Vec<Verdict> {
    vec![
        lifecycle::no_command_lost(input),
        effects::nothing_applied_twice(input),
        stock::no_oversell(input),
        effects::one_capture_per_order(input),
        history::events_rebuild_projection(input),
        history::applied_in_order(input),
        http::idempotency_holds(input),
        lifecycle::outbox_drained(input),
        http::no_server_errors(input),
        leases::no_commit_under_a_stale_epoch(input),
    ]
}

#[cfg(test)]
pub(crate) mod fixtures;
