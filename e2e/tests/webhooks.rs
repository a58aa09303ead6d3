//! Webhooks: a client's endpoints get its events, signed (Standard Webhooks, checked here with
//! the scheme's own library), at least once, per order in order; an endpoint that fails, hangs
//! or redirects is retried without holding up any other; one retried too long is given up and
//! failing until a retry; requests go only where the operator allows. Against the real API,
//! worker, PostgreSQL and RabbitMQ, and a receiver on loopback (`common::receiver`).

mod common;

use common::webhooks::{Answer, Got, Receiver, create, register, until_failing};
use orderflow_storage::clients;
use orderflow_testkit::{Stack, problem, wait_for};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

fn widget() -> Value {
    json!([{"sku": "WIDGET", "quantity": 2, "unit_price_cents": 1250}])
}

/// A stack whose API and worker allow endpoints on loopback (the receiver), with quick retries.
async fn stack() -> Stack {
    common::webhooks::stack(None).worker().start().await
}

async fn get(app: &Stack, path: &str) -> Value {
    let response = app.request(Method::GET, path).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.json().await.unwrap()
}

/// The client's whole feed (`GET /v1/events`), oldest first.
async fn feed(app: &Stack) -> Vec<Value> {
    let mut events = Vec::new();
    let mut path = "/v1/events?limit=100".to_owned();
    loop {
        let page = get(app, &path).await;
        events.extend(page["data"].as_array().unwrap().iter().cloned());
        if page["has_more"] == false {
            return events;
        }
        path = format!(
            "/v1/events?limit=100&after={}",
            page["next_after"].as_str().unwrap()
        );
    }
}

/// Runs a few commands on each of `orders` new orders (interleaved across the orders); returns
/// the order ids.
async fn traffic(app: &Stack, orders: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..orders {
        ids.push(app.new_order(widget()).await);
    }
    for command in [
        json!({"type": "add_item", "sku": "GADGET", "quantity": 1, "unit_price_cents": 500}),
        json!({"type": "remove_item", "sku": "NOPE"}),
        json!({"type": "remove_item", "sku": "GADGET"}),
    ] {
        for order in &ids {
            app.run(order, command.clone(), None).await;
        }
    }
    ids
}

/// Waits until the relay has passed on `count` events of the client's feed; returns them.
async fn feed_of(app: &Stack, count: usize) -> Vec<Value> {
    wait_for(format!("{count} events in the client's feed"))
        .until(|| async {
            let events = feed(app).await;
            if events.len() >= count {
                Ok(events)
            } else {
                Err(events.len())
            }
        })
        .await
}

/// The delivery log at `path` once every delivery in it is recorded delivered.
async fn delivered_log(app: &Stack, path: &str) -> Value {
    wait_for(format!("{path}: every delivery recorded delivered"))
        .until(|| async {
            let log = get(app, path).await;
            let all = log["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["status"] == "delivered");
            if all { Ok(log) } else { Err(log) }
        })
        .await
}

/// Waits until `receiver` answered every event of `events` with a success at least once.
async fn all_delivered(receiver: &Receiver, events: &[Value], what: &str) -> Vec<Got> {
    let wanted: BTreeSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    wait_for(format!("{what}: every event delivered"))
        .until(|| async {
            let got = receiver.got();
            let delivered: BTreeSet<String> = got
                .iter()
                .filter(|g| g.succeeded())
                .map(Got::webhook_id)
                .collect();
            let missing: Vec<_> = wanted.difference(&delivered).cloned().collect();
            if missing.is_empty() {
                Ok(got)
            } else {
                Err(format!("missing {missing:?}"))
            }
        })
        .await
}

/// Every request is signed with `secret` (verified with the Standard Webhooks library), its body
/// is the feed's event of its `webhook-id`, and per order the events went out in the feed's
/// order: an order's next event only after its last one succeeded.
fn check_deliveries(got: &[Got], secret: &str, events: &[Value]) {
    let verifier = standardwebhooks::Webhook::new(secret).unwrap();
    let by_id: BTreeMap<&str, &Value> = events
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e))
        .collect();
    let mut last_sent: BTreeMap<String, (i64, bool)> = BTreeMap::new();
    for request in got {
        verifier
            .verify(&request.body, &request.headers)
            .unwrap_or_else(|e| panic!("delivery {}: {e}", request.webhook_id()));
        let body = request.json();
        let id = request.webhook_id();
        assert_eq!(body["id"], id.as_str(), "the webhook-id is the event's id");
        let event = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("delivery {id}: not in the client's feed"));
        assert_eq!(body["type"], event["type"]);
        assert_eq!(body["data"], event["data"]);
        assert_eq!(body["created_at"], event["created_at"]);
        let order = body["data"]["order_id"].as_str().unwrap().to_owned();
        let position: i64 = id.parse().unwrap();
        if let Some((before, succeeded)) = last_sent.get(&order)
            && position != *before
        {
            assert!(
                position > *before && *succeeded,
                "order {order}: event {position} went out after {before} (succeeded: \
                 {succeeded})"
            );
        }
        last_sent.insert(order, (position, request.succeeded()));
    }
}

