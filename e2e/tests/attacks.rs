//! The attacks of an outside audit (issue 17) that reach the worker, each replayed against the
//! real stack: what a foreign or careless sender could do to everyone else. Each test failed on
//! the code the audit found. (The attacks on the API alone: `api/tests/attacks.rs`.)

mod common;

use orderflow_domain::{ClientId, OrderId};
use orderflow_testkit::{Stack, wait_for};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A direct producer's message for `order_id`, with `command` as its command.
fn message(client_id: ClientId, order_id: &str, command: Value) -> Vec<u8> {
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

fn partition(app: &Stack, order_id: &str) -> u16 {
    app.partition_of(OrderId(Uuid::parse_str(order_id).unwrap()))
}

/// Creates orders until one lands on `partition`; returns its create's outcome and how long it
/// took from the 202.
async fn create_on_partition(app: &Stack, partition_wanted: u16) -> (Value, Duration) {
    for _ in 0..200 {
        let accepted = app.create_order(json!([])).await;
        let order_id = accepted["order_id"].as_str().unwrap();
        if partition(app, order_id) != partition_wanted {
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
    let app = common::stack().worker().start().await;
    let order_id = app.new_order(json!([])).await;
    let p = partition(&app, &order_id);
    app.publish_raw(
        p,
        &message(app.client_id, &order_id, json!({"type": "x\u{0}y"})),
    )
    .await;

    let (status, took) = create_on_partition(&app, p).await;
    assert_eq!(status["status"], "applied", "{status}");
    assert!(took < Duration::from_secs(5), "applied after {took:?}");

    let letters = app.dead_letters(1).await;
    assert!(letters[0].reason.contains("unknown variant"), "{letters:?}");
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
    let app = common::stack().worker().start().await;
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
    let p = partition(&app, &order_id);
    app.publish_raw(p, b"{\"not\": \"a command\"}").await;

    let (status, took) = create_on_partition(&app, p).await;
    assert_eq!(status["status"], "applied", "{status}");
    assert!(took < Duration::from_secs(5), "applied after {took:?}");

    let letter = app.dead_letters(1).await.remove(0);
    let header = |name: &str| {
        letter
            .header(name)
            .unwrap_or_else(|| panic!("{name}: {letter:?}"))
    };
    assert!(!header(orderflow_messaging::REASON_HEADER).is_empty());
    assert!(header("x-orderflow-unrecorded").contains("no dead letters today"));
    let rows: i64 = sqlx::query_scalar("select count(*) from dead_letters")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

/// Item 4: commands the broker refused after they were recorded give their order's room back.
#[tokio::test]
async fn refused_commands_give_their_room_back_and_the_order_accepts_once_the_queue_drains() {
    let mut app = common::stack()
        .queue_max_length(1)
        .api_config(|c| {
            // The order's rate is not what this is about.
            c.order_rate_per_second = 10_000;
            c.order_rate_burst = 10_000;
        })
        .worker()
        .start()
        .await;
    let order_id = app.new_order(json!([])).await;
    let p = partition(&app, &order_id);
    app.stop_workers().await;
    // Fill the order's partition queue with the order's own commands, until the broker refuses
    // one (a quorum queue notices its length a moment after the publish that passes it).
    let accepted = std::cell::Cell::new(0);
    wait_for(format!("partition {p} to fill"))
        .every(Duration::ZERO)
        .until(|| async {
            let response = app
                .request(Method::POST, &format!("/v1/orders/{order_id}/commands"))
                .header("idempotency-key", Uuid::new_v4().to_string())
                .json(&json!({"type": "reserve"}))
                .send()
                .await
                .unwrap();
            match response.status() {
                StatusCode::ACCEPTED => accepted.set(accepted.get() + 1),
                StatusCode::SERVICE_UNAVAILABLE => return true,
                other => panic!("unexpected {other}"),
            }
            false
        })
        .await;
    let accepted_before = accepted.get();
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
    let accepted = wait_for("the order to take a command again")
        .every(Duration::from_millis(100))
        .until(|| async {
            let response = app
                .request(Method::POST, &format!("/v1/orders/{order_id}/commands"))
                .header("idempotency-key", Uuid::new_v4().to_string())
                .json(&json!({"type": "reserve"}))
                .send()
                .await
                .unwrap();
            if response.status() == StatusCode::ACCEPTED {
                return Ok(response.json::<Value>().await.unwrap());
            }
            let status = response.status();
            assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "the order is wedged");
            Err(format!("answered {status}"))
        })
        .await;
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
    let app = common::stack()
        .api_config(|c| {
            c.order_rate_per_second = 1;
            c.order_rate_burst = 3;
        })
        .worker()
        .start()
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
    let app = common::stack().worker().start().await;
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

/// Item 7: a pool too small to serve is refused at start, saying what to set.
#[tokio::test]
async fn a_pool_too_small_to_serve_is_refused_at_start() {
    let app = common::stack().start().await;
    let mut common = app.common_config();
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
    let app = common::stack().worker().start().await;
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

/// Item 7: a tenant cannot pre-claim the Idempotency-Key of an admin's redrive of its dead
/// letter (it was `orderflow-redrive-<id>`, which any client could send first).
#[tokio::test]
async fn a_tenant_cannot_take_the_idempotency_key_of_a_redrive_first() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    let message = json!({
        "version": 1, "command_id": Uuid::now_v7(), "client_id": app.client_id,
        "order_id": order, "command": {"type": "cancel"}
    });
    let id = common::insert_dead_letter(
        &app,
        Some(&order),
        "delivery limit reached",
        &message.to_string(),
    )
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
