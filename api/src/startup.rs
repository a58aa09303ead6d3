//! Building and running the API: configuration, migrations, the topology, the listener.
//! Tests use [`Application::build`] with port 0 and [`Application::port`].

use crate::routes;
use crate::state::AppState;
use crate::waiters::Waiters;
use anyhow::Context;
use clap::Args;
use orderflow_shared::amqp::{self, Publisher, Topology};
use orderflow_shared::config::CommonConfig;
use orderflow_shared::db;
use orderflow_shared::shutdown::CancellationToken;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Settings of the HTTP server.
#[derive(Args, Clone, Debug)]
pub struct ApiConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "ORDERFLOW_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// How long Idempotency-Keys are kept, in hours (at least 24).
    #[arg(long, env = "ORDERFLOW_IDEMPOTENCY_RETENTION_HOURS", default_value_t = 24,
          value_parser = clap::value_parser!(u32).range(24..))]
    pub idempotency_retention_hours: u32,
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    retention: Duration,
    shutdown: CancellationToken,
}

impl Application {
    /// Migrates the database, declares the topology and binds the listener. `shutdown` ends the
    /// server and every long-poll.
    pub async fn build(config: ApiConfig, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let common = &config.common;
        let pool = db::pool(&common.database_url, common.db_pool_size)?;
        // sqlx's migrator takes an advisory lock: several APIs starting together are fine.
        db::MIGRATOR
            .run(&pool)
            .await
            .context("applying database migrations")?;

        let topology = Topology {
            namespace: common.namespace.clone(),
            partitions: common.partitions,
            queue_max_length: common.queue_max_length,
        };
        let amqp = amqp::pool(
            &common.amqp_url,
            &format!("orderflow-api {}", common.namespace),
        );
        let publisher = Publisher::new(amqp);
        let channel = publisher
            .channel()
            .await
            .context("connecting to RabbitMQ")?;
        topology
            .declare(&channel)
            .await
            .context("declaring the RabbitMQ topology")?;

        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let state = AppState {
            waiters: Waiters::start(pool.clone(), shutdown.clone()),
            db: pool,
            publisher: Arc::new(publisher),
            topology,
        };
        Ok(Self {
            listener,
            state,
            retention: Duration::from_secs(u64::from(config.idempotency_retention_hours) * 3600),
            shutdown,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
            .port()
    }

    /// Serves until the shutdown token fires, then lets in-flight requests finish.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tokio::spawn(purge_idempotency_keys(
            self.state.db.clone(),
            self.retention,
            self.shutdown.clone(),
        ));
        tracing::info!(address = %self.listener.local_addr()?, "orderflow API listening");
        let shutdown = self.shutdown.clone();
        axum::serve(self.listener, routes::router(self.state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await?;
        tracing::info!("API stopped");
        Ok(())
    }
}

/// Deletes Idempotency-Keys past their retention, hourly.
async fn purge_idempotency_keys(
    db: sqlx::PgPool,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match db::idempotency::purge_older_than(&db, retention.as_secs() as i64).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired idempotency keys purged"),
            Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
        }
    }
}
