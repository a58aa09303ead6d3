//! The HTTP contract where a worker applies the commands, against the real API, worker,
//! PostgreSQL and RabbitMQ: one client never sees (or touches) another's orders, and a command's
//! long-poll answers its current status, at once when it is final. (The rest of the contract:
//! `api/tests/http.rs`.)

mod common;

use orderflow_storage::clients;
use orderflow_testkit::{Stack, problem, wait_for};
use reqwest::header::{CONTENT_TYPE, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uuid::Uuid;

fn widget() -> Value {
    json!([{"sku": "WIDGET", "quantity": 2, "unit_price_cents": 1250}])
}

/// A valid body of `POST /v1/orders`.
fn order_body() -> Value {
    json!({"customer_id": "cust-1", "currency": "EUR", "items": widget()})
}

fn fresh_key() -> String {
    Uuid::new_v4().to_string()
}

#[tokio::test]
async fn another_clients_order_and_commands_answer_404_exactly_like_unknown_ids_and_write_nothing()
{
    let app = common::stack().worker().start().await;
    let created = app.create_order(widget()).await;
    let order_id = created["order_id"].as_str().unwrap().to_owned();
    let command_id = created["command_id"].as_str().unwrap().to_owned();
    assert_eq!(app.wait_final(&command_id).await["status"], "applied");
    let (_, other_key) = clients::create(&app.db, "other", false).await.unwrap();
    let other = |method: Method, path: &str| {
        app.http
            .request(method, app.url(path))
            .bearer_auth(&other_key)
    };
    let (unknown_order, unknown_command) = (Uuid::now_v7(), Uuid::now_v7());

    for (theirs, unknown) in [
        (
            format!("/v1/orders/{order_id}"),
            format!("/v1/orders/{unknown_order}"),
        ),
        (
            format!("/v1/orders/{order_id}/events"),
            format!("/v1/orders/{unknown_order}/events"),
        ),
        (
            format!("/v1/commands/{command_id}"),
            format!("/v1/commands/{unknown_command}"),
        ),
        (
            format!("/v1/commands/{command_id}?wait=0"),
            format!("/v1/commands/{unknown_command}?wait=0"),
        ),
    ] {
        let (theirs_headers, theirs_body) = problem(
            other(Method::GET, &theirs),
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("another client's GET {theirs}"),
        )
        .await;
        let (unknown_headers, unknown_body) = problem(
            other(Method::GET, &unknown),
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("GET {unknown}"),
        )
        .await;
        assert_eq!(theirs_body, unknown_body, "GET {theirs} vs GET {unknown}");
        assert_eq!(
            theirs_headers.get(CONTENT_TYPE),
            unknown_headers.get(CONTENT_TYPE)
        );
        // and the owner does see it
        let response = app.request(Method::GET, &theirs).send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the owner's GET {theirs}"
        );
    }

    for (command, if_match) in [
        (json!({"type": "cancel"}), None),
        (
            json!({"type": "cancel", "reason": "mine now"}),
            Some("\"1\""),
        ),
        (
            json!({"type": "add_item", "sku": "X", "quantity": 1, "unit_price_cents": 1}),
            None,
        ),
    ] {
        let post = |order: String| {
            let mut request = other(Method::POST, &format!("/v1/orders/{order}/commands"))
                .header("idempotency-key", fresh_key())
                .json(&command);
            if let Some(if_match) = if_match {
                request = request.header(IF_MATCH, if_match);
            }
            request
        };
        let (_, theirs) = app
            .refused(
                post(order_id.clone()),
                StatusCode::NOT_FOUND,
                "not-found",
                &format!("another client's {command} on the order"),
            )
            .await;
        let (_, unknown) = app
            .refused(
                post(unknown_order.to_string()),
                StatusCode::NOT_FOUND,
                "not-found",
                &format!("{command} on an unknown order"),
            )
            .await;
        assert_eq!(theirs, unknown, "{command}");
    }

    // The owner's order is untouched.
    let order = app.order(&order_id).await;
    assert_eq!(
        (order["version"].clone(), order["status"].clone()),
        (json!(1), json!("pending"))
    );
    assert_eq!(app.events(&order_id).await.len(), 1);
}

