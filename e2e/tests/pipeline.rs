//! End to end through the real API and the real worker, against real PostgreSQL and RabbitMQ:
//! every command type, the state machine's rejections, optimistic concurrency, stock races.

mod common;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn widget(quantity: i64) -> Value {
    json!([{"sku": "WIDGET", "quantity": quantity, "unit_price_cents": 1250}])
}

#[tokio::test]
async fn a_created_order_is_applied_and_readable_with_its_version_as_etag() {
    let app = common::stack().worker().start().await;
    let accepted = app.create_order(widget(2)).await;
    assert_eq!(accepted["status"], "accepted");
    let command_id = accepted["command_id"].as_str().unwrap();
    let order_id = accepted["order_id"].as_str().unwrap();

    let done = app.wait_final(command_id).await;
    assert_eq!(done["status"], "applied", "{done}");
    assert_eq!(done["version"], 1);
    assert_eq!(done["seq"], 1);
    assert_eq!(done["type"], "create");
    assert_eq!(done["order_id"], order_id);

    let response = app
        .request(Method::GET, &format!("/v1/orders/{order_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "pending");
    assert_eq!(order["version"], 1);
    assert_eq!(order["total_cents"], 2500);
    assert_eq!(order["items"], widget(2));

    let events = app.events(order_id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["seq"], 1);
    assert_eq!(events[0]["type"], "order_created");
}

#[tokio::test]
async fn every_command_type_walks_an_order_through_its_life() {
    let app = common::stack().worker().start().await;
    app.set_stock("WIDGET", 10).await;
    app.set_stock("GADGET", 10).await;
    let order = app.new_order(widget(2)).await;

    let added = app
        .run(
            &order,
            json!({"type": "add_item", "sku": "GADGET", "quantity": 3, "unit_price_cents": 100}),
            None,
        )
        .await;
    assert_eq!(
        (added["status"].clone(), added["version"].clone()),
        (json!("applied"), json!(2))
    );
    let removed = app
        .run(
            &order,
            json!({"type": "remove_item", "sku": "GADGET", "quantity": 1}),
            None,
        )
        .await;
    assert_eq!(removed["status"], "applied");
    assert_eq!(app.order(&order).await["total_cents"], 2500 + 200);

    assert_eq!(
        app.run(&order, json!({"type": "reserve"}), None).await["status"],
        "applied"
    );
    assert_eq!(app.stock("WIDGET").await["available"], 8);
    assert_eq!(app.stock("GADGET").await["reserved"], 2);
    assert_eq!(
        app.run(&order, json!({"type": "pay"}), None).await["status"],
        "applied"
    );
    assert_eq!(
        app.run(&order, json!({"type": "ship"}), None).await["status"],
        "applied"
    );
    assert_eq!(
        app.stock("WIDGET").await,
        json!({"sku": "WIDGET", "available": 8, "reserved": 0, "shipped": 2})
    );
    let delivered = app.run(&order, json!({"type": "deliver"}), None).await;
    assert_eq!(
        (delivered["status"].clone(), delivered["version"].clone()),
        (json!("applied"), json!(7))
    );

    let final_order = app.order(&order).await;
    assert_eq!(final_order["status"], "delivered");
    let events = app.events(&order).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "order_created",
            "item_added",
            "item_removed",
            "stock_reserved",
            "payment_captured",
            "order_shipped",
            "order_delivered"
        ]
    );
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>(), "gapless from 1");

    // delivered is final: cancel is an invalid transition, visible as a rejection
    let cancel = app.run(&order, json!({"type": "cancel"}), None).await;
    assert_eq!(
        (cancel["status"].clone(), cancel["reason"].clone()),
        (json!("rejected"), json!("invalid_transition"))
    );
    assert_eq!(cancel["version"], 7);
}

