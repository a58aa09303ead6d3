//! The broker's confirm is recorded after the 202, not before it (`api/src/confirms.rs`): the
//! answer does not wait for the write; a replay of the key is answered from the confirm the API
//! holds, or, on another API, waits for the write rather than calling the first request in
//! flight; and a stopping API writes the confirms it still holds.

use orderflow_testkit::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

async fn published_at(app: &Stack, command_id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("select published_at from commands where id = $1::uuid")
        .bind(command_id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// An API (no worker) that writes each confirm `delay_ms` after it arrived.
async fn api_with_mark_delay(delay_ms: u64) -> Stack {
    Stack::builder()
        .api()
        .api_config(move |c| c.confirm_mark_delay_ms = delay_ms)
        .start()
        .await
}

/// A create under a new key, answered 202: the key, the body, and the answer.
async fn first_order(app: &Stack) -> (String, Value, Value) {
    let key = Uuid::new_v4().to_string();
    let body = json!({"customer_id": "c", "currency": "EUR", "items": []});
    let first = app.post_order(&key, &body).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    (key, body, first.json().await.unwrap())
}

/// Checks that `replay` answered what `first` was answered, as a replay.
async fn assert_same_202(replay: reqwest::Response, first: &Value) {
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["command_id"], first["command_id"]);
    assert_eq!(replay["order_id"], first["order_id"]);
}

#[tokio::test]
async fn a_202_does_not_wait_for_its_confirm_to_be_recorded_and_a_stop_writes_the_ones_held() {
    // A delay no test waits out: only the stop can write the mark.
    let mut app = api_with_mark_delay(60_000).await;
    let accepted = app.create_order(json!([])).await;
    let answered = chrono::Utc::now();
    let command = accepted["command_id"].as_str().unwrap().to_owned();
    // Answered 202, its confirm not yet written (no worker runs: nothing else writes it).
    assert_eq!(published_at(&app, &command).await, None);

    assert!(app.stop_api(Duration::from_secs(10)).await);
    let published = published_at(&app, &command)
        .await
        .expect("the stop wrote the confirm it held");
    assert!(
        published <= answered,
        "the confirm's own time, before the 202: {published} vs {answered}"
    );
}

#[tokio::test]
async fn a_replay_to_the_api_holding_the_confirm_answers_the_same_202_at_once() {
    // A delay no test waits out: the mark cannot come while the test runs.
    let app = api_with_mark_delay(60_000).await;
    let (key, body, first) = first_order(&app).await;
    let command = first["command_id"].as_str().unwrap().to_owned();

    // Confirmed, not yet marked: this API holds the confirm and answers what the first request
    // was answered (a 409 `in-flight` would send the client back again), without the mark.
    assert_same_202(app.post_order(&key, &body).await, &first).await;
    assert_eq!(published_at(&app, &command).await, None);
}

#[tokio::test]
async fn a_replay_to_another_api_within_the_delay_waits_for_the_mark_and_answers_the_same_202() {
    let app = api_with_mark_delay(1_000).await;
    // A second API instance on the same database and broker, which never saw the confirm.
    let shutdown = orderflow_runtime::shutdown::CancellationToken::new();
    let other = orderflow_api::Application::build(app.api_config(), shutdown.clone())
        .await
        .expect("a second API builds");
    let other_url = format!("http://127.0.0.1:{}/v1/orders", other.port());
    let other_task = tokio::spawn(other.run_until_stopped());

    let (key, body, first) = first_order(&app).await;
    let command = first["command_id"].as_str().unwrap().to_owned();
    assert_eq!(published_at(&app, &command).await, None);

    // Recorded and confirmed elsewhere, not yet marked: the replay waits for the mark, then
    // answers what the first request was answered.
    let replay = app
        .http
        .post(&other_url)
        .bearer_auth(&app.key)
        .header("idempotency-key", &key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_same_202(replay, &first).await;
    assert!(published_at(&app, &command).await.is_some());

    shutdown.cancel();
    other_task.await.unwrap().unwrap();
}
