//! The command line: `orderflow-bench audit`, its options (each also an environment variable
//! where the services use the same name), turned into an [`AuditConfig`]; and `orderflow-bench
//! perf`, whose options live with the benchmark (`perf::args`). `audit --spawn` also makes the
//! [`SpawnOptions`] (the stack to spawn, the faults to inject).

use crate::config::{AuditConfig, Scenario};
use crate::faults::{Fault, Plan};
use crate::spawn::SpawnOptions;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "orderflow-bench",
    version,
    about = "orderflow's race auditor and performance benchmark"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run an adversarial workload against a running stack, drain it, then check every
    /// invariant; exits non-zero if any is broken.
    ///
    /// With --spawn it spawns the stack itself (fresh database and namespace) and can inject
    /// scheduled faults (--faults). The failpoint faults need executables built with
    /// failpoints, into their own target directory (the feature changes the binaries):
    ///
    ///   cargo build -p orderflow-api -p orderflow-worker --features failpoints --target-dir target/failpoints
    ///
    ///   flock -o /tmp/orderflow-services.lock orderflow-bench audit --spawn --faults all --duration 150
    ///
    /// The broker and PostgreSQL faults restart the local services (rabbitmqctl, pg_ctlcluster):
    /// run it where nothing else uses them, or under the services lock as above.
    #[command(verbatim_doc_comment)]
    Audit(AuditArgs),
    /// Benchmark orderflow side by side with the raw database ceiling and a naive synchronous
    /// design; writes a JSON and an HTML report and prints a summary with the targets.
    Perf(crate::perf::args::PerfArgs),
}

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// Base URL of the API.
    #[arg(long, env = "ORDERFLOW_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin API key: it sets the run's stock (PUT /v1/inventory) and owns the run's orders.
    #[arg(
        long,
        env = "ORDERFLOW_API_KEY",
        hide_env_values = true,
        required_unless_present = "spawn"
    )]
    pub api_key: Option<String>,
    /// PostgreSQL URL, read by the checker (and to find the key's client for direct publishing).
    /// With --spawn: the server on which the run's fresh database is created.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// RabbitMQ URL: the direct producer publishes here and the checker listens to the events.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// Prefix of every exchange and queue of the audited stack.
    #[arg(long, env = "ORDERFLOW_NAMESPACE", default_value = "orderflow")]
    pub namespace: String,
    /// Number of partition queues of the audited stack (routing of direct commands).
    #[arg(long, env = "ORDERFLOW_PARTITIONS", default_value_t = 16)]
    pub partitions: u16,
    /// Seconds the workload runs (the drain and the checks come after).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Concurrent client tasks, shared among the scenarios.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Orders of the hot-orders scenario (the others create orders as they go).
    #[arg(long, default_value_t = 32)]
    pub orders: usize,
    /// SKUs created for this run (named after the run, so no other traffic moves their stock).
    #[arg(long, default_value_t = 12)]
    pub skus: usize,
    /// Stock set per SKU: keep it small so that orders race for it.
    #[arg(long, default_value_t = 40)]
    pub stock: i64,
    /// Fraction (0 to 1) of hot-orders traffic sent to a few hot orders.
    #[arg(long, default_value_t = 0.8)]
    pub hot_skew: f64,
    /// Scenarios to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Scenario::ALL.to_vec())]
    pub scenarios: Vec<Scenario>,
    /// Seed of every random choice: a run is reproducible from it (up to timing).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds to wait for every accepted command to end and the outbox to drain.
    #[arg(long, default_value_t = 120)]
    pub drain_timeout: u64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "audit-report.json")]
    pub report: PathBuf,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Spawn the stack (the orderflow-api and orderflow-worker executables) on a fresh database
    /// and namespace instead of auditing a running one; --url, --api-key and --namespace are
    /// then ignored.
    #[arg(long)]
    pub spawn: bool,
    /// With --spawn: the orderflow-api executable [default: target/failpoints/debug/orderflow-api].
    #[arg(long, requires = "spawn")]
    pub api_bin: Option<PathBuf>,
    /// With --spawn: the orderflow-worker executable [default: target/failpoints/debug/orderflow-worker].
    #[arg(long, requires = "spawn")]
    pub worker_bin: Option<PathBuf>,
    /// With --spawn: worker processes (at least 2, so that a standby takes over).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// With --spawn: faults injected in turn while the workload runs, comma-separated, or `all`
    /// (default: none). Each is healed and the time to recover is reported.
    #[arg(long, value_enum, value_delimiter = ',', requires = "spawn")]
    pub faults: Vec<Fault>,
    /// Seconds of clean running before each fault.
    #[arg(long, default_value_t = 3)]
    pub fault_interval: u64,
    /// Seconds a stopped worker stays stopped (stop-worker); at least 12, past the heartbeat
    /// timeout of the spawned processes, so that its partitions move on.
    #[arg(long, default_value_t = 12)]
    pub stop_pause: u64,
    /// With --spawn: the partition queues' max length (small, so that queue-full fills one).
    #[arg(long, default_value_t = 256)]
    pub queue_max_length: i64,
    /// With --spawn: where the processes' logs go (one directory per run).
    #[arg(long, default_value = "audit-logs")]
    pub log_dir: PathBuf,
    /// With --spawn: where broker-node-kill and pg-promote find `rabbit-cluster.sh` and
    /// `pg-ha.sh` (their rigs up, and --amqp-url / --database-url naming their nodes).
    #[arg(long, default_value = "deploy/lib")]
    pub rig_dir: PathBuf,
    /// With --spawn: a setting for the spawned API and workers, `NAME=VALUE` (repeatable), to
    /// audit a lever (e.g. `--orderflow-env ORDERFLOW_PREFETCH=8`). As with `perf`, they inherit
    /// no `ORDERFLOW_*` variable of the bench's own environment.
    #[arg(long = "orderflow-env", value_name = "NAME=VALUE", value_parser = crate::perf::args::setting, requires = "spawn")]
    pub orderflow_env: Vec<(String, String)>,
}

