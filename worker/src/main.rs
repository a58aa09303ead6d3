use clap::Parser;
use orderflow_worker::{Worker, WorkerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig::parse();
    orderflow_shared::telemetry::init(&config.common.log_format);
    #[cfg(feature = "failpoints")]
    let _failpoints = orderflow_shared::failpoints::arm();
    let shutdown = orderflow_shared::shutdown::on_signal();
    let worker = Worker::build(config).await?;
    worker.run_until_stopped(shutdown).await
}
