//! orderflow's race auditor. [`audit`] runs an adversarial workload against a running stack
//! (HTTP API, command exchange), heals and drains it, loads what the stack recorded, and checks
//! every invariant orderflow claims (see `check`). The binary is a thin CLI around it; the
//! integration tests call it against an in-process stack. [`spawn::audit_spawned`] runs it on a
//! stack it spawns itself, with scheduled faults beside the workload (`faults`). [`perf`] is the
//! performance benchmark (orderflow beside the raw ceiling and a naive synchronous design).

pub mod broker;
pub mod check;
pub mod cli;
pub mod config;
pub mod drain;
pub mod events;
pub mod faults;
pub mod http;
pub mod load;
pub mod perf;
pub mod record;
pub mod report;
pub mod scenarios;
pub mod spawn;
pub mod workload;

use anyhow::Context as _;
pub use config::{AuditConfig, Scenario};
pub use report::Report;
use std::time::{Duration, Instant};

/// What a finished audit hands back: the report, and what the checker judged (so a caller can
/// tamper with the stack and check again).
pub struct Audit {
    pub report: Report,
    pub observed: record::Observations,
    pub events: Vec<events::StatusEvent>,
}

/// Runs the workload, drains, and checks. `Err` only when the audit itself could not run (stack
/// unreachable, bad key); broken invariants are in the report.
pub async fn audit(config: &AuditConfig) -> anyhow::Result<Audit> {
    audit_beside(config, async {})
        .await
        .map(|(audit, ())| audit)
}

/// [`audit`], with `beside` running alongside the workload (the fault scheduler); its output
/// comes back with the audit once both the workload and `beside` finished.
pub async fn audit_beside<T>(
    config: &AuditConfig,
    beside: impl std::future::Future<Output = T>,
) -> anyhow::Result<(Audit, T)> {
    let db =
        orderflow_storage::pool(&config.database_url, 8).context("opening the database pool")?;
    let dead_before = load::dead_letter_depth(&config.amqp_url, &config.namespace).await?;
    let listener = events::Listener::start(&config.amqp_url, &config.namespace).await?;
    let log = record::Log::default();
    let api = http::Api::new(&config.url, &config.api_key, log.clone())?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();

    let started = Instant::now();
    let (workload, beside) = tokio::join!(workload::run(config, &api, &db, &run_id), beside);
    workload?;
    let duration = started.elapsed().as_secs_f64();

    let observed = log.snapshot();
    let mut orders = observed.orders.clone();
    orders.sort();
    orders.dedup();
    let drained =
        drain::drain(&db, &observed.accepted_ids(), &orders, config.drain_timeout).await?;
    let mut snapshot = snapshot(config, &db, &observed).await?;
    let final_commands = snapshot
        .commands
        .iter()
        .filter(|c| c.status != "accepted" && !c.refused())
        .count();
    let events = listener
        .finish(final_commands, Duration::from_secs(10))
        .await;
    snapshot.dead_letters = load::dead_letter_depth(&config.amqp_url, &config.namespace)
        .await
        .ok()
        .map(|after| after - dead_before);
    let report = judge(config, &observed, &snapshot, &events, drained, duration);
    Ok((
        Audit {
            report,
            observed,
            events,
        },
        beside,
    ))
}

/// Loads the rows the checker needs for what was observed.
pub async fn snapshot(
    config: &AuditConfig,
    db: &sqlx::PgPool,
    observed: &record::Observations,
) -> anyhow::Result<load::Snapshot> {
    let mut orders = observed.orders.clone();
    orders.sort();
    orders.dedup();
    let skus: Vec<String> = observed.stock.iter().map(|(s, _)| s.clone()).collect();
    let keys: Vec<String> = observed
        .requests
        .iter()
        .filter_map(|r| r.probe.as_ref().map(|p| p.key.clone()))
        .collect();
    let mut snapshot = load::snapshot(db, &orders, &skus, &keys).await?;
    snapshot.dead_letters = None;
    let _ = config;
    Ok(snapshot)
}

/// Runs every check and builds the report.
pub fn judge(
    config: &AuditConfig,
    observed: &record::Observations,
    snapshot: &load::Snapshot,
    events: &[events::StatusEvent],
    drained: drain::Drained,
    duration: f64,
) -> Report {
    let verdicts = check::check_all(&check::Input {
        snapshot,
        observed,
        events,
    });
    Report::new(
        config.seed,
        config.scenarios.iter().map(|s| s.name()).collect(),
        duration,
        observed,
        snapshot,
        drained,
        verdicts,
    )
}