impl AuditArgs {
    /// What `--spawn` needs (`None` without it).
    pub fn spawn_options(&self) -> anyhow::Result<Option<SpawnOptions>> {
        if !self.spawn {
            return Ok(None);
        }
        anyhow::ensure!(self.workers >= 2, "--workers must be at least 2");
        anyhow::ensure!(
            self.queue_max_length >= 1,
            "--queue-max-length must be at least 1"
        );
        let stop_pause = Duration::from_secs(self.stop_pause);
        anyhow::ensure!(
            stop_pause >= crate::spawn::min_stop_pause(),
            "--stop-pause must be at least {:?}",
            crate::spawn::min_stop_pause()
        );
        // Beside this executable's target directory: target/failpoints/debug.
        let failpoints_build = |name: &str| -> anyhow::Result<PathBuf> {
            let here = std::env::current_exe()?;
            let target = here.parent().and_then(|p| p.parent());
            Ok(target.map_or_else(
                || PathBuf::from(name),
                |t| t.join("failpoints").join("debug").join(name),
            ))
        };
        Ok(Some(SpawnOptions {
            api_bin: match &self.api_bin {
                Some(path) => path.clone(),
                None => failpoints_build("orderflow-api")?,
            },
            worker_bin: match &self.worker_bin {
                Some(path) => path.clone(),
                None => failpoints_build("orderflow-worker")?,
            },
            workers: self.workers,
            queue_max_length: self.queue_max_length,
            env: self.orderflow_env.clone(),
            log_dir: self.log_dir.clone(),
            plan: Plan {
                faults: Fault::expand(&self.faults),
                interval: Duration::from_secs(self.fault_interval),
                stop_pause,
                fill_timeout: Duration::from_secs(8),
                duration: Duration::from_secs(self.duration),
                rigs: self.rig_dir.clone(),
            },
        }))
    }