#[tokio::test]
async fn cancelling_a_paid_order_releases_its_stock_and_refunds_the_capture_once() {
    let app = common::stack().worker().start().await;
    app.set_stock("WIDGET", 5).await;
    let order = app.new_order(widget(2)).await;
    app.run(&order, json!({"type": "reserve"}), None).await;
    app.run(&order, json!({"type": "pay"}), None).await;
    let second_pay = app.run(&order, json!({"type": "pay"}), None).await;
    assert_eq!(
        second_pay["reason"], "invalid_transition",
        "one capture per order"
    );
    let cancelled = app
        .run(
            &order,
            json!({"type": "cancel", "reason": "customer asked"}),
            None,
        )
        .await;
    assert_eq!(cancelled["status"], "applied", "{cancelled}");

    assert_eq!(
        app.stock("WIDGET").await,
        json!({"sku": "WIDGET", "available": 5, "reserved": 0, "shipped": 0})
    );
    let payments: Vec<(String, i64)> = sqlx::query_as(
        "select kind, amount_cents from payments where order_id = $1::uuid order by id",
    )
    .bind(&order)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        payments,
        [("capture".to_owned(), 2500), ("refund".to_owned(), 2500)]
    );
    let events = app.events(&order).await;
    assert_eq!(events.last().unwrap()["refunded_cents"], 2500);
}

#[tokio::test]
async fn cancelling_a_reserved_order_releases_its_stock() {
    let app = common::stack().worker().start().await;
    app.set_stock("WIDGET", 3).await;
    let order = app.new_order(widget(3)).await;
    app.run(&order, json!({"type": "reserve"}), None).await;
    assert_eq!(app.stock("WIDGET").await["available"], 0);
    assert_eq!(
        app.run(&order, json!({"type": "cancel"}), None).await["status"],
        "applied"
    );
    assert_eq!(
        app.stock("WIDGET").await,
        json!({"sku": "WIDGET", "available": 3, "reserved": 0, "shipped": 0})
    );
}

#[tokio::test]
async fn a_declined_payment_is_a_rejection_and_captures_nothing() {
    let app = common::stack()
        .worker_config(|c| c.payment_decline_over_cents = Some(1000))
        .worker()
        .start()
        .await;
    app.set_stock("WIDGET", 5).await;
    let order = app.new_order(widget(1)).await;
    app.run(&order, json!({"type": "reserve"}), None).await;
    let pay = app.run(&order, json!({"type": "pay"}), None).await;
    assert_eq!(
        (pay["status"].clone(), pay["reason"].clone()),
        (json!("rejected"), json!("payment_declined"))
    );
    assert_eq!(app.order(&order).await["status"], "reserved");
    let captures = common::count(
        &app,
        "select count(*) from payments where order_id = $1",
        &order,
    )
    .await;
    assert_eq!(captures, 0);
}

#[tokio::test]
async fn a_stale_if_match_is_rejected_as_a_version_conflict_and_changes_nothing() {
    let app = common::stack().worker().start().await;
    app.set_stock("WIDGET", 5).await;
    let order = app.new_order(widget(1)).await;
    let fresh = app
        .run(
            &order,
            json!({"type": "add_item", "sku": "WIDGET", "quantity": 1, "unit_price_cents": 1250}),
            Some(1),
        )
        .await;
    assert_eq!(fresh["status"], "applied");
    let stale = app.run(&order, json!({"type": "reserve"}), Some(1)).await;
    assert_eq!(stale["status"], "rejected");
    assert_eq!(stale["reason"], "version_conflict");
    assert_eq!(stale["version"], 2, "the version it found");
    assert_eq!(app.order(&order).await["status"], "pending");
    assert_eq!(app.stock("WIDGET").await["available"], 5, "no stock moved");
}

