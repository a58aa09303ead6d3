//! `GET /v1/orders`, against the real API, worker, PostgreSQL and RabbitMQ: a client pages
//! through its own orders, newest first, by opaque cursors, forward and back, with filters; a
//! page stays put while orders are created; another client's orders never appear; a bad query is
//! a 400 problem.

mod common;

use orderflow_storage::clients;
use orderflow_testkit::{Stack, problem};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

/// Creates an order for `customer` as the client of `key`, waits until it is applied; its id.
async fn order_for(app: &Stack, key: &str, customer: &str) -> String {
    let response = app
        .http
        .request(Method::POST, app.url("/v1/orders"))
        .bearer_auth(key)
        .header("idempotency-key", Uuid::new_v4().to_string())
        .json(&json!({"customer_id": customer, "currency": "EUR",
                      "items": [{"sku": "WIDGET", "quantity": 1, "unit_price_cents": 500}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.unwrap();
    let done = app
        .wait_final_as(key, accepted["command_id"].as_str().unwrap())
        .await;
    assert_eq!(done["status"], "applied", "{done}");
    accepted["order_id"].as_str().unwrap().to_owned()
}

/// A list page (`GET <path>?<query>`) as the stack's client.
async fn get_page(app: &Stack, path: &str, query: &str) -> Value {
    let path = format!("{path}?{query}");
    let response = app.request(Method::GET, &path).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

/// A page of `GET /v1/orders`.
async fn page(app: &Stack, query: &str) -> Value {
    get_page(app, "/v1/orders", query).await
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap().to_owned())
        .collect()
}

fn cursor<'a>(page: &'a Value, which: &str) -> &'a str {
    page[which]
        .as_str()
        .unwrap_or_else(|| panic!("no {which} in {page}"))
}

#[tokio::test]
async fn a_client_pages_through_its_own_orders_newest_first_forward_and_back() {
    let app = common::stack().worker().start().await;
    let (_, other_key) = clients::create(&app.db, "other", false).await.unwrap();
    // Created one after the other: seven of the stack's client (three for cust-b), two of
    // another client's in between.
    let mut mine = Vec::new();
    for n in 0..7 {
        let customer = if n % 2 == 1 { "cust-b" } else { "cust-a" };
        mine.push(order_for(&app, &app.key, customer).await);
        if n == 3 {
            order_for(&app, &other_key, "cust-a").await;
        }
    }
    order_for(&app, &other_key, "cust-b").await;
    let newest_first: Vec<String> = mine.iter().rev().cloned().collect();

    let first = page(&app, "limit=3").await;
    assert_eq!(ids(&first), newest_first[0..3], "{first}");
    assert_eq!(first["has_more"], true);
    assert_eq!(
        first["previous_cursor"],
        Value::Null,
        "a first page has no previous"
    );
    // An order created while the client pages does not move the pages after the first.
    let late = order_for(&app, &app.key, "cust-a").await;
    let second = page(
        &app,
        &format!("limit=3&starting_after={}", cursor(&first, "next_cursor")),
    )
    .await;
    assert_eq!(ids(&second), newest_first[3..6], "{second}");
    assert_eq!(second["has_more"], true);
    let third = page(
        &app,
        &format!("limit=3&starting_after={}", cursor(&second, "next_cursor")),
    )
    .await;
    assert_eq!(ids(&third), newest_first[6..7], "{third}");
    assert_eq!(third["has_more"], false);
    assert_eq!(
        third["next_cursor"],
        Value::Null,
        "the last page has no next"
    );

    // Back from the last page: the second again, then the first (with the late order beyond it).
    let back = page(
        &app,
        &format!(
            "limit=3&ending_before={}",
            cursor(&third, "previous_cursor")
        ),
    )
    .await;
    assert_eq!(ids(&back), ids(&second), "{back}");
    assert_eq!(back["has_more"], true, "newer orders lie beyond: {back}");
    let front = page(
        &app,
        &format!("limit=3&ending_before={}", cursor(&back, "previous_cursor")),
    )
    .await;
    assert_eq!(ids(&front), newest_first[0..3], "{front}");
    assert_eq!(front["has_more"], true, "the late order is newer: {front}");
    let newest = page(
        &app,
        &format!(
            "limit=3&ending_before={}",
            cursor(&front, "previous_cursor")
        ),
    )
    .await;
    assert_eq!(ids(&newest), std::slice::from_ref(&late), "{newest}");
    assert_eq!(newest["has_more"], false);
    assert_eq!(newest["previous_cursor"], Value::Null);

    // The whole list in one page: the client's eight, newest first, nobody else's.
    let all = page(&app, "limit=100").await;
    let mut expected = vec![late];
    expected.extend(newest_first.iter().cloned());
    assert_eq!(ids(&all), expected);
    assert_eq!(all["has_more"], false);
    // The default page is ten.
    assert_eq!(ids(&page(&app, "").await), expected);
    // Each item is the order's projection, as GET /v1/orders/{id} answers it.
    assert_eq!(all["data"][1], app.order(&newest_first[0]).await);
}

#[tokio::test]
async fn a_list_filters_by_status_customer_and_creation_time() {
    let app = common::stack().worker().start().await;
    let mut mine = Vec::new();
    for customer in ["cust-a", "cust-b", "cust-a", "cust-b"] {
        mine.push(order_for(&app, &app.key, customer).await);
    }
    let cancelled = app.run(&mine[2], json!({"type": "cancel"}), None).await;
    assert_eq!(cancelled["status"], "applied", "{cancelled}");

    assert_eq!(
        ids(&page(&app, "status=cancelled").await),
        [mine[2].clone()]
    );
    assert_eq!(
        ids(&page(&app, "status=pending").await),
        [mine[3].clone(), mine[1].clone(), mine[0].clone()]
    );
    assert_eq!(
        ids(&page(&app, "customer_id=cust-b").await),
        [mine[3].clone(), mine[1].clone()]
    );
    assert!(ids(&page(&app, "customer_id=nobody").await).is_empty());
    // Filters and pages together: one cust-a order per page.
    let first = page(&app, "customer_id=cust-a&limit=1").await;
    assert_eq!(ids(&first), [mine[2].clone()]);
    let next = page(
        &app,
        &format!(
            "customer_id=cust-a&limit=1&starting_after={}",
            cursor(&first, "next_cursor")
        ),
    )
    .await;
    assert_eq!(ids(&next), [mine[0].clone()]);
    assert_eq!(next["has_more"], false);

    // Creation time: from the third order's on, and before it.
    let third = app.order(&mine[2]).await;
    let at = third["created_at"].as_str().unwrap();
    let at = urlencode(at);
    assert_eq!(
        ids(&page(&app, &format!("created_gte={at}")).await),
        [mine[3].clone(), mine[2].clone()]
    );
    assert_eq!(
        ids(&page(&app, &format!("created_lt={at}")).await),
        [mine[1].clone(), mine[0].clone()]
    );
}

/// Inserts `count` pending orders of the stack's client straight into the tables (the list reads
/// only `orders`; each order needs its stream), ids ascending from `first`: more than a filtered page reads.
async fn seed_orders(app: &Stack, first: u128, count: i64) {
    sqlx::query(
        "with ids as (
           select ('00000000-0000-7000-8000-' || lpad(to_hex($2::bigint + g), 12, '0'))::uuid as id
             from generate_series(0, $3 - 1) g),
         streams as (
           insert into order_streams (order_id, client_id, last_seq, processed_seq)
           select id, $1, 1, 1 from ids)
         insert into orders (id, client_id, customer_id, currency, status, version, items,
                             total_cents, created_at, updated_at)
         select id, $1, 'seeded', 'EUR', 'pending', 1, '[]', 0, now(), now() from ids",
    )
    .bind(app.client_id.0)
    .bind(i64::try_from(first).unwrap())
    .bind(count)
    .execute(&app.db)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_filtered_page_reads_a_bounded_number_of_orders_and_goes_on_from_where_it_stopped() {
    let app = common::stack().worker().start().await;
    // The newest order is cancelled; 5,000 pending orders lie between it and the oldest,
    // another cancelled one. A filtered page reads 2,000 orders at most.
    let oldest = "00000000-0000-7000-8000-000000000001";
    seed_orders(&app, 1, 1).await;
    seed_orders(&app, 2, 5_000).await;
    seed_orders(&app, 30_000, 1).await;
    let newest = "00000000-0000-7000-8000-000000007530";
    sqlx::query("update orders set status = 'cancelled' where id in ($1::uuid, $2::uuid)")
        .bind(oldest)
        .bind(newest)
        .execute(&app.db)
        .await
        .unwrap();

    // The first page finds the newest, then stops after 2,000 orders: short, with more.
    let first = page(&app, "status=cancelled&limit=5").await;
    assert_eq!(ids(&first), [newest.to_owned()]);
    assert_eq!(first["has_more"], true, "{first}");
    // The second reads on from there: nothing among the next 2,000, and more still.
    let second = page(
        &app,
        &format!(
            "status=cancelled&limit=5&starting_after={}",
            cursor(&first, "next_cursor")
        ),
    )
    .await;
    assert!(ids(&second).is_empty(), "{second}");
    assert_eq!(second["has_more"], true, "{second}");
    // The third reaches the oldest, and the end.
    let third = page(
        &app,
        &format!(
            "status=cancelled&limit=5&starting_after={}",
            cursor(&second, "next_cursor")
        ),
    )
    .await;
    assert_eq!(ids(&third), [oldest.to_owned()]);
    assert_eq!(third["has_more"], false, "{third}");
    assert!(third["next_cursor"].is_null(), "{third}");
    // Back from the end: the pages before it, newest first, reach the newest again.
    let mut back = page(
        &app,
        &format!(
            "status=cancelled&limit=5&ending_before={}",
            cursor(&third, "previous_cursor")
        ),
    )
    .await;
    let mut found = ids(&back);
    while back["has_more"] == true {
        back = page(
            &app,
            &format!(
                "status=cancelled&limit=5&ending_before={}",
                cursor(&back, "previous_cursor")
            ),
        )
        .await;
        found.splice(0..0, ids(&back));
    }
    assert_eq!(found, [newest.to_owned()]);
    // Unfiltered, a page is the orders themselves: full, whatever lies beyond.
    let plain = page(&app, "limit=100").await;
    assert_eq!(ids(&plain).len(), 100);
    assert_eq!(plain["has_more"], true);
}

/// A timestamp as a query value (its `+` would read as a space).
fn urlencode(value: &str) -> String {
    value.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn a_bad_list_query_is_a_400_problem_naming_what_is_wrong() {
    let app = common::stack().start().await;
    let cursor = "AZrb2Q1wdYqxN0F3Ypk1Yw";
    for query in [
        "limit=0".to_owned(),
        "limit=101".to_owned(),
        "limit=ten".to_owned(),
        "starting_after=not-a-cursor".to_owned(),
        "ending_before=AAAA".to_owned(),
        format!("starting_after={cursor}&ending_before={cursor}"),
        "status=lost".to_owned(),
        "customer_id=a%20b".to_owned(),
        "created_gte=yesterday".to_owned(),
        "page=2".to_owned(),
    ] {
        let request = app.request(Method::GET, &format!("/v1/orders?{query}"));
        let (_, body) = problem(
            request,
            StatusCode::BAD_REQUEST,
            "invalid-request",
            &format!("GET /v1/orders?{query}"),
        )
        .await;
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "?{query}: {body}"
        );
    }
    // A well-formed cursor that names no order of the client's is just a place in the list.
    let empty = page(&app, &format!("starting_after={cursor}")).await;
    assert_eq!(empty["data"], json!([]));
    assert_eq!(empty["has_more"], false);
}

/// A page of `GET /v1/orders/{order}/commands`.
async fn commands_page(app: &Stack, order: &str, query: &str) -> Value {
    get_page(app, &format!("/v1/orders/{order}/commands"), query).await
}

fn seqs(page: &Value) -> Vec<i64> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .collect()
}

/// Gives the stack's client an order with `count` finished commands written straight into the
/// tables (seq 1 its create, the rest applied `reserve`s: the list reads only `commands`), the
/// latest and the first `rejected`: more than a filtered page reads between them.
async fn seed_commands(app: &Stack, count: i64) -> String {
    let order = Uuid::now_v7();
    sqlx::query(
        "with stream as (
           insert into order_streams (order_id, client_id, last_seq, processed_seq)
           values ($1, $2, $3, $3))
         insert into commands (id, client_id, order_id, seq, kind, body, source, status, reason,
                               result_version, partition, finished_at)
         select gen_random_uuid(), $2, $1, g, 'reserve', '{\"type\": \"reserve\"}', 'http',
                case when g in (1, $3) then 'rejected' else 'applied' end,
                case when g in (1, $3) then 'invalid_transition' end, 1, 0, now()
           from generate_series(1, $3) g",
    )
    .bind(order)
    .bind(app.client_id.0)
    .bind(count)
    .execute(&app.db)
    .await
    .unwrap();
    order.to_string()
}

