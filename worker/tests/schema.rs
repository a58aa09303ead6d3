//! The worker binary refuses to run on a database whose schema is older than it needs.

use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test]
async fn the_worker_refuses_an_unmigrated_database_with_a_clear_message() {
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("orderflow_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(r#"create database "{name}""#)))
        .execute(&admin)
        .await
        .unwrap();
    let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);

    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_orderflow-worker"))
        .env("DATABASE_URL", &url)
        .env("ORDERFLOW_NAMESPACE", format!("test.{name}"))
        .env("ORDERFLOW_PARTITIONS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("refusing to start"), "{stderr}");
    assert!(stderr.contains("orderflow-api migrate"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it does not wait for a migration"
    );

    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"drop database "{name}" with (force)"#
    )))
    .execute(&admin)
    .await
    .unwrap();
}
