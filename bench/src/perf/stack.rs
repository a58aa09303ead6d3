//! The real orderflow, as it is deployed: the `orderflow-api` and `orderflow-worker` executables
//! spawned as child processes on a fresh database and a fresh AMQP namespace, configured only
//! through their environment. The bench's client is made with `orderflow-api client create` and
//! a rate limit far above anything the bench sends. Logs (JSON) go to files in the output
//! directory; the API's address (it listens on port 0) is read from its log. The race audit's
//! faults (`--spawn`) use the same stack with [`StackExtra`]: a fixed API address (a respawned
//! API answers at the same URL), extra environment, and methods to signal and respawn each
//! process. Each process re-arms its failpoints from `<log dir>/<process>.failpoints` on SIGUSR2
//! (builds with the `failpoints` feature).

use anyhow::Context as _;
use orderflow_messaging::Topology;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Longest wait for a process to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How the processes are configured.
#[derive(Clone, Debug)]
pub struct StackSettings {
    pub api_bin: PathBuf,
    pub worker_bin: PathBuf,
    pub database_url: String,
    pub amqp_url: String,
    pub namespace: String,
    pub partitions: u16,
    pub pool_size: u32,
    pub workers: usize,
    pub log_dir: PathBuf,
}

/// What the race audit's faults need beyond perf's settings.
#[derive(Clone, Debug, Default)]
pub struct StackExtra {
    /// A fixed API address (port 0 otherwise), so that a respawned API keeps its URL.
    pub api_listen: Option<SocketAddr>,
    /// More environment for every process (queue length, AMQP heartbeat in the URL, ...).
    pub env: Vec<(String, String)>,
}

/// The running processes.
pub struct Stack {
    settings: StackSettings,
    extra: StackExtra,
    api: Child,
    workers: Vec<Child>,
    pub url: String,
    pub key: String,
    api_starts: usize,
    /// Per worker slot, how many processes it has had (names its log and heartbeat). A slot
    /// scaled in keeps its count, so that the next process scaled out into it has a name and a
    /// log of its own.
    worker_starts: Vec<usize>,
}

impl Stack {
    /// Migrates, creates the client, starts the workers and the API (with `extra`: the audit's
    /// settings, or a benchmark's A/B), and waits until both are ready.
    pub async fn start(settings: StackSettings, extra: StackExtra) -> anyhow::Result<Self> {
        for bin in [&settings.api_bin, &settings.worker_bin] {
            anyhow::ensure!(
                bin.is_file(),
                "{} does not exist: build it (cargo build -p orderflow-api -p orderflow-worker) or pass --api-bin/--worker-bin",
                bin.display()
            );
        }
        std::fs::create_dir_all(&settings.log_dir)?;
        run_to_end(command(&settings, &extra, &settings.api_bin).arg("migrate")).await?;
        let key = run_to_end(command(&settings, &extra, &settings.api_bin).args([
            "client",
            "create",
            "--name",
            "perf",
            "--admin",
            "--rate-limit-per-second",
            "1000000000",
            "--rate-limit-burst",
            "1000000000",
        ]))
        .await?
        .trim()
        .to_owned();
        anyhow::ensure!(
            key.starts_with("of_"),
            "client create printed no key: {key:?}"
        );

        let mut workers = Vec::new();
        for n in 0..settings.workers {
            workers.push(start_worker(&settings, &extra, n, 0).await?);
        }
        let (api, url) = start_api(&settings, &extra, &[], 0).await?;
        Ok(Self {
            worker_starts: vec![1; settings.workers],
            settings,
            extra,
            api,
            workers,
            url,
            key,
            api_starts: 1,
        })
    }

    /// Number of worker slots.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The name worker slot `n` heartbeats under right now (`worker-<n>.<generation>`).
    pub fn worker_name(&self, n: usize) -> String {
        format!("worker-{n}.{}", self.worker_starts[n] - 1)
    }

    /// The log of worker slot `n`'s current process (JSON lines).
    pub fn worker_log(&self, n: usize) -> PathBuf {
        self.settings
            .log_dir
            .join(format!("{}.log", self.worker_name(n)))
    }

    /// The process id of worker slot `n` (`None` once it was reaped).
    pub fn worker_pid(&self, n: usize) -> Option<u32> {
        self.workers[n].id()
    }

    pub fn api_pid(&self) -> Option<u32> {
        self.api.id()
    }

