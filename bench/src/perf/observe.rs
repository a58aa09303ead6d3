//! What the processes cost while a phase runs, read from `/proc` (Linux): the resident memory of
//! each process we watch (sampled, the maximum kept) and the CPU time of each process group
//! (read at the start and end). PostgreSQL and RabbitMQ are counted by process name, so their
//! CPU includes anything else the server did meanwhile (other databases, other users).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Pause between two memory samples.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on every Linux we run on).
const TICKS_PER_SECOND: f64 = 100.0;

/// A process the report names.
#[derive(Clone, Debug)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

/// Resident set size in MiB (`None`: the process is gone).
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// User + system CPU seconds of one process (`/proc/<pid>/stat` utime and stime).
fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_fields(pid, 11..=12)
}

/// [`cpu_seconds`] plus what its children that have exited used (cutime and cstime): a server
/// whose connections end during the phase (PostgreSQL's backends of a pgbench run) would
/// otherwise lose their CPU from the sum as they exit. A live child is not counted twice: only
/// children that were waited for are in the parent's figures.
fn cpu_seconds_with_exited_children(pid: u32) -> Option<f64> {
    cpu_fields(pid, 11..=14)
}

fn cpu_fields(pid: u32, fields: std::ops::RangeInclusive<usize>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after it are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let values: Vec<&str> = rest.split_whitespace().collect();
    let mut ticks = 0.0;
    for i in fields {
        ticks += values.get(i)?.parse::<f64>().ok()?;
    }
    Some(ticks / TICKS_PER_SECOND)
}

/// CPU seconds of every process whose command name is `comm` (e.g. `postgres`, `beam.smp`),
/// with their exited children's.
fn cpu_seconds_named(comm: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter_map(cpu_seconds_with_exited_children)
        .sum()
}

/// The soft limit on open files of this process (children inherit it).
pub fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(1024)
}

fn cpu_snapshot(watched: &[Watched]) -> BTreeMap<String, f64> {
    let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
    for w in watched {
        *cpu.entry(w.name.clone()).or_default() += cpu_seconds(w.pid).unwrap_or(0.0);
    }
    cpu.insert(
        "postgres (server-wide)".into(),
        cpu_seconds_named("postgres"),
    );
    cpu.insert(
        "rabbitmq (server-wide)".into(),
        cpu_seconds_named("beam.smp"),
    );
    cpu
}

/// Watches processes for the length of a phase.
pub struct Observer {
    watched: Vec<Watched>,
    cpu_start: BTreeMap<String, f64>,
    rss_max: Arc<Mutex<BTreeMap<String, f64>>>,
    sampler: JoinHandle<()>,
}

/// What a phase cost.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Cost {
    /// Largest resident memory seen, MiB, per watched process (summed by name).
    pub rss_max_mb: BTreeMap<String, f64>,
    /// CPU seconds used during the phase, per process name.
    pub cpu_seconds: BTreeMap<String, f64>,
}

impl Observer {
    pub fn start(watched: Vec<Watched>) -> Self {
        let rss_max = Arc::new(Mutex::new(BTreeMap::new()));
        let cpu_start = cpu_snapshot(&watched);
        let sampler = {
            let (watched, rss_max) = (watched.clone(), rss_max.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    tick.tick().await;
                    let mut now: BTreeMap<String, f64> = BTreeMap::new();
                    for w in &watched {
                        *now.entry(w.name.clone()).or_default() += rss_mb(w.pid).unwrap_or(0.0);
                    }
                    let mut max = rss_max.lock().expect("not poisoned");
                    for (name, mb) in now {
                        let entry = max.entry(name).or_insert(0.0);
                        *entry = f64::max(*entry, mb);
                    }
                }
            })
        };
        Self {
            watched,
            cpu_start,
            rss_max,
            sampler,
        }
    }

    pub fn finish(self) -> Cost {
        self.sampler.abort();
        let end = cpu_snapshot(&self.watched);
        let cpu_seconds = end
            .into_iter()
            .map(|(name, seconds)| {
                let used = seconds - self.cpu_start.get(&name).copied().unwrap_or(0.0);
                (name, (used * 100.0).round() / 100.0)
            })
            .collect();
        let mut rss_max_mb = self.rss_max.lock().expect("not poisoned").clone();
        for w in &self.watched {
            rss_max_mb.entry(w.name.clone()).or_insert(0.0);
        }
        for mb in rss_max_mb.values_mut() {
            *mb = (*mb * 10.0).round() / 10.0;
        }
        Cost {
            rss_max_mb,
            cpu_seconds,
        }
    }
}
