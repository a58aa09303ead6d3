//! `GET /v1/events`: a client's own feed of what became of its commands, as a JSON page and as
//! server-sent events, resumed after the last event seen without loss or duplicates; against the
//! real API, worker, PostgreSQL and RabbitMQ.

mod common;

use orderflow_storage::{clients, outbox};
use orderflow_testkit::{Stack, problem, read_sse, wait_for};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

fn widget() -> Value {
    json!([{"sku": "WIDGET", "quantity": 2, "unit_price_cents": 1250}])
}

/// A page of the feed of `key` at `path` (answered 200).
async fn page(app: &Stack, key: &str, path: &str) -> Value {
    let response = app
        .http
        .get(app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.json().await.unwrap()
}

/// Every event of the feed of `key`, a page of `limit` at a time from the start.
async fn whole_feed(app: &Stack, key: &str, limit: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut path = format!("/v1/events?limit={limit}");
    loop {
        let page = page(app, key, &path).await;
        let data = page["data"].as_array().unwrap().clone();
        assert!(data.len() <= limit);
        events.extend(data);
        if page["has_more"] == false {
            return events;
        }
        let after = page["next_after"].as_str().unwrap();
        path = format!("/v1/events?limit={limit}&after={after}");
    }
}

/// The first event of the feed of the stack's client, once there is one.
async fn first_event(app: &Stack, what: &str) -> Value {
    wait_for(what)
        .until(|| async { whole_feed(app, &app.key, 10).await.first().cloned() })
        .await
}

/// The ids of events, as numbers.
fn ids(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

async fn open_stream(app: &Stack, key: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .get(app.url("/v1/events"))
        .bearer_auth(key)
        .header(header::ACCEPT, "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_client_reads_exactly_its_own_events_in_order_and_a_page_resumes_after_any_of_them() {
    let app = common::stack().worker().start().await;
    let (other, other_key) = clients::create(&app.db, "other", false).await.unwrap();
    let mine_order = app.new_order(widget()).await;
    let second_order = app.new_order(widget()).await;
    let mut mine = HashSet::new();
    for (order, command) in [
        (
            &mine_order,
            json!({"type": "add_item", "sku": "GADGET", "quantity": 1, "unit_price_cents": 500}),
        ),
        (&second_order, json!({"type": "remove_item", "sku": "NOPE"})),
        (&mine_order, json!({"type": "remove_item", "sku": "GADGET"})),
        (&mine_order, json!({"type": "pay"})),
    ] {
        let done = app.run(order, command, None).await;
        mine.insert(done["command_id"].as_str().unwrap().to_owned());
    }
    // The other client's order and command.
    let theirs = app
        .http
        .post(app.url("/v1/orders"))
        .bearer_auth(&other_key)
        .header("idempotency-key", "theirs")
        .json(&json!({"customer_id": "c", "currency": "EUR", "items": widget()}))
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::ACCEPTED);
    let theirs: Value = theirs.json().await.unwrap();
    app.wait_final_as(&other_key, theirs["command_id"].as_str().unwrap())
        .await;

    // The creates, by their commands (not sent through `run`).
    let creates = sqlx::query_scalar::<_, uuid::Uuid>(
        "select id from commands where client_id = $1 and kind = 'create'",
    )
    .bind(app.client_id.0)
    .fetch_all(&app.db)
    .await
    .unwrap();
    mine.extend(creates.iter().map(|id| id.to_string()));
    assert_eq!(mine.len(), 6);

    // The relay passes events on after their commits: wait until all six are in the feed.
    let events = wait_for("the client's six events in its feed")
        .until(|| async {
            let events = whole_feed(&app, &app.key, 2).await;
            if events.len() >= 6 {
                Ok(events)
            } else {
                Err(events.len())
            }
        })
        .await;
    let seen: Vec<String> = events
        .iter()
        .map(|e| e["data"]["command_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen.len(), 6, "no command twice: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), mine);
    let ids = ids(&events);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    // Per order, the commands' order; each event says what happened.
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    for event in &events {
        let data = &event["data"];
        assert_eq!(data["client_id"], app.client_id.to_string());
        let order = data["order_id"].as_str().unwrap().to_owned();
        let seq = data["seq"].as_i64().unwrap();
        assert!(
            last_seq
                .insert(order, seq)
                .is_none_or(|before| before < seq)
        );
        let status = data["status"].as_str().unwrap();
        assert_eq!(
            event["type"],
            format!("command.{status}.{}", data["type"].as_str().unwrap())
        );
        if status == "applied" {
            assert!(data["event"].is_object(), "{event}");
        }
    }
    let rejected: Vec<&Value> = events
        .iter()
        .filter(|e| e["data"]["status"] == "rejected")
        .collect();
    assert_eq!(
        rejected.len(),
        2,
        "removing a missing line, paying a pending order"
    );

    // Resuming after any event gives exactly the ones after it.
    for (k, id) in ids.iter().enumerate() {
        let page = page(&app, &app.key, &format!("/v1/events?after={id}&limit=100")).await;
        let rest: Vec<i64> = self::ids(page["data"].as_array().unwrap());
        assert_eq!(rest, ids[k + 1..], "after {id}");
        assert_eq!(page["has_more"], false);
    }

    // The other client sees only its own.
    let theirs_feed = whole_feed(&app, &other_key, 100).await;
    assert_eq!(theirs_feed.len(), 1);
    assert_eq!(theirs_feed[0]["data"]["client_id"], other.id.to_string());
    assert_eq!(theirs_feed[0]["data"]["command_id"], theirs["command_id"]);
}

#[tokio::test]
async fn a_stream_resumes_after_its_last_event_id_without_loss_or_repeats_and_goes_on_live() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(widget()).await;
    for _ in 0..3 {
        app.run(
            &order,
            json!({"type": "add_item", "sku": "GADGET", "quantity": 1, "unit_price_cents": 5}),
            None,
        )
        .await;
    }
    let events = wait_for("four events in the feed")
        .until(|| async {
            let events = whole_feed(&app, &app.key, 100).await;
            if events.len() == 4 {
                Ok(events)
            } else {
                Err(events.len())
            }
        })
        .await;
    let ids = ids(&events);

    // Resumed after the second: the third and fourth, then what comes next, live.
    let mut stream = open_stream(&app, &app.key, Some(&ids[1].to_string())).await;
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()[header::CONTENT_TYPE], "text/event-stream");
    let (frames, _) = read_sse(&mut stream, Duration::from_secs(10), |f| f.len() == 2).await;
    let got: Vec<i64> = frames.iter().map(|f| f.id.parse().unwrap()).collect();
    assert_eq!(got, ids[2..]);
    for frame in &frames {
        assert_eq!(
            frame.data["id"],
            frame.id.as_str(),
            "the data carries the id"
        );
        assert_eq!(frame.data["type"], frame.event.as_str());
    }

    let live = app
        .send(
            &order,
            json!({"type": "remove_item", "sku": "GADGET"}),
            None,
        )
        .await;
    let (frames, found) = read_sse(&mut stream, Duration::from_secs(15), |f| {
        f.iter()
            .any(|f| f.data["data"]["command_id"] == live["command_id"])
    })
    .await;
    assert!(found, "the new command's event came live: {frames:?}");
    assert_eq!(frames.len(), 1, "nothing else, nothing twice: {frames:?}");
    assert!(frames[0].id.parse::<i64>().unwrap() > ids[3]);
    assert_eq!(frames[0].event, "command.applied.remove_item");

    // A stream opened without a position starts at the next new event.
    let mut fresh = open_stream(&app, &app.key, None).await;
    let next = app.send(&order, json!({"type": "reserve"}), None).await;
    let (frames, found) = read_sse(&mut fresh, Duration::from_secs(15), |f| !f.is_empty()).await;
    assert!(found);
    assert_eq!(frames[0].data["data"]["command_id"], next["command_id"]);
}

