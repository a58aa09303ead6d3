//! The attacks of an outside audit (issue 17), each replayed against the real stack: what an
//! unauthenticated, foreign or careless sender could do to everyone else, and the malformed
//! requests a generic client sends. Each test failed on the code the audit found.

mod common;

use common::{Options, PARTITIONS, TestApp};
use orderflow_contract::partition::partition_of;
use orderflow_domain::OrderId;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

fn host(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

/// Polls `series` of the API's metrics until it reaches `at_least`, for up to `limit`; returns
/// the last value read (a sync point, not an assertion: the caller asserts what matters).
async fn metric_reaches(app: &TestApp, series: &str, at_least: f64, limit: Duration) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let value = app.metric(series).await;
        if value >= at_least || Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Item 1: sockets that start a sign-in and never send its body hold no slot a client needs.
#[tokio::test]
async fn a_thousand_stalled_sign_ins_cannot_shed_health_checks_or_a_clients_create() {
    let app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Default::default()
    })
    .await;
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
    metric_reaches(&app, shed, (SOCKETS - 64) as f64, Duration::from_secs(10)).await;

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
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page = app.http.get(app.url("/openapi.json")).send().await.unwrap();
        if page.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the anonymous budget never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Item 2: a client picks the method; the metrics' `method` label stays a closed set.
#[tokio::test]
async fn made_up_methods_share_one_metric_label() {
    let app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Default::default()
    })
    .await;
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

/// A direct producer's message for `order_id`, with `command` as its command.
fn message(client_id: Uuid, order_id: &str, command: Value) -> Vec<u8> {
    json!({
        "version": 1,
        "command_id": Uuid::now_v7(),
        "client_id": client_id,
        "order_id": order_id,
        "command": command,
    })
    .to_string()
    .into_bytes()
}

fn partition(order_id: &str) -> u16 {
    partition_of(OrderId(Uuid::parse_str(order_id).unwrap()), PARTITIONS)
}

