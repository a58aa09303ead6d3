//! The benchmark's report: one [`PhaseResult`] per measured phase of every system × workload,
//! the pairs that do not apply (and why), the targets checked against the figures, and the
//! machine it ran on. Written as JSON (everything) and HTML (tables and plots), and printed as a
//! terminal summary.

pub mod html;
pub mod plots;
pub mod table;

use super::config::{PerfConfig, System, Workload};
use super::observe::Cost;
use super::stats::{Bin, Latency};
use super::targets::TargetCheck;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One measured phase.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseResult {
    pub system: System,
    pub workload: Workload,
    /// Which part of the workload (`max`, `half-rate`, `no-storm`, `storm`, …).
    pub phase: String,
    /// The phase's window: rates are per second of it.
    pub seconds: f64,
    /// When the last answer came, from the start (an open loop waits for what it sent).
    pub last_answer_seconds: f64,
    /// Open loop: the rate commands were due at. Closed loop: none.
    pub offered_per_s: Option<f64>,
    /// Closed-loop clients (open loop: 0).
    pub clients: usize,
    /// Every call made, whatever its answer.
    pub requests: u64,
    /// Answers by status (HTTP code, or the raw ceiling's outcome).
    pub statuses: BTreeMap<String, u64>,
    /// 429 and 503 answers that carried `Retry-After`.
    pub with_retry_after: u64,
    /// Answers that were neither an acceptance nor a 429/503 with `Retry-After` (timeouts,
    /// connection errors, 5xx without it…); the generator's own "not sent" is not counted.
    pub unexpected_answers: u64,
    pub accepted_per_s: f64,
    /// Commands that ended inside the phase's window, per second.
    pub applied_per_s: f64,
    /// Latency of the accepting answer (orderflow's 202; naive's 200, which is the outcome; the
    /// raw ceiling's whole transaction).
    pub answer_latency: Latency,
    /// Accepted → applied (or rejected): orderflow from `accepted_at` to the commit's NOTIFY;
    /// naive from the request's arrival to the end of its transaction; raw, the call.
    pub accept_to_applied: Latency,
    /// The storm's cold and hot orders, separately.
    pub cold: Option<Latency>,
    pub hot: Option<Latency>,
    /// Commands by final status, after the drain.
    pub finished: BTreeMap<String, u64>,
    /// Accepted commands that had not ended when the drain gave up (should be 0: "lost").
    pub unfinished: u64,
    /// From the end of the phase until every accepted command had ended.
    pub drain_seconds: f64,
    /// orderflow: the accept→applied time split into its stages (see `perf::stages`).
    pub stages: BTreeMap<String, Latency>,
    pub cost: Cost,
    pub series: Vec<Bin>,
    pub answer_curve: Vec<(f64, f64)>,
    pub applied_curve: Vec<(f64, f64)>,
    /// PostgreSQL's counters for the system's database over the phase and its drain
    /// (`pg_stat_database`; flushed by backends with up to a few seconds' lag).
    pub db_counters: BTreeMap<String, i64>,
    /// Rows written per table over the phase and its drain (`pg_stat_user_tables`).
    pub table_writes: BTreeMap<String, super::dbstats::RowWrites>,
    /// What the database's busy backends waited on during the load, in backend-samples (one
    /// sample of `pg_stat_activity` every 100 ms; `(samples)` counts them).
    pub db_waits: BTreeMap<String, u64>,
    /// The long-polls workload's own figures.
    pub long_polls: Option<LongPollFigures>,
    pub notes: Vec<String>,
}

/// Many long-polls held open, then woken at once.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LongPollFigures {
    pub requested: u64,
    /// Polls still waiting when their commands were ended (the others answered early: refused
    /// or failed, see `answers`).
    pub open_at_release: u64,
    /// Polls whose answer named a final status.
    pub woken_final: u64,
    /// Every poll's answer, by status.
    pub answers: BTreeMap<String, u64>,
    /// From the moment their commands were ended to each poll's answer.
    pub wake: Latency,
    pub api_rss_before_mb: f64,
    pub api_rss_max_mb: f64,
}

