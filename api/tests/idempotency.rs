//! Idempotency-Key semantics (Stripe's, and the IETF draft's): a replay answers the first
//! response, a different request under the same key is a 422, a key whose first request is
//! still in flight is a 409, and a request the API never finished is completed by the relay.

mod common;

use common::TestApp;
use orderflow_contract::IntakeRefusal;
use orderflow_contract::partition::partition_of;
use orderflow_domain::{ClientId, CommandId, CommandKind, OrderId};
use orderflow_storage::commands::{self, NewCommand, Source};
use orderflow_storage::idempotency;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;

fn order_body() -> Value {
    json!({"customer_id": "c-9", "currency": "EUR", "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 5}]})
}

async fn post_order(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.request(Method::POST, "/v1/orders")
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn commands_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from commands")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_replay_returns_the_first_response_and_records_nothing_new() {
    let app = TestApp::spawn().await;
    let first = post_order(&app, "key-1", &order_body()).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let first_body: Value = first.json().await.unwrap();

    // Same JSON with keys in another order is the same request.
    let reordered = json!({"items": [{"unit_price_cents": 5, "quantity": 1, "sku": "A"}], "currency": "EUR", "customer_id": "c-9"});
    let again = post_order(&app, "key-1", &reordered).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location);
    let again_body: Value = again.json().await.unwrap();
    assert_eq!(again_body, first_body);

    // And after it was applied, still the first response.
    app.wait_final(first_body["command_id"].as_str().unwrap())
        .await;
    let later: Value = post_order(&app, "key-1", &order_body())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(later, first_body);
    assert_eq!(commands_count(&app).await, 1);
    let orders: i64 = sqlx::query_scalar("select count(*) from orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(orders, 1, "no duplicate order");
}

#[tokio::test]
async fn the_same_key_with_a_different_request_is_a_422_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let order = app.new_order(json!([])).await;
    assert_eq!(
        post_order(&app, "k", &order_body()).await.status(),
        StatusCode::ACCEPTED
    );
    let before = commands_count(&app).await;

    let mut changed = order_body();
    changed["customer_id"] = json!("someone-else");
    let response = post_order(&app, "k", &changed).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://orderflow.dev/problems/idempotency-key-reused"
    );

    // The same key on another route is another request too.
    let other_route = app
        .request(Method::POST, &format!("/v1/orders/{order}/commands"))
        .header("idempotency-key", "k")
        .json(&json!({"type": "reserve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other_route.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // So is the same command with another If-Match.
    let first = app
        .request(Method::POST, &format!("/v1/orders/{order}/commands"))
        .header("idempotency-key", "k2")
        .header("if-match", "\"1\"")
        .json(&json!({"type": "cancel"}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let second = app
        .request(Method::POST, &format!("/v1/orders/{order}/commands"))
        .header("idempotency-key", "k2")
        .header("if-match", "\"2\"")
        .json(&json!({"type": "cancel"}))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(commands_count(&app).await, before + 1);
}

/// Records a create command and its key as the API does, without publishing: the state of a
/// request between its commit and its publish (or of an API killed right there).
async fn record_in_flight(app: &TestApp, key: &str, body: &Value) -> (CommandId, OrderId) {
    let client = ClientId(app.client_id);
    let (command_id, order_id) = (CommandId::new(), OrderId::new());
    let command = json!({"type": "create", "customer_id": body["customer_id"], "currency": body["currency"], "items": body["items"]});
    let mut tx = app.db.begin().await.unwrap();
    let fingerprint = orderflow_api::intake::fingerprint("POST /v1/orders", None, body);
    let claim = idempotency::claim(&mut tx, client, key, &fingerprint, command_id)
        .await
        .unwrap();
    assert_eq!(claim, idempotency::Claim::New);
    assert!(
        commands::open_stream(&mut *tx, order_id, client)
            .await
            .unwrap()
    );
    let new = NewCommand {
        id: command_id,
        client_id: client,
        order_id,
        kind: CommandKind::Create,
        body: &command,
        expected_version: None,
        source: Source::Http,
        partition: partition_of(order_id, common::PARTITIONS),
        received_at: None,
        traceparent: None,
    };
    commands::insert(&mut *tx, &new, 1).await.unwrap();
    tx.commit().await.unwrap();
    (command_id, order_id)
}

#[tokio::test]
async fn a_key_whose_first_request_is_in_flight_is_a_409_until_the_relay_completes_it() {
    let app = TestApp::spawn().await;
    let body = order_body();
    let (command_id, order_id) = record_in_flight(&app, "in-flight", &body).await;

    let response = post_order(&app, "in-flight", &body).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://orderflow.dev/problems/idempotency-key-in-flight"
    );

    // The worker's command relay publishes what the API never did (after 1 s in tests) ...
    let done = app.wait_final(&command_id.to_string()).await;
    assert_eq!(done["status"], "applied", "{done}");
    assert!(done["published_at"].is_string());
    // ... and the key now replays the answer the first caller never got.
    let replay = post_order(&app, "in-flight", &body).await;
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["command_id"], command_id.to_string());
    assert_eq!(replay["order_id"], order_id.to_string());
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_command() {
    let app = TestApp::spawn().await;
    let body = order_body();
    let responses =
        futures_util::future::join_all((0..12).map(|_| post_order(&app, "same", &body))).await;
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
    assert_eq!(commands_count(&app).await, 1);
}

#[tokio::test]
async fn keys_are_scoped_per_client() {
    let app = TestApp::spawn().await;
    let (_, other_key) = orderflow_storage::clients::create(&app.db, "other", false)
        .await
        .unwrap();
    let mine: Value = post_order(&app, "shared-key", &order_body())
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

#[tokio::test]
async fn a_key_left_on_a_refused_command_replays_the_refusal_not_a_202() {
    let app = TestApp::spawn().await;
    let body = order_body();
    let (command_id, _) = record_in_flight(&app, "refused", &body).await;
    assert!(
        commands::refuse_unpublished(&app.db, command_id, IntakeRefusal::QueueFull)
            .await
            .unwrap()
    );
    let response = post_order(&app, "refused", &body).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "https://orderflow.dev/problems/queue-full");
    // and a refused command wakes its long-polls at once
    let status = app.wait_final(&command_id.to_string()).await;
    assert_eq!(
        (status["status"].clone(), status["reason"].clone()),
        (json!("rejected"), json!("queue_full"))
    );
}