    pub fn into_config(self) -> anyhow::Result<AuditConfig> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.hot_skew),
            "--hot-skew must be between 0 and 1"
        );
        anyhow::ensure!(self.partitions > 0, "--partitions must be at least 1");
        anyhow::ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        anyhow::ensure!(self.skus >= 2, "--skus must be at least 2");
        anyhow::ensure!(self.orders >= 1, "--orders must be at least 1");
        anyhow::ensure!(self.stock >= 1, "--stock must be at least 1");
        let mut scenarios = self.scenarios;
        scenarios.sort();
        scenarios.dedup();
        Ok(AuditConfig {
            url: self.url.trim_end_matches('/').to_owned(),
            api_key: self.api_key.unwrap_or_default(),
            database_url: self.database_url,
            amqp_url: self.amqp_url,
            namespace: self.namespace,
            partitions: self.partitions,
            duration: Duration::from_secs(self.duration),
            concurrency: self.concurrency,
            orders: self.orders,
            skus: self.skus,
            stock: self.stock,
            hot_skew: self.hot_skew,
            scenarios,
            seed: self.seed,
            drain_timeout: Duration::from_secs(self.drain_timeout),
            report: Some(self.report),
            progress: !self.no_progress,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed_and_parses_a_scenario_list() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "orderflow-bench",
            "audit",
            "--api-key",
            "k",
            "--database-url",
            "postgres://x/y",
            "--scenarios",
            "double-pay,hot-orders",
            "--seed",
            "7",
        ])
        .unwrap();
        let Command::Audit(args) = cli.command else {
            panic!("parsed as audit")
        };
        let config = args.into_config().unwrap();
        assert_eq!(
            config.scenarios,
            vec![Scenario::HotOrders, Scenario::DoublePay]
        );
        assert_eq!(config.seed, 7);
    }

    #[test]
    fn spawn_takes_a_fault_list_and_all_expands() {
        let parse = |extra: &[&str]| {
            let mut args = vec![
                "orderflow-bench",
                "audit",
                "--database-url",
                "postgres://x/y",
                "--spawn",
            ];
            args.extend_from_slice(extra);
            let cli = Cli::try_parse_from(args).unwrap();
            let Command::Audit(args) = cli.command else {
                panic!("parsed as audit")
            };
            args.spawn_options().unwrap().expect("--spawn")
        };
        let options = parse(&["--faults", "pg-restart,kill-worker-in-tx", "--workers", "3"]);
        assert_eq!(
            options.plan.faults,
            vec![Fault::KillWorkerInTx, Fault::PgRestart]
        );
        assert_eq!(options.workers, 3);
        assert!(
            options
                .worker_bin
                .ends_with("failpoints/debug/orderflow-worker")
        );
        assert_eq!(parse(&["--faults", "all"]).plan.faults, Fault::ALL);
        assert!(parse(&[]).plan.faults.is_empty());
        // Faults need a stack the audit owns.
        assert!(
            Cli::try_parse_from([
                "orderflow-bench",
                "audit",
                "--api-key",
                "k",
                "--database-url",
                "postgres://x/y",
                "--faults",
                "all",
            ])
            .is_err()
        );
    }

    #[test]
    fn perf_smoke_keeps_explicit_options_and_orders_its_lists() {
        let cli = Cli::try_parse_from([
            "orderflow-bench",
            "perf",
            "--database-url",
            "postgres://x/y",
            "--smoke",
            "--orders",
            "77",
            "--workloads",
            "long-polls,growth,uniform,growth",
            "--systems",
            "orderflow,raw",
        ])
        .unwrap();
        let Command::Perf(args) = cli.command else {
            panic!("parsed as perf")
        };
        let config = args.into_config().unwrap();
        assert_eq!(config.orders, 77);
        assert!(config.duration < Duration::from_secs(2));
        assert_eq!(
            config.workloads,
            vec![
                crate::perf::Workload::Uniform,
                crate::perf::Workload::Growth,
                crate::perf::Workload::LongPolls,
            ]
        );
        assert_eq!(
            config.systems,
            vec![crate::perf::System::Raw, crate::perf::System::Orderflow]
        );
        assert!(config.api_bin.ends_with("orderflow-api"));
    }
}