#[tokio::test]
async fn every_event_reaches_the_endpoint_signed_and_per_order_in_order_and_the_secret_is_shown_once()
 {
    let app = stack().await;
    // What happened before the endpoint existed is not sent.
    let earlier = app.new_order(widget()).await;
    let before = feed_of(&app, 1).await;
    let receiver = Receiver::start().await;
    let created = register(
        &app,
        json!({"url": receiver.url, "description": "the shop's backend"}),
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{created}");
    assert_eq!(created["status"], "active");
    assert_eq!(created["event_types"], json!([]));
    let id = created["id"].as_str().unwrap();
    let shown = get(&app, &format!("/v1/webhook-endpoints/{id}")).await;
    assert!(
        shown.get("secret").is_none(),
        "the secret is shown once: {shown}"
    );
    assert_eq!(shown["url"], receiver.url.as_str());
    let listed = get(&app, "/v1/webhook-endpoints").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(listed["data"][0].get("secret").is_none());

    let orders = traffic(&app, 3).await;
    app.run(&earlier, json!({"type": "pay"}), None).await;
    let events: Vec<Value> = feed_of(&app, before.len() + 3 * 4 + 1)
        .await
        .into_iter()
        .skip(before.len())
        .collect();
    assert_eq!(events.len(), 13);
    let got = all_delivered(&receiver, &events, "the endpoint").await;
    check_deliveries(&got, &secret, &events);
    let sent: BTreeSet<String> = got.iter().map(Got::webhook_id).collect();
    assert!(
        !sent.contains(before[0]["id"].as_str().unwrap()),
        "an event from before the endpoint was sent"
    );
    assert_eq!(orders.len(), 3);

    // The log says the same once the worker recorded the last answer (the receiver has it a
    // moment before): every event delivered, the first time.
    let log = delivered_log(
        &app,
        &format!("/v1/webhook-endpoints/{id}/deliveries?limit=100"),
    )
    .await;
    let log = log["data"].as_array().unwrap();
    assert_eq!(log.len(), 13);
    for delivery in log {
        assert_eq!(delivery["status"], "delivered", "{delivery}");
        assert_eq!(delivery["attempts"], 1, "{delivery}");
        assert_eq!(delivery["last_response_status"], 204, "{delivery}");
    }
    // Newest first, a page at a time.
    let first = get(
        &app,
        &format!("/v1/webhook-endpoints/{id}/deliveries?limit=5"),
    )
    .await;
    assert_eq!(first["has_more"], true);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = get(
        &app,
        &format!("/v1/webhook-endpoints/{id}/deliveries?limit=5&starting_after={cursor}"),
    )
    .await;
    let ids: Vec<i64> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["data"].as_array().unwrap())
        .map(|d| d["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // Deleted: nothing more is sent.
    let deleted = app
        .request(Method::DELETE, &format!("/v1/webhook-endpoints/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let count = receiver.got().len();
    app.run(&orders[0], json!({"type": "pay"}), None).await;
    // The event after the deletion is in the feed; a second endpoint gets it, the deleted none.
    let witness = Receiver::start().await;
    register(&app, json!({"url": witness.url})).await;
    app.run(&orders[1], json!({"type": "pay"}), None).await;
    let last = feed_of(&app, before.len() + 15).await;
    all_delivered(&witness, &last[last.len() - 1..], "the second endpoint").await;
    assert_eq!(
        receiver.got().len(),
        count,
        "a deleted endpoint was sent more"
    );
}

#[tokio::test]
async fn endpoints_that_fail_hang_or_redirect_are_retried_until_they_answer_and_hold_up_no_other() {
    let app = stack().await;
    let flaky = Receiver::start().await;
    flaky.script(
        [
            Answer::Status(500),
            Answer::Status(503),
            Answer::Hang,
            Answer::Status(429),
            Answer::Hang,
        ],
        Answer::Ok,
    );
    let healthy = Receiver::start().await;
    let dead = Receiver::start().await;
    dead.script([], Answer::Hang);
    // A redirect is not followed: its target never hears of it.
    let target = Receiver::start().await;
    let redirecting = Receiver::start().await;
    redirecting.script([], Answer::Redirect(target.url.clone()));

    let flaky_endpoint = register(&app, json!({"url": flaky.url})).await;
    let healthy_endpoint = register(&app, json!({"url": healthy.url})).await;
    let dead_endpoint = register(&app, json!({"url": dead.url})).await;
    let redirecting_endpoint = register(&app, json!({"url": redirecting.url})).await;

    // Eight orders: more of the dead endpoint's deliveries could go at once than its share.
    traffic(&app, 8).await;
    let events = feed_of(&app, 32).await;
    // The healthy endpoint gets everything while the dead one has had nothing through.
    let got = all_delivered(&healthy, &events, "the healthy endpoint").await;
    check_deliveries(&got, healthy_endpoint["secret"].as_str().unwrap(), &events);
    assert!(
        dead.got().iter().all(|g| !g.succeeded()),
        "the dead endpoint never answers"
    );
    // The flaky one gets everything too, in order per order, after its failures.
    let got = all_delivered(&flaky, &events, "the flaky endpoint").await;
    check_deliveries(&got, flaky_endpoint["secret"].as_str().unwrap(), &events);
    assert!(got.len() >= events.len() + 5, "{} requests", got.len());

    let log_of = |endpoint: &Value| {
        format!(
            "/v1/webhook-endpoints/{}/deliveries?limit=100",
            endpoint["id"].as_str().unwrap()
        )
    };
    let flaky_log = delivered_log(&app, &log_of(&flaky_endpoint)).await;
    let retried: Vec<&Value> = flaky_log["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["attempts"].as_i64().unwrap() > 1)
        .collect();
    assert!(!retried.is_empty(), "{flaky_log}");
    for delivery in flaky_log["data"].as_array().unwrap() {
        assert_eq!(delivery["status"], "delivered", "{delivery}");
    }
    // The worker counts every attempt by its outcome.
    app.worker_metrics_until("the attempts counted", |s| {
        let count = |o: &str| {
            s.value(
                orderflow_worker::metrics::WEBHOOK_ATTEMPTS,
                &[("outcome", o)],
            )
        };
        count("delivered") >= 2.0 * events.len() as f64 && count("failed") >= 5.0
    })
    .await;

    // The dead endpoint's deliveries wait for a retry, saying why; at most its share was in
    // flight at once (4 by default), and none of another order overtook an earlier one.
    let dead_log = wait_for("the dead endpoint's log shows its timeouts")
        .until(|| async {
            let log = get(&app, &log_of(&dead_endpoint)).await;
            let timed_out = log["data"].as_array().unwrap().iter().any(|d| {
                d["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no answer within 300 ms"))
            });
            if timed_out { Ok(log) } else { Err(log) }
        })
        .await;
    for delivery in dead_log["data"].as_array().unwrap() {
        assert_eq!(delivery["status"], "pending", "{delivery}");
    }
    // More orders' first events than its share were tried on it, a turn at a time (each turn
    // ends with the 300 ms timeout: waited for, not assumed done by now).
    wait_for("more orders tried on the dead endpoint than its share")
        .until(|| async {
            let orders: BTreeSet<String> = dead
                .got()
                .iter()
                .map(|g| g.json()["data"]["order_id"].as_str().unwrap().to_owned())
                .collect();
            if orders.len() > 4 {
                Ok(())
            } else {
                Err(format!("{orders:?}"))
            }
        })
        .await;
    assert!(
        (1..=4).contains(&dead.most_at_once()),
        "{} requests at once to one endpoint",
        dead.most_at_once()
    );

    // The redirect: retried, recorded as the 307 it was, never followed.
    let redirect_log = wait_for("the redirecting endpoint's log shows its 307s")
        .until(|| async {
            let log = get(&app, &log_of(&redirecting_endpoint)).await;
            let redirected =
                log["data"].as_array().unwrap().iter().any(|d| {
                    d["last_response_status"] == 307 && d["attempts"].as_i64().unwrap() >= 2
                });
            if redirected { Ok(log) } else { Err(log) }
        })
        .await;
    assert!(
        redirect_log["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "pending")
    );
    assert!(target.got().is_empty(), "a redirect was followed");
}

#[tokio::test]
async fn a_delivery_retried_too_long_is_given_up_and_its_endpoint_failing_until_a_retry_sends_it() {
    let app = common::webhooks::stack(Some(1)).worker().start().await;
    let receiver = Receiver::start().await;
    receiver.script([], Answer::Status(500));
    let endpoint = register(&app, json!({"url": receiver.url})).await;
    let id = endpoint["id"].as_str().unwrap();
    let order = app.new_order(widget()).await;

    let failing = until_failing(&app, id).await;
    assert!(
        failing["failing_reason"]
            .as_str()
            .unwrap()
            .contains("HTTP 500"),
        "{failing}"
    );
    assert!(failing["failing_since"].is_string());
    let log = get(&app, &format!("/v1/webhook-endpoints/{id}/deliveries")).await;
    let given_up = log["data"][0].clone();
    assert_eq!(given_up["status"], "given_up", "{log}");
    assert!(given_up["attempts"].as_i64().unwrap() >= 2, "{given_up}");

    // While it fails, the order's next event waits: nothing is sent to a failing endpoint.
    let witness = Receiver::start().await;
    let witness_endpoint = register(&app, json!({"url": witness.url})).await;
    app.run(
        &order,
        json!({"type": "add_item", "sku": "GADGET", "quantity": 1, "unit_price_cents": 500}),
        None,
    )
    .await;
    wait_for("the second event in the endpoint's log")
        .until(|| async {
            let log = get(&app, &format!("/v1/webhook-endpoints/{id}/deliveries")).await;
            let n = log["data"].as_array().unwrap().len();
            if n == 2 { Ok(log) } else { Err(n) }
        })
        .await;
    // A healthy endpoint gets an event that came after it: once that delivery was claimed, the
    // failing endpoint's would have been claimed by the same statement, had it been claimable.
    app.new_order(widget()).await;
    let events = feed_of(&app, 3).await;
    all_delivered(&witness, &events[1..], "the witness").await;
    let log = get(&app, &format!("/v1/webhook-endpoints/{id}/deliveries")).await;
    let waiting = &log["data"][0];
    assert_eq!(
        (&waiting["status"], &waiting["attempts"]),
        (&json!("pending"), &json!(0)),
        "nothing goes to a failing endpoint: {log}"
    );
    let claimed: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select first_attempt_at from webhook_deliveries where id = $1")
            .bind(waiting["id"].as_str().unwrap().parse::<i64>().unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(claimed, None, "a failing endpoint's delivery was claimed");
    let sent = receiver.got().len();

    // The endpoint recovers; a retry of the given-up delivery sends it, and the rest follows.
    receiver.script([], Answer::Ok);
    let retry = |delivery: &str| {
        app.request(
            Method::POST,
            &format!("/v1/webhook-endpoints/{id}/deliveries/{delivery}/retry"),
        )
    };
    let retried = retry(given_up["id"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::ACCEPTED);
    assert_eq!(
        retried.json::<Value>().await.unwrap(),
        json!({"status": "retrying"})
    );
    let got = all_delivered(&receiver, &events, "the recovered endpoint").await;
    check_deliveries(&got[sent..], endpoint["secret"].as_str().unwrap(), &events);
    assert_eq!(
        got.len() - sent,
        3,
        "each of the three once: {}",
        got.len() - sent
    );
    let endpoint = get(&app, &format!("/v1/webhook-endpoints/{id}")).await;
    assert_eq!(endpoint["status"], "active", "{endpoint}");
    assert!(endpoint["failing_reason"].is_null());
    // A retry of a delivered one says there is nothing to do; of one that does not exist, 404.
    let again = retry(given_up["id"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        json!({"status": "delivered"})
    );
    assert_eq!(witness_endpoint["status"], "active");
    problem(
        retry("999999"),
        StatusCode::NOT_FOUND,
        "not-found",
        "retry of no delivery",
    )
    .await;
}

#[tokio::test]
async fn an_endpoint_must_be_https_to_a_public_host_and_a_client_sees_only_its_own() {
    // The operator has not allowed private endpoints here (the default).
    let app = common::stack().worker().start().await;
    let endpoints_before = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from webhook_endpoints")
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    for (body, why) in [
        (
            json!({"url": "http://hooks.example.com/h"}),
            "must be https",
        ),
        (json!({"url": "https://127.0.0.1:9/h"}), "not a public host"),
        (json!({"url": "https://[::1]/h"}), "not a public host"),
        (
            json!({"url": "https://169.254.169.254/latest/meta-data"}),
            "not a public host",
        ),
        (json!({"url": "https://10.0.0.7/h"}), "not a public host"),
        (json!({"url": "https://localhost/h"}), "not a public host"),
        (
            json!({"url": "https://user:pw@hooks.example.com/h"}),
            "user name or password",
        ),
        (json!({"url": "file:///etc/passwd"}), "must be https"),
        (
            json!({"url": "https://hooks.example.com/h", "event_types": ["command.done.*"]}),
            "not an event type",
        ),
        (
            json!({"url": "https://hooks.example.com/h", "description": "a\u{0}b"}),
            "NUL",
        ),
    ] {
        let (_, refused) = problem(
            create(&app, "refused", &body),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            &body.to_string(),
        )
        .await;
        let detail = refused["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{body}: {detail}");
    }
    problem(
        create(
            &app,
            "unknown",
            &json!({"url": "https://hooks.example.com/h", "secret": "mine"}),
        ),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-body",
        "an unknown field",
    )
    .await;
    problem(
        app.request(Method::POST, "/v1/webhook-endpoints")
            .json(&json!({"url": "https://hooks.example.com/h"})),
        StatusCode::BAD_REQUEST,
        "invalid-request",
        "no Idempotency-Key",
    )
    .await;
    assert_eq!(
        endpoints_before().await,
        0,
        "a refused endpoint was written"
    );

    // A retry with the same key answers the same endpoint, secret and all; with another body,
    // the key is refused.
    let body =
        json!({"url": "https://hooks.example.invalid/0", "event_types": ["command.applied.pay"]});
    let first: Value = create(&app, "once", &body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again = create(&app, "once", &body).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    problem(
        create(
            &app,
            "once",
            &json!({"url": "https://hooks.example.invalid/other"}),
        ),
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "a key reused for another endpoint",
    )
    .await;
    assert_eq!(endpoints_before().await, 1);

    // Sixteen at most.
    for n in 1..16 {
        register(
            &app,
            json!({"url": format!("https://hooks.example.invalid/{n}")}),
        )
        .await;
    }
    problem(
        create(
            &app,
            "17th",
            &json!({"url": "https://hooks.example.invalid/17"}),
        ),
        StatusCode::CONFLICT,
        "too-many-webhook-endpoints",
        "the 17th endpoint",
    )
    .await;
    assert_eq!(endpoints_before().await, 16);

    // Another client's endpoint is not there for this one.
    let (_, other_key) = clients::create(&app.db, "other", false).await.unwrap();
    let mine = get(&app, "/v1/webhook-endpoints").await["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let theirs = |method: Method, path: String| {
        app.http
            .request(method, app.url(&path))
            .bearer_auth(&other_key)
    };
    for (method, path) in [
        (Method::GET, format!("/v1/webhook-endpoints/{mine}")),
        (Method::DELETE, format!("/v1/webhook-endpoints/{mine}")),
        (
            Method::GET,
            format!("/v1/webhook-endpoints/{mine}/deliveries"),
        ),
        (
            Method::POST,
            format!("/v1/webhook-endpoints/{mine}/deliveries/1/retry"),
        ),
    ] {
        problem(
            theirs(method.clone(), path.clone()),
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("{method} {path} by another client"),
        )
        .await;
    }
    let listed: Value = theirs(Method::GET, "/v1/webhook-endpoints".into())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"], json!([]));
    assert_eq!(endpoints_before().await, 16, "another client deleted one");

    // Malformed ids and cursors are a 400.
    for path in [
        "/v1/webhook-endpoints/not-a-uuid".to_owned(),
        format!("/v1/webhook-endpoints/{mine}/deliveries?starting_after=-1"),
        format!("/v1/webhook-endpoints/{mine}/deliveries?limit=0"),
        format!("/v1/webhook-endpoints/{mine}/deliveries/x1/retry"),
    ] {
        let method = if path.ends_with("/retry") {
            Method::POST
        } else {
            Method::GET
        };
        problem(
            app.request(method, &path),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            &path,
        )
        .await;
    }
}

#[tokio::test]
async fn a_worker_that_does_not_allow_private_endpoints_sends_nothing_to_one_and_says_why() {
    // The API was told private endpoints are fine; the worker (which connects) was not.
    let app = common::stack()
        .api_config(|c| c.common.webhook_allow_private = true)
        .worker()
        .start()
        .await;
    let receiver = Receiver::start().await;
    // Plain http to it, and https to its address: neither may go there.
    let https = receiver.url.replace("http://", "https://");
    let plain = register(&app, json!({"url": receiver.url})).await;
    let secure = register(&app, json!({"url": https})).await;
    app.new_order(widget()).await;
    for (endpoint, why) in [(plain, "must be https"), (secure, "not a public host")] {
        let id = endpoint["id"].as_str().unwrap();
        let failing = until_failing(&app, id).await;
        assert!(
            failing["failing_reason"].as_str().unwrap().contains(why),
            "{failing}"
        );
    }
    assert!(
        receiver.got().is_empty(),
        "a request reached a private address"
    );
}

#[tokio::test]
async fn an_endpoint_whose_backlog_outlived_the_feed_is_told_it_may_have_lost_events_and_an_idle_one_is_not()
 {
    // A backlog of one: a dead endpoint's later events wait in the feed.
    let app = common::webhooks::stack(None)
        .worker_config(|c| {
            // After its first attempt, the dead endpoint's delivery waits a minute: no attempt
            // of it races the prune below.
            c.webhooks.first_retry_ms = 60_000;
            c.webhooks.max_retry_ms = 60_000;
            c.webhooks.backlog = 1;
        })
        .worker()
        .start()
        .await;
    let dead = Receiver::start().await;
    dead.script([], Answer::Hang);
    let lagging = register(&app, json!({"url": dead.url})).await;
    // Another client's endpoint, whose client does nothing.
    let (_, quiet_key) = clients::create(&app.db, "quiet", false).await.unwrap();
    let quiet: Value = app
        .http
        .post(app.url("/v1/webhook-endpoints"))
        .bearer_auth(&quiet_key)
        .header("idempotency-key", "quiet")
        .json(&json!({"url": dead.url}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let order = app.new_order(widget()).await;
    app.run(&order, json!({"type": "remove_item", "sku": "NOPE"}), None)
        .await;
    app.run(&order, json!({"type": "reserve"}), None).await;
    let events = feed_of(&app, 3).await;
    let head: i64 = events.last().unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let cursor = |id: &Value| {
        let id = uuid::Uuid::parse_str(id.as_str().unwrap()).unwrap();
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("select cursor from webhook_endpoints where id = $1")
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    // The feed prunes what the lagging endpoint never took, as the relay does it: idle
    // endpoints' places move to the feed's head first (the dead one's stays after its one
    // delivery).
    let moved = orderflow_storage::webhooks::advance_idle_cursors(&app.db)
        .await
        .unwrap();
    assert_eq!(
        moved, 1,
        "the quiet endpoint moves, the lagging one does not"
    );
    assert_eq!(cursor(&quiet["id"]).await, head);
    assert!(cursor(&lagging["id"]).await < head);
    let lagging_id = lagging["id"].as_str().unwrap();
    wait_for("the dead endpoint's one delivery tried")
        .until(|| async {
            let log: Value = app
                .request(
                    Method::GET,
                    &format!("/v1/webhook-endpoints/{lagging_id}/deliveries"),
                )
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (log["data"][0]["attempts"].as_i64() >= Some(1)).then_some(())
        })
        .await;

    let pruned = orderflow_storage::outbox::prune_client_events(
        &app.db,
        chrono::Utc::now() + chrono::Duration::minutes(1),
        10_000,
    )
    .await
    .unwrap();
    assert_eq!(pruned, 3);
    // The lagging endpoint says what it may have lost, and goes on (it is not failing for it).
    let told = wait_for("the lagging endpoint told of its gap")
        .until(|| async {
            let shown = common::webhooks::endpoint(&app, lagging_id).await;
            if shown["feed_gap"].is_string() {
                Ok(shown)
            } else {
                Err(shown)
            }
        })
        .await;
    let gap = told["feed_gap"].as_str().unwrap();
    assert!(
        gap.contains("left the feed") && gap.contains("may be lost"),
        "{told}"
    );
    assert_eq!(told["status"], "active", "{told}");
    assert_eq!(cursor(&lagging["id"]).await, head);
    // The quiet one lost nothing, and is not told it did.
    let quiet_now: Value = app
        .http
        .get(app.url(&format!(
            "/v1/webhook-endpoints/{}",
            quiet["id"].as_str().unwrap()
        )))
        .bearer_auth(&quiet_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(quiet_now["status"], "active", "{quiet_now}");
    assert!(quiet_now["feed_gap"].is_null(), "{quiet_now}");
}

#[tokio::test]
async fn a_client_whose_endpoints_all_hang_holds_at_most_its_share_and_another_client_is_served() {
    let app = stack().await;
    // Three endpoints of the stack's client on one receiver that never answers: at most 4 in
    // flight to each, 8 for the client.
    let hanging = Receiver::start().await;
    hanging.script([], Answer::Hang);
    for _ in 0..3 {
        register(&app, json!({"url": hanging.url})).await;
    }
    // Another client, served meanwhile.
    let (_, other_key) = clients::create(&app.db, "other", false).await.unwrap();
    let served = Receiver::start().await;
    let theirs = app
        .http
        .post(app.url("/v1/webhook-endpoints"))
        .bearer_auth(&other_key)
        .header("idempotency-key", "served")
        .json(&json!({"url": served.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::CREATED);

    traffic(&app, 8).await;
    for n in 0..3 {
        let created = app
            .http
            .post(app.url("/v1/orders"))
            .bearer_auth(&other_key)
            .header("idempotency-key", format!("theirs-{n}"))
            .json(&json!({"customer_id": "c", "currency": "EUR", "items": widget()}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::ACCEPTED);
    }
    wait_for("the other client's three events delivered")
        .until(|| async {
            let ok: BTreeSet<String> = served
                .got()
                .iter()
                .filter(|g| g.succeeded())
                .map(|g| g.json()["data"]["order_id"].as_str().unwrap().to_owned())
                .collect();
            if ok.len() == 3 { Ok(()) } else { Err(ok.len()) }
        })
        .await;
    // Every order's first event was tried on the three endpoints, in turns of at most 8.
    wait_for("the hanging endpoints tried more than one endpoint's share at once")
        .until(|| async {
            let most = hanging.most_at_once();
            if most > 4 { Ok(()) } else { Err(most) }
        })
        .await;
    assert!(
        hanging.most_at_once() <= 8,
        "{} requests at once for one client",
        hanging.most_at_once()
    );
}
