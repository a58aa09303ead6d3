//! `orderflow-bench`: parse the command line, run the audit, print the summary, write the JSON
//! report, and exit non-zero if any invariant is broken.

use clap::Parser;
use orderflow_bench::cli::{Cli, Command};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let Cli {
        command: Command::Audit(args),
    } = Cli::parse();
    let config = args.into_config()?;
    let audit = orderflow_bench::audit(&config).await?;
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
