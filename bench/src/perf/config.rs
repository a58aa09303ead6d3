//! What one benchmark run is asked to do: which systems, which workloads, how long and how hard.
//! Built by the CLI (`perf/args.rs`) or directly by tests (`PerfConfig::smoke`), so the library
//! never parses arguments.

use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// A system under test. All three run against the same PostgreSQL server, each in a fresh
/// database of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// The worker's own apply transaction (`Applier::handle`) called in-process from N tasks:
    /// no HTTP, no broker. The ceiling the database allows.
    Raw,
    /// The baseline: a synchronous HTTP endpoint doing `BEGIN; SELECT … FOR UPDATE; check
    /// version; UPDATE; COMMIT` per request, built into the bench.
    Naive,
    /// The real `orderflow-api` and `orderflow-worker` binaries, spawned as child processes.
    Orderflow,
}

impl System {
    pub const ALL: [System; 3] = [System::Raw, System::Naive, System::Orderflow];

    pub fn name(self) -> &'static str {
        match self {
            System::Raw => "raw",
            System::Naive => "naive",
            System::Orderflow => "orderflow",
        }
    }

    /// How the report labels it (the baseline is said to be one).
    pub fn label(self) -> &'static str {
        match self {
            System::Raw => "raw ceiling",
            System::Naive => "naive sync (baseline)",
            System::Orderflow => "orderflow",
        }
    }
}

/// A workload. They run in this order: growth after the others, as it grows the tables for
/// good; the long-polls last, as they restart the API with limits of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Many orders, keys drawn uniformly: the maximum rate (closed loop), then latency at half
    /// of that rate (open loop).
    Uniform,
    /// One hot order under many concurrent clients while others keep working on cold orders:
    /// the cold orders' latency without, then with, the storm.
    Storm,
    /// Open loop at a multiple of the sustainable rate: every answer counted, nothing lost, and
    /// the time to drain.
    Burst,
    /// The maximum rate with the tables at their starting size, then again after growing them.
    Growth,
    /// Thousands of open `?wait=` long-polls (orderflow only): the API's memory, and how fast
    /// they all wake.
    LongPolls,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::Uniform,
        Workload::Storm,
        Workload::Burst,
        Workload::Growth,
        Workload::LongPolls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Uniform => "uniform",
            Workload::Storm => "storm",
            Workload::Burst => "burst",
            Workload::LongPolls => "long-polls",
            Workload::Growth => "growth",
        }
    }

    /// Why `system` cannot run this workload (`None`: it can).
    pub fn not_applicable(self, system: System) -> Option<&'static str> {
        match (self, system) {
            (Workload::LongPolls, System::Raw) => {
                Some("no HTTP and nothing to wait for: the caller holds the transaction")
            }
            (Workload::LongPolls, System::Naive) => {
                Some("synchronous: the answer is the outcome, there is nothing to long-poll")
            }
            _ => None,
        }
    }
}

/// Everything a benchmark run needs.
#[derive(Clone, Debug, Serialize)]
pub struct PerfConfig {
    /// A PostgreSQL URL on the server to use; each system gets a fresh database next to it.
    #[serde(skip)]
    pub database_url: String,
    #[serde(skip)]
    pub amqp_url: String,
    /// The `orderflow-api` and `orderflow-worker` executables.
    pub api_bin: PathBuf,
    pub worker_bin: PathBuf,
    pub systems: Vec<System>,
    pub workloads: Vec<Workload>,
    /// Length of each measured phase (a workload has one or two).
    pub duration: Duration,
    /// Client tasks of the closed-loop phases (and of the raw ceiling's transactions).
    pub concurrency: usize,
    /// Orders seeded before the run; the uniform and storm workloads draw from them.
    pub orders: usize,
    /// Clients on the hot order during the storm.
    pub storm_clients: usize,
    /// The storm's cold load (commands per second, open loop): the same for every system, so
    /// their cold-order latencies compare.
    pub storm_cold_rate: f64,
    /// Extra settings of orderflow's processes (`--orderflow-env`), for an A/B of one lever.
    pub orderflow_env: Vec<(String, String)>,
    /// Random extra wait, up to this, of a closed-loop client's 1 s back-off after a refusal.
    pub back_off_jitter: Duration,
    /// The burst's rate as a multiple of the sustainable rate, and its length.
    pub burst_factor: f64,
    pub burst_duration: Duration,
    /// Orders in the tables after the growth workload grew them.
    pub growth_to: usize,
    /// Long-polls held open at once.
    pub long_polls: usize,
    /// Rate assumed sustainable when the uniform workload did not run (commands per second).
    pub fallback_rate: f64,
    /// PostgreSQL connections of each system's pool (orderflow's API and worker each get this).
    pub pool_size: u32,
    pub partitions: u16,
    /// Worker processes of the orderflow system.
    pub workers: usize,
    pub seed: u64,
    /// Longest wait for the accepted commands of a phase to end.
    pub drain_timeout: Duration,
    /// Where the JSON and HTML reports, and the spawned processes' logs, are written.
    pub out_dir: PathBuf,
    /// Draw progress bars (off in tests).
    #[serde(skip)]
    pub progress: bool,
}

impl PerfConfig {
    /// The full-size defaults (what `orderflow-bench perf` runs without options).
    pub fn new(
        database_url: String,
        amqp_url: String,
        api_bin: PathBuf,
        worker_bin: PathBuf,
    ) -> Self {
        Self {
            database_url,
            amqp_url,
            api_bin,
            worker_bin,
            systems: System::ALL.to_vec(),
            workloads: Workload::ALL.to_vec(),
            duration: Duration::from_secs(20),
            concurrency: 64,
            orders: 10_000,
            storm_clients: 200,
            storm_cold_rate: 200.0,
            orderflow_env: Vec::new(),
            back_off_jitter: Duration::ZERO,
            burst_factor: 5.0,
            burst_duration: Duration::from_secs(10),
            growth_to: 1_000_000,
            long_polls: 5_000,
            fallback_rate: 500.0,
            pool_size: 16,
            partitions: 16,
            workers: 1,
            seed: 1,
            drain_timeout: Duration::from_secs(300),
            out_dir: PathBuf::from("perf-report"),
            progress: true,
        }
    }

    /// Everything, about a second per workload (half a second per phase): the CI smoke test
    /// and a quick look.
    pub fn smoke(mut self) -> Self {
        self.duration = Duration::from_millis(500);
        self.burst_duration = Duration::from_millis(500);
        self.concurrency = 16;
        self.storm_cold_rate = 20.0;
        self.orders = 500;
        self.growth_to = 5_000;
        self.long_polls = 500;
        self.drain_timeout = Duration::from_secs(60);
        self
    }

    /// The systems and workloads in running order, without repeats.
    pub fn normalize(&mut self) {
        self.systems.sort();
        self.systems.dedup();
        self.workloads.sort();
        self.workloads.dedup();
    }
}
