//! Support for the integration tests of every crate (a dev-dependency only; the binaries never
//! link it): a fresh, empty database per test on the server `DATABASE_URL` names, the
//! broker of `AMQP_URL`, and the removal of both when a test ends.

use orderflow_messaging::Topology;
use sqlx::PgPool;

/// The server tests create their databases on (its database part is only used to connect).
pub fn base_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Creates an empty database `orderflow_test_<id>`; returns its URL and name.
pub async fn create_database(id: &str) -> (String, String) {
    let name = format!("orderflow_test_{id}");
    let admin = PgPool::connect(&base_database_url())
        .await
        .expect("the test PostgreSQL is reachable (see README)");
    sqlx::query(sqlx::AssertSqlSafe(format!(r#"create database "{name}""#)))
        .execute(&admin)
        .await
        .expect("creating the test database");
    admin.close().await;
    let (server, _) = base_database_url()
        .rsplit_once('/')
        .map(|(s, d)| (s.to_owned(), d.to_owned()))
        .expect("DATABASE_URL has a database part");
    (format!("{server}/{name}"), name)
}

/// Deletes a test's queues and exchanges (if `topology` is given) and drops its database.
/// Blocking, on a thread of its own, so that it can run from `Drop` inside a test's runtime.
pub fn remove(topology: Option<Topology>, database_name: String) {
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        runtime.block_on(async move {
            if let Some(topology) = topology
                && let Ok(connection) =
                    lapin::Connection::connect(&amqp_url(), Default::default()).await
            {
                if let Ok(channel) = connection.create_channel().await {
                    let _ = topology.delete(&channel).await;
                }
                let _ = connection.close(200, "test done".into()).await;
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

/// A subscriber of `topology`'s status events: an exclusive, server-named queue bound with
/// `binding` (e.g. `#`) on a connection of its own. Returns the connection (close it at the end),
/// the channel and the queue's name.
pub async fn subscribe_events(
    topology: &Topology,
    binding: &str,
) -> (lapin::Connection, lapin::Channel, String) {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .expect("the broker of AMQP_URL is up");
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.name().clone(),
            topology.events_exchange().as_str().into(),
            binding.into(),
            QueueBindOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    (connection, channel, queue.name().to_string())
}
