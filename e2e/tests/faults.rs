//! Faults the services survive without a manual step: the broker dropping every connection of
//! this deployment, and PostgreSQL killing every session. Each test only hurts its own
//! namespace's connections and its own database, so tests running beside it are untouched.

mod common;

use orderflow_testkit::{Stack, wait_for};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;
use uuid::Uuid;

/// Closes every broker connection whose name mentions `namespace`; returns how many.
fn close_broker_connections(namespace: &str) -> usize {
    let listing = Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_connections",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl is installed with RabbitMQ");
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let mut closed = 0;
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        if !line.contains(namespace) {
            continue;
        }
        let pid = line.split_whitespace().next().unwrap();
        let status = Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "fault injected by a test"])
            .status()
            .unwrap();
        assert!(status.success());
        closed += 1;
    }
    closed
}

/// Creates an order, retrying while the API answers 503 (nothing accepted), until applied.
async fn order_goes_through(app: &Stack) -> Value {
    // Reconnection is asynchronous to the test: poll.
    wait_for("an order to go through after the fault")
        .within(Duration::from_secs(30))
        .every(Duration::from_millis(100))
        .until(|| async {
            let response = app
                .request(Method::POST, "/v1/orders")
                .header("idempotency-key", Uuid::new_v4().to_string())
                .json(&json!({"customer_id": "c", "currency": "EUR", "items": []}))
                .send()
                .await
                .unwrap();
            match response.status() {
                StatusCode::ACCEPTED => {
                    let accepted: Value = response.json().await.unwrap();
                    Some(
                        app.wait_final(accepted["command_id"].as_str().unwrap())
                            .await,
                    )
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert!(response.headers().contains_key("retry-after"));
                    None
                }
                other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
            }
        })
        .await
}

#[tokio::test]
async fn the_api_and_worker_reconnect_after_the_broker_drops_their_connections() {
    let app = common::stack().worker().start().await;
    assert_eq!(order_goes_through(&app).await["status"], "applied");
    let closed = close_broker_connections(&app.namespace);
    assert!(
        closed >= 2,
        "the API's and the worker's connections: {closed}"
    );
    // Every partition consumes again: orders until each partition has applied one after the
    // fault (the API assigns order ids, so the partitions they land on are random).
    let mut recovered = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let done = order_goes_through(&app).await;
        assert_eq!(done["status"], "applied");
        recovered.insert(done["partition"].as_i64().unwrap());
        if recovered.len() == app.topology.partitions as usize {
            return;
        }
    }
    panic!("only partitions {recovered:?} applied a command after the fault");
}

#[tokio::test]
async fn the_api_and_worker_recover_when_postgres_kills_their_sessions() {
    let app = common::stack().worker().start().await;
    assert_eq!(order_goes_through(&app).await["status"], "applied");
    let killed: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_stat_activity
         where datname = current_database() and pid <> pg_backend_pid()",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(
        killed.len() >= 2,
        "the API's and the worker's sessions: {}",
        killed.len()
    );
    for _ in 0..8 {
        assert_eq!(order_goes_through(&app).await["status"], "applied");
    }
    // The outbox relay came back too: nothing is left waiting once the commands are done.
    wait_for("the outbox to empty")
        .until(|| async {
            let backlog: i64 = sqlx::query_scalar("select count(*) from outbox")
                .fetch_one(&app.db)
                .await
                .unwrap();
            if backlog == 0 {
                Ok(())
            } else {
                Err(format!("{backlog} rows"))
            }
        })
        .await;
}
