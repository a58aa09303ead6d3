//! The audit's report: requests by outcome and status, commands by final status and reason, each
//! invariant's violations (with examples), the drain, the duration and the seed. Printed as a
//! table and written as JSON.

use crate::check::Verdict;
use crate::drain::Drained;
use crate::load::Snapshot;
use crate::record::Observations;
use comfy_table::{Cell, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub scenarios: Vec<&'static str>,
    pub duration_seconds: f64,
    /// "ok", "failed", "unknown" → count
    pub requests_by_outcome: BTreeMap<String, u64>,
    /// HTTP status → count ("none" for no answer)
    pub requests_by_status: BTreeMap<String, u64>,
    /// Commands the direct producer got confirmed (each possibly published more than once).
    pub direct_commands: usize,
    pub commands_by_status: BTreeMap<String, u64>,
    pub commands_by_reason: BTreeMap<String, u64>,
    pub orders: usize,
    pub drain: Drained,
    pub invariants: Vec<Verdict>,
    pub passed: bool,
}

impl Report {
    pub fn new(
        seed: u64,
        scenarios: Vec<&'static str>,
        duration_seconds: f64,
        observed: &Observations,
        snapshot: &Snapshot,
        drain: Drained,
        invariants: Vec<Verdict>,
    ) -> Self {
        let mut by_outcome = BTreeMap::new();
        let mut by_status = BTreeMap::new();
        for r in &observed.requests {
            let outcome = serde_json::to_value(r.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *by_outcome.entry(outcome).or_default() += 1;
            let status = r.status.map_or("none".into(), |s| s.to_string());
            *by_status.entry(status).or_default() += 1;
        }
        let mut by_command_status = BTreeMap::new();
        let mut by_reason = BTreeMap::new();
        for c in &snapshot.commands {
            *by_command_status.entry(c.status.clone()).or_default() += 1;
            if let Some(reason) = &c.reason {
                *by_reason.entry(reason.clone()).or_default() += 1;
            }
        }
        let passed = invariants.iter().all(Verdict::passed) && drain.unfinished == 0;
        Self {
            seed,
            scenarios,
            duration_seconds,
            requests_by_outcome: by_outcome,
            requests_by_status: by_status,
            direct_commands: observed.direct.len(),
            commands_by_status: by_command_status,
            commands_by_reason: by_reason,
            orders: snapshot.orders.len(),
            drain,
            invariants,
            passed,
        }
    }

    /// The terminal summary.
    pub fn table(&self) -> String {
        let join = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut summary = Table::new();
        summary.load_preset(UTF8_FULL_CONDENSED);
        summary.set_header(vec!["run", ""]);
        summary.add_row(vec!["seed".into(), self.seed.to_string()]);
        summary.add_row(vec!["scenarios".into(), self.scenarios.join(", ")]);
        summary.add_row(vec![
            "workload + drain".into(),
            format!(
                "{:.1} s + {:.1} s",
                self.duration_seconds, self.drain.seconds
            ),
        ]);
        summary.add_row(vec!["requests".into(), join(&self.requests_by_outcome)]);
        summary.add_row(vec!["HTTP statuses".into(), join(&self.requests_by_status)]);
        summary.add_row(vec![
            "direct commands".into(),
            self.direct_commands.to_string(),
        ]);
        summary.add_row(vec!["orders".into(), self.orders.to_string()]);
        summary.add_row(vec!["commands".into(), join(&self.commands_by_status)]);
        summary.add_row(vec!["reasons".into(), join(&self.commands_by_reason)]);

        let mut invariants = Table::new();
        invariants.load_preset(UTF8_FULL_CONDENSED);
        invariants.set_header(vec!["#", "invariant", "violations", "first example"]);
        for v in &self.invariants {
            invariants.add_row(vec![
                Cell::new(v.id),
                Cell::new(v.name),
                Cell::new(v.violations),
                Cell::new(v.examples.first().map(String::as_str).unwrap_or("")),
            ]);
        }
        let verdict = if self.passed {
            "PASS: every invariant held".to_owned()
        } else {
            format!(
                "FAIL: {} violations, {} commands unfinished after the drain",
                self.invariants.iter().map(|v| v.violations).sum::<u64>(),
                self.drain.unfinished
            )
        };
        format!("{summary}\n{invariants}\n{verdict}")
    }
}