#[tokio::test]
async fn a_filtered_page_of_commands_reads_a_bounded_number_and_goes_on_from_where_it_stopped() {
    let app = common::stack().start().await;
    let order = seed_commands(&app, 5_000).await;
    // The first page finds the latest, then stops after 2,000 commands: short, with more.
    let first = commands_page(&app, &order, "status=rejected&limit=5").await;
    assert_eq!(seqs(&first), [5_000]);
    assert_eq!(first["has_more"], true, "{first}");
    // The pages after it read on, 2,000 commands each, to the first command and the end.
    let mut page = first;
    let mut found = Vec::new();
    let mut pages = 1;
    while page["has_more"] == true {
        page = commands_page(
            &app,
            &order,
            &format!(
                "status=rejected&limit=5&starting_after={}",
                cursor(&page, "next_cursor")
            ),
        )
        .await;
        found.extend(seqs(&page));
        pages += 1;
    }
    assert_eq!(found, [1]);
    assert_eq!(pages, 3, "5,000 commands, 2,000 a page");
    // And back from the end, to the latest.
    let mut back = commands_page(
        &app,
        &order,
        &format!(
            "status=rejected&limit=5&ending_before={}",
            cursor(&page, "previous_cursor")
        ),
    )
    .await;
    let mut found = seqs(&back);
    while back["has_more"] == true {
        back = commands_page(
            &app,
            &order,
            &format!(
                "status=rejected&limit=5&ending_before={}",
                cursor(&back, "previous_cursor")
            ),
        )
        .await;
        found.splice(0..0, seqs(&back));
    }
    assert_eq!(found, [5_000]);
    // Unfiltered, a page is the commands themselves.
    let plain = commands_page(&app, &order, "limit=100").await;
    assert_eq!(seqs(&plain).len(), 100);
    assert_eq!(seqs(&plain)[0], 5_000);
    assert_eq!(plain["has_more"], true);
}