#[tokio::test]
async fn a_revoked_key_ends_its_stream_at_once() {
    let app = common::stack().worker().start().await;
    let (client, key) = clients::create(&app.db, "soon-revoked", false)
        .await
        .unwrap();
    let mut stream = open_stream(&app, &key, None).await;
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(clients::revoke(&app.db, client.id).await.unwrap());
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ended when the key was revoked");
    let after = open_stream(&app, &key, None).await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_positions_are_a_clear_400_streams_are_capped_and_pruned_history_is_a_410() {
    let app = common::stack()
        .worker()
        .api_config(|c| c.max_streams_per_client = 1)
        .start()
        .await;
    app.new_order(widget()).await;
    let first = first_event(&app, "the create's event").await;
    let first_id: i64 = first["id"].as_str().unwrap().parse().unwrap();

    for path in [
        "/v1/events?after=abc".to_owned(),
        "/v1/events?after=-1".to_owned(),
        "/v1/events?after=1234567890123456789".to_owned(),
        format!("/v1/events?after={}", first_id + 1_000_000),
        "/v1/events?limit=0".to_owned(),
        "/v1/events?since=1".to_owned(),
    ] {
        problem(
            app.request(Method::GET, &path),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            &path,
        )
        .await;
    }
    problem(
        app.request(Method::GET, "/v1/events?after=null")
            .header("last-event-id", "0"),
        StatusCode::BAD_REQUEST,
        "invalid-request",
        "a malformed after beside a good Last-Event-ID",
    )
    .await;
    problem(
        app.request(Method::GET, "/v1/events")
            .header(header::ACCEPT, "text/event-stream")
            .header("last-event-id", "x1"),
        StatusCode::BAD_REQUEST,
        "invalid-request",
        "a stream with a malformed Last-Event-ID",
    )
    .await;

    let open = open_stream(&app, &app.key, None).await;
    assert_eq!(open.status(), StatusCode::OK);
    problem(
        app.request(Method::GET, "/v1/events")
            .header(header::ACCEPT, "text/event-stream"),
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-streams",
        "a second stream over the cap of one",
    )
    .await;
    drop(open);

    // Prune everything (as a retention shorter than the events' age would): reading on from
    // before the horizon is told so, a read without a position starts after it, and new events
    // come after it.
    let pruned =
        outbox::prune_client_events(&app.db, chrono::Utc::now() + chrono::Days::new(1), 10_000)
            .await
            .unwrap();
    assert!(pruned >= 1);
    problem(
        app.request(Method::GET, &format!("/v1/events?after={}", first_id - 1)),
        StatusCode::GONE,
        "events-pruned",
        "reading on from before the horizon",
    )
    .await;
    let page = page(&app, &app.key, "/v1/events").await;
    assert_eq!(page["data"], json!([]));
    let horizon: i64 = page["next_after"].as_str().unwrap().parse().unwrap();
    assert!(horizon >= first_id);
    app.new_order(widget()).await;
    let after = first_event(&app, "an event after the prune").await;
    assert!(after["id"].as_str().unwrap().parse::<i64>().unwrap() > horizon);
}