/// A system × workload pair that was not run.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub system: System,
    pub workload: Workload,
    pub reason: String,
}

/// Facts about the machine, for reading the figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu: String,
    pub kernel: String,
    pub postgres: String,
    /// [`orderflow_storage::admin::benchmark_settings`] of the server the run used.
    pub postgres_settings: String,
    pub open_files_limit: u64,
    pub build: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct PerfReport {
    pub run_id: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub seconds: f64,
    pub command_line: String,
    pub machine: Machine,
    pub config: PerfConfig,
    pub phases: Vec<PhaseResult>,
    pub skipped: Vec<Skipped>,
    pub targets: Vec<TargetCheck>,
}

impl PhaseResult {
    /// Commands that reached a final status in the phase or its drain.
    pub fn commands_ended(&self) -> u64 {
        self.finished
            .iter()
            .filter(|(status, _)| status.as_str() != "accepted")
            .map(|(_, n)| n)
            .sum()
    }

    /// A `pg_stat_database` counter per ended command (`None`: nothing ended or not read).
    pub fn per_command(&self, counter: &str) -> Option<f64> {
        let commands = self.commands_ended();
        let value = self.db_counters.get(counter)?;
        (commands > 0).then(|| *value as f64 / commands as f64)
    }

    /// Rows written (inserted, updated, deleted) per ended command, all tables together.
    pub fn rows_written_per_command(&self) -> Option<f64> {
        let commands = self.commands_ended();
        let rows: i64 = self.table_writes.values().map(|w| w.total()).sum();
        (commands > 0 && !self.table_writes.is_empty()).then(|| rows as f64 / commands as f64)
    }

    /// CPU seconds per 1,000 commands applied inside the window, per process (the CPU is read
    /// over the window only, so it is divided by the window's commands, not the drain's).
    pub fn cpu_per_thousand(&self) -> BTreeMap<String, f64> {
        let commands = self.applied_per_s * self.seconds;
        if commands < 1.0 {
            return BTreeMap::new();
        }
        self.cost
            .cpu_seconds
            .iter()
            .map(|(name, s)| (name.clone(), s * 1000.0 / commands))
            .collect()
    }
}

impl PerfReport {
    /// The phases of one system and workload.
    pub fn phases_of(
        &self,
        system: System,
        workload: Workload,
    ) -> impl Iterator<Item = &PhaseResult> {
        self.phases
            .iter()
            .filter(move |p| p.system == system && p.workload == workload)
    }

    /// Every phase of one workload, all systems, in run order.
    pub fn workload_phases(&self, workload: Workload) -> Vec<&PhaseResult> {
        self.phases
            .iter()
            .filter(|p| p.workload == workload)
            .collect()
    }

    pub fn phase(&self, system: System, workload: Workload, phase: &str) -> Option<&PhaseResult> {
        self.phases_of(system, workload).find(|p| p.phase == phase)
    }

    /// Writes `report.json`, `report.html` and each plot as an SVG file under `plots/` into
    /// `dir`; returns the paths of the first two.
    pub fn write(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir.join("plots"))?;
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)?;
        let html = dir.join("report.html");
        std::fs::write(&html, html::render(self))?;
        for workload in Workload::ALL {
            let phases = self.workload_phases(workload);
            if phases.is_empty() {
                continue;
            }
            for (name, svg) in html::workload_plots(workload, &phases) {
                // A plot that could not be drawn is a note in the page, not a file.
                if svg.starts_with("<svg") {
                    std::fs::write(dir.join("plots").join(name), svg)?;
                }
            }
        }
        Ok((json, html))
    }
}

impl Machine {
    pub async fn read(db: &sqlx::PgPool) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let kb: f64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
                Some((kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
            })
            .unwrap_or(0.0);
        let postgres = orderflow_storage::admin::server_version(db)
            .await
            .unwrap_or_default();
        let postgres_settings = orderflow_storage::admin::benchmark_settings(db)
            .await
            .unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib,
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            postgres,
            postgres_settings,
            open_files_limit: super::observe::open_files_limit(),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }
}