#[tokio::test]
async fn an_orders_commands_are_listed_latest_first_with_their_outcomes() {
    let app = common::stack().worker().start().await;
    let order = order_for(&app, &app.key, "cust-a").await;
    let add = json!({"type": "add_item", "sku": "GADGET", "quantity": 1, "unit_price_cents": 100});
    let missing = json!({"type": "remove_item", "sku": "NOPE"});
    let outcomes = [
        app.run(&order, add.clone(), None).await,
        app.run(&order, missing.clone(), None).await,
        app.run(&order, add, None).await,
        app.run(&order, missing, None).await,
    ];
    let statuses: Vec<&str> = outcomes
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["applied", "rejected", "applied", "rejected"]);

    let first = commands_page(&app, &order, "limit=2").await;
    assert_eq!(seqs(&first), [5, 4]);
    assert_eq!(first["has_more"], true);
    assert_eq!(first["previous_cursor"], Value::Null);
    // Each item is the command's status resource, as GET /v1/commands/{id} answers it.
    let latest = first["data"][0]["command_id"].as_str().unwrap();
    assert_eq!(first["data"][0], app.wait_final(latest).await);
    assert_eq!(first["data"][0]["reason"], "item_not_found");
    let second = commands_page(
        &app,
        &order,
        &format!("limit=2&starting_after={}", cursor(&first, "next_cursor")),
    )
    .await;
    assert_eq!(seqs(&second), [3, 2]);
    let third = commands_page(
        &app,
        &order,
        &format!("limit=2&starting_after={}", cursor(&second, "next_cursor")),
    )
    .await;
    assert_eq!(seqs(&third), [1]);
    assert_eq!(third["data"][0]["type"], "create");
    assert_eq!(
        (&third["has_more"], &third["next_cursor"]),
        (&json!(false), &Value::Null)
    );
    let back = commands_page(
        &app,
        &order,
        &format!(
            "limit=2&ending_before={}",
            cursor(&third, "previous_cursor")
        ),
    )
    .await;
    assert_eq!(seqs(&back), [3, 2]);
    assert_eq!(back["has_more"], true);

    assert_eq!(
        seqs(&commands_page(&app, &order, "status=rejected").await),
        [5, 3]
    );
    assert_eq!(
        seqs(&commands_page(&app, &order, "").await),
        [5, 4, 3, 2, 1]
    );

    // Another client's order, and an unknown one, are 404 alike; a bad query a 400.
    let (_, other_key) = clients::create(&app.db, "other", false).await.unwrap();
    for (key, order) in [
        (other_key.as_str(), order.clone()),
        (app.key.as_str(), Uuid::now_v7().to_string()),
    ] {
        let request = app
            .http
            .request(
                Method::GET,
                app.url(&format!("/v1/orders/{order}/commands")),
            )
            .bearer_auth(key);
        problem(
            request,
            StatusCode::NOT_FOUND,
            "not-found",
            "a foreign or unknown order",
        )
        .await;
    }
    for query in ["limit=0", "status=done", "starting_after=nope", "seq=1"] {
        let path = format!("/v1/orders/{order}/commands?{query}");
        problem(
            app.request(Method::GET, &path),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            &path,
        )
        .await;
    }
}
