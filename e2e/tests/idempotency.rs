//! Idempotency-Key semantics (Stripe's, and the IETF draft's): a replay answers the first
//! response, a different request under the same key is a 422, a key whose first request is
//! still in flight is a 409, and a request the API never finished is completed by the relay.

mod common;

use orderflow_contract::IntakeRefusal;
use orderflow_domain::{CommandId, CommandKind, OrderId};
use orderflow_storage::commands::{self, NewCommand, Source};
use orderflow_storage::idempotency;
use orderflow_testkit::Stack;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn order_body() -> Value {
    json!({"customer_id": "c-9", "currency": "EUR", "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 5}]})
}

#[tokio::test]
async fn a_replay_returns_the_first_response_and_records_nothing_new() {
    let app = common::stack().worker().start().await;
    let first = app.post_order("key-1", &order_body()).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let first_body: Value = first.json().await.unwrap();

    // Same JSON with keys in another order is the same request.
    let reordered = json!({"items": [{"unit_price_cents": 5, "quantity": 1, "sku": "A"}], "currency": "EUR", "customer_id": "c-9"});
    let again = app.post_order("key-1", &reordered).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location);
    let again_body: Value = again.json().await.unwrap();
    assert_eq!(again_body, first_body);

    // And after it was applied, still the first response.
    app.wait_final(first_body["command_id"].as_str().unwrap())
        .await;
    let later: Value = app
        .post_order("key-1", &order_body())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(later, first_body);
    assert_eq!(app.writes().await.commands, 1);
    let orders: i64 = sqlx::query_scalar("select count(*) from orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(orders, 1, "no duplicate order");
}

#[tokio::test]
async fn the_same_key_with_a_different_request_is_a_422_and_writes_nothing() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    assert_eq!(
        app.post_order("k", &order_body()).await.status(),
        StatusCode::ACCEPTED
    );
    let before = app.writes().await.commands;

    let mut changed = order_body();
    changed["customer_id"] = json!("someone-else");
    let response = app.post_order("k", &changed).await;
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
    assert_eq!(app.writes().await.commands, before + 1);
}

/// Records a create command and its key as the API does, without publishing: the state of a
/// request between its commit and its publish (or of an API killed right there).
async fn record_in_flight(app: &Stack, key: &str, body: &Value) -> (CommandId, OrderId) {
    let client = app.client_id;
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
        partition: app.partition_of(order_id),
        received_at: None,
        traceparent: None,
        actor: None,
    };
    commands::insert(&mut *tx, &new, 1).await.unwrap();
    tx.commit().await.unwrap();
    (command_id, order_id)
}

#[tokio::test]
async fn a_key_whose_first_request_is_in_flight_is_a_409_until_the_relay_completes_it() {
    // The replay waits for the first request's confirm to be recorded (the API's mark delay and
    // half a second) before it calls it in flight: the relay must not republish it before then.
    let app = common::stack()
        .worker()
        .worker_config(|c| c.republish_after_ms = 3000)
        .start()
        .await;
    let body = order_body();
    let (command_id, order_id) = record_in_flight(&app, "in-flight", &body).await;

    let response = app.post_order("in-flight", &body).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://orderflow.dev/problems/idempotency-key-in-flight"
    );

    // The worker's command relay publishes what the API never did (after 3 s here) ...
    let done = app.wait_final(&command_id.to_string()).await;
    assert_eq!(done["status"], "applied", "{done}");
    assert!(done["published_at"].is_string());
    // ... and the key now replays the answer the first caller never got.
    let replay = app.post_order("in-flight", &body).await;
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["command_id"], command_id.to_string());
    assert_eq!(replay["order_id"], order_id.to_string());
}

#[tokio::test]
async fn a_key_left_on_a_refused_command_replays_the_refusal_not_a_202() {
    let app = common::stack().worker().start().await;
    let body = order_body();
    let (command_id, _) = record_in_flight(&app, "refused", &body).await;
    assert!(
        commands::refuse_unpublished(&app.db, command_id, IntakeRefusal::QueueFull)
            .await
            .unwrap()
    );
    let response = app.post_order("refused", &body).await;
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
