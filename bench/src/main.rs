//! `orderflow-bench`: parse the command line; `audit` runs the audit, prints the summary, writes
//! the JSON report and exits non-zero if any invariant is broken (with `--spawn`, on a stack it
//! spawns and hurts with scheduled faults); `perf` runs the benchmark,
//! writes its reports and prints the summary (it exits non-zero only if it could not run).

use clap::Parser;
use orderflow_bench::cli::{Cli, Command};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    // Log lines (fault injections, the event listener's resubscriptions) only when asked for,
    // e.g. RUST_LOG=orderflow_bench=info: the terminal belongs to the progress bar and report.
    if std::env::var_os("RUST_LOG").is_some() {
        orderflow_runtime::telemetry::init("text");
    }
    let args = match Cli::parse().command {
        Command::Audit(args) => args,
        Command::Perf(args) => {
            let config = args.into_config()?;
            let command_line = std::env::args().collect::<Vec<_>>().join(" ");
            let report = orderflow_bench::perf::run(&config, command_line).await?;
            println!("{}", orderflow_bench::perf::report::table::render(&report));
            println!(
                "reports written to {}",
                config.out_dir.join("report.{json,html}").display()
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    let spawn = args.spawn_options()?;
    let config = args.into_config()?;
    let audit = match &spawn {
        Some(options) => orderflow_bench::spawn::audit_spawned(&config, options).await?,
        None => orderflow_bench::audit(&config).await?,
    };
    println!("{}", audit.report.table());
    if let Some(path) = &config.report {
        std::fs::write(path, serde_json::to_vec_pretty(&audit.report)?)?;
        println!("report written to {}", path.display());
    }
    Ok(if audit.report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
