//! The dashboard's endpoints against the real stack: the order list, the timeline with each
//! conflict and its winner, the live feed (and that it ends on shutdown), the partitions panel,
//! redrive and the dead letters. (Who may see it, and what needs no worker:
//! `api/tests/dashboard.rs`.)

mod common;

use orderflow_domain::ClientId;
use orderflow_testkit::{Scrape, Stack, read_frames, wait_for};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

async fn timeline(app: &Stack, order_id: &str) -> Value {
    let response = app
        .admin_request(Method::GET, &format!("/dashboard/api/orders/{order_id}"))
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
async fn the_order_list_filters_by_status_and_id_and_refuses_bad_filters() {
    let app = common::stack().worker().start().await;
    let first = app.new_order(json!([])).await;
    let second = app.new_order(json!([])).await;
    app.run(&second, json!({"type": "cancel"}), None).await;

    let list = |query: &str| {
        let request = app.admin_request(Method::GET, &format!("/dashboard/api/orders{query}"));
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
    let unknown = app
        .admin_request(
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
    let app = common::stack().worker().start().await;
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
    let app = common::stack().worker().start().await;
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
    let app = common::stack().worker().start().await;
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
    let events = wait_for("both idempotency events on the timeline")
        .within(Duration::from_secs(10))
        .until(|| async {
            let events = timeline(&app, &order).await["http_events"].clone();
            if events.as_array().unwrap().len() == 2 {
                Ok(events)
            } else {
                Err(events)
            }
        })
        .await;
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
    let scrape = Scrape::parse(&metrics.text().await.unwrap());
    assert_eq!(
        scrape.get("orderflow_idempotent_replays_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        scrape.get("orderflow_idempotency_mismatches_total", &[]),
        Some(1.0)
    );
}

#[tokio::test]
async fn the_live_feed_streams_orders_commands_stats_and_partitions_and_ends_on_shutdown() {
    let mut app = common::stack().worker().start().await;
    let mut feed = app
        .admin_request(Method::GET, "/dashboard/api/stream")
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
async fn a_dead_letter_is_redriven_once_as_a_new_command_and_the_action_is_audited() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    // A dead letter as the worker records one: the message as received, with its reason.
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

    let listed: Value = app
        .admin_request(Method::GET, "/dashboard/api/dead-letters")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["reason"], "delivery limit reached");

    let redrive = || {
        app.admin_request(
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

    let missing = app
        .admin_request(Method::POST, "/dashboard/api/dead-letters/999999/redrive")
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
    let refused = app
        .admin_request(
            Method::POST,
            &format!("/dashboard/api/dead-letters/{unreadable}/redrive"),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// A readable cancel of `order` from `client`, as a message body.
fn cancel_message(client: ClientId, order: &str) -> String {
    json!({
        "version": 1, "command_id": Uuid::now_v7(), "client_id": client,
        "order_id": order, "command": {"type": "cancel"}
    })
    .to_string()
}

async fn dead_letter_list(app: &Stack) -> Vec<Value> {
    let response = app
        .admin_request(Method::GET, "/dashboard/api/dead-letters")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn letter(list: &[Value], id: i64) -> &Value {
    list.iter()
        .find(|l| l["id"] == id)
        .unwrap_or_else(|| panic!("dead letter {id} in {list:?}"))
}

async fn dead_letter_action(app: &Stack, id: &str, action: &str) -> reqwest::Response {
    app.admin_request(
        Method::POST,
        &format!("/dashboard/api/dead-letters/{id}/{action}"),
    )
    .json(&json!({}))
    .send()
    .await
    .unwrap()
}

async fn assert_problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    response.json().await.unwrap()
}

/// The open dead letters the stats frames count (the banner), once it reads `want`.
async fn open_dead_letters_become(feed: &mut reqwest::Response, want: i64) -> bool {
    read_frames(feed, Duration::from_secs(10), |event, data| {
        event == "stats"
            && data["dead_letters_open"] == want
            && data["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["kind"] == "dead_letters")
                == (want > 0)
    })
    .await
}

#[tokio::test]
async fn redrive_is_offered_only_where_it_can_work_and_an_acknowledged_dead_letter_clears_the_banner()
 {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    let readable = common::insert_dead_letter(
        &app,
        Some(&order),
        "delivery limit reached",
        &cancel_message(app.client_id, &order),
    )
    .await;
    let unreadable = common::insert_dead_letter(&app, None, "malformed", "not json").await;
    let (gone, _) = orderflow_storage::clients::create(&app.db, "gone", false)
        .await
        .unwrap();
    let orphan = common::insert_dead_letter(
        &app,
        Some(&order),
        "delivery limit reached",
        &cancel_message(gone.id, &order),
    )
    .await;
    orderflow_storage::clients::revoke(&app.db, gone.id)
        .await
        .unwrap();

    let list = dead_letter_list(&app).await;
    assert_eq!(letter(&list, readable)["redrivable"], true);
    assert!(letter(&list, readable)["not_redrivable_because"].is_null());
    for id in [unreadable, orphan] {
        assert_eq!(letter(&list, id)["redrivable"], false, "{list:?}");
        assert!(
            letter(&list, id)["not_redrivable_because"]
                .as_str()
                .is_some_and(|why| !why.is_empty())
        );
    }
    let mut feed = app.open_feed(&app.admin_key).await;
    assert!(open_dead_letters_become(&mut feed, 3).await);

    // Acknowledging: audited once, repeatable, and the letter no longer counts as open.
    for _ in 0..2 {
        let acknowledged = dead_letter_action(&app, &unreadable.to_string(), "acknowledge").await;
        assert_eq!(acknowledged.status(), StatusCode::OK);
        let acknowledged: Value = acknowledged.json().await.unwrap();
        assert_eq!(acknowledged["dead_letter_id"], unreadable);
        assert!(acknowledged["acknowledged_at"].is_string());
    }
    let audited: i64 = sqlx::query_scalar(
        "select count(*) from admin_actions where action = 'acknowledge_dead_letter' and target = $1",
    )
    .bind(unreadable.to_string())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    let list = dead_letter_list(&app).await;
    assert!(letter(&list, unreadable)["acknowledged_at"].is_string());
    assert_eq!(letter(&list, unreadable)["redrivable"], false);
    assert!(open_dead_letters_become(&mut feed, 2).await);

    // An acknowledged letter is not redriven; a redriven one is not acknowledged.
    let refused = dead_letter_action(&app, &unreadable.to_string(), "redrive").await;
    assert_problem(refused, StatusCode::CONFLICT).await;
    let redriven = dead_letter_action(&app, &readable.to_string(), "redrive").await;
    assert_eq!(redriven.status(), StatusCode::OK);
    let refused = dead_letter_action(&app, &readable.to_string(), "acknowledge").await;
    assert_problem(refused, StatusCode::CONFLICT).await;
    // The orphan's client is gone: redrive refused, acknowledge clears the last one.
    let refused = dead_letter_action(&app, &orphan.to_string(), "redrive").await;
    assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY).await;
    let acknowledged = dead_letter_action(&app, &orphan.to_string(), "acknowledge").await;
    assert_eq!(acknowledged.status(), StatusCode::OK);
    assert!(open_dead_letters_become(&mut feed, 0).await);

    // Bad input: a 4xx problem each.
    assert_problem(
        dead_letter_action(&app, "999999", "acknowledge").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_problem(
        dead_letter_action(&app, "nope", "acknowledge").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let no_json = app
        .admin_request(
            Method::POST,
            &format!("/dashboard/api/dead-letters/{orphan}/acknowledge"),
        )
        .send()
        .await
        .unwrap();
    assert!(no_json.status().is_client_error(), "{}", no_json.status());
    let not_admin = app
        .request(
            Method::POST,
            &format!("/dashboard/api/dead-letters/{orphan}/acknowledge"),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_problem(not_admin, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn a_redrive_lowers_the_open_dead_letter_count_and_its_command_names_the_dead_letter() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    let id = common::insert_dead_letter(
        &app,
        Some(&order),
        "delivery limit reached",
        &cancel_message(app.client_id, &order),
    )
    .await;
    let partitions = || async {
        let response = app
            .admin_request(Method::GET, "/dashboard/api/partitions")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json::<Value>().await.unwrap()
    };
    assert_eq!(partitions().await["dead_letters_open"], 1);
    let redriven = dead_letter_action(&app, &id.to_string(), "redrive").await;
    assert_eq!(redriven.status(), StatusCode::OK);
    let command_id = redriven.json::<Value>().await.unwrap()["command_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(partitions().await["dead_letters_open"], 0);
    app.wait_final(&command_id).await;

    let timeline = timeline(&app, &order).await;
    assert_eq!(command(&timeline, &command_id)["redrive_of"], id);
    let create = &timeline["commands"][0];
    assert!(create["redrive_of"].is_null(), "{create}");
}

#[tokio::test]
async fn no_stage_of_a_journey_lasts_less_than_nothing() {
    let app = common::stack().worker().start().await;
    // A command from a direct producer: the worker receives its message before it records it.
    let order = orderflow_domain::OrderId::new();
    let command_id = Uuid::now_v7();
    let message = json!({
        "version": 1, "command_id": command_id, "client_id": app.client_id,
        "order_id": order.0, "command": {"type": "create", "customer_id": "direct",
        "currency": "EUR", "items": [{"sku": "D-1", "quantity": 1, "unit_price_cents": 100}]}
    });
    app.publish_raw(app.partition_of(order), message.to_string().as_bytes())
        .await;
    assert_eq!(
        app.wait_final(&command_id.to_string()).await["status"],
        "applied"
    );
    // And one through the API.
    let through_api = app
        .run(&order.0.to_string(), json!({"type": "cancel"}), None)
        .await;

    let timeline = timeline(&app, &order.0.to_string()).await;
    for id in [
        command_id.to_string(),
        through_api["command_id"].as_str().unwrap().to_owned(),
    ] {
        let c = command(&timeline, &id);
        let stages = c["stages"].as_array().unwrap_or_else(|| panic!("{c}"));
        assert!(!stages.is_empty(), "{c}");
        for stage in stages {
            assert!(stage["ms"].as_f64().unwrap() >= 0.0, "{stage} of {c}");
        }
        assert!(c["total_ms"].as_f64().unwrap() >= 0.0, "{c}");
    }
    let direct = command(&timeline, &command_id.to_string());
    let names: Vec<&str> = direct["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["record", "apply"], "{direct}");
}

#[tokio::test]
async fn the_hottest_orders_are_the_ones_with_the_most_conflicts() {
    let app = common::stack().worker().start().await;
    let mut feed = app.open_feed(&app.admin_key).await;
    let item =
        |sku: &str| json!({"type": "add_item", "sku": sku, "quantity": 1, "unit_price_cents": 100});
    // Busy but calm: five commands, no conflict.
    let busy = app.new_order(json!([])).await;
    for (version, sku) in (1..).zip(["A", "B", "C", "D"]) {
        app.run(&busy, item(sku), Some(version)).await;
    }
    // Fewer commands, one race lost.
    let contended = app.new_order(json!([])).await;
    assert_eq!(
        app.run(&contended, item("A"), Some(1)).await["status"],
        "applied"
    );
    let lost = app.run(&contended, item("B"), Some(1)).await;
    assert_eq!(lost["reason"], "version_conflict");

    let mut hot = Value::Null;
    let both = read_frames(&mut feed, Duration::from_secs(10), |event, data| {
        if event != "stats" {
            return false;
        }
        hot = data["hot_orders"].clone();
        let ids: Vec<&str> = hot
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["order_id"].as_str())
            .collect();
        ids.contains(&busy.as_str()) && ids.contains(&contended.as_str())
    })
    .await;
    assert!(both, "{hot}");
    assert_eq!(hot[0]["order_id"], contended.as_str(), "{hot}");
    assert_eq!(
        (hot[0]["conflicts"].as_u64(), hot[0]["commands"].as_u64()),
        (Some(1), Some(3))
    );
}

#[tokio::test]
async fn rates_are_unknown_until_measured() {
    let app = common::stack().worker().start().await;
    // The first look at the partitions has nothing to take a difference from.
    let partitions = || async {
        app.admin_request(Method::GET, "/dashboard/api/partitions")
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let first = partitions().await;
    for p in first["partitions"].as_array().unwrap() {
        assert!(p["messages_per_s"].is_null(), "{p}");
    }
    // Nothing finished yet: no conflict rate, no accepted/s on the first frame.
    let mut feed = app
        .admin_request(Method::GET, "/dashboard/api/stream")
        .send()
        .await
        .unwrap();
    let mut frames = Vec::new();
    read_frames(&mut feed, Duration::from_secs(10), |event, data| {
        if event == "stats" {
            frames.push(data.clone());
        }
        frames.len() == 2
    })
    .await;
    assert_eq!(frames.len(), 2);
    assert!(frames[0]["accepted_per_s"].is_null(), "{}", frames[0]);
    assert!(frames[1]["conflict_rate"].is_null(), "{}", frames[1]);
    // Once measured, they are numbers.
    app.new_order(json!([])).await;
    assert!(
        read_frames(&mut feed, Duration::from_secs(10), |event, data| {
            event == "stats" && data["conflict_rate"] == 0.0 && data["accepted_per_s"].is_number()
        })
        .await
    );
    wait_for("every partition's rate to be measured")
        .within(Duration::from_secs(10))
        .every(Duration::from_millis(200))
        .until(|| async {
            let view = partitions().await;
            if view["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["messages_per_s"].is_number())
            {
                Ok(())
            } else {
                Err(view)
            }
        })
        .await;
}

#[tokio::test]
async fn the_stats_of_the_last_five_minutes_are_served_for_the_charts() {
    let app = common::stack().worker().start().await;
    let history = || async {
        let response = app
            .admin_request(Method::GET, "/dashboard/api/stats/history")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json::<Value>().await.unwrap()
    };
    let mut feed = app.open_feed(&app.admin_key).await;
    app.new_order(json!([])).await;
    let mut seen = Vec::new();
    read_frames(&mut feed, Duration::from_secs(15), |event, data| {
        if event == "stats" {
            seen.push(data["at"].as_str().unwrap().to_owned());
        }
        seen.len() == 4
    })
    .await;
    drop(feed);
    let points = history().await;
    let points = points.as_array().unwrap();
    let at: Vec<&str> = points.iter().map(|p| p["at"].as_str().unwrap()).collect();
    for frame in &seen {
        assert!(at.contains(&frame.as_str()), "{frame} not in {at:?}");
    }
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    assert!(
        at.windows(2).all(|w| parse(w[0]) < parse(w[1])),
        "oldest first"
    );
    let now = chrono::Utc::now();
    assert!(
        at.iter()
            .all(|a| now.signed_duration_since(parse(a)).num_seconds() <= 300)
    );
    // The fields the charts plot.
    assert!(
        points
            .iter()
            .any(|p| p["applied_per_s"].as_f64() > Some(0.0))
    );
    for field in [
        "accepted_per_s",
        "rejected_per_s",
        "latency_ms",
        "rejections",
    ] {
        assert!(points[0].get(field).is_some(), "{field}: {}", points[0]);
    }
}

#[tokio::test]
async fn with_two_workers_each_partition_has_one_consumer_its_lease_owner_as_the_broker_says() {
    let mut app = common::stack().worker().start().await;
    let first = app.worker_name();
    // A second worker: the partitions are shared, each consumed by its lease's owner only.
    app.start_worker_with(|c| c.worker_name = Some("second-worker".into()))
        .await;
    let view = wait_for("the partitions to be shared by the two workers")
        .every(Duration::from_millis(200))
        .until(|| async {
            let view: Value = app
                .admin_request(Method::GET, "/dashboard/api/partitions")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let partitions = view["partitions"].as_array().unwrap();
            let held_by = |name: &str| {
                partitions
                    .iter()
                    .filter(|p| p["owner"] == name && p["workers"] == json!([name]))
                    .count()
            };
            if held_by(&first) == partitions.len() / 2
                && held_by("second-worker") == partitions.len() / 2
                && partitions.iter().all(|p| p["lease_state"] == "active")
            {
                Ok(view)
            } else {
                Err(view)
            }
        })
        .await;
    // What the broker says: every consumer of every queue (over AMQP a single-active-consumer
    // queue reports only its active one). The listing covers every test's queues: one that
    // another test deletes while it is being listed cuts the listing short with a `badrpc`
    // line (found by CI), so it is taken again until it comes whole.
    let listed = wait_for("a consumer listing not cut short by another test's deleted queue")
        .every(Duration::from_millis(200))
        .until(|| orderflow_testkit::broker::list_consumers(&["activity_status"]))
        .await;
    for p in view["partitions"].as_array().unwrap() {
        let queue = p["queue"].as_str().unwrap();
        let brokers = listed
            .lines()
            .filter(|line| line.split('\t').next() == Some(queue))
            .count();
        assert_eq!(brokers, 1, "{listed}");
        assert_eq!(p["consumers"], brokers, "{p}\n{listed}");
        assert_eq!(p["active_consumers"], 1, "{p}");
        // Taken once when the first worker started, and once more if it was handed over.
        assert!(p["epoch"].as_i64().unwrap() >= 1, "{p}");
        assert!(p["moves_last_hour"].as_i64().unwrap() >= 1, "{p}");
    }
}

/// A desk action: `command` on `order` as the signed-in person, with `If-Match` when given.
async fn desk_action(
    app: &Stack,
    session: &orderflow_testkit::SignedIn,
    order: &str,
    if_match: Option<&str>,
    command: Value,
) -> reqwest::Response {
    let mut request = app
        .as_signed_in(
            session,
            Method::POST,
            &format!("/dashboard/api/orders/{order}/commands"),
        )
        .json(&command);
    if let Some(etag) = if_match {
        request = request.header("if-match", etag);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn an_operator_acts_on_an_order_with_the_version_seen_and_the_change_names_them() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    let olga = app.create_operator("olga", "operator").await;
    let olga = app.sign_in("olga", &olga).await;
    let vera = app.create_operator("vera", "viewer").await;
    let vera = app.sign_in("vera", &vera).await;
    let note = json!({"type": "update_details", "details": {"note": "call before delivery"}});
    let commands = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from commands")
            .fetch_one(&app.db)
            .await
            .unwrap()
    };

    // Refused, writing nothing: a viewer; no CSRF token; no If-Match; a create; no such order.
    let viewer = desk_action(&app, &vera, &order, Some("\"1\""), note.clone()).await;
    assert_problem(viewer, StatusCode::FORBIDDEN).await;
    let forged = app
        .http
        .post(app.url(&format!("/dashboard/api/orders/{order}/commands")))
        .header(header::COOKIE, &olga.cookie)
        .header("if-match", "\"1\"")
        .json(&note)
        .send()
        .await
        .unwrap();
    assert_problem(forged, StatusCode::FORBIDDEN).await;
    let blind = desk_action(&app, &olga, &order, None, note.clone()).await;
    assert_problem(blind, StatusCode::PRECONDITION_REQUIRED).await;
    let create = json!({"type": "create", "customer_id": "c", "currency": "EUR", "items": []});
    let create = desk_action(&app, &olga, &order, Some("\"1\""), create).await;
    assert_problem(create, StatusCode::UNPROCESSABLE_ENTITY).await;
    let nobody = Uuid::now_v7().to_string();
    let nobody = desk_action(&app, &olga, &nobody, Some("\"1\""), note.clone()).await;
    assert_problem(nobody, StatusCode::NOT_FOUND).await;
    assert_eq!(commands().await, 1, "only the create");

    // Accepted as a command of the order's client, made by olga; applied by the worker.
    let accepted = desk_action(&app, &olga, &order, Some("\"1\""), note.clone()).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let accepted: Value = accepted.json().await.unwrap();
    let command_id = accepted["command_id"].as_str().unwrap().to_owned();
    let done = app.wait_final(&command_id).await;
    assert_eq!(
        (&done["status"], &done["version"], &done["actor"]),
        (&json!("applied"), &json!(2), &json!("operator:olga")),
        "{done}"
    );
    // The same action again (a double click): the first answer, no second command.
    let again = desk_action(&app, &olga, &order, Some("\"1\""), note.clone()).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["command_id"], accepted["command_id"]);
    // Another action made against version 1: refused at once, with the current ETag.
    let cancel = json!({"type": "cancel", "reason": "customer asked"});
    let stale = desk_action(&app, &olga, &order, Some("\"1\""), cancel.clone()).await;
    assert_eq!(stale.headers()["etag"], "\"2\"");
    assert_problem(stale, StatusCode::PRECONDITION_FAILED).await;
    assert_eq!(commands().await, 2, "the create and olga's note");

    // Who made each change, in the client's own view of the history and on the timeline.
    let events = app.events(&order).await;
    let actors: Vec<&str> = events
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors.len(), 2);
    assert!(actors[0].starts_with("client:"), "{actors:?}");
    assert_eq!(actors[1], "operator:olga");
    let timeline = timeline(&app, &order).await;
    assert_eq!(command(&timeline, &command_id)["actor"], "operator:olga");
    assert_eq!(timeline["events"][1]["actor"], "operator:olga");
}
