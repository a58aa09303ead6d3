//! The options of `orderflow-bench perf`, turned into a [`PerfConfig`]. Every default is the
//! full-size run; `--smoke` shrinks everything to about a second per phase, and explicit options
//! given with it still win.

use super::config::{PerfConfig, System, Workload};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct PerfArgs {
    /// PostgreSQL URL on the server to use: each system gets a fresh database next to it (the
    /// role must be allowed to create databases). Dropped at the end.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// RabbitMQ URL; orderflow gets a fresh namespace there, deleted at the end.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// The `orderflow-api` executable (default: next to this one).
    #[arg(long)]
    pub api_bin: Option<PathBuf>,
    /// The `orderflow-worker` executable (default: next to this one).
    #[arg(long)]
    pub worker_bin: Option<PathBuf>,
    /// Systems to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub systems: Option<Vec<System>>,
    /// Workloads to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workloads: Option<Vec<Workload>>,
    /// Seconds of each measured phase (default 20; smoke 0.5).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Closed-loop client tasks (default 64; smoke 16).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Orders seeded before the run (default 10,000; smoke 500).
    #[arg(long)]
    pub orders: Option<usize>,
    /// Clients on the hot order during the storm (default 200).
    #[arg(long)]
    pub storm_clients: Option<usize>,
    /// The storm's cold load, commands per second, the same for every system (default 200;
    /// smoke 20).
    #[arg(long)]
    pub storm_cold_rate: Option<f64>,
    /// A setting for orderflow's API and workers, `NAME=VALUE` (repeatable), for an A/B of one
    /// lever: e.g. `--orderflow-env ORDERFLOW_KEY_CACHE_SECS=60`. The processes inherit no
    /// `ORDERFLOW_*` variable of the bench's own environment.
    #[arg(long = "orderflow-env", value_name = "NAME=VALUE", value_parser = setting)]
    pub orderflow_env: Vec<(String, String)>,
    /// Seconds of random jitter a refused closed-loop client adds to its 1 s back-off (default
    /// 0: every refused client comes back exactly 1 s later, in step with the others).
    #[arg(long)]
    pub back_off_jitter: Option<f64>,
    /// Burst rate as a multiple of the sustainable rate (default 5).
    #[arg(long)]
    pub burst_factor: Option<f64>,
    /// Seconds of the burst (default 10; smoke 0.5).
    #[arg(long)]
    pub burst_duration: Option<f64>,
    /// Orders in the tables after growth (default 1,000,000; smoke 5,000).
    #[arg(long)]
    pub growth_to: Option<usize>,
    /// Long-polls held open at once (default 5,000; smoke 500).
    #[arg(long)]
    pub long_polls: Option<usize>,
    /// PostgreSQL connections per pool (default 16, the services' own default).
    #[arg(long)]
    pub pool_size: Option<u32>,
    /// Partition queues of orderflow (default 16).
    #[arg(long)]
    pub partitions: Option<u16>,
    /// Worker processes of orderflow (default 1).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the reports and the spawned processes' logs go.
    #[arg(long, default_value = "perf-report")]
    pub out: PathBuf,
    /// Every system and workload for about a second each (half a second per phase).
    #[arg(long)]
    pub smoke: bool,
    /// Do not draw progress bars.
    #[arg(long)]
    pub no_progress: bool,
}

impl PerfArgs {
    pub fn into_config(self) -> anyhow::Result<PerfConfig> {
        let here = std::env::current_exe()?;
        let beside = |name: &str| -> PathBuf {
            here.parent()
                .map(|dir| dir.join(name))
                .unwrap_or_else(|| Path::new(name).to_owned())
        };
        let mut config = PerfConfig::new(
            self.database_url,
            self.amqp_url,
            self.api_bin.unwrap_or_else(|| beside("orderflow-api")),
            self.worker_bin
                .unwrap_or_else(|| beside("orderflow-worker")),
        );
        if self.smoke {
            config = config.smoke();
        }
        let seconds = |s: f64| -> anyhow::Result<Duration> {
            anyhow::ensure!(s > 0.0 && s.is_finite(), "durations must be positive");
            Ok(Duration::from_secs_f64(s))
        };
        if let Some(v) = self.systems {
            config.systems = v;
        }
        if let Some(v) = self.workloads {
            config.workloads = v;
        }
        if let Some(v) = self.duration {
            config.duration = seconds(v)?;
        }
        if let Some(v) = self.burst_duration {
            config.burst_duration = seconds(v)?;
        }
        if let Some(v) = self.concurrency {
            config.concurrency = v;
        }
        if let Some(v) = self.orders {
            config.orders = v;
        }
        if let Some(v) = self.storm_clients {
            config.storm_clients = v;
        }
        if let Some(v) = self.storm_cold_rate {
            config.storm_cold_rate = v;
        }
        config.orderflow_env = self.orderflow_env;
        if let Some(v) = self.back_off_jitter {
            anyhow::ensure!(
                v >= 0.0 && v.is_finite(),
                "--back-off-jitter must be 0 or more seconds"
            );
            config.back_off_jitter = Duration::from_secs_f64(v);
        }
        if let Some(v) = self.burst_factor {
            config.burst_factor = v;
        }
        if let Some(v) = self.growth_to {
            config.growth_to = v;
        }
        if let Some(v) = self.long_polls {
            config.long_polls = v;
        }
        if let Some(v) = self.pool_size {
            config.pool_size = v;
        }
        if let Some(v) = self.partitions {
            config.partitions = v;
        }
        if let Some(v) = self.workers {
            config.workers = v;
        }
        config.seed = self.seed;
        config.out_dir = self.out;
        config.progress = !self.no_progress;
        config.normalize();
        anyhow::ensure!(config.concurrency > 0, "--concurrency must be at least 1");
        anyhow::ensure!(config.orders >= 2, "--orders must be at least 2");
        anyhow::ensure!(config.burst_factor > 0.0, "--burst-factor must be positive");
        anyhow::ensure!(
            config.storm_cold_rate > 0.0,
            "--storm-cold-rate must be positive"
        );
        anyhow::ensure!(config.pool_size > 0, "--pool-size must be at least 1");
        anyhow::ensure!(config.partitions > 0, "--partitions must be at least 1");
        anyhow::ensure!(config.workers > 0, "--workers must be at least 1");
        anyhow::ensure!(!config.systems.is_empty() && !config.workloads.is_empty());
        Ok(config)
    }
}

/// `NAME=VALUE` of `--orderflow-env`.
pub(crate) fn setting(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {arg:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::setting;

    #[test]
    fn a_setting_is_a_name_and_a_value() {
        assert_eq!(
            setting("ORDERFLOW_KEY_CACHE_SECS=60"),
            Ok(("ORDERFLOW_KEY_CACHE_SECS".into(), "60".into()))
        );
        assert_eq!(setting("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(setting("A="), Ok(("A".into(), String::new())));
        assert!(setting("=1").is_err());
        assert!(setting("ORDERFLOW_KEY_CACHE_SECS").is_err());
    }
}