    /// The file a process (`api`, `worker-<n>`) re-reads its failpoints from on SIGUSR2.
    pub fn failpoints_file(&self, process: &str) -> PathBuf {
        self.settings.log_dir.join(format!("{process}.failpoints"))
    }

    /// Waits (bounded) for worker slot `n` to exit; `None` if it is still running.
    pub async fn wait_worker_exit(
        &mut self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Option<ExitStatus>> {
        wait_exit(&mut self.workers[n], timeout).await
    }

    /// Waits (bounded) for the API to exit; `None` if it is still running.
    pub async fn wait_api_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        wait_exit(&mut self.api, timeout).await
    }

    /// Kills what is left of worker slot `n` and starts a fresh process in it, ready.
    pub async fn respawn_worker(&mut self, n: usize) -> anyhow::Result<()> {
        let _ = self.workers[n].kill().await;
        let generation = self.worker_starts[n];
        self.workers[n] = start_worker(&self.settings, &self.extra, n, generation).await?;
        self.worker_starts[n] += 1;
        Ok(())
    }

    /// Starts a worker in a new slot (scaling out), ready; returns the slot.
    pub async fn add_worker(&mut self) -> anyhow::Result<usize> {
        let n = self.workers.len();
        let generation = self.worker_starts.get(n).copied().unwrap_or(0);
        self.workers
            .push(start_worker(&self.settings, &self.extra, n, generation).await?);
        match self.worker_starts.get_mut(n) {
            Some(starts) => *starts += 1,
            None => self.worker_starts.push(1),
        }
        Ok(n)
    }

    /// Forgets the last worker slot (scaling in) once its process exited; `false` (and kept)
    /// while it still runs.
    pub fn remove_last_worker(&mut self) -> anyhow::Result<bool> {
        let Some(last) = self.workers.last_mut() else {
            return Ok(false);
        };
        if last.try_wait()?.is_none() {
            return Ok(false);
        }
        self.workers.pop();
        Ok(true)
    }

    /// The AMQP namespace the processes run in.
    pub fn namespace(&self) -> &str {
        &self.settings.namespace
    }

    /// The partition count the processes run with.
    pub fn partitions(&self) -> u16 {
        self.settings.partitions
    }

