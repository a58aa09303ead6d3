//! The audit's report: requests by outcome and status, commands by final status and reason, each
//! invariant's violations (with examples), the drain, the duration and the seed; with `--spawn`,
//! the faults injected and the recovery after each. Printed as a table and written as JSON.

use crate::check::Verdict;
use crate::drain::Drained;
use crate::faults::{Fault, FaultsReport};
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
    /// Scheduled faults (`audit --spawn --faults ...` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultsReport>,
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
            faults: None,
            passed,
        }
    }

    /// Adds the faults section; a failed one fails the report.
    pub fn with_faults(mut self, faults: FaultsReport) -> Self {
        self.passed = self.passed && faults.passed;
        self.faults = Some(faults);
        self
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
        let faults = self.faults.as_ref().map(faults_table).unwrap_or_default();
        let verdict = match (&self.faults, self.passed) {
            (None, true) => "PASS: every invariant held".to_owned(),
            (Some(_), true) => "PASS: every invariant held under every fault".to_owned(),
            (faults, false) => format!(
                "FAIL: {} violations, {} commands unfinished after the drain{}",
                self.invariants.iter().map(|v| v.violations).sum::<u64>(),
                self.drain.unfinished,
                if faults.as_ref().is_some_and(|f| !f.passed) {
                    "; faults not injected, not triggered or not recovered from"
                } else {
                    ""
                }
            ),
        };
        format!("{summary}\n{faults}{invariants}\n{verdict}")
    }
}

/// The faults section: per kind, then what went wrong, if anything.
fn faults_table(faults: &FaultsReport) -> String {
    let seconds = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.2} s"));
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "fault",
        "injected",
        "not triggered",
        "unrecovered",
        "recovery max",
        "recovery mean",
        "its partitions resumed (max)",
        "zombie commits refused",
        "redelivered / repeated work",
        "rebalanced (max)",
    ]);
    for s in &faults.summary {
        table.add_row(vec![
            Cell::new(s.fault.name()),
            Cell::new(s.injected),
            Cell::new(s.not_triggered),
            Cell::new(s.unrecovered),
            Cell::new(seconds(s.recovery_max)),
            Cell::new(seconds(s.recovery_mean)),
            Cell::new(seconds(s.resumed_max)),
            Cell::new(s.fenced.map_or("-".to_owned(), |n| n.to_string())),
            Cell::new(format!(
                "{} / {}",
                s.redelivered.map_or("-".to_owned(), |n| n.to_string()),
                s.repeated.map_or("-".to_owned(), |n| n.to_string())
            )),
            Cell::new(seconds(s.balanced_max)),
        ]);
    }
    let mut notes = vec![format!(
        "{} workers, a fault every {:.0} s; recovery: from the heal until a worker applied a command; its partitions resumed: for a fault aimed at one worker, from the injection until every partition whose lease it held had a command applied again (scale-out-in: each move, from the membership change, i.e. the new worker's join or the SIGTERM of its leave, until its next holder applied; the new process's start before it joins is not a move); redelivered: starts of redelivered commands from the injection until then, repeated work: those a holder of the fault's moves (or the one its first move replaced) had already finished or started (a graceful fault must have none); rebalanced: from a worker's join or leave until every worker held its share",
        faults.workers, faults.interval_seconds
    )];
    if let Some(slowest) = faults
        .injections
        .iter()
        .filter_map(|i| i.joined_after)
        .reduce(f64::max)
    {
        notes.push(format!(
            "scale-out-in: a new worker joined at most {slowest:.2} s after its spawn"
        ));
    }
    if !faults.never_injected.is_empty() {
        let names: Vec<&str> = faults.never_injected.iter().map(|f| f.name()).collect();
        notes.push(format!("never injected (run longer): {}", names.join(", ")));
    }
    if faults.refused_then_applied > 0 {
        notes.push(format!(
            "{} refused commands were applied later",
            faults.refused_then_applied
        ));
    }
    for i in &faults.injections {
        if i.fault.graceful() && i.repeated != Some(0) {
            notes.push(format!(
                "{} at {:.1} s: repeated work {}",
                i.fault.name(),
                i.at,
                i.repeated.map_or("not read".to_owned(), |n| n.to_string())
            ));
        }
        if i.fault == Fault::ScaleOutIn && i.balanced.is_none() {
            notes.push(format!(
                "{} at {:.1} s: the leases were not balanced within 20 s",
                i.fault.name(),
                i.at
            ));
        }
        if let Some(error) = &i.error {
            notes.push(format!("{} at {:.1} s: {error}", i.fault.name(), i.at));
        }
        if !i.unexpected_exits.is_empty() {
            notes.push(format!(
                "{} at {:.1} s: respawned {}",
                i.fault.name(),
                i.at,
                i.unexpected_exits.join(", ")
            ));
        }
    }
    format!("{table}\n{}\n", notes.join("\n"))
}