/// Creates orders until one lands on `partition`; returns its create's outcome and how long it
/// took from the 202.
async fn create_on_partition(app: &TestApp, partition_wanted: u16) -> (Value, Duration) {
    for _ in 0..200 {
        let accepted = app.create_order(json!([])).await;
        let order_id = accepted["order_id"].as_str().unwrap();
        if partition(order_id) != partition_wanted {
            continue;
        }
        let started = Instant::now();
        let path = format!(
            "/v1/commands/{}?wait=5",
            accepted["command_id"].as_str().unwrap()
        );
        let status: Value = app
            .request(Method::GET, &path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        return (status, started.elapsed());
    }
    panic!("no order on partition {partition_wanted} in 200 creates");
}

/// Item 3: a NUL in a direct producer's command type (which the parse error quotes) is
/// dead-lettered with its reason; the partition's other orders go on at once.
#[tokio::test]
async fn a_nul_in_a_direct_producers_message_does_not_stall_its_partition() {
    let app = TestApp::spawn().await;
    let order_id = app.new_order(json!([])).await;
    let p = partition(&order_id);
    app.publish_raw(
        &p.to_string(),
        &message(app.client_id, &order_id, json!({"type": "x\u{0}y"})),
    )
    .await;

    let (status, took) = create_on_partition(&app, p).await;
    assert_eq!(status["status"], "applied", "{status}");
    assert!(took < Duration::from_secs(5), "applied after {took:?}");

    let letters = app.dead_letters(1).await;
    assert!(letters[0].1.contains("unknown variant"), "{letters:?}");
    let reason: String = sqlx::query_scalar("select reason from dead_letters where order_id = $1")
        .bind(Uuid::parse_str(&order_id).unwrap())
        .fetch_one(&app.db)
        .await
        .expect("the dead letter is recorded");
    assert!(reason.contains("unknown variant"), "{reason}");
    assert!(!reason.contains('\0'));
}

/// Item 3, the class: when PostgreSQL refuses a dead letter's record, the broker's dead letter
/// carries the reason and says why it is not in the table, it is counted, and the partition
/// goes on.
#[tokio::test]
async fn a_dead_letter_postgresql_will_not_record_goes_to_the_broker_alone() {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let app = TestApp::spawn().await;
    sqlx::raw_sql(
        "create function refuse_letters() returns trigger language plpgsql as $$
         begin raise exception 'no dead letters today' using errcode = 'check_violation'; end $$;
         create trigger refuse_letters before insert on dead_letters
             for each row execute function refuse_letters();",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let order_id = app.new_order(json!([])).await;
    let p = partition(&order_id);
    app.publish_raw(&p.to_string(), b"{\"not\": \"a command\"}")
        .await;

    let (status, took) = create_on_partition(&app, p).await;
    assert_eq!(status["status"], "applied", "{status}");
    assert!(took < Duration::from_secs(5), "applied after {took:?}");

    let (connection, channel) = app.amqp_channel().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let letter = loop {
        let got = channel
            .basic_get(
                app.topology.dead_letter_queue().as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .unwrap();
        if let Some(letter) = got {
            letter.ack(BasicAckOptions::default()).await.unwrap();
            break letter;
        }
        assert!(Instant::now() < deadline, "nothing was dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let headers = letter.properties.headers().clone().unwrap_or_default();
    let header = |name: &str| match headers.inner().get(name) {
        Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("{name}: {other:?}"),
    };
    assert!(!header(orderflow_messaging::REASON_HEADER).is_empty());
    assert!(header("x-orderflow-unrecorded").contains("no dead letters today"));
    let _ = connection.close(200, "done".into()).await;
    let rows: i64 = sqlx::query_scalar("select count(*) from dead_letters")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

/// Item 4: commands the broker refused after they were recorded give their order's room back.
#[tokio::test]
async fn refused_commands_give_their_room_back_and_the_order_accepts_once_the_queue_drains() {
    let mut app = TestApp::spawn_with(Options {
        queue_max_length: 1,
        // The order's rate is not what this is about.
        order_rate: Some((10_000, 10_000)),
        ..Default::default()
    })
    .await;
    let order_id = app.new_order(json!([])).await;
    let p = partition(&order_id);
    app.stop_worker().await;
    // Fill the order's partition queue with the order's own commands, until the broker refuses
    // one (a quorum queue notices its length a moment after the publish that passes it).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut accepted_before = 0;
    loop {
        let response = app
            .request(Method::POST, &format!("/v1/orders/{order_id}/commands"))
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(&json!({"type": "reserve"}))
            .send()
            .await
            .unwrap();
        match response.status() {
            StatusCode::ACCEPTED => accepted_before += 1,
            StatusCode::SERVICE_UNAVAILABLE => break,
            other => panic!("unexpected {other}"),
        }
        assert!(Instant::now() < deadline, "partition {p} never filled");
    }
    assert!(
        accepted_before < 8,
        "{accepted_before} commands fitted a queue of one"
    );
    let max = 16;
    for i in 0..max + 4 {
        let response = app
            .request(Method::POST, &format!("/v1/orders/{order_id}/commands"))
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(&json!({"type": "reserve"}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "request {i}: {problem}"
        );
        assert_eq!(
            problem["type"], "https://orderflow.dev/problems/queue-full",
            "{problem}"
        );
    }
    app.start_worker().await;
    // The queue drains; the order takes a command again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let accepted = loop {
        let response = app
            .request(Method::POST, &format!("/v1/orders/{order_id}/commands"))
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(&json!({"type": "reserve"}))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::ACCEPTED {
            break response.json::<Value>().await.unwrap();
        }
        let status = response.status();
        assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "the order is wedged");
        assert!(Instant::now() < deadline, "never accepted: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let done = app
        .wait_final(accepted["command_id"].as_str().unwrap())
        .await;
    // It ran, on its merits: reserving an order without lines is rejected.
    assert_eq!(
        (done["status"].as_str(), done["reason"].as_str()),
        (Some("rejected"), Some("empty_order")),
        "{done}"
    );
    let (last, processed): (i64, i64) =
        sqlx::query_as("select last_seq, processed_seq from order_streams where order_id = $1")
            .bind(Uuid::parse_str(&order_id).unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(last, processed, "every command of the order is dealt with");
}

/// Item 6: another client's requests for my order id (all 404 to it) spend its budget, not mine.
#[tokio::test]
async fn another_clients_requests_for_my_order_do_not_spend_its_budget() {
    let app = TestApp::spawn_with(Options {
        order_rate: Some((1, 3)),
        ..Default::default()
    })
    .await;
    let order_id = app.new_order(json!([])).await;
    let (_, stranger) = orderflow_storage::clients::create(&app.db, "stranger", false)
        .await
        .unwrap();
    for _ in 0..20 {
        let response = app
            .http
            .post(app.url(&format!("/v1/orders/{order_id}/commands")))
            .bearer_auth(&stranger)
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(&json!({"type": "reserve"}))
            .send()
            .await
            .unwrap();
        assert!(
            [StatusCode::NOT_FOUND, StatusCode::TOO_MANY_REQUESTS].contains(&response.status()),
            "{}",
            response.status()
        );
    }
    let mine = app
        .request(Method::POST, &format!("/v1/orders/{order_id}/commands"))
        .header("idempotency-key", Uuid::new_v4().to_string())
        .json(&json!({"type": "reserve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(mine.status(), StatusCode::ACCEPTED);
}

/// Item 7: two `Authorization` or two `If-Match` lines are refused, not guessed.
#[tokio::test]
async fn two_authorization_or_two_if_match_headers_are_a_400() {
    let app = TestApp::spawn().await;
    let order_id = app.new_order(json!([])).await;
    let two_keys = app
        .http
        .get(app.url(&format!("/v1/orders/{order_id}")))
        .header("authorization", format!("Bearer {}", app.key))
        .header("authorization", "Bearer of_someone_else")
        .send()
        .await
        .unwrap();
    assert_eq!(two_keys.status(), StatusCode::BAD_REQUEST);
    let problem: Value = two_keys.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://orderflow.dev/problems/invalid-request"
    );

    let two_versions = app
        .request(Method::POST, &format!("/v1/orders/{order_id}/commands"))
        .header("idempotency-key", Uuid::new_v4().to_string())
        .header("if-match", "\"1\"")
        .header("if-match", "\"7\"")
        .json(&json!({"type": "reserve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(two_versions.status(), StatusCode::BAD_REQUEST);
    let commands: i64 = sqlx::query_scalar("select count(*) from commands where order_id = $1")
        .bind(Uuid::parse_str(&order_id).unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(commands, 1, "only the create: nothing written");
}

/// Item 7: a JSON array is not an object, even where serde would read a struct from it.
#[tokio::test]
async fn a_json_array_body_is_refused_and_nothing_is_written() {
    let app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Default::default()
    })
    .await;
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
    let commands: i64 = sqlx::query_scalar("select count(*) from commands")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(commands, 0);
}

/// Item 7: a pool too small to serve is refused at start, saying what to set.
#[tokio::test]
async fn a_pool_too_small_to_serve_is_refused_at_start() {
    let app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Default::default()
    })
    .await;
    let mut common = orderflow_runtime::config::CommonConfig::for_tests(
        app.database_url.clone(),
        app.namespace.clone(),
        PARTITIONS,
    );
    common.amqp_url = common::amqp_url().into();
    common.db_pool_size = 2;
    let config = orderflow_api::ApiConfig::with_defaults(common.clone(), "127.0.0.1:0");
    let refused = orderflow_api::Application::build(config, Default::default()).await;
    let message = format!("{:#}", refused.err().expect("refused"));
    assert!(message.contains("ORDERFLOW_DB_POOL_SIZE is 2"), "{message}");
    assert!(message.contains("at least 6"), "{message}");

    let mut worker_config = app.worker_config();
    worker_config.common.db_pool_size = 2;
    let refused = orderflow_worker::Worker::build(worker_config).await;
    let message = format!("{:#}", refused.err().expect("refused"));
    assert!(message.contains("ORDERFLOW_DB_POOL_SIZE is 2"), "{message}");
}

/// Item 7: the counters that alerts and charts read exist at 0 before anything happened (the
/// API and the worker share the process's recorder here, so one `/metrics` shows both).
#[tokio::test]
async fn counters_that_alerts_read_exist_at_zero_from_the_start() {
    let app = TestApp::spawn().await;
    let text = app.metrics_text().await;
    for series in [
        "orderflow_version_conflicts_total 0",
        "orderflow_inbox_duplicates_total 0",
        "orderflow_dead_letters_unrecorded_total 0",
        "orderflow_idempotent_replays_total 0",
        "orderflow_idempotency_mismatches_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "{series} missing:\n{text}"
        );
    }
}

/// Item 8: JSON Schema's `integer` includes `234173.0`; the API reads it as the integer.
#[tokio::test]
async fn an_integer_written_with_a_zero_fraction_is_an_integer() {
    let app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Default::default()
    })
    .await;
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
    let app = TestApp::spawn_with(Options {
        start_worker: false,
        rate_limit: Some(orderflow_storage::clients::RateLimit {
            per_second: 1,
            burst: 5,
        }),
        ..Default::default()
    })
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
    let signed_in = app
        .http
        .post(app.url("/dashboard/session"))
        .json(&json!({"key": app.admin_key}))
        .send()
        .await
        .unwrap();
    assert!(signed_in.status().is_success(), "{}", signed_in.status());
}

/// Item 7: a tenant cannot pre-claim the Idempotency-Key of an admin's redrive of its dead
/// letter (it was `orderflow-redrive-<id>`, which any client could send first).
#[tokio::test]
async fn a_tenant_cannot_take_the_idempotency_key_of_a_redrive_first() {
    let app = TestApp::spawn().await;
    let order = app.new_order(json!([])).await;
    let message = json!({
        "version": 1, "command_id": Uuid::now_v7(), "client_id": app.client_id,
        "order_id": order, "command": {"type": "cancel"}
    });
    let id = app
        .insert_dead_letter(Some(&order), "delivery limit reached", &message.to_string())
        .await;
    // The tenant guesses the key the redrive would use, and spends it on something else.
    let taken = app
        .request(Method::POST, &format!("/v1/orders/{order}/commands"))
        .header("idempotency-key", format!("orderflow-redrive-{id}"))
        .json(&json!({"type": "reserve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), StatusCode::ACCEPTED);
    let taken: Value = taken.json().await.unwrap();
    app.wait_final(taken["command_id"].as_str().unwrap()).await;

    let redriven = app
        .http
        .post(app.url(&format!("/dashboard/api/dead-letters/{id}/redrive")))
        .bearer_auth(&app.admin_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        redriven.status(),
        StatusCode::OK,
        "{:?}",
        redriven.text().await
    );
    let redriven: Value = redriven.json().await.unwrap();
    assert_ne!(redriven["command_id"], taken["command_id"]);
    let done = app
        .wait_final(redriven["command_id"].as_str().unwrap())
        .await;
    assert_eq!(done["type"], "cancel", "{done}");
    assert_eq!(done["status"], "applied", "{done}");
}
