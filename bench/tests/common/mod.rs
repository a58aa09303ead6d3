//! The in-process stack the audit tests run against (the pattern of `api/tests/common`): a fresh
//! database and queue namespace, the real API on port 0 and the real worker, an admin client for
//! the audit; everything is removed when the stack is dropped.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use orderflow_api::{ApiConfig, Application};
use orderflow_bench::AuditConfig;
use orderflow_shared::amqp::Topology;
use orderflow_shared::config::CommonConfig;
use orderflow_shared::shutdown::CancellationToken;
use orderflow_worker::apply::Sabotage;
use orderflow_worker::{Worker, WorkerConfig};
use sqlx::PgPool;
use uuid::Uuid;

pub const PARTITIONS: u16 = 4;

fn base_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub struct Stack {
    pub db: PgPool,
    pub config: AuditConfig,
    database_name: String,
    topology: Topology,
    shutdown: CancellationToken,
}

impl Stack {
    pub async fn spawn() -> Self {
        Self::spawn_with(Sabotage::None).await
    }

    /// A stack whose worker is deliberately broken (the audit must then fail).
    pub async fn spawn_with(sabotage: Sabotage) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let database_name = format!("orderflow_bench_{id}");
        let admin = PgPool::connect(&base_database_url())
            .await
            .expect("the test PostgreSQL is reachable");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            r#"create database "{database_name}""#
        )))
        .execute(&admin)
        .await
        .expect("creating the test database");
        admin.close().await;
        let (server, _) = base_database_url()
            .rsplit_once('/')
            .map(|(s, d)| (s.to_owned(), d.to_owned()))
            .expect("DATABASE_URL has a database part");
        let database_url = format!("{server}/{database_name}");
        let namespace = format!("test.{id}");
        let mut common =
            CommonConfig::for_tests(database_url.clone(), namespace.clone(), PARTITIONS);
        common.amqp_url = amqp_url();

        let shutdown = CancellationToken::new();
        // The API's default limits (rate, in-flight): the audit must hold under them too.
        let app = Application::build(
            ApiConfig::with_defaults(common.clone(), "127.0.0.1:0"),
            shutdown.clone(),
        )
        .await
        .expect("the API builds");
        let url = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped());
        let worker = Worker::build(WorkerConfig {
            common: common.clone(),
            prefetch: 32,
            poison_after_deliveries: 5,
            republish_after_ms: 1000,
            payment_decline_over_cents: None,
            sabotage,
        })
        .await
        .expect("the worker builds");
        tokio::spawn(worker.run_until_stopped(shutdown.clone()));

        let db = PgPool::connect(&database_url).await.unwrap();
        let (_, key) = orderflow_shared::db::clients::create(&db, "audit", true)
            .await
            .unwrap();
        let mut config = AuditConfig::short(url, key, database_url, namespace.clone());
        config.amqp_url = amqp_url();
        config.partitions = PARTITIONS;
        Stack {
            db,
            config,
            database_name,
            topology: Topology {
                namespace,
                partitions: PARTITIONS,
                queue_max_length: common.queue_max_length,
            },
            shutdown,
        }
    }
}

impl Drop for Stack {
    /// Stops the servers and removes the database and the namespace's queues and exchanges.
    fn drop(&mut self) {
        self.shutdown.cancel();
        let (topology, database_name) = (self.topology.clone(), self.database_name.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok(connection) =
                    lapin::Connection::connect(&amqp_url(), Default::default()).await
                    && let Ok(channel) = connection.create_channel().await
                {
                    let mut queues: Vec<String> = (0..topology.partitions)
                        .map(|p| topology.partition_queue(p))
                        .collect();
                    queues.push(topology.dead_letter_queue());
                    for queue in queues {
                        let _ = channel
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                    for exchange in [
                        topology.command_exchange(),
                        topology.dead_letter_exchange(),
                        topology.events_exchange(),
                    ] {
                        let _ = channel
                            .exchange_delete(
                                exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                    let _ = connection.close(200, "cleanup".into()).await;
                }
                if let Ok(admin) = PgPool::connect(&base_database_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        r#"drop database if exists "{database_name}" with (force)"#
                    )))
                    .execute(&admin)
                    .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
