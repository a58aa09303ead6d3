//! The worker binary refuses to run on a database whose schema is older than it needs.

use orderflow_testkit as testing;
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test]
async fn the_worker_refuses_an_unmigrated_database_with_a_clear_message() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (url, name) = testing::create_database(&id).await;

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
    testing::remove(None, name);
}
