//! The dashboard's endpoints against the real stack: who may see it, the order list, the
//! timeline with each conflict and its winner, the live feed (and that it ends on shutdown), the
//! partitions panel, redrive, and the API's Prometheus series.

mod common;

use common::{Options, TestApp};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uuid::Uuid;

fn admin(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.http
        .request(method, app.url(path))
        .bearer_auth(&app.admin_key)
}

async fn timeline(app: &TestApp, order_id: &str) -> Value {
    let response = admin(
        app,
        Method::GET,
        &format!("/dashboard/api/orders/{order_id}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn command<'a>(timeline: &'a Value, id: &str) -> &'a Value {
    timeline["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("command {id} on the timeline: {timeline:#}"))
}

#[tokio::test]
async fn the_dashboard_is_for_admins_only_and_a_sign_in_sets_an_http_only_cookie() {
    let app = TestApp::spawn().await;
    let page = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("sign-in-form"));

    let anonymous = app
        .http
        .get(app.url("/dashboard/api/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        anonymous.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let ordinary = app
        .request(Method::GET, "/dashboard/api/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(ordinary.status(), StatusCode::FORBIDDEN);

    let sign_in = |key: &str| {
        app.http
            .post(app.url("/dashboard/session"))
            .json(&json!({ "key": key }))
            .send()
    };
    assert_eq!(
        sign_in("of_not-a-key").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        sign_in(&app.key).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let signed_in = sign_in(&app.admin_key).await.unwrap();
    assert_eq!(signed_in.status(), StatusCode::NO_CONTENT);
    let cookie = signed_in.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let pair = cookie.split(';').next().unwrap().to_owned();

    let page = app
        .http
        .get(app.url("/"))
        .header(header::COOKIE, &pair)
        .send()
        .await
        .unwrap();
    assert!(
        page.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(page.text().await.unwrap().contains("tab-partitions"));
    let orders = app
        .http
        .get(app.url("/dashboard/api/orders"))
        .header(header::COOKIE, &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(orders.status(), StatusCode::OK);
    // A form from another site cannot sign in or act: JSON bodies only.
    let form = app
        .http
        .post(app.url("/dashboard/session"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("key={}", app.admin_key))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn the_order_list_filters_by_status_and_id_and_refuses_bad_filters() {
    let app = TestApp::spawn_with(Options {
        start_worker: true,
        ..Options::default()
    })
    .await;
    let first = app.new_order(json!([])).await;
    let second = app.new_order(json!([])).await;
    app.run(&second, json!({"type": "cancel"}), None).await;

    let list = |query: &str| {
        let request = admin(&app, Method::GET, &format!("/dashboard/api/orders{query}"));
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, all) = list("").await;
    assert_eq!(status, StatusCode::OK);
    // Newest change first: the cancelled order moved last.
    assert_eq!(all[0]["id"], second.as_str());
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, cancelled) = list("?status=cancelled").await;
    assert_eq!(cancelled.as_array().unwrap().len(), 1);
    assert_eq!(cancelled[0]["client"], "test-client");
    let (_, by_id) = list(&format!("?q={}", &first[first.len() - 8..])).await;
    assert_eq!(by_id.as_array().unwrap().len(), 1);
    assert_eq!(by_id[0]["id"], first.as_str());

    for bad in [
        "?status=lost",
        "?q=zz",
        "?limit=0",
        "?limit=501",
        "?colour=red",
    ] {
        let (status, problem) = list(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
        assert_eq!(
            problem["type"],
            "https://orderflow.dev/problems/invalid-request"
        );
    }
    let unknown = admin(
        &app,
        Method::GET,
        &format!("/dashboard/api/orders/{}", Uuid::now_v7()),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_timeline_shows_each_journey_and_marks_a_stale_if_match_with_the_command_that_won() {
    let app = TestApp::spawn_with(Options {
        start_worker: true,
        ..Options::default()
    })
    .await;
    let order = app.new_order(json!([])).await;
    let item =
        |sku: &str| json!({"type": "add_item", "sku": sku, "quantity": 1, "unit_price_cents": 100});
    // Both expect version 1: the first applied wins, the second must lose.
    let winner = app.send(&order, item("A"), Some(1)).await;
    let loser = app.send(&order, item("B"), Some(1)).await;
    let winner_id = winner["command_id"].as_str().unwrap();
    let loser_id = loser["command_id"].as_str().unwrap();
    assert_eq!(app.wait_final(winner_id).await["status"], "applied");
    assert_eq!(app.wait_final(loser_id).await["status"], "rejected");

    let timeline = timeline(&app, &order).await;
    assert_eq!(timeline["order"]["version"], 2);
    assert_eq!(timeline["events"].as_array().unwrap().len(), 2);
    let won = command(&timeline, winner_id);
    assert_eq!(won["status"], "applied");
    assert!(won["conflict"].is_null());
    // Every stage of the journey is stamped, in order.
    let stamp = |c: &Value, field: &str| {
        chrono::DateTime::parse_from_rfc3339(
            c[field].as_str().unwrap_or_else(|| panic!("{field}: {c}")),
        )
        .unwrap()
    };
    // (The broker may deliver before the API has recorded its confirm: published_at is when the
    // confirm came back, so it is only known to follow the recording.)
    for (earlier, later) in [
        ("received_at", "accepted_at"),
        ("accepted_at", "published_at"),
        ("accepted_at", "delivered_at"),
        ("delivered_at", "finished_at"),
    ] {
        assert!(
            stamp(won, earlier) <= stamp(won, later),
            "{earlier} ≤ {later}: {won}"
        );
    }
    assert!(
        won["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-"))
    );
    assert_eq!(won["attempt"], 1);
    assert_eq!(won["source"], "http");

    let lost = command(&timeline, loser_id);
    assert_eq!(lost["reason"], "version_conflict");
    assert_eq!(lost["conflict"]["reason"], "version_conflict");
    assert_eq!(lost["conflict"]["detail"], "expected version 1, found 2");
    assert_eq!(lost["conflict"]["winner"]["command_id"], winner_id);
    assert_eq!(lost["conflict"]["winner"]["kind"], "add_item");
}

#[tokio::test]
async fn a_reserve_that_lost_the_last_units_names_the_reserve_that_took_them() {
    let app = TestApp::spawn_with(Options {
        start_worker: true,
        ..Options::default()
    })
    .await;
    app.set_stock("SCARCE", 1).await;
    let items = json!([{"sku": "SCARCE", "quantity": 1, "unit_price_cents": 500}]);
    let first = app.new_order(items.clone()).await;
    let second = app.new_order(items).await;
    let took = app.run(&first, json!({"type": "reserve"}), None).await;
    let lost = app.run(&second, json!({"type": "reserve"}), None).await;
    assert_eq!(
        (took["status"].as_str(), lost["status"].as_str()),
        (Some("applied"), Some("rejected"))
    );

    let timeline = timeline(&app, &second).await;
    let reserve = command(&timeline, lost["command_id"].as_str().unwrap());
    assert_eq!(reserve["conflict"]["reason"], "insufficient_stock");
    assert_eq!(
        reserve["conflict"]["winner"]["command_id"],
        took["command_id"]
    );
    assert_eq!(reserve["conflict"]["winner"]["order_id"], first.as_str());
    assert!(
        reserve["conflict"]["detail"]
            .as_str()
            .unwrap()
            .contains("SCARCE")
    );
}

#[tokio::test]
async fn an_idempotency_mismatch_is_counted_and_shown_on_the_order_with_the_key_holder() {
    let app = TestApp::spawn_with(Options {
        start_worker: true,
        ..Options::default()
    })
    .await;
    let order = app.new_order(json!([])).await;
    let post = |body: Value| {
        app.request(Method::POST, &format!("/v1/orders/{order}/commands"))
            .header("idempotency-key", "same-key")
            .json(&body)
            .send()
    };
    let first = post(json!({"type": "cancel"})).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let holder = first.json::<Value>().await.unwrap()["command_id"].clone();
    let replay = post(json!({"type": "cancel"})).await.unwrap();
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    let mismatch = post(json!({"type": "reserve"})).await.unwrap();
    assert_eq!(mismatch.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The events travel through PostgreSQL's NOTIFY to every API instance's dashboard feed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = timeline(&app, &order).await["http_events"].clone();
        if events.as_array().unwrap().len() == 2 || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["replay", "idempotency_mismatch"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["command_id"] == holder)
    );

    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert_eq!(
        series(&text, "orderflow_idempotent_replays_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        series(&text, "orderflow_idempotency_mismatches_total", &[]),
        Some(1.0)
    );
}

/// The value of the series `name` whose labels include every `labels` pair.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .reduce(|a, b| a + b)
}

#[tokio::test]
async fn the_api_metrics_count_requests_by_route_template_and_accepted_commands_by_type() {
    let app = TestApp::spawn().await;
    let scrape = || async {
        app.http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = scrape().await;
    let order = app.create_order(json!([])).await;
    let missing = app
        .request(Method::GET, &format!("/v1/orders/{}", Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let after = scrape().await;
    let count = |text: &str, labels: &[(&str, &str)]| {
        series(text, "orderflow_http_requests_total", labels).unwrap_or(0.0)
    };
    let created = [
        ("method", "POST"),
        ("route", "/v1/orders"),
        ("status", "202"),
    ];
    assert_eq!(count(&after, &created) - count(&before, &created), 1.0);
    // By template, never by raw path (ids would explode the label set).
    let read = [("route", "/v1/orders/{order_id}"), ("status", "404")];
    assert_eq!(count(&after, &read) - count(&before, &read), 1.0);
    assert!(!after.contains(order["order_id"].as_str().unwrap()));
    let accepted = [("type", "create"), ("source", "http")];
    assert_eq!(
        series(&after, "orderflow_commands_accepted_total", &accepted).unwrap_or(0.0)
            - series(&before, "orderflow_commands_accepted_total", &accepted).unwrap_or(0.0),
        1.0
    );
    assert!(after.contains("orderflow_http_request_duration_seconds_bucket"));
}

/// Reads SSE frames (event name, data) from a streaming response until `want` says stop or the
/// deadline passes.
async fn read_frames(
    response: &mut reqwest::Response,
    deadline: Duration,
    mut want: impl FnMut(&str, &Value) -> bool,
) -> bool {
    let until = Instant::now() + deadline;
    let mut buffer = String::new();
    while Instant::now() < until {
        let chunk = match tokio::time::timeout(until - Instant::now(), response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            _ => return false,
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim());
                }
            }
            if let Ok(value) = serde_json::from_str::<Value>(&data)
                && want(event, &value)
            {
                return true;
            }
        }
    }
    false
}

#[tokio::test]
async fn the_live_feed_streams_orders_commands_stats_and_partitions_and_ends_on_shutdown() {
    let mut app = TestApp::spawn_with(Options {
        start_worker: true,
        ..Options::default()
    })
    .await;
    let mut feed = admin(&app, Method::GET, "/dashboard/api/stream")
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), StatusCode::OK);
    assert_eq!(feed.headers()[header::CONTENT_TYPE], "text/event-stream");

    let order = app.new_order(json!([])).await;
    let (mut saw_order, mut saw_command, mut saw_stats, mut saw_partitions) =
        (false, false, false, false);
    let all = read_frames(&mut feed, Duration::from_secs(15), |event, data| {
        match event {
            "order" => saw_order |= data["id"] == order.as_str() && data["version"] == 1,
            "command" => {
                saw_command |= data["order_id"] == order.as_str() && data["status"] == "applied"
            }
            "stats" => saw_stats |= data["applied_per_s"].is_number(),
            "partitions" => {
                saw_partitions |= data["partitions"].as_array().map(Vec::len)
                    == Some(app.topology.partitions as usize)
            }
            _ => {}
        }
        saw_order && saw_command && saw_stats && saw_partitions
    })
    .await;
    assert!(
        all,
        "order {saw_order}, command {saw_command}, stats {saw_stats}, partitions {saw_partitions}"
    );

    // An open dashboard must not hold the server's graceful shutdown.
    assert!(
        app.stop_api(Duration::from_secs(10)).await,
        "the API stopped with a feed open"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = feed.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the feed ended");
}

#[tokio::test]
async fn a_client_may_hold_only_so_many_live_feeds() {
    let app = TestApp::spawn().await;
    let mut open = Vec::new();
    for _ in 0..8 {
        let feed = admin(&app, Method::GET, "/dashboard/api/stream")
            .send()
            .await
            .unwrap();
        assert_eq!(feed.status(), StatusCode::OK);
        open.push(feed);
    }
    let refused = admin(&app, Method::GET, "/dashboard/api/stream")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key(header::RETRY_AFTER));
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://orderflow.dev/problems/too-many-streams"
    );
    // Closing one frees its slot.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = admin(&app, Method::GET, "/dashboard/api/stream")
            .send()
            .await
            .unwrap();
        if again.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "a slot was freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_dead_letter_is_redriven_once_as_a_new_command_and_the_action_is_audited() {
    let app = TestApp::spawn_with(Options {
        start_worker: true,
        ..Options::default()
    })
    .await;
    let order = app.new_order(json!([])).await;
    // A dead letter as the worker records one: the message as received, with its reason.
    let message = json!({
        "version": 1, "command_id": Uuid::now_v7(), "client_id": app.client_id,
        "order_id": order, "command": {"type": "cancel"}
    });
    let id: i64 = sqlx::query_scalar(
        "insert into dead_letters (command_id, order_id, client_id, partition, reason, body)
         values ($1, $2, $3, 0, 'delivery limit reached', $4) returning id",
    )
    .bind(Uuid::parse_str(message["command_id"].as_str().unwrap()).unwrap())
    .bind(Uuid::parse_str(&order).unwrap())
    .bind(app.client_id)
    .bind(message.to_string())
    .fetch_one(&app.db)
    .await
    .unwrap();

    let listed: Value = admin(&app, Method::GET, "/dashboard/api/dead-letters")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["reason"], "delivery limit reached");

    let redrive = || {
        admin(
            &app,
            Method::POST,
            &format!("/dashboard/api/dead-letters/{id}/redrive"),
        )
        .json(&json!({}))
        .send()
    };
    let first = redrive().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["new"], true);
    let command_id = first["command_id"].as_str().unwrap();
    assert_eq!(app.wait_final(command_id).await["status"], "applied");
    assert_eq!(app.order(&order).await["status"], "cancelled");

    let again: Value = redrive().await.unwrap().json().await.unwrap();
    assert_eq!(
        (again["command_id"].as_str(), again["new"].as_bool()),
        (Some(command_id), Some(false))
    );
    let audited: i64 = sqlx::query_scalar(
        "select count(*) from admin_actions where action = 'redrive_dead_letter' and target = $1",
    )
    .bind(id.to_string())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(audited, 1);

    let missing = admin(
        &app,
        Method::POST,
        "/dashboard/api/dead-letters/999999/redrive",
    )
    .json(&json!({}))
    .send()
    .await
    .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let unreadable: i64 = sqlx::query_scalar(
        "insert into dead_letters (partition, reason, body) values (0, 'malformed', 'not json')
         returning id",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let refused = admin(
        &app,
        Method::POST,
        &format!("/dashboard/api/dead-letters/{unreadable}/redrive"),
    )
    .json(&json!({}))
    .send()
    .await
    .unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
}
