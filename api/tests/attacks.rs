//! The attacks of an outside audit (issue 17), each replayed against the real API: what an
//! unauthenticated, foreign or careless sender could do to everyone else, and the malformed
//! requests a generic client sends. Each test failed on the code the audit found. (The attacks
//! that reach the worker: `e2e/tests/attacks.rs`.)

use orderflow_testkit::{Stack, wait_for};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

fn host(app: &Stack) -> String {
    app.address().trim_start_matches("http://").to_owned()
}

/// Item 1: sockets that start a sign-in and never send its body hold no slot a client needs.
#[tokio::test]
async fn a_thousand_stalled_sign_ins_cannot_shed_health_checks_or_a_clients_create() {
    let app = Stack::builder().api().start().await;
    const SOCKETS: usize = 1100;
    let mut sockets = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        let mut socket = TcpStream::connect(host(&app)).await.unwrap();
        socket
            .write_all(
                b"POST /dashboard/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                  Content-Length: 1000\r\n\r\n{",
            )
            .await
            .unwrap();
        sockets.push(socket);
    }
    // Until the server has answered the sign-ins beyond the anonymous budget (shed at once): then
    // all of them have arrived, and the budget is full of stalled ones.
    let shed =
        r#"orderflow_http_requests_total{method="POST",route="/dashboard/session",status="503"}"#;
    wait_for("the sign-ins beyond the anonymous budget to be shed")
        .within(Duration::from_secs(10))
        .until(|| async {
            let value = app.metric(shed).await;
            if value >= (SOCKETS - 64) as f64 {
                Ok(())
            } else {
                Err(format!("{value} shed"))
            }
        })
        .await;

    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let create = app
        .request(Method::POST, "/v1/orders")
        .header("idempotency-key", Uuid::new_v4().to_string())
        .json(&json!({"customer_id": "c", "currency": "EUR", "items": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), StatusCode::ACCEPTED);
    // What the stalled sockets do fill is the anonymous budget, and only that.
    let anonymous = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::SERVICE_UNAVAILABLE);

    // And a stalled body is cut off after a few seconds: 408, the slot given back.
    let mut first = sockets.swap_remove(0);
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(15), first.read(&mut answer))
        .await
        .expect("the server answers a stalled body within 15 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(
        answer.starts_with("HTTP/1.1 408") || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    drop(sockets);
    wait_for("the anonymous budget to come back")
        .within(Duration::from_secs(15))
        .every(Duration::from_millis(100))
        .until(|| async {
            let page = app.http.get(app.url("/openapi.json")).send().await.unwrap();
            page.status() == StatusCode::OK
        })
        .await;
}

/// Item 2: a client picks the method; the metrics' `method` label stays a closed set.
#[tokio::test]
async fn made_up_methods_share_one_metric_label() {
    let app = Stack::builder().api().start().await;
    let mut socket = TcpStream::connect(host(&app)).await.unwrap();
    let mut requests = String::new();
    for i in 0..2000 {
        requests.push_str(&format!("M{i} /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    requests.push_str("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    socket.write_all(requests.as_bytes()).await.unwrap();
    let mut answers = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut answers))
        .await
        .expect("the server answers the pipelined requests")
        .unwrap();
    let text = app.metrics_text().await;
    let methods: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("orderflow_http_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    assert!(methods.contains("other"), "{methods:?}");
    assert!(
        methods.len() <= 12,
        "{} method values: {methods:?}",
        methods.len()
    );
}

/// Item 7: a JSON array is not an object, even where serde would read a struct from it.
#[tokio::test]
async fn a_json_array_body_is_refused_and_nothing_is_written() {
    let app = Stack::builder().api().start().await;
    let response = app
        .request(Method::POST, "/v1/orders")
        .header("idempotency-key", "k-array")
        .json(&json!(["c-arr", "EUR", [["SKU", 2, 100]]]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    // Nor is an array inside one: a line, or a details patch, given as its fields in order
    // (serde reads a nested struct from an array too; the class, found by schemathesis on the
    // details patch).
    let order = uuid::Uuid::now_v7();
    for (path, body) in [
        (
            "/v1/orders".to_owned(),
            json!({"customer_id": "c", "currency": "EUR", "items": [["SKU", 2, 100]]}),
        ),
        (
            format!("/v1/orders/{order}/commands"),
            json!({"type": "update_details", "details": [null, null]}),
        ),
    ] {
        let nested = app
            .request(Method::POST, &path)
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(nested.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    let commands: i64 = sqlx::query_scalar("select count(*) from commands")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(commands, 0);
}

/// Item 8: JSON Schema's `integer` includes `234173.0`; the API reads it as the integer.
#[tokio::test]
async fn an_integer_written_with_a_zero_fraction_is_an_integer() {
    let app = Stack::builder().api().start().await;
    let response = app
        .http
        .put(app.url("/v1/inventory/FLOAT-1"))
        .bearer_auth(&app.admin_key)
        .json(&json!({"available": 234173.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.stock("FLOAT-1").await["available"], 234173);
    let half = app
        .http
        .put(app.url("/v1/inventory/FLOAT-1"))
        .bearer_auth(&app.admin_key)
        .json(&json!({"available": 2.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(half.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let create = app
        .request(Method::POST, "/v1/orders")
        .header("idempotency-key", Uuid::new_v4().to_string())
        .json(&json!({"customer_id": "c", "currency": "EUR",
                      "items": [{"sku": "FLOAT-1", "quantity": 2.0, "unit_price_cents": 100.0}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        create.status(),
        StatusCode::ACCEPTED,
        "{:?}",
        create.text().await
    );
}

/// Item 11: the dashboard has a bucket of its own, so a script loading the API with the same
/// admin key cannot lock the page out (sign-in failed with 429 while a load ran).
#[tokio::test]
async fn a_script_that_spends_an_admin_keys_bucket_leaves_the_dashboard_its_own() {
    let app = Stack::builder()
        .api_config(|c| {
            c.rate_limit_per_second = 1;
            c.rate_limit_burst = 5;
        })
        .api()
        .start()
        .await;
    let mut limited = false;
    for _ in 0..20 {
        let response = app
            .http
            .get(app.url("/v1/inventory/ANY"))
            .bearer_auth(&app.admin_key)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
    }
    assert!(limited, "the script never met its rate limit");
    let page = app
        .http
        .get(app.url("/dashboard/api/orders"))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
}
