//! The second, independent ceiling: PostgreSQL's own `pgbench` running
//! [`bench/sql/one-command.pgbench`](../../sql/one-command.pgbench) — every row one `add_item`
//! command writes in orderflow, in ONE transaction per command — on the raw system's database,
//! with as many connections as each system's pool. Nothing of orderflow's code runs: it is what
//! the schema allows when a command's whole work is done synchronously, to compare the pipeline
//! (and the in-process raw ceiling) against. Each transaction's latency comes from pgbench's
//! per-transaction log (`-l`), so the phase is measured like any other.

use super::config::{PerfConfig, Workload};
use super::phase::{self, Spec};
use super::report::PhaseResult;
use super::system::Sut;
use super::target::{Answer, Sample};
use super::workloads;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The script, as the repository holds it.
pub const SCRIPT: &str = include_str!("../../sql/one-command.pgbench");
/// The phase's name in the report (system raw, workload uniform).
pub const PHASE: &str = "pgbench";

/// The `pgbench` executable: on `PATH`, else in a PostgreSQL installation's own directory.
pub fn executable() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("pgbench"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin/pgbench"))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop()
    })
}

/// Runs the script against the system's database for the phase's length (whole seconds, at
/// least one: pgbench's `-T`) and measures it as a phase of `sut` (the raw system).
pub async fn ceiling(config: &PerfConfig, sut: &mut Sut) -> anyhow::Result<PhaseResult> {
    let pgbench = executable().context(
        "pgbench is not installed (it comes with PostgreSQL's server package, \
         e.g. Debian's postgresql-15)",
    )?;
    let orders = {
        let mut conn = sut.db.acquire().await?;
        orderflow_storage::perf::number_orders_for_pgbench(&mut conn).await?
    };
    let dir = config.out_dir.join("pgbench");
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("one-command.pgbench");
    std::fs::write(&script, SCRIPT)?;
    let seconds = config.duration.as_secs_f64().ceil().max(1.0) as u64;
    let clients = config.pool_size.max(1);
    let mut url = sut.database.url.clone();
    if orderflow_storage::goes_without_tls(&url) {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("sslmode=disable");
    }
    let spec = Spec {
        clients: clients as usize,
        ..workloads::spec(Workload::Uniform, PHASE, Duration::from_secs(seconds))
    };
    phase::measure(config, sut, spec, move |_load| async move {
        let started = std::time::SystemTime::now();
        let output = tokio::process::Command::new(&pgbench)
            .arg("--no-vacuum")
            .args(["--protocol", "prepared"])
            .args(["--client", &clients.to_string()])
            .args(["--jobs", "2"])
            .args(["--time", &seconds.to_string()])
            .args(["--define", &format!("orders={orders}")])
            .arg("--file")
            .arg(&script)
            .arg("--log")
            .arg(format!(
                "--log-prefix={}",
                dir.join("transactions").display()
            ))
            .arg(&url)
            .current_dir(&dir)
            .kill_on_drop(true)
            .output()
            .await;
        match output {
            Ok(output) if output.status.success() => {
                let start = started
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                samples(&dir, start)
            }
            Ok(output) => {
                tracing::error!(
                    status = %output.status,
                    stderr = %String::from_utf8_lossy(&output.stderr),
                    "pgbench failed"
                );
                Vec::new()
            }
            Err(e) => {
                tracing::error!(error = %e, "pgbench could not run");
                Vec::new()
            }
        }
    })
    .await
}

/// The transactions of pgbench's per-transaction logs in `dir` (`transactions.<pid>[.<n>]`,
/// one per thread), as samples: each line is `client transaction latency_us script epoch_s
/// epoch_us` (the end time), so it was due `latency` before its end.
fn samples(dir: &Path, start_epoch: f64) -> Vec<Sample> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut samples = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("transactions.") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        samples.extend(
            text.lines()
                .filter_map(|line| parse_line(line, start_epoch)),
        );
        let _ = std::fs::remove_file(entry.path());
    }
    samples.sort_by(|a, b| a.due.total_cmp(&b.due));
    samples
}

fn parse_line(line: &str, start_epoch: f64) -> Option<Sample> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let latency_us: u64 = fields.get(2)?.parse().ok()?;
    let end_s: f64 = fields.get(4)?.parse().ok()?;
    let end_us: f64 = fields.get(5)?.parse().ok()?;
    let end = end_s + end_us / 1e6 - start_epoch;
    Some(Sample {
        due: (end - latency_us as f64 / 1e6).max(0.0),
        latency_us,
        answer: Answer::Applied,
        retry_after: false,
        command: None,
        hot: false,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_line;

    #[test]
    fn a_log_line_is_a_transaction_due_its_latency_before_it_ended() {
        let sample = parse_line("3 17 2500 0 1700000010 500000", 1_700_000_000.0).unwrap();
        assert_eq!(sample.latency_us, 2500);
        assert!(
            (sample.due - (10.5 - 0.0025)).abs() < 1e-6,
            "{}",
            sample.due
        );
        assert!(parse_line("not a log line", 0.0).is_none());
    }
}
