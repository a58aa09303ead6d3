//! A `DATABASE_URL` with several hosts follows the primary: against a real primary and its
//! synchronous standby (`deploy/lib/pg-ha.sh`, a pair of its own beside the machine's cluster),
//! the pool writes to the primary though the standby is listed first, and after a switchover
//! writes to the promoted one, with every row written before it still there.

use orderflow_testkit::wait::wait_for;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn rig(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/lib/pg-ha.sh");
    let output = Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .expect("running deploy/lib/pg-ha.sh");
    assert!(
        output.status.success(),
        "pg-ha.sh {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Takes the pair down when the test ends, passed or not.
struct Pair;

impl Drop for Pair {
    fn drop(&mut self) {
        rig(&["down"]);
    }
}

fn port_of(node: &str) -> u16 {
    match node {
        "1" => 5440,
        "2" => 5441,
        other => panic!("pg-ha.sh named node {other:?}"),
    }
}

/// Writes one row through the pool; the port of the server that took it.
async fn write(pool: &sqlx::PgPool, n: i32) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("insert into followed (n) values ($1) returning inet_server_port()")
        .bind(n)
        .fetch_one(pool)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_over_a_primary_and_its_standby_writes_to_whichever_is_primary() {
    rig(&["up"]);
    let _pair = Pair;
    let primary = port_of(&rig(&["primary"]));
    let standby = if primary == 5440 { 5441 } else { 5440 };
    let hosts = format!("127.0.0.1:{standby},127.0.0.1:{primary}");
    let admin = orderflow_storage::pool(
        &format!("postgres://orderflow:orderflow@{hosts}/postgres"),
        1,
    )
    .expect("a pool over both hosts");
    // The standby is listed first: its connections are refused, and the pool finds the primary.
    wait_for("the pool to reach the primary")
        .within(Duration::from_secs(20))
        .every(Duration::from_millis(100))
        .until(|| async {
            sqlx::query("create database followed")
                .execute(&admin)
                .await
                .map(|_| ())
        })
        .await;
    admin.close().await;
    let pool = orderflow_storage::pool(
        &format!("postgres://orderflow:orderflow@{hosts}/followed"),
        4,
    )
    .expect("a pool over both hosts");
    wait_for("the second pool to reach the primary")
        .within(Duration::from_secs(20))
        .every(Duration::from_millis(100))
        .until(|| async {
            sqlx::query("create table followed (n int primary key)")
                .execute(&pool)
                .await
                .map(|_| ())
        })
        .await;
    let mut written = 0;
    for n in 0..20 {
        assert_eq!(write(&pool, n).await.unwrap(), i32::from(primary));
        written += 1;
    }

    rig(&["switchover"]);
    let promoted = port_of(&rig(&["primary"]));
    assert_eq!(promoted, standby, "the standby was promoted");
    let port = wait_for("a write to reach the promoted primary")
        .within(Duration::from_secs(20))
        .every(Duration::from_millis(100))
        .until(|| async { write(&pool, written).await })
        .await;
    assert_eq!(port, i32::from(promoted));
    written += 1;

    // Synchronous replication: nothing acknowledged before the switchover is missing after it.
    let rows: i64 = sqlx::query_scalar("select count(*) from followed")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, i64::from(written));
    pool.close().await;
}
