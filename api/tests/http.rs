//! The HTTP contract, against the real API, PostgreSQL and RabbitMQ: every refusal is
//! `application/problem+json` with its stable `type`, a refused write writes nothing, and a 202
//! says where its status lives. (Where a worker must apply commands — one client never seeing
//! another's orders, long-polls that end: `e2e/tests/http.rs`.)

use orderflow_storage::clients;
use orderflow_testkit::{Stack, Writes, problem, wait_for};
use reqwest::header::{
    ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, IF_MATCH, LOCATION,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

fn widget() -> Value {
    json!([{"sku": "WIDGET", "quantity": 2, "unit_price_cents": 1250}])
}

/// A valid body of `POST /v1/orders`.
fn order_body() -> Value {
    json!({"customer_id": "cust-1", "currency": "EUR", "items": widget()})
}

/// A valid body of `POST /v1/orders` with one field replaced (or added).
fn order_body_with(field: &str, value: Value) -> Value {
    let mut body = order_body();
    body[field] = value;
    body
}

/// A valid body of `POST /v1/orders` without one field.
fn order_body_without(field: &str) -> Value {
    let mut body = order_body();
    body.as_object_mut().unwrap().remove(field);
    body
}

/// A valid body of `POST /v1/orders` whose one item has `field` replaced (or added).
fn order_body_with_item(field: &str, value: Value) -> Value {
    let mut body = order_body();
    body["items"][0][field] = value;
    body
}

fn fresh_key() -> String {
    Uuid::new_v4().to_string()
}

async fn inventory_rows(app: &Stack) -> i64 {
    sqlx::query_scalar("select count(*) from inventory")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// Sends a request that must be accepted; returns the Location header and the body.
async fn accepted(request: RequestBuilder, what: &str) -> (HeaderMap, Value) {
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{what}: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    (headers, body)
}

fn post_order(app: &Stack) -> RequestBuilder {
    app.request(Method::POST, "/v1/orders")
        .header("idempotency-key", fresh_key())
}

fn post_command(app: &Stack, order_id: &str) -> RequestBuilder {
    app.request(Method::POST, &format!("/v1/orders/{order_id}/commands"))
        .header("idempotency-key", fresh_key())
}

#[tokio::test]
async fn requests_without_a_valid_bearer_key_are_401_with_www_authenticate_and_write_nothing() {
    let app = Stack::builder().api().start().await;
    let created = app.create_order(widget()).await;
    let order_id = created["order_id"].as_str().unwrap().to_owned();
    let command_id = created["command_id"].as_str().unwrap().to_owned();

    let authorizations: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        (
            "the Basic scheme",
            Some("Basic dXNlcjpwYXNzd29yZA==".into()),
        ),
        (
            "the right key under another scheme",
            Some(format!("Token {}", app.key)),
        ),
        ("the right key without a scheme", Some(app.key.clone())),
        ("an empty Bearer", Some("Bearer ".into())),
        (
            "an unknown key",
            Some(format!("Bearer {}", clients::new_key())),
        ),
        (
            "an overlong key",
            Some(format!("Bearer {}", "k".repeat(300))),
        ),
    ];
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/orders/{order_id}"), None),
        (Method::GET, format!("/v1/orders/{order_id}/events"), None),
        (Method::GET, format!("/v1/commands/{command_id}"), None),
        (
            Method::GET,
            format!("/v1/commands/{command_id}?wait=1"),
            None,
        ),
        (Method::GET, "/v1/inventory/WIDGET".into(), None),
        (Method::POST, "/v1/orders".into(), Some(order_body())),
        (
            Method::POST,
            format!("/v1/orders/{order_id}/commands"),
            Some(json!({"type": "cancel"})),
        ),
        (
            Method::PUT,
            "/v1/inventory/WIDGET".into(),
            Some(json!({"available": 5})),
        ),
    ];
    for (method, path, body) in &routes {
        for (label, authorization) in &authorizations {
            let mut request = app
                .http
                .request(method.clone(), app.url(path))
                .header("idempotency-key", fresh_key());
            if let Some(authorization) = authorization {
                request = request.header(AUTHORIZATION, authorization);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let what = format!("{method} {path} with {label}");
            let (headers, _) = app
                .refused(request, StatusCode::UNAUTHORIZED, "unauthorized", &what)
                .await;
            assert_eq!(
                headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()),
                Some("Bearer"),
                "{what}"
            );
        }
    }
    assert_eq!(
        inventory_rows(&app).await,
        0,
        "no PUT without a key set stock"
    );
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_without_the_key_cache() {
    // With the cache (the default) a revocation takes the notification's delivery to arrive:
    // `abuse::a_cached_key_skips_the_database_and_a_revocation_still_reaches_the_cache`.
    let app = Stack::builder()
        .api_config(|c| c.key_cache_secs = 0)
        .api()
        .start()
        .await;
    let (client, key) = clients::create(&app.db, "soon-revoked", false)
        .await
        .unwrap();
    let unknown = format!("/v1/orders/{}", Uuid::new_v4());

    // While live, the key passes authentication: an unknown order is a 404, a create a 202.
    problem(
        app.http.get(app.url(&unknown)).bearer_auth(&key),
        StatusCode::NOT_FOUND,
        "not-found",
        "a live key reading an unknown order",
    )
    .await;
    let (_, created) = accepted(
        app.http
            .post(app.url("/v1/orders"))
            .bearer_auth(&key)
            .header("idempotency-key", fresh_key())
            .json(&order_body()),
        "a live key creating an order",
    )
    .await;
    let command = format!("/v1/commands/{}", created["command_id"].as_str().unwrap());

    assert!(clients::revoke(&app.db, client.id).await.unwrap());

    for path in [unknown.as_str(), command.as_str()] {
        let what = format!("GET {path} with a revoked key");
        let (headers, _) = problem(
            app.http.get(app.url(path)).bearer_auth(&key),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &what,
        )
        .await;
        assert_eq!(headers[WWW_AUTHENTICATE], "Bearer", "{what}");
    }
    let (headers, _) = app
        .refused(
            app.http
                .post(app.url("/v1/orders"))
                .bearer_auth(&key)
                .header("idempotency-key", fresh_key())
                .json(&order_body()),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "POST /v1/orders with a revoked key",
        )
        .await;
    assert_eq!(headers[WWW_AUTHENTICATE], "Bearer");
    // Revoking one client's key leaves the others working.
    problem(
        app.request(Method::GET, &unknown),
        StatusCode::NOT_FOUND,
        "not-found",
        "another client's live key",
    )
    .await;
}

#[tokio::test]
async fn only_an_admin_key_may_set_stock_and_every_client_may_read_it() {
    let app = Stack::builder().api().start().await;
    let (_, other_key) = clients::create(&app.db, "other", false).await.unwrap();

    for (label, key) in [
        ("the test client", &app.key),
        ("another client", &other_key),
    ] {
        let what = format!("PUT /v1/inventory/GIZMO by {label} (not an admin)");
        problem(
            app.http
                .put(app.url("/v1/inventory/GIZMO"))
                .bearer_auth(key)
                .json(&json!({"available": 7})),
            StatusCode::FORBIDDEN,
            "forbidden",
            &what,
        )
        .await;
        assert_eq!(inventory_rows(&app).await, 0, "{what} wrote stock");
    }
    problem(
        app.request(Method::GET, "/v1/inventory/GIZMO"),
        StatusCode::NOT_FOUND,
        "not-found",
        "GET of a SKU that was never stocked",
    )
    .await;

    let response = app
        .http
        .put(app.url("/v1/inventory/GIZMO"))
        .bearer_auth(&app.admin_key)
        .json(&json!({"available": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let expected = json!({"sku": "GIZMO", "available": 7, "reserved": 0, "shipped": 0});
    assert_eq!(response.json::<Value>().await.unwrap(), expected);

    for key in [&app.key, &other_key, &app.admin_key] {
        let response = app
            .http
            .get(app.url("/v1/inventory/GIZMO"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.json::<Value>().await.unwrap(), expected);
    }
}

#[tokio::test]
async fn the_same_idempotency_key_from_two_clients_creates_two_commands() {
    let app = Stack::builder().api().start().await;
    let (_, other_key) = clients::create(&app.db, "other", false).await.unwrap();
    let key = fresh_key();
    let post = |client_key: &str| {
        app.http
            .post(app.url("/v1/orders"))
            .bearer_auth(client_key)
            .header("idempotency-key", &key)
            .json(&order_body())
    };
    let before = app.writes().await;
    let (mine_headers, mine) = accepted(post(&app.key), "the first client").await;
    let (theirs_headers, theirs) = accepted(post(&other_key), "the second client").await;
    assert_ne!(mine["command_id"], theirs["command_id"]);
    assert_ne!(mine["order_id"], theirs["order_id"]);
    assert!(mine_headers.get("idempotent-replayed").is_none());
    assert!(theirs_headers.get("idempotent-replayed").is_none());
    assert_eq!(
        app.writes().await,
        Writes {
            commands: before.commands + 2,
            order_streams: before.order_streams + 2,
            idempotency_keys: before.idempotency_keys + 2,
        }
    );
    let owners: Vec<Uuid> = sqlx::query_scalar(
        "select client_id from idempotency_keys where key = $1 order by created_at",
    )
    .bind(&key)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(owners.len(), 2);
    assert_ne!(owners[0], owners[1]);

    // Each client's retry replays its own command and writes nothing.
    let after = app.writes().await;
    for (client_key, original) in [(&app.key, &mine), (&other_key, &theirs)] {
        let (headers, replay) = accepted(post(client_key), "a retry").await;
        assert_eq!(replay["command_id"], original["command_id"]);
        assert_eq!(replay["order_id"], original["order_id"]);
        assert_eq!(headers["idempotent-replayed"], "true");
    }
    assert_eq!(app.writes().await, after);
}

#[tokio::test]
async fn every_post_needs_an_idempotency_key_of_1_to_255_visible_ascii_characters() {
    let app = Stack::builder().api().start().await;
    let order_id = app.create_order(widget()).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let routes = [
        ("/v1/orders".to_owned(), order_body()),
        (
            format!("/v1/orders/{order_id}/commands"),
            json!({"type": "cancel"}),
        ),
    ];
    let bad_keys: Vec<(&str, Option<HeaderValue>)> = vec![
        ("no Idempotency-Key", None),
        ("an empty key", Some(HeaderValue::from_static(""))),
        (
            "a key of 256 characters",
            Some(HeaderValue::from_str(&"k".repeat(256)).unwrap()),
        ),
        (
            "a key with a space",
            Some(HeaderValue::from_static("two words")),
        ),
        (
            "a non-ASCII key",
            Some(HeaderValue::from_bytes("clé".as_bytes()).unwrap()),
        ),
    ];
    for (path, body) in &routes {
        for (label, key) in &bad_keys {
            let mut request = app.request(Method::POST, path).json(body);
            if let Some(key) = key {
                request = request.header("idempotency-key", key.clone());
            }
            app.refused(
                request,
                StatusCode::BAD_REQUEST,
                "invalid-request",
                &format!("POST {path} with {label}"),
            )
            .await;
        }
        // The longest key is accepted, and stored as sent.
        let key = format!("{}-{}", fresh_key(), "k".repeat(255 - 37));
        assert_eq!(key.len(), 255);
        let (_, body) = accepted(
            app.request(Method::POST, path)
                .header("idempotency-key", &key)
                .json(body),
            &format!("POST {path} with a key of 255 characters"),
        )
        .await;
        let stored: Uuid =
            sqlx::query_scalar("select command_id from idempotency_keys where key = $1")
                .bind(&key)
                .fetch_one(&app.db)
                .await
                .unwrap();
        assert_eq!(body["command_id"], stored.to_string());
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_400_and_one_not_declared_json_is_415_and_neither_writes() {
    let app = Stack::builder().api().start().await;
    let order_id = app.create_order(widget()).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let commands = format!("/v1/orders/{order_id}/commands");
    let valid_command = json!({"type": "cancel"});

    for (path, valid) in [
        ("/v1/orders", order_body()),
        (commands.as_str(), valid_command),
    ] {
        for (label, text) in [
            ("plain text", "this is not json"),
            ("truncated JSON", r#"{"customer_id": "cust-1", "items": ["#),
            ("an empty body", ""),
            ("trailing garbage", r#"{"type": "cancel"} x"#),
            ("a single quoted string", "{'type': 'cancel'}"),
        ] {
            app.refused(
                app.request(Method::POST, path)
                    .header("idempotency-key", fresh_key())
                    .header(CONTENT_TYPE, "application/json")
                    .body(text),
                StatusCode::BAD_REQUEST,
                "malformed-json",
                &format!("POST {path} with {label}"),
            )
            .await;
        }
        let json_text = valid.to_string();
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("application/jsonx"),
            Some("multipart/form-data; boundary=x"),
        ] {
            let mut request = app
                .request(Method::POST, path)
                .header("idempotency-key", fresh_key())
                .body(json_text.clone());
            if let Some(content_type) = content_type {
                request = request.header(CONTENT_TYPE, content_type);
            }
            app.refused(
                request,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                &format!("POST {path} with a JSON body as {content_type:?}"),
            )
            .await;
        }
    }

    // The admin route holds to the same policy.
    let put = || {
        app.http
            .put(app.url("/v1/inventory/WIDGET"))
            .bearer_auth(&app.admin_key)
    };
    problem(
        put()
            .header(CONTENT_TYPE, "application/json")
            .body("{available: 3}"),
        StatusCode::BAD_REQUEST,
        "malformed-json",
        "PUT /v1/inventory with malformed JSON",
    )
    .await;
    problem(
        put().body(r#"{"available": 3}"#),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        "PUT /v1/inventory without a content-type",
    )
    .await;
    assert_eq!(inventory_rows(&app).await, 0);
}

#[tokio::test]
async fn a_create_body_that_is_not_a_valid_order_is_422_invalid_body_and_writes_nothing() {
    let app = Stack::builder().api().start().await;
    let item = |sku: &str| json!({"sku": sku, "quantity": 1, "unit_price_cents": 100});
    let many: Vec<Value> = (0..101).map(|i| item(&format!("SKU-{i}"))).collect();

    let cases: Vec<(&str, Value)> = vec![
        (
            "an unknown top-level field",
            order_body_with("coupon", json!("FREE")),
        ),
        (
            "an unknown field in an item",
            order_body_with_item("discount_cents", json!(5)),
        ),
        ("quantity 0", order_body_with_item("quantity", json!(0))),
        (
            "quantity 10001",
            order_body_with_item("quantity", json!(10_001)),
        ),
        (
            "quantity \"2\"",
            order_body_with_item("quantity", json!("2")),
        ),
        ("quantity 1.5", order_body_with_item("quantity", json!(1.5))),
        ("quantity -1", order_body_with_item("quantity", json!(-1))),
        (
            "quantity null",
            order_body_with_item("quantity", Value::Null),
        ),
        (
            "a negative unit_price_cents",
            order_body_with_item("unit_price_cents", json!(-1)),
        ),
        (
            "a unit_price_cents over the limit",
            order_body_with_item("unit_price_cents", json!(100_000_001)),
        ),
        (
            "currency \"eur\"",
            order_body_with("currency", json!("eur")),
        ),
        (
            "currency \"EURO\"",
            order_body_with("currency", json!("EURO")),
        ),
        (
            "a sku with a space",
            order_body_with_item("sku", json!("WID GET")),
        ),
        ("an empty sku", order_body_with_item("sku", json!(""))),
        (
            "a sku of 65 characters",
            order_body_with_item("sku", json!("S".repeat(65))),
        ),
        ("101 items", order_body_with("items", json!(many))),
        (
            "a duplicate sku",
            order_body_with("items", json!([item("DUP"), item("DUP")])),
        ),
        ("no customer_id", order_body_without("customer_id")),
        ("no currency", order_body_without("currency")),
        ("no items", order_body_without("items")),
        (
            "items that are not a list",
            order_body_with("items", json!({"sku": "A"})),
        ),
        (
            "a customer_id with a space",
            order_body_with("customer_id", json!("cust 1")),
        ),
        (
            "an order_id (mass assignment)",
            order_body_with("order_id", json!(Uuid::now_v7())),
        ),
        (
            "a version (mass assignment)",
            order_body_with("version", json!(5)),
        ),
        (
            "a status (mass assignment)",
            order_body_with("status", json!("paid")),
        ),
        (
            "a client_id (mass assignment)",
            order_body_with("client_id", json!(Uuid::now_v7())),
        ),
        ("a type", order_body_with("type", json!("create"))),
        ("a JSON array", json!([order_body()])),
        ("JSON null", Value::Null),
        ("a JSON string", json!("order")),
    ];
    for (label, body) in cases {
        app.refused(
            post_order(&app).json(&body),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            &format!("POST /v1/orders with {label}: {body}"),
        )
        .await;
    }

    // A refused request leaves its Idempotency-Key unused: the corrected retry is a fresh 202.
    let key = fresh_key();
    let with_key = |body: Value| {
        app.request(Method::POST, "/v1/orders")
            .header("idempotency-key", &key)
            .json(&body)
    };
    app.refused(
        with_key(order_body_with_item("quantity", json!(0))),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-body",
        "the first try with a key",
    )
    .await;
    let (headers, _) = accepted(with_key(order_body()), "the corrected retry with that key").await;
    assert!(headers.get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn a_command_body_that_is_not_a_valid_command_is_422_invalid_body_and_writes_nothing() {
    let app = Stack::builder().api().start().await;
    let order_id = app.create_order(widget()).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let add = |field: &str, value: Value| {
        let mut command =
            json!({"type": "add_item", "sku": "GADGET", "quantity": 1, "unit_price_cents": 100});
        command[field] = value;
        command
    };
    let cases: Vec<(&str, Value)> = vec![
        (
            "a create",
            json!({"type": "create", "customer_id": "cust-1", "currency": "EUR", "items": widget()}),
        ),
        ("an unknown command type", json!({"type": "refund"})),
        ("a type in the wrong case", json!({"type": "Cancel"})),
        ("no type", json!({"reason": "changed my mind"})),
        ("an empty object", json!({})),
        (
            "an unknown field",
            json!({"type": "pay", "amount_cents": 5}),
        ),
        (
            "an order_id (mass assignment)",
            json!({"type": "pay", "order_id": Uuid::now_v7()}),
        ),
        (
            "a version (mass assignment)",
            json!({"type": "reserve", "version": 9}),
        ),
        (
            "a status (mass assignment)",
            json!({"type": "cancel", "status": "delivered"}),
        ),
        ("quantity 0", add("quantity", json!(0))),
        ("quantity 10001", add("quantity", json!(10_001))),
        ("quantity \"2\"", add("quantity", json!("2"))),
        ("quantity 1.5", add("quantity", json!(1.5))),
        (
            "a negative unit_price_cents",
            add("unit_price_cents", json!(-1)),
        ),
        ("a sku with a space", add("sku", json!("GAD GET"))),
        (
            "an unknown field in an add_item",
            add("discount_cents", json!(1)),
        ),
        ("an add_item without a sku", {
            let mut c = add("quantity", json!(1));
            c.as_object_mut().unwrap().remove("sku");
            c
        }),
        (
            "a reason of 501 characters",
            json!({"type": "cancel", "reason": "r".repeat(501)}),
        ),
        ("a JSON array", json!([{"type": "cancel"}])),
    ];
    for (label, body) in cases {
        app.refused(
            post_command(&app, &order_id).json(&body),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            &format!("POST /v1/orders/{{id}}/commands with {label}: {body}"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_body_over_64_kib_is_413_and_writes_nothing() {
    let app = Stack::builder().api().start().await;
    let order_id = app.create_order(widget()).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Valid JSON that would otherwise be a 422: the size is refused before anything is parsed.
    let padding = "x".repeat(100 * 1024);
    for (path, mut body) in [
        ("/v1/orders".to_owned(), order_body()),
        (
            format!("/v1/orders/{order_id}/commands"),
            json!({"type": "cancel"}),
        ),
    ] {
        body["padding"] = json!(padding.as_str());
        app.refused(
            app.request(Method::POST, &path)
                .header("idempotency-key", fresh_key())
                .json(&body),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            &format!("POST {path} with a 100 KB body"),
        )
        .await;
    }
    problem(
        app.http
            .put(app.url("/v1/inventory/WIDGET"))
            .bearer_auth(&app.admin_key)
            .json(&json!({"available": 1, "padding": padding.as_str()})),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        "PUT /v1/inventory with a 100 KB body",
    )
    .await;
    assert_eq!(inventory_rows(&app).await, 0);
}

#[tokio::test]
async fn a_malformed_if_match_is_400_invalid_request_and_writes_nothing() {
    let app = Stack::builder().api().start().await;
    let order_id = app.create_order(widget()).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for if_match in [
        "abc",
        "\"1x\"",
        "\"-1\"",
        "1",
        "\"\"",
        "\"1",
        "W/\"1\"",
        "\"1.0\"",
        "\"99999999999999999999\"",
    ] {
        app.refused(
            post_command(&app, &order_id)
                .header(IF_MATCH, if_match)
                .json(&json!({"type": "cancel"})),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            &format!("If-Match: {if_match}"),
        )
        .await;
    }
    // Well-formed ones are accepted.
    for if_match in ["\"1\"", "*"] {
        accepted(
            post_command(&app, &order_id)
                .header(IF_MATCH, if_match)
                .json(&json!({"type": "reserve"})),
            &format!("If-Match: {if_match}"),
        )
        .await;
    }
}

#[tokio::test]
async fn an_id_that_is_not_a_uuid_is_400_invalid_request_on_every_route_with_an_id() {
    let app = Stack::builder().api().start().await;
    for id in ["not-a-uuid", "123", "0000000-0000-0000-0000-000000000000"] {
        for path in [
            format!("/v1/orders/{id}"),
            format!("/v1/orders/{id}/events"),
            format!("/v1/commands/{id}"),
            format!("/v1/commands/{id}?wait=1"),
        ] {
            problem(
                app.request(Method::GET, &path),
                StatusCode::BAD_REQUEST,
                "invalid-request",
                &format!("GET {path}"),
            )
            .await;
        }
        let path = format!("/v1/orders/{id}/commands");
        app.refused(
            post_command(&app, id).json(&json!({"type": "cancel"})),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            &format!("POST {path}"),
        )
        .await;
    }
    // The inventory's id is a SKU: one that is not a valid SKU is refused the same way.
    for sku in ["bad%20sku", "bad!sku", &"S".repeat(65)] {
        let path = format!("/v1/inventory/{sku}");
        problem(
            app.request(Method::GET, &path),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            &format!("GET {path}"),
        )
        .await;
        problem(
            app.http
                .put(app.url(&path))
                .bearer_auth(&app.admin_key)
                .json(&json!({"available": 1})),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            &format!("PUT {path}"),
        )
        .await;
    }
    assert_eq!(inventory_rows(&app).await, 0);
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_as_problem_json() {
    let app = Stack::builder().api().start().await;
    let id = Uuid::now_v7();
    for (method, path) in [
        // (`/` is the dashboard.)
        (Method::GET, "/index.html".to_owned()),
        (Method::GET, "/dashboard/assets/nope.js".to_owned()),
        (Method::GET, "/v1".to_owned()),
        (Method::GET, "/v1/nope".to_owned()),
        (Method::GET, "/v2/orders".to_owned()),
        (Method::GET, format!("/v1/orders/{id}/nope")),
        (Method::POST, "/v1/order".to_owned()),
        (Method::GET, "/v1/inventory".to_owned()),
    ] {
        let what = format!("{method} {path}");
        app.refused(
            app.request(method, &path),
            StatusCode::NOT_FOUND,
            "not-found",
            &what,
        )
        .await;
    }
    // A 405 also says which methods the route has (RFC 9110: `Allow` is required on a 405).
    for (method, path, allowed) in [
        (Method::DELETE, "/v1/orders".to_owned(), "POST"),
        (Method::PATCH, "/v1/orders".to_owned(), "GET"),
        (Method::PUT, format!("/v1/orders/{id}"), "GET"),
        (Method::DELETE, format!("/v1/orders/{id}"), "GET"),
        (Method::POST, format!("/v1/orders/{id}"), "PATCH"),
        (Method::DELETE, format!("/v1/orders/{id}/commands"), "POST"),
        (Method::POST, format!("/v1/orders/{id}/events"), "GET"),
        (Method::POST, format!("/v1/commands/{id}"), "GET"),
        (Method::DELETE, "/v1/inventory/WIDGET".to_owned(), "PUT"),
        (Method::POST, "/healthz".to_owned(), "GET"),
    ] {
        let what = format!("{method} {path}");
        let (headers, _) = app
            .refused(
                app.request(method, &path)
                    .header("idempotency-key", fresh_key())
                    .json(&json!({"type": "cancel"})),
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                &what,
            )
            .await;
        let allow = headers
            .get(ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{what}: no Allow header"));
        assert!(
            allow.split(',').any(|m| m.trim() == allowed),
            "{what}: Allow: {allow}, expected {allowed} in it"
        );
    }
}

#[tokio::test]
async fn healthz_and_readyz_answer_200_with_json_and_need_no_key() {
    let app = Stack::builder().api().start().await;
    for (path, expected) in [
        ("/healthz", json!({"status": "ok"})),
        (
            "/readyz",
            json!({"status": "ready", "postgres": "ok", "rabbitmq": "ok"}),
        ),
    ] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "application/json",
            "{path}"
        );
        assert_eq!(response.json::<Value>().await.unwrap(), expected, "{path}");
    }
}

#[tokio::test]
async fn a_202_points_its_location_at_the_command_status() {
    let app = Stack::builder().api().start().await;
    let key = fresh_key();
    let create = || {
        app.request(Method::POST, "/v1/orders")
            .header("idempotency-key", &key)
            .json(&order_body())
    };
    let (headers, created) = accepted(create(), "POST /v1/orders").await;
    let command_id = created["command_id"].as_str().unwrap();
    let order_id = created["order_id"].as_str().unwrap();
    assert_eq!(created["status"], "accepted");
    assert_eq!(headers[CONTENT_TYPE], "application/json");
    assert_eq!(
        headers[LOCATION],
        format!("/v1/commands/{command_id}").as_str()
    );
    assert_ne!(command_id, order_id);

    // A replay points at the same place.
    let (replay_headers, replay) = accepted(create(), "the same POST again").await;
    assert_eq!(replay["command_id"], command_id);
    assert_eq!(replay_headers[LOCATION], headers[LOCATION]);
    assert_eq!(replay_headers["idempotent-replayed"], "true");

    let (command_headers, command) = accepted(
        post_command(&app, order_id).json(&json!({"type": "cancel"})),
        "POST a command",
    )
    .await;
    let cancel_id = command["command_id"].as_str().unwrap();
    assert_eq!(command["order_id"], order_id);
    assert_ne!(cancel_id, command_id);
    assert_eq!(
        command_headers[LOCATION],
        format!("/v1/commands/{cancel_id}").as_str()
    );

    // Following the Location reads that very command.
    for (location, id, kind) in [
        (&headers[LOCATION], command_id, "create"),
        (&command_headers[LOCATION], cancel_id, "cancel"),
    ] {
        let response = app
            .request(Method::GET, location.to_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let status: Value = response.json().await.unwrap();
        assert_eq!(status["command_id"], id);
        assert_eq!(status["order_id"], order_id);
        assert_eq!(status["type"], kind);
    }
}

#[tokio::test]
async fn the_limits_themselves_are_accepted() {
    let app = Stack::builder().api().start().await;
    let items: Vec<Value> = (0..100)
        .map(|i| {
            json!({
                "sku": format!("{i:0>64}"),
                "quantity": if i % 2 == 0 { 10_000 } else { 1 },
                "unit_price_cents": if i % 2 == 0 { 0 } else { 100_000_000 },
            })
        })
        .collect();
    let body = json!({
        "customer_id": "c".repeat(128),
        "currency": "JPY",
        "items": items,
    });
    let (_, created) = accepted(post_order(&app).json(&body), "an order at every limit").await;
    let order_id = created["order_id"].as_str().unwrap();

    // `application/json` with parameters, and `+json` types, are JSON.
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ] {
        accepted(
            post_command(&app, order_id)
                .header(CONTENT_TYPE, content_type)
                .body(json!({"type": "add_item", "sku": fresh_key(), "quantity": 1, "unit_price_cents": 1}).to_string()),
            &format!("a command as {content_type}"),
        )
        .await;
    }
    // A cancel reason of 500 characters is within bounds.
    accepted(
        post_command(&app, order_id).json(&json!({"type": "cancel", "reason": "r".repeat(500)})),
        "a cancel with a 500-character reason",
    )
    .await;
}

#[tokio::test]
async fn a_duplicated_json_key_is_refused_not_merged() {
    let app = Stack::builder().api().start().await;
    let body = r#"{"customer_id":"a","customer_id":"b","currency":"EUR","items":[]}"#;
    let request = post_order(&app)
        .header(CONTENT_TYPE, "application/json")
        .body(body);
    let (_, problem) = app
        .refused(
            request,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "duplicate key",
        )
        .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("duplicate field"),
        "{problem}"
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_two_idempotency_keys_are_refused() {
    let app = Stack::builder().api().start().await;
    let response = app
        .http
        .get(app.url("/v1/inventory/NONE"))
        .header(AUTHORIZATION, format!("bearer {}", app.key))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND, "authenticated");

    let request = app
        .request(Method::POST, "/v1/orders")
        .header("idempotency-key", "one")
        .header("idempotency-key", "two")
        .json(&order_body());
    app.refused(
        request,
        StatusCode::BAD_REQUEST,
        "invalid-request",
        "two keys",
    )
    .await;
}

#[tokio::test]
async fn a_stop_is_not_held_up_by_silent_or_idle_connections_and_ends_open_long_polls() {
    let mut app = Stack::builder().api().start().await;
    let accepted = app.create_order(json!([])).await;
    let command = accepted["command_id"].as_str().unwrap().to_owned();
    let host = app.address().trim_start_matches("http://").to_owned();
    // A connection that never sends a request (hyper counts it busy, not idle).
    let silent = tokio::net::TcpStream::connect(&host).await.unwrap();
    // An idle keep-alive connection: the test client's pool keeps the create's connection open.
    // A long-poll in flight: the worker is stopped, so the command stays accepted.
    let poll = tokio::spawn(
        app.request(Method::GET, &format!("/v1/commands/{command}?wait=30"))
            .send(),
    );
    // The poll is registered once the API counts it as an open long-poll.
    wait_for("the long-poll to open")
        .within(Duration::from_secs(10))
        .every(Duration::from_millis(20))
        .until(|| async {
            app.metric("orderflow_open_streams{kind=\"long_poll\"}")
                .await
                >= 1.0
        })
        .await;
    assert!(
        app.stop_api(Duration::from_secs(10)).await,
        "the API stopped within 10 s (its grace for busy connections is 20 s)"
    );
    // The long-poll was answered with the status it had, not cut off.
    let answer = poll.await.unwrap().unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    drop(silent);
}
