use clap::Parser;
use orderflow_worker::{Worker, WorkerConfig};

/// mimalloc rather than glibc's malloc: see the workspace's Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig::parse();
    orderflow_runtime::telemetry::init(&config.common.log_format);
    #[cfg(feature = "failpoints")]
    let _failpoints = orderflow_runtime::failpoints::arm();
    let shutdown = orderflow_runtime::shutdown::on_signal();
    let worker = Worker::build(config).await?;
    worker.run_until_stopped(shutdown).await
}
