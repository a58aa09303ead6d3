//! Holding the line under abuse: per-client rate limits, the per-client long-poll cap, and load
//! shedding at the server's in-flight limit — each answered with a clear problem+json and the
//! headers a client needs to back off, while everyone else keeps being served. (An order's
//! allowance coming back as the worker finishes its commands: `e2e/tests/abuse.rs`.)

mod common;

use orderflow_storage::clients::{self, RateLimit};
use orderflow_testkit::{Stack, wait_for};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[tokio::test]
async fn a_flooding_client_gets_429s_while_the_others_are_served() {
    let app = Stack::builder()
        .api_config(|c| {
            // A slow refill: the count of 429s must not depend on how fast the machine is.
            c.rate_limit_per_second = 1;
            c.rate_limit_burst = 20;
        })
        .api()
        .start()
        .await;
    let mut polite = Vec::new();
    for i in 0..4 {
        polite.push(
            clients::create(&app.db, &format!("polite-{i}"), false)
                .await
                .unwrap()
                .1,
        );
    }
    let get = |key: String| {
        let request = app.http.get(app.url("/v1/inventory/NONE")).bearer_auth(key);
        async move {
            let started = Instant::now();
            let response = request.send().await.unwrap();
            (response, started.elapsed())
        }
    };

    // The abuser fires 300 requests at once; each polite client sends 10 meanwhile.
    let flood = futures_util::future::join_all((0..300).map(|_| get(app.key.clone())));
    let others =
        futures_util::future::join_all(polite.iter().flat_map(|k| (0..10).map(|_| get(k.clone()))));
    let (flood, others) = tokio::join!(flood, others);

    let mut limited = 0;
    for (response, _) in flood {
        match response.status() {
            StatusCode::NOT_FOUND => {}
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                let headers = response.headers();
                assert!(
                    headers["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                        >= 1
                );
                assert_eq!(headers["ratelimit-limit"], "20");
                assert_eq!(headers["ratelimit-remaining"], "0");
                assert!(headers.contains_key("ratelimit-reset"));
                assert_eq!(headers["content-type"], "application/problem+json");
                let problem: Value = response.json().await.unwrap();
                assert_eq!(
                    problem["type"],
                    "https://orderflow.dev/problems/rate-limited"
                );
            }
            other => panic!("the abuser got {other}"),
        }
    }
    assert!(
        limited >= 250,
        "at most burst + a little refill passes: {limited} limited"
    );
    let mut latencies: Vec<Duration> = Vec::new();
    for (response, elapsed) in others {
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "polite clients are never limited"
        );
        latencies.push(elapsed);
    }
    latencies.sort();
    eprintln!(
        "abuser: {limited}/300 limited; polite clients: p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
}