    /// Doubles the partition count while the stack runs, with the documented command
    /// (`orderflow-api partitions grow`); returns the new count.
    pub async fn grow_partitions(&mut self) -> anyhow::Result<u16> {
        let output = command(&self.settings, &self.extra, &self.settings.api_bin)
            .args(["partitions", "grow"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .context("running orderflow-api partitions grow")?;
        anyhow::ensure!(
            output.status.success(),
            "orderflow-api partitions grow failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let grown: u16 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .context("orderflow-api partitions grow printed no count")?;
        // Processes started from now on are told the same (the database decides in any case).
        self.settings.partitions = grown;
        Ok(grown)
    }

    /// Kills what is left of the API and starts a fresh one (at the same address when
    /// [`StackExtra::api_listen`] fixes it), ready.
    pub async fn respawn_api(&mut self) -> anyhow::Result<()> {
        let _ = self.api.kill().await;
        let (api, url) = start_api(&self.settings, &self.extra, &[], self.api_starts).await?;
        self.api_starts += 1;
        self.api = api;
        self.url = url;
        Ok(())
    }

    /// Restarts the API with extra environment (the long-polls need more in-flight room).
    pub async fn restart_api(&mut self, extra_env: &[(&str, String)]) -> anyhow::Result<()> {
        self.api.kill().await.context("stopping the API")?;
        let (api, url) = start_api(&self.settings, &self.extra, extra_env, self.api_starts).await?;
        self.api_starts += 1;
        self.api = api;
        self.url = url;
        Ok(())
    }

    /// The processes' ids, named for the report.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut named = vec![("api".to_owned(), self.api.id().unwrap_or(0))];
        for (n, worker) in self.workers.iter().enumerate() {
            let name = if self.workers.len() == 1 {
                "worker".to_owned()
            } else {
                format!("worker-{n}")
            };
            named.push((name, worker.id().unwrap_or(0)));
        }
        named
    }

    /// Is every process still running?
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.api.try_wait()? {
            anyhow::bail!(
                "the API exited ({status}); see {}",
                self.settings.log_dir.display()
            );
        }
        for worker in &mut self.workers {
            if let Some(status) = worker.try_wait()? {
                anyhow::bail!(
                    "a worker exited ({status}); see {}",
                    self.settings.log_dir.display()
                );
            }
        }
        Ok(())
    }

    /// Stops the processes and deletes the namespace's queues and exchanges.
    pub async fn stop(mut self) {
        self.kill_all().await;
        // Only the names matter to delete it.
        let topology = Topology {
            namespace: self.settings.namespace.clone(),
            partitions: self.settings.partitions,
            queue_max_length: 100_000,
        };
        if let Ok(connection) = crate::broker::connect(&self.settings.amqp_url).await {
            if let Ok(channel) = connection.create_channel().await
                && let Err(e) = topology.delete(&channel).await
            {
                tracing::warn!(error = %e, "could not delete the benchmark's AMQP namespace");
            }
            let _ = connection.close(200, "benchmark done".into()).await;
        }
    }
}

impl Stack {
    /// Stops the processes, leaving the namespace's queues (a failed audit's evidence).
    pub async fn kill_all(&mut self) {
        let _ = self.api.kill().await;
        for worker in &mut self.workers {
            let _ = worker.kill().await;
        }
    }
}

/// One of the executables with the stack's environment (and only that: no inherited setting
/// of ours changes what is measured).
fn command(settings: &StackSettings, extra: &StackExtra, bin: &Path) -> Command {
    let mut command = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ORDERFLOW_") {
            command.env_remove(name);
        }
    }
    command
        .env("DATABASE_URL", &settings.database_url)
        .env("AMQP_URL", &settings.amqp_url)
        .env("ORDERFLOW_NAMESPACE", &settings.namespace)
        .env("ORDERFLOW_PARTITIONS", settings.partitions.to_string())
        .env("ORDERFLOW_DB_POOL_SIZE", settings.pool_size.to_string())
        .env("ORDERFLOW_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .envs(extra.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn start_worker(
    settings: &StackSettings,
    extra: &StackExtra,
    n: usize,
    generation: usize,
) -> anyhow::Result<Child> {
    let name = format!("worker-{n}.{generation}");
    let log = settings.log_dir.join(format!("{name}.log"));
    let mut command = command(settings, extra, &settings.worker_bin);
    command
        // Several workers on one host: each its own metrics port.
        .env("ORDERFLOW_METRICS_LISTEN", "127.0.0.1:0")
        .env("ORDERFLOW_WORKER_NAME", &name)
        .env(
            "ORDERFLOW_FAILPOINTS_FILE",
            settings.log_dir.join(format!("worker-{n}.failpoints")),
        );
    let mut child = spawn(command, &log)?;
    wait_for_log(&log, "worker running", &mut child).await?;
    Ok(child)
}

async fn wait_exit(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_to_end(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .context("running orderflow-api")?;
    anyhow::ensure!(
        output.status.success(),
        "orderflow-api failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn spawn(mut command: Command, log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log)?;
    command
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {:?}", command.as_std().get_program()))
}

async fn start_api(
    settings: &StackSettings,
    extra: &StackExtra,
    extra_env: &[(&str, String)],
    number: usize,
) -> anyhow::Result<(Child, String)> {
    let log = settings.log_dir.join(format!("api-{number}.log"));
    let mut command = command(settings, extra, &settings.api_bin);
    let listen = extra
        .api_listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    command.env("ORDERFLOW_LISTEN", listen.to_string()).env(
        "ORDERFLOW_FAILPOINTS_FILE",
        settings.log_dir.join("api.failpoints"),
    );
    for (name, value) in extra_env {
        command.env(name, value);
    }
    let mut api = spawn(command, &log)?;
    let line = wait_for_log(&log, "orderflow API listening", &mut api).await?;
    let address = line["fields"]["address"]
        .as_str()
        .context("the API's listening line has no address")?;
    let url = format!("http://{address}");
    let deadline = Instant::now() + START_TIMEOUT;
    let http = reqwest::Client::new();
    loop {
        let ready = http.get(format!("{url}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok((api, url));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the API at {url} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (with a deadline) for a JSON log line whose message is `message`, and returns it.
async fn wait_for_log(
    log: &Path,
    message: &str,
    child: &mut Child,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["fields"]["message"] == message);
        if let Some(line) = found {
            return Ok(line);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "{} exited ({status}) before saying {message:?}",
                log.display()
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no {message:?} in {} after {START_TIMEOUT:?}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