#[tokio::test]
async fn two_orders_racing_for_the_last_unit_reserve_exactly_one() {
    let app = common::stack().worker().start().await;
    app.set_stock("LAST", 1).await;
    let items = json!([{"sku": "LAST", "quantity": 1, "unit_price_cents": 999}]);
    let (a, b) = tokio::join!(app.new_order(items.clone()), app.new_order(items));
    let (ra, rb) = tokio::join!(
        app.run(&a, json!({"type": "reserve"}), None),
        app.run(&b, json!({"type": "reserve"}), None)
    );
    let mut outcomes = [
        format!("{} {}", ra["status"], ra["reason"]),
        format!("{} {}", rb["status"], rb["reason"]),
    ];
    outcomes.sort();
    assert_eq!(
        outcomes,
        [r#""applied" null"#, r#""rejected" "insufficient_stock""#]
    );
    assert_eq!(
        app.stock("LAST").await,
        json!({"sku": "LAST", "available": 0, "reserved": 1, "shipped": 0})
    );
}

#[tokio::test]
async fn illegal_commands_are_typed_rejections_never_silent() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    let reserve = app.run(&order, json!({"type": "reserve"}), None).await;
    assert_eq!(reserve["reason"], "empty_order");
    let ship = app.run(&order, json!({"type": "ship"}), None).await;
    assert_eq!(ship["reason"], "invalid_transition");
    let remove = app
        .run(&order, json!({"type": "remove_item", "sku": "NOPE"}), None)
        .await;
    assert_eq!(remove["reason"], "item_not_found");
    app.run(
        &order,
        json!({"type": "add_item", "sku": "A", "quantity": 1, "unit_price_cents": 5}),
        None,
    )
    .await;
    let reprice = app
        .run(
            &order,
            json!({"type": "add_item", "sku": "A", "quantity": 1, "unit_price_cents": 6}),
            None,
        )
        .await;
    assert_eq!(reprice["reason"], "price_mismatch");
    let events = app.events(&order).await;
    assert_eq!(events.len(), 2, "rejections append no events");
    assert_eq!(app.order(&order).await["version"], 2);
}

#[tokio::test]
async fn an_orders_details_change_by_merge_patch_and_the_history_carries_every_version() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    assert_eq!(app.order(&order).await["details"], json!({}));
    let update = |patch: Value| json!({"type": "update_details", "details": patch});

    // Part of an address with none to merge into: rejected, nothing changes.
    let partial = app
        .run(
            &order,
            update(json!({"shipping_address": {"city": "Lyon"}})),
            None,
        )
        .await;
    assert_eq!(
        (&partial["status"], &partial["reason"]),
        (&json!("rejected"), &json!("incomplete_address"))
    );
    let address = json!({"name": "Ada Lovelace", "lines": ["12 Rue de la Paix"], "city": "Paris",
                         "postal_code": "75002", "country": "FR"});
    let first = app
        .run(
            &order,
            update(json!({"shipping_address": address, "contact_email": "ada@example.org"})),
            Some(1),
        )
        .await;
    assert_eq!(first["status"], "applied", "{first}");
    assert_eq!(first["version"], 2);
    // Member by member: the city only; null removes the email.
    let second = app
        .run(
            &order,
            update(
                json!({"shipping_address": {"city": "Lyon"}, "contact_email": null,
                          "note": "ring twice"}),
            ),
            Some(2),
        )
        .await;
    assert_eq!(second["status"], "applied", "{second}");
    let read = app.order(&order).await;
    assert_eq!(read["version"], 3);
    assert_eq!(
        read["details"],
        json!({"shipping_address": {"name": "Ada Lovelace", "lines": ["12 Rue de la Paix"],
                                    "city": "Lyon", "postal_code": "75002", "country": "FR"},
               "note": "ring twice"})
    );
    // Stale: a version conflict, as for every command with If-Match.
    let stale = app
        .run(&order, update(json!({"note": "late"})), Some(2))
        .await;
    assert_eq!(stale["reason"], "version_conflict");
    // The history holds each version's details whole, and which fields changed.
    let events = app.events(&order).await;
    let changes: Vec<(&Value, &Value)> = events
        .iter()
        .filter(|e| e["type"] == "details_changed")
        .map(|e| (&e["details"]["shipping_address"]["city"], &e["changed"]))
        .collect();
    assert_eq!(
        changes,
        [
            (
                &json!("Paris"),
                &json!(["shipping_address", "contact_email"])
            ),
            (
                &json!("Lyon"),
                &json!(["shipping_address", "contact_email", "note"])
            ),
        ]
    );

    // Shipped: the address is fixed, the note may still change.
    for step in ["add_item", "reserve", "pay", "ship"] {
        let command = if step == "add_item" {
            json!({"type": "add_item", "sku": "WIDGET", "quantity": 1, "unit_price_cents": 100})
        } else {
            json!({ "type": step })
        };
        if step == "add_item" {
            app.set_stock("WIDGET", 1).await;
        }
        assert_eq!(app.run(&order, command, None).await["status"], "applied");
    }
    let moved = app
        .run(
            &order,
            update(json!({"shipping_address": {"city": "Nice"}})),
            None,
        )
        .await;
    assert_eq!(moved["reason"], "invalid_transition");
    let noted = app
        .run(
            &order,
            update(json!({"note": "left with the neighbour"})),
            None,
        )
        .await;
    assert_eq!(noted["status"], "applied");
    assert_eq!(
        app.order(&order).await["details"]["shipping_address"]["city"],
        "Lyon"
    );
}

