//! Idempotency-Key semantics at the API: requests racing with one key make one command, and
//! keys are per client. (Replays, 422s, 409s and what the relay completes:
//! `e2e/tests/idempotency.rs`.)

use orderflow_testkit::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;

fn order_body() -> Value {
    json!({"customer_id": "c-9", "currency": "EUR", "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 5}]})
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_command() {
    let app = Stack::builder().api().start().await;
    let body = order_body();
    let responses =
        futures_util::future::join_all((0..12).map(|_| app.post_order("same", &body))).await;
    let mut ids = HashSet::new();
    for response in responses {
        match response.status() {
            StatusCode::ACCEPTED => {
                let body: Value = response.json().await.unwrap();
                ids.insert(body["command_id"].as_str().unwrap().to_owned());
            }
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ids.len(), 1, "every 202 names the same command: {ids:?}");
    assert_eq!(app.writes().await.commands, 1);
}

#[tokio::test]
async fn keys_are_scoped_per_client() {
    let app = Stack::builder().api().start().await;
    let (_, other_key) = orderflow_storage::clients::create(&app.db, "other", false)
        .await
        .unwrap();
    let mine: Value = app
        .post_order("shared-key", &order_body())
        .await
        .json()
        .await
        .unwrap();
    let theirs = app
        .http
        .post(app.url("/v1/orders"))
        .bearer_auth(&other_key)
        .header("idempotency-key", "shared-key")
        .json(&order_body())
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::ACCEPTED);
    assert!(theirs.headers().get("idempotent-replayed").is_none());
    let theirs: Value = theirs.json().await.unwrap();
    assert_ne!(theirs["command_id"], mine["command_id"]);
}
