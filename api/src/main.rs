use clap::Parser;
use orderflow_api::cli::{Cli, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    orderflow_shared::telemetry::init(&cli.config.common.log_format);
    #[cfg(feature = "failpoints")]
    let _failpoints = orderflow_shared::failpoints::arm();
    run(cli).await
}