#[tokio::test]
async fn a_bad_details_patch_is_a_422_naming_the_field_and_writes_nothing() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    for (patch, says) in [
        (json!({}), "changes nothing"),
        (json!({"colour": "red"}), "colour"),
        (
            json!({"shipping_address": {"city": null}}),
            "cannot be null",
        ),
        (json!({"contact_email": "not-an-email"}), "email"),
        (json!({"contact_phone": "12"}), "phone"),
        (json!({"note": "a\u{0}b"}), "control"),
    ] {
        let response = app
            .request(Method::POST, &format!("/v1/orders/{order}/commands"))
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .json(&json!({"type": "update_details", "details": patch}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{patch}"
        );
        let problem: Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{patch}: {detail}");
    }
    let commands: i64 = sqlx::query_scalar("select count(*) from commands")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(commands, 1, "only the create");
}

/// `PATCH /v1/orders/{order}` with a merge patch, `If-Match` when given, no Idempotency-Key.
async fn patch(
    app: &orderflow_testkit::Stack,
    order: &str,
    if_match: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut request = app
        .request(Method::PATCH, &format!("/v1/orders/{order}"))
        .header("content-type", "application/merge-patch+json")
        .body(body.to_string());
    if let Some(etag) = if_match {
        request = request.header("if-match", etag);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn patch_needs_if_match_refuses_a_stale_one_at_once_and_replays_a_retry() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from commands")
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    // No If-Match (or `*`): 428, nothing written.
    for etag in [None, Some("*")] {
        let response = patch(&app, &order, etag, json!({"note": "x"})).await;
        assert_eq!(response.status(), StatusCode::PRECONDITION_REQUIRED);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            problem["type"],
            "https://orderflow.dev/problems/precondition-required"
        );
    }
    // Not a merge patch: 415.
    let json_body = app
        .request(Method::PATCH, &format!("/v1/orders/{order}"))
        .header("if-match", "\"1\"")
        .json(&json!({"note": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_body.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(count().await, 1);

    let accepted = patch(
        &app,
        &order,
        Some("\"1\""),
        json!({"contact_email": "ada@example.org"}),
    )
    .await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let accepted: Value = accepted.json().await.unwrap();
    let done = app
        .wait_final(accepted["command_id"].as_str().unwrap())
        .await;
    assert_eq!(
        (&done["status"], &done["version"]),
        (&json!("applied"), &json!(2))
    );
    let read = app
        .request(Method::GET, &format!("/v1/orders/{order}"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.headers()["etag"], "\"2\"");
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["details"]["contact_email"], "ada@example.org");

    // The same request again (a retry after a lost answer): the first answer, not a 412.
    let retry = patch(
        &app,
        &order,
        Some("\"1\""),
        json!({"contact_email": "ada@example.org"}),
    )
    .await;
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["command_id"], accepted["command_id"]);
    // Another change made against version 1: refused at once, with the current ETag.
    let stale = patch(&app, &order, Some("\"1\""), json!({"note": "late"})).await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.headers()["etag"], "\"2\"");
    let problem: Value = stale.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://orderflow.dev/problems/precondition-failed"
    );
    assert_eq!(count().await, 2, "the create and the one change");

    // Two people patching version 2 at once: exactly one change applies; the other is refused
    // at once (412) or, when both got past the API's check, rejected by the worker.
    let (a, b) = tokio::join!(
        patch(&app, &order, Some("\"2\""), json!({"note": "from alice"})),
        patch(&app, &order, Some("\"2\""), json!({"note": "from bob"})),
    );
    let mut applied = 0;
    for response in [a, b] {
        match response.status() {
            StatusCode::PRECONDITION_FAILED => {}
            StatusCode::ACCEPTED => {
                let body: Value = response.json().await.unwrap();
                let done = app.wait_final(body["command_id"].as_str().unwrap()).await;
                match done["status"].as_str().unwrap() {
                    "applied" => applied += 1,
                    _ => assert_eq!(done["reason"], "version_conflict", "{done}"),
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(applied, 1, "exactly one of the two changes");
    assert_eq!(app.order(&order).await["version"], 3);

    // Unknown (or another client's) order: 404.
    let unknown = patch(
        &app,
        &uuid::Uuid::now_v7().to_string(),
        Some("\"1\""),
        json!({"note": "x"}),
    )
    .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

/// `PUT /v1/orders/{order}/shipping-address`, `If-Match` when given, no Idempotency-Key.
async fn put_address(
    app: &orderflow_testkit::Stack,
    order: &str,
    if_match: Option<&str>,
    address: &Value,
) -> reqwest::Response {
    let mut request = app
        .request(Method::PUT, &format!("/v1/orders/{order}/shipping-address"))
        .json(address);
    if let Some(etag) = if_match {
        request = request.header("if-match", etag);
    }
    request.send().await.unwrap()
}

/// The final status of the command a 202 accepted.
async fn outcome(app: &orderflow_testkit::Stack, accepted: reqwest::Response) -> Value {
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let accepted: Value = accepted.json().await.unwrap();
    app.wait_final(accepted["command_id"].as_str().unwrap())
        .await
}

#[tokio::test]
async fn the_same_address_put_twice_leaves_one_change_and_the_version_where_the_first_left_it() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    app.run(
        &order,
        json!({"type": "update_details", "details": {"note": "ring twice"}}),
        None,
    )
    .await;
    let lyon = json!({"name": "Ada Lovelace", "lines": ["1 Quai Claude Bernard"], "city": "Lyon",
                      "postal_code": "69007", "country": "FR"});

    // The first PUT changes the address (and nothing else); the retry, without a key, changes
    // nothing: applied, reason unchanged, the version where the first left it.
    let first = outcome(&app, put_address(&app, &order, None, &lyon).await).await;
    assert_eq!(
        (
            &first["type"],
            &first["status"],
            &first["reason"],
            &first["version"]
        ),
        (
            &json!("set_shipping_address"),
            &json!("applied"),
            &json!(null),
            &json!(3)
        ),
        "{first}"
    );
    let retry = outcome(&app, put_address(&app, &order, None, &lyon).await).await;
    assert_ne!(
        retry["command_id"], first["command_id"],
        "a command of its own"
    );
    assert_eq!(
        (&retry["status"], &retry["reason"], &retry["version"]),
        (&json!("applied"), &json!("unchanged"), &json!(3)),
        "{retry}"
    );
    let read = app.order(&order).await;
    assert_eq!(read["version"], 3);
    assert_eq!(
        read["details"],
        json!({"shipping_address": lyon, "note": "ring twice"})
    );
    let types: Vec<Value> = app
        .events(&order)
        .await
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(
        types,
        [
            json!("order_created"),
            json!("details_changed"),
            json!("details_changed")
        ],
        "one change in the history for the two PUTs"
    );

    // An If-Match older than the order's version: 412 at once, with the current ETag, and
    // nothing written; the current one is taken.
    let commands = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from commands")
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    let before = commands().await;
    let paris = json!({"name": "Ada Lovelace", "lines": ["12 Rue de la Paix"], "city": "Paris",
                       "postal_code": "75002", "country": "FR"});
    let stale = put_address(&app, &order, Some("\"2\""), &paris).await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.headers()["etag"], "\"3\"");
    assert_eq!(commands().await, before, "a 412 writes nothing");
    let moved = outcome(&app, put_address(&app, &order, Some("\"3\""), &paris).await).await;
    assert_eq!(
        (&moved["status"], &moved["version"]),
        (&json!("applied"), &json!(4))
    );

    // Once shipped, a new address is an invalid transition; the address it has is still so.
    app.run(
        &order,
        json!({"type": "add_item", "sku": "A", "quantity": 1, "unit_price_cents": 5}),
        None,
    )
    .await;
    app.set_stock("A", 5).await;
    for command in ["reserve", "pay", "ship"] {
        let done = app.run(&order, json!({"type": command}), None).await;
        assert_eq!(done["status"], "applied", "{done}");
    }
    let late = outcome(&app, put_address(&app, &order, None, &lyon).await).await;
    assert_eq!(
        (&late["status"], &late["reason"]),
        (&json!("rejected"), &json!("invalid_transition"))
    );
    let same = outcome(&app, put_address(&app, &order, None, &paris).await).await;
    assert_eq!(
        (&same["status"], &same["reason"], &same["version"]),
        (&json!("applied"), &json!("unchanged"), &json!(8))
    );
    assert_eq!(app.order(&order).await["version"], 8);
}

#[tokio::test]
async fn a_bad_address_put_is_a_clear_4xx_and_writes_nothing() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    let whole = json!({"name": "Ada", "lines": ["1 Main St"], "city": "Oslo",
                       "postal_code": "0150", "country": "NO"});
    let mut without_city = whole.clone();
    without_city.as_object_mut().unwrap().remove("city");
    for (body, says) in [
        (without_city, "city"),
        (json!({"country": "no"}), "country"),
        (
            json!({"name": "Ada", "lines": [], "city": "Oslo", "postal_code": "0150", "country": "NO"}),
            "lines",
        ),
        (
            json!({"name": "Ada", "lines": ["1"], "city": "Oslo", "postal_code": "0150",
                   "country": "NO", "floor": 3}),
            "floor",
        ),
    ] {
        let response = put_address(&app, &order, None, &body).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        let problem: Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{body}: {detail}");
    }
    // Not JSON: 415; another client's (or no) order: 404.
    let form = app
        .request(Method::PUT, &format!("/v1/orders/{order}/shipping-address"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("city=Oslo")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let unknown = put_address(&app, &uuid::Uuid::now_v7().to_string(), None, &whole).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let commands: i64 = sqlx::query_scalar("select count(*) from commands")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(commands, 1, "only the create");
}

#[tokio::test]
async fn an_order_ships_with_its_tracking_number_and_a_bad_one_is_a_clear_4xx() {
    let app = common::stack().worker().start().await;
    let order = app.paid_order("TRACK-1", 1, 900).await;
    // A bad number is refused before anything is recorded, naming the field.
    for bad in [json!(""), json!("1Z 999"), json!("x".repeat(65)), json!(12)] {
        let response = app
            .post_command(
                &order,
                &format!("bad-tracking-{}", uuid::Uuid::now_v7()),
                &json!({"type": "ship", "tracking_number": bad}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("tracking_number"),
            "{problem}"
        );
    }
    assert!(
        app.order(&order).await.get("tracking_number").is_none(),
        "absent until it ships with one"
    );
    let done = app
        .run(
            &order,
            json!({"type": "ship", "tracking_number": "1Z999AA10123456784"}),
            Some(3),
        )
        .await;
    assert_eq!(
        (&done["status"], &done["version"]),
        (&json!("applied"), &json!(4)),
        "{done}"
    );
    let read = app.order(&order).await;
    assert_eq!(
        (&read["status"], &read["tracking_number"]),
        (&json!("shipped"), &json!("1Z999AA10123456784"))
    );
    let shipped = app.events(&order).await.pop().unwrap();
    assert_eq!(
        (&shipped["type"], &shipped["tracking_number"]),
        (&json!("order_shipped"), &json!("1Z999AA10123456784")),
        "{shipped}"
    );
    // Delivery keeps it; the commands table holds only the five that were accepted.
    app.run(&order, json!({"type": "deliver"}), None).await;
    assert_eq!(
        app.order(&order).await["tracking_number"],
        "1Z999AA10123456784"
    );
    let commands: i64 = sqlx::query_scalar("select count(*) from commands")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(commands, 5, "create, reserve, pay, ship, deliver");
}
