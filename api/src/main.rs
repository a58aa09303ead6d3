use clap::Parser;
use orderflow_api::cli::{Cli, run};

/// mimalloc rather than glibc's malloc: see the workspace's Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    orderflow_runtime::telemetry::init(&cli.config.common.log_format);
    #[cfg(feature = "failpoints")]
    let _failpoints = orderflow_runtime::failpoints::arm();
    run(cli).await
}
