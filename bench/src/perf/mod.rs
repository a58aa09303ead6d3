//! `orderflow-bench perf`: orderflow side by side with the raw ceiling (the worker's apply
//! transaction called in-process) and a naive synchronous design (the baseline), against the
//! same PostgreSQL and RabbitMQ, with the same load generator and data. For each system in turn:
//! a fresh database (and, for orderflow, fresh processes and AMQP namespace), seeded orders,
//! then each workload's phases (see [`Workload`]); then the report (JSON, HTML with plots, a
//! terminal summary) with the targets checked. Everything the run created is removed.

pub mod args;
pub mod commits;
pub mod config;
pub mod database;
pub mod dbstats;
pub mod drive;
pub mod naive;
pub mod observe;
pub mod pgbench;
pub mod phase;
pub mod report;
pub mod stack;
pub mod stages;
pub mod stats;
pub mod system;
pub mod target;
pub mod targets;
pub mod workloads;

pub use config::{PerfConfig, System, Workload};
pub use report::PerfReport;

use report::{Machine, Skipped};
use std::time::Instant;
use system::Sut;

/// Runs every selected system × workload and returns the report (also written to
/// `config.out_dir`). `Err` when a system could not be set up or a phase could not run.
pub async fn run(config: &PerfConfig, command_line: String) -> anyhow::Result<PerfReport> {
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    std::fs::create_dir_all(&config.out_dir)?;
    let machine = {
        let admin = sqlx::PgPool::connect(&config.database_url).await?;
        let machine = Machine::read(&admin).await;
        admin.close().await;
        machine
    };
    let mut phases = Vec::new();
    let mut skipped = Vec::new();
    for &system in &config.systems {
        let runnable: Vec<Workload> = config
            .workloads
            .iter()
            .copied()
            .filter(|w| match w.not_applicable(system) {
                Some(reason) => {
                    skipped.push(Skipped {
                        system,
                        workload: *w,
                        reason: reason.into(),
                    });
                    false
                }
                None => true,
            })
            .collect();
        if runnable.is_empty() {
            continue;
        }
        let mut sut = Sut::start(config, system, &run_id).await?;
        let mut outcome = Ok(());
        for workload in runnable {
            match workloads::run(config, &mut sut, workload).await {
                Ok(results) => phases.extend(results),
                Err(e) => {
                    outcome =
                        Err(e.context(format!("{} × {} failed", system.name(), workload.name())));
                    break;
                }
            }
        }
        sut.stop().await;
        outcome?;
    }
    let mut report = PerfReport {
        run_id,
        started_at,
        seconds: started.elapsed().as_secs_f64(),
        command_line,
        machine,
        config: config.clone(),
        phases,
        skipped,
        targets: Vec::new(),
    };
    report.targets = targets::evaluate(&report);
    report.write(&config.out_dir)?;
    Ok(report)
}