#[tokio::test]
async fn a_wait_over_30_seconds_a_malformed_wait_or_an_unknown_query_parameter_is_400() {
    let app = common::stack().worker().start().await;
    let command_id = app.create_order(widget()).await["command_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for query in [
        "wait=31",
        "wait=abc",
        "wait=-1",
        "wait=1.5",
        "wait=18446744073709551616",
        "timeout=5",
        "wait=1&foo=bar",
    ] {
        let started = Instant::now();
        problem(
            app.request(Method::GET, &format!("/v1/commands/{command_id}?{query}")),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            &format!("GET /v1/commands/{{id}}?{query}"),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "?{query} was refused only after waiting"
        );
    }
    // The bound itself is accepted.
    let response = app
        .request(Method::GET, &format!("/v1/commands/{command_id}?wait=30"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// GET of a command status that must answer 200 JSON; returns the body and how long it took.
async fn read(app: &Stack, path: &str, query: &str) -> (Value, Duration) {
    let started = Instant::now();
    let response = app
        .request(Method::GET, &format!("{path}{query}"))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    assert_eq!(
        response.headers()[CONTENT_TYPE],
        "application/json",
        "{query}"
    );
    (response.json::<Value>().await.unwrap(), elapsed)
}

#[tokio::test]
async fn wait_0_answers_at_once_with_the_commands_current_status() {
    let mut app = common::stack().start().await;
    let created = app.create_order(widget()).await;
    let answered = chrono::Utc::now();
    let command_id = created["command_id"].as_str().unwrap().to_owned();
    let order_id = created["order_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/commands/{command_id}");

    // No worker runs: the command stays accepted, and ?wait=0 does not wait for it. The
    // broker's confirm is recorded a moment after the 202 (ORDERFLOW_CONFIRM_MARK_DELAY_MS),
    // with the time it came: before the 202.
    let pending = wait_for("the broker's confirm to be recorded")
        .until(|| async {
            let (body, elapsed) = read(&app, &path, "?wait=0").await;
            assert!(elapsed < Duration::from_secs(2), "?wait=0 took {elapsed:?}");
            body["published_at"].is_string().then_some(body)
        })
        .await;
    let published_at: chrono::DateTime<chrono::Utc> =
        pending["published_at"].as_str().unwrap().parse().unwrap();
    assert!(
        published_at <= answered,
        "a 202 comes after the broker's confirm: confirmed {published_at}, answered {answered}"
    );
    assert_eq!(pending["status"], "accepted", "{pending}");
    assert_eq!(pending["command_id"], command_id.as_str());
    assert_eq!(pending["order_id"], order_id.as_str());
    assert_eq!(pending["type"], "create");
    assert_eq!(pending["seq"], 1);
    assert!(pending["reason"].is_null(), "{pending}");
    assert!(pending["version"].is_null(), "{pending}");
    assert!(pending["expected_version"].is_null(), "{pending}");
    assert!(pending["finished_at"].is_null(), "{pending}");
    assert!(pending["accepted_at"].is_string(), "{pending}");
    let partition = pending["partition"].as_i64().unwrap();
    assert!(
        (0..i64::from(app.topology.partitions)).contains(&partition),
        "{pending}"
    );
    let mut expected_command = order_body();
    expected_command["type"] = json!("create");
    assert_eq!(pending["command"], expected_command);
    // No ?wait at all is the same as ?wait=0.
    let (no_wait, elapsed) = read(&app, &path, "").await;
    assert!(
        elapsed < Duration::from_secs(2),
        "no ?wait took {elapsed:?}"
    );
    assert_eq!(no_wait, pending);
    // A real wait does wait, then answers the same current status (not a 4xx).
    let (waited, elapsed) = read(&app, &path, "?wait=1").await;
    assert!(
        elapsed >= Duration::from_millis(900),
        "?wait=1 took {elapsed:?}"
    );
    assert_eq!(waited, pending);

    app.start_worker().await;
    let done = app.wait_final(&command_id).await;
    assert_eq!(done["status"], "applied", "{done}");

    // Once final, ?wait=0 (and even ?wait=30) answer at once with the outcome.
    for query in ["?wait=0", "?wait=30"] {
        let (finished, elapsed) = read(&app, &path, query).await;
        assert!(elapsed < Duration::from_secs(2), "{query} took {elapsed:?}");
        assert_eq!(finished["status"], "applied", "{finished}");
        assert_eq!(finished["version"], 1, "{finished}");
        assert!(finished["finished_at"].is_string(), "{finished}");
        assert!(finished["reason"].is_null(), "{finished}");
        assert_eq!(finished["command_id"], command_id.as_str());
        assert_eq!(finished["seq"], 1);
        assert_eq!(finished["partition"], partition);
        assert_eq!(finished["accepted_at"], pending["accepted_at"]);
        assert_eq!(finished["command"], expected_command);
    }
}
