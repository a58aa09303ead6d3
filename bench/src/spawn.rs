//! `orderflow-bench audit --spawn`: the audit on a stack of its own, so that it can hurt it. The
//! `orderflow-api` and `orderflow-worker` executables (built with `--features failpoints` for
//! the failpoint faults) are spawned on a fresh database and AMQP namespace (`perf::stack`),
//! the fault scheduler runs beside the workload, and the report gets the `faults` section.
//! Everything is removed at the end, except the database and queues of a failed run (kept to be
//! looked at) and the processes' logs.

use crate::faults::{self, Plan, inject::Target};
use crate::perf::database::Database;
use crate::perf::stack::{Stack, StackExtra, StackSettings};
use crate::{Audit, AuditConfig};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

/// `application_name` of the auditor's own sessions: `pg-terminate` spares them.
const AUDITOR: &str = "orderflow-bench";
/// The AMQP heartbeat of the spawned processes (seconds): the binaries' default, short, so that a
/// stopped worker's partitions move to a standby within a stop-worker pause.
const HEARTBEAT_SECONDS: u64 = orderflow_messaging::brokers::DEFAULT_HEARTBEAT_SECS as u64;

/// How to spawn the stack and what to do to it.
#[derive(Clone, Debug)]
pub struct SpawnOptions {
    pub api_bin: PathBuf,
    pub worker_bin: PathBuf,
    /// Worker processes (a standby takes over a partition whose worker died).
    pub workers: usize,
    /// The partition queues' `x-max-length` (small, so that queue-full can fill one).
    pub queue_max_length: i64,
    /// More settings for every process (`--orderflow-env`), after the audit's own.
    pub env: Vec<(String, String)>,
    pub log_dir: PathBuf,
    /// The faults (the plan's duration is the workload's).
    pub plan: Plan,
}

/// Runs the audit on a spawned stack with the plan's faults beside the workload.
pub async fn audit_spawned(config: &AuditConfig, options: &SpawnOptions) -> anyhow::Result<Audit> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let database =
        Database::create(&config.database_url, &format!("orderflow_audit_{run_id}")).await?;
    let result = on_database(config, options, &database, &run_id).await;
    match &result {
        Ok(audit) if !audit.report.passed => {
            println!("the failed run's database is kept: {}", database.name);
        }
        _ => database.drop_now().await,
    }
    result
}

async fn on_database(
    config: &AuditConfig,
    options: &SpawnOptions,
    database: &Database,
    run_id: &str,
) -> anyhow::Result<Audit> {
    let namespace = format!("audit.{run_id}");
    let mut stack = Stack::start(
        StackSettings {
            api_bin: options.api_bin.clone(),
            worker_bin: options.worker_bin.clone(),
            database_url: database.url.clone(),
            amqp_url: crate::broker::with_param_each(
                &config.amqp_url,
                "heartbeat",
                &HEARTBEAT_SECONDS.to_string(),
            ),
            namespace: namespace.clone(),
            partitions: config.partitions,
            pool_size: 8,
            workers: options.workers,
            log_dir: options.log_dir.join(run_id),
        },
        StackExtra {
            api_listen: Some(free_address()?),
            env: std::iter::once((
                "ORDERFLOW_QUEUE_MAX_LENGTH".to_owned(),
                options.queue_max_length.to_string(),
            ))
            .chain(options.env.iter().cloned())
            .collect(),
        },
    )
    .await?;
    let auditor_url = with_param(&database.url, "application_name", AUDITOR);
    let config = AuditConfig {
        url: stack.url.clone(),
        api_key: stack.key.clone(),
        database_url: auditor_url.clone(),
        namespace,
        ..config.clone()
    };
    let result = async {
        let mut target = Target {
            stack: &mut stack,
            db: orderflow_storage::pool(&auditor_url, 4)?,
            database: database.name.clone(),
            auditor: AUDITOR.into(),
            affected: Vec::new(),
            fenced: None,
            struck: None,
            resumed: None,
            balanced: None,
            joined_after: None,
        };
        let plan = Plan {
            duration: config.duration,
            ..options.plan.clone()
        };
        let db = target.db.clone();
        let (mut audit, mut faults) =
            crate::audit_beside(&config, faults::inject::run(&mut target, &plan)).await?;
        faults.refused_then_applied = orderflow_storage::audit::refused_then_applied(&db).await?;
        faults.judge();
        audit.report = audit.report.with_faults(faults);
        anyhow::Ok(audit)
    }
    .await;
    if result.as_ref().is_ok_and(|audit| !audit.report.passed) {
        stack.kill_all().await;
        println!(
            "the failed run's queues are kept: namespace {}",
            config.namespace
        );
    } else {
        stack.stop().await;
    }
    result
}

/// A free loopback address for the API, fixed for the run so that a respawned API keeps its URL.
fn free_address() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `url` with `name=value` in its query, unless it already sets `name`.
pub use orderflow_messaging::brokers::with_default as with_param;

/// The stop-worker pause must outlast the broker's heartbeat timeout (about two and a half
/// intervals).
pub fn min_stop_pause() -> Duration {
    Duration::from_secs(3 * HEARTBEAT_SECONDS + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_is_added_once_to_the_url() {
        assert_eq!(
            with_param("amqp://h:5672/%2f", "heartbeat", "5"),
            "amqp://h:5672/%2f?heartbeat=5"
        );
        assert_eq!(
            with_param("postgres://h/db?sslmode=disable", "application_name", "x"),
            "postgres://h/db?sslmode=disable&application_name=x"
        );
        assert_eq!(
            with_param("amqp://h/%2f?heartbeat=30", "heartbeat", "5"),
            "amqp://h/%2f?heartbeat=30"
        );
    }
}