#[tokio::test]
async fn a_clients_own_rate_limit_overrides_the_default() {
    let app = Stack::builder()
        .api_config(|c| {
            c.rate_limit_per_second = 1;
            c.rate_limit_burst = 2;
        })
        .api()
        .start()
        .await;
    let (_, generous) = clients::create_with_limit(
        &app.db,
        "generous",
        false,
        Some(RateLimit {
            per_second: 1000,
            burst: 50,
        }),
    )
    .await
    .unwrap();
    for _ in 0..40 {
        let response = app
            .http
            .get(app.url("/v1/inventory/NONE"))
            .bearer_auth(&generous)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    let statuses = futures_util::future::join_all(
        (0..5).map(|_| app.request(Method::GET, "/v1/inventory/NONE").send()),
    )
    .await;
    let limited = statuses
        .into_iter()
        .filter(|r| r.as_ref().unwrap().status() == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(
        limited >= 3,
        "the default (burst 2) still applies to others: {limited}"
    );
}

#[tokio::test]
async fn long_polls_are_capped_per_client() {
    let app = Stack::builder()
        .api_config(|c| c.max_waits_per_client = 3)
        .api()
        .start()
        .await;
    let accepted = app.create_order(json!([])).await;
    let path = format!(
        "/v1/commands/{}?wait=2",
        accepted["command_id"].as_str().unwrap()
    );
    let waits =
        futures_util::future::join_all((0..5).map(|_| app.request(Method::GET, &path).send()))
            .await;
    let mut statuses: Vec<u16> = waits
        .iter()
        .map(|r| r.as_ref().unwrap().status().as_u16())
        .collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    for response in waits.into_iter().map(Result::unwrap) {
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(response.headers().contains_key("retry-after"));
            let problem: Value = response.json().await.unwrap();
            assert_eq!(
                problem["type"],
                "https://orderflow.dev/problems/too-many-waits"
            );
        }
    }
    // Slots are given back when the long-polls answer.
    let again = app.request(Method::GET, &path).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}

#[tokio::test]
async fn beyond_the_in_flight_limit_requests_are_shed_with_503() {
    let app = Stack::builder()
        .api_config(|c| c.max_in_flight = 2)
        .api()
        .start()
        .await;
    let accepted = app.create_order(json!([])).await;
    let path = format!(
        "/v1/commands/{}?wait=3",
        accepted["command_id"].as_str().unwrap()
    );
    let slow =
        futures_util::future::join_all((0..2).map(|_| app.request(Method::GET, &path).send()));
    let shed = async {
        // Let the two long-polls take both slots (each counts as an open long-poll once it holds
        // one: `/metrics` is outside the budgets); then a third request is shed at once.
        let open = r#"orderflow_open_streams{kind="long_poll"}"#;
        wait_for("both long-polls to hold their slots")
            .within(Duration::from_secs(10))
            .every(Duration::from_millis(20))
            .until(|| async { app.metric(open).await >= 2.0 })
            .await;
        wait_for("a request to be shed")
            .within(Duration::from_secs(10))
            .every(Duration::from_millis(20))
            .until(|| async {
                let response = app
                    .request(Method::GET, "/v1/inventory/NONE")
                    .send()
                    .await
                    .unwrap();
                (response.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(response)
            })
            .await
    };
    let (slow, shed) = tokio::join!(slow, shed);
    assert!(
        slow.iter()
            .all(|r| r.as_ref().unwrap().status() == StatusCode::OK)
    );
    assert_eq!(shed.headers()["retry-after"], "1");
    let problem: Value = shed.json().await.unwrap();
    assert_eq!(problem["type"], "https://orderflow.dev/problems/overloaded");
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_a_431_problem_and_nothing_is_written() {
    let app = Stack::builder().api().start().await;
    let create = |extra: Vec<(String, String)>| {
        let mut request = app
            .request(Method::POST, "/v1/orders")
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .json(&json!({"customer_id": "cust-1", "currency": "EUR", "items": []}));
        for (name, value) in extra {
            request = request.header(name, value);
        }
        request.send()
    };
    let many = (0..70)
        .map(|i| (format!("x-filler-{i}"), "1".to_owned()))
        .collect();
    let huge = vec![("x-filler".to_owned(), "a".repeat(20 * 1024))];
    for (what, extra) in [("70 headers", many), ("a 20 KiB header", huge)] {
        let response = create(extra).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{what}"
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            problem["type"], "https://orderflow.dev/problems/headers-too-large",
            "{what}"
        );
    }
    let written: i64 = sqlx::query_scalar("select count(*) from commands")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(written, 0, "a refused request writes nothing");

    // Just under the limits the same request is served.
    let fine = (0..40)
        .map(|i| (format!("x-filler-{i}"), "a".repeat(200)))
        .collect();
    assert_eq!(create(fine).await.unwrap().status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_cached_key_skips_the_database_and_a_revocation_still_reaches_the_cache() {
    let app = Stack::builder()
        .api_config(|c| c.key_cache_secs = 600)
        .api()
        .start()
        .await;
    let (client, key) = clients::create(&app.db, "cached", false).await.unwrap();
    let read = || {
        app.http
            .get(app.url("/v1/inventory/NONE"))
            .bearer_auth(&key)
            .send()
    };
    let cached = r#"orderflow_api_key_lookups_total{result="cached"}"#;
    let from_database = r#"orderflow_api_key_lookups_total{result="database"}"#;

    // Once the API listens for changes to clients, a second check of a key is served from memory.
    wait_for("a key check to be cached")
        .within(Duration::from_secs(10))
        .every(Duration::ZERO)
        .until(|| async {
            if app.metric(cached).await >= 1.0 {
                return true;
            }
            assert_eq!(read().await.unwrap().status(), StatusCode::NOT_FOUND);
            false
        })
        .await;
    let database_reads = app.metric(from_database).await;
    for _ in 0..20 {
        assert_eq!(read().await.unwrap().status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(
        app.metric(from_database).await,
        database_reads,
        "20 more requests with a cached key read no key from the database"
    );

    // A revocation in the database (any process, any statement) ends the cached key.
    assert!(clients::revoke(&app.db, client.id).await.unwrap());
    let landed = common::until_unauthorized(StatusCode::NOT_FOUND, read).await;
    println!("revocation reached the cache after {landed:?}");
    for _ in 0..10 {
        assert_eq!(read().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    // The other keys were only dropped from the cache, not refused.
    assert_eq!(
        app.request(Method::GET, "/v1/inventory/NONE")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_storm_on_one_order_gets_exactly_its_room_with_gapless_seqs_and_429s_for_the_rest() {
    let app = Stack::builder()
        .api_config(|c| {
            c.max_pending_per_order = 8;
            // This test is about the allowance and the gate, not the order's rate.
            c.order_rate_per_second = 0;
            c.order_rate_burst = 1;
        })
        .api()
        .start()
        .await;
    let order = app.create_order(json!([])).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // 100 requests at once on one order: they queue at its gate, and those beyond the order's
    // allowance are turned away there or by the database.
    let storm = (0..100).map(|n| {
        let (app, order) = (&app, &order);
        async move {
            let add = json!({"type": "add_item", "sku": format!("S{n}"), "quantity": 1, "unit_price_cents": 100});
            let response = app.post_command(order, &Uuid::new_v4().to_string(), &add).await;
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    });
    let (storm, other) = tokio::join!(
        futures_util::future::join_all(storm),
        // Another order is served meanwhile.
        app.create_order(json!([]))
    );
    assert!(other["order_id"].is_string());
    let accepted = storm
        .iter()
        .filter(|(status, _)| *status == StatusCode::ACCEPTED)
        .count();
    assert_eq!(accepted, 7, "the create and 7 more fill the allowance of 8");
    for (status, body) in &storm {
        if *status != StatusCode::ACCEPTED {
            assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
            assert_eq!(body["type"], "https://orderflow.dev/problems/order-busy");
        }
    }
    let seqs: Vec<i64> =
        sqlx::query_scalar("select seq from commands where order_id = $1::uuid order by seq")
            .bind(&order)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        seqs,
        (1..=8).collect::<Vec<i64>>(),
        "one command per seq, no gap"
    );
}

#[tokio::test]
async fn an_order_beyond_its_rate_is_refused_with_retry_after_and_nothing_written() {
    let app = Stack::builder()
        .api_config(|c| {
            c.order_rate_per_second = 1;
            c.order_rate_burst = 1;
        })
        .api()
        .start()
        .await;
    let mut orders = Vec::new();
    for _ in 0..2 {
        let created = app.create_order(json!([])).await;
        orders.push(created["order_id"].as_str().unwrap().to_owned());
    }
    let (hot, cold) = (&orders[0], &orders[1]);
    let started = Instant::now();
    let storm = futures_util::future::join_all((0..20).map(|n| {
        let app = &app;
        async move {
            let add = json!({"type": "add_item", "sku": format!("S{n}"), "quantity": 1, "unit_price_cents": 100});
            let response = app.post_command(hot, &Uuid::new_v4().to_string(), &add).await;
            let status = response.status();
            let retry_after = response.headers().get("retry-after").cloned();
            let content_type = response.headers()["content-type"].clone();
            let body: Value = response.json().await.unwrap();
            (status, retry_after, content_type, body)
        }
    }))
    .await;
    // One token a second, one in the bucket: one command, plus one per second the storm took.
    let allowed = 1 + started.elapsed().as_secs() as usize;
    let accepted = storm
        .iter()
        .filter(|(status, ..)| *status == StatusCode::ACCEPTED)
        .count();
    assert!(
        (1..=allowed).contains(&accepted),
        "{accepted} accepted, {allowed} allowed"
    );
    for (status, retry_after, content_type, body) in &storm {
        if *status == StatusCode::ACCEPTED {
            continue;
        }
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(
            body["type"],
            "https://orderflow.dev/problems/order-rate-limited"
        );
        assert_eq!(content_type, "application/problem+json");
        let wait: u64 = retry_after
            .as_ref()
            .expect("a refusal says when to retry")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(wait >= 1, "{wait}");
    }
    let written: i64 =
        sqlx::query_scalar("select count(*) from commands where order_id = $1::uuid")
            .bind(hot)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        written as usize,
        1 + accepted,
        "the create and the accepted only"
    );
    // Another order has its own bucket.
    let add = json!({"type": "add_item", "sku": "C", "quantity": 1, "unit_price_cents": 100});
    assert_eq!(
        app.post_command(cold, &Uuid::new_v4().to_string(), &add)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
}
