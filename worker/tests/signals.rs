//! The worker binary on SIGTERM: it finishes and acks what it holds, exits 0, and a restarted
//! worker takes up the rest — nothing lost, nothing applied twice, nothing redelivered.

mod common;

use common::{PARTITIONS, create};
use orderflow_domain::OrderId;
use orderflow_testkit::wait_for;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn spawn_worker(database_url: &str, namespace: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_orderflow-worker"))
        .env("DATABASE_URL", database_url)
        .env("ORDERFLOW_NAMESPACE", namespace)
        .env("ORDERFLOW_PARTITIONS", PARTITIONS.to_string())
        // Any free port: a worker of a local stack may hold the default one.
        .env("ORDERFLOW_METRICS_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn sigterm_finishes_the_message_in_hand_and_a_restart_applies_the_rest_once() {
    let stack = common::stack().start().await;
    let (url, namespace, pool) = (
        stack.database_url.clone(),
        stack.topology.namespace.clone(),
        stack.db.clone(),
    );
    let mut worker = spawn_worker(&url, &namespace);
    const ORDERS: usize = 300;
    for _ in 0..ORDERS {
        stack
            .publish(&stack.message(OrderId::new(), create(), None))
            .await;
    }

    // Stop it while it works through the backlog.
    let applied = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("select count(*) from commands where status = 'applied'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    wait_for("the worker to apply its first command")
        .within(Duration::from_secs(60))
        .every(Duration::from_millis(20))
        .until(|| async { applied(pool.clone()).await > 0 })
        .await;
    let term = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exit = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "a clean exit on SIGTERM: {exit:?}");
    let after_stop = applied(pool.clone()).await;

    let mut restarted = spawn_worker(&url, &namespace);
    wait_for("the restarted worker to finish")
        .within(Duration::from_secs(60))
        .until(|| async {
            let done = applied(pool.clone()).await;
            if done >= ORDERS as i64 {
                Ok(())
            } else {
                Err(format!("{done} of {ORDERS} applied"))
            }
        })
        .await;
    let _ = restarted.kill();
    let _ = restarted.wait();
    let events: i64 = sqlx::query_scalar("select count(*) from order_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, ORDERS as i64, "each order created exactly once");
    let unfinished: i64 =
        sqlx::query_scalar("select count(*) from commands where status <> 'applied'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(unfinished, 0);
    // The stopping worker cancelled its consumers at the broker and finished what they had been
    // given: no work was started twice. (What the broker had in flight to a cancelled consumer
    // comes back marked redelivered, unopened: its first start is then the one that applies it,
    // under the same lease epoch; see worker/tests/leases.rs.)
    let repeated: i64 = sqlx::query_scalar(
        "select count(*) from delivery_attempts a join commands c on c.id = a.command_id
          where a.attempts <> 1 or a.epoch is distinct from c.epoch or c.status <> 'applied'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(repeated, 0, "a SIGTERM repeats no work");
    eprintln!("applied {after_stop} of {ORDERS} before SIGTERM");
}
