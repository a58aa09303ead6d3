//! The in-process stack the audit tests run against (the pattern of `api/tests/common`): a fresh
//! database and queue namespace, the real API on port 0 and the real worker, an admin client for
//! the audit; everything is removed when the stack is dropped.

use orderflow_api::{ApiConfig, Application};
use orderflow_bench::AuditConfig;
use orderflow_messaging::Topology;
use orderflow_runtime::config::CommonConfig;
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_testkit::{self as testing, amqp_url};
use orderflow_worker::{Worker, WorkerConfig};
use sqlx::PgPool;
use uuid::Uuid;

pub const PARTITIONS: u16 = 4;

pub struct Stack {
    pub db: PgPool,
    pub config: AuditConfig,
    database_name: String,
    topology: Topology,
    shutdown: CancellationToken,
}

impl Stack {
    pub async fn spawn() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let (database_url, database_name) =
            testing::create_migrated_database(&id, &orderflow_storage::MIGRATOR).await;
        let namespace = format!("test.{id}");
        let mut common =
            CommonConfig::for_tests(database_url.clone(), namespace.clone(), PARTITIONS);
        common.amqp_url = amqp_url().into();

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
            republish_after_ms: 1000,
            ..WorkerConfig::with_defaults(common.clone())
        })
        .await
        .expect("the worker builds");
        tokio::spawn(worker.run_until_stopped(shutdown.clone()));

        let db = PgPool::connect(&database_url).await.unwrap();
        let (_, key) = orderflow_storage::clients::create(&db, "audit", true)
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
        testing::remove(Some(self.topology.clone()), self.database_name.clone());
    }
}
