//! The dashboard's endpoints against the real API: who may see it, its live feeds (and that a
//! revoked or demoted key loses its feed at once), and the API's Prometheus series. (What needs
//! a worker, the order list, timelines, redrive and the partitions panel:
//! `e2e/tests/dashboard.rs`.)

use orderflow_testkit::{Scrape, Stack, read_frames, wait_for};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

#[tokio::test]
async fn the_dashboard_is_for_operators_and_admin_keys_and_a_form_cannot_sign_in() {
    let app = Stack::builder().api().start().await;
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
    // Scripts read with an admin key.
    let script = app
        .http
        .get(app.url("/dashboard/api/orders"))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    // A key is no longer a sign-in (the cookie carries a session, never a key).
    let by_key = app
        .http
        .post(app.url("/dashboard/session"))
        .json(&json!({ "key": app.admin_key }))
        .send()
        .await
        .unwrap();
    assert_eq!(by_key.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let password = app.create_operator("erin", "viewer").await;
    let session = app.sign_in("erin", &password).await;
    let page = app
        .as_signed_in(&session, Method::GET, "/")
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
        .as_signed_in(&session, Method::GET, "/dashboard/api/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(orders.status(), StatusCode::OK);
    // A form from another site cannot sign in or act: JSON bodies only.
    let form = app
        .http
        .post(app.url("/dashboard/session"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("name=erin&password={password}"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn the_api_metrics_count_requests_by_route_template_and_accepted_commands_by_type() {
    let app = Stack::builder().api().start().await;
    let before = app.metrics().await;
    let order = app.create_order(json!([])).await;
    let missing = app
        .request(Method::GET, &format!("/v1/orders/{}", Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let after = app.metrics().await;
    let count = |scrape: &Scrape, labels: &[(&str, &str)]| {
        scrape.value("orderflow_http_requests_total", labels)
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
    assert!(!after.text.contains(order["order_id"].as_str().unwrap()));
    let accepted = [("type", "create"), ("source", "http")];
    assert_eq!(
        after.value("orderflow_commands_accepted_total", &accepted)
            - before.value("orderflow_commands_accepted_total", &accepted),
        1.0
    );
    assert!(
        after
            .text
            .contains("orderflow_http_request_duration_seconds_bucket")
    );
}

#[tokio::test]
async fn a_client_may_hold_only_so_many_live_feeds() {
    let app = Stack::builder().api().start().await;
    let mut open = Vec::new();
    for _ in 0..8 {
        let feed = app
            .admin_request(Method::GET, "/dashboard/api/stream")
            .send()
            .await
            .unwrap();
        assert_eq!(feed.status(), StatusCode::OK);
        open.push(feed);
    }
    let refused = app
        .admin_request(Method::GET, "/dashboard/api/stream")
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
    wait_for("a slot to be freed")
        .within(Duration::from_secs(10))
        .until(|| async {
            let again = app
                .admin_request(Method::GET, "/dashboard/api/stream")
                .send()
                .await
                .unwrap();
            again.status() == StatusCode::OK
        })
        .await;
}

const API: &str = env!("CARGO_BIN_EXE_orderflow-api");

/// Reads the feed until the server ends it; false if it is still open after `limit`.
async fn ends_within(feed: &mut reqwest::Response, limit: Duration) -> bool {
    let until = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(until, feed.chunk()).await {
            Err(_) => return false,
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None) | Err(_)) => return true,
        }
    }
}

#[tokio::test]
async fn client_revoke_ends_an_open_live_feed_of_that_key_even_with_the_key_cache_on() {
    // The default key cache (60 s): only the notification of the change can end the feed in time.
    let app = Stack::builder().api().start().await;
    let mut feed = app.open_feed(&app.admin_key).await;
    // Another admin's feed is not touched by the revocation.
    let (other, other_key) = orderflow_storage::clients::create(&app.db, "other-admin", true)
        .await
        .unwrap();
    let mut other_feed = app.open_feed(&other_key).await;
    let id: Uuid = sqlx::query_scalar("select id from clients where name = 'test-admin'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let output = std::process::Command::new(API)
        .args(["client", "revoke", "--id", &id.to_string()])
        .env("DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        ends_within(&mut feed, Duration::from_secs(2)).await,
        "the revoked key's feed still streams 2 s after `client revoke`"
    );
    assert!(
        read_frames(&mut other_feed, Duration::from_secs(5), |event, _| event
            == "stats")
        .await,
        "another admin's feed ({}) goes on",
        other.name
    );
}

#[tokio::test]
async fn a_key_that_stops_being_an_admin_loses_its_live_feed_with_the_key_cache_off() {
    let app = Stack::builder()
        .api_config(|c| c.key_cache_secs = 0)
        .api()
        .start()
        .await;
    let mut feed = app.open_feed(&app.admin_key).await;
    // Disabled by hand, not through the CLI: any change to the client counts.
    sqlx::query("update clients set is_admin = false where name = 'test-admin'")
        .execute(&app.db)
        .await
        .unwrap();
    assert!(
        ends_within(&mut feed, Duration::from_secs(2)).await,
        "the feed of a key that is no longer an admin's still streams after 2 s"
    );
    let again = app
        .admin_request(Method::GET, "/dashboard/api/stream")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_api_serves_its_own_favicon_and_the_pages_link_it() {
    let app = Stack::builder().api().start().await;
    let icon = app.http.get(app.url("/favicon.ico")).send().await.unwrap();
    assert_eq!(icon.status(), StatusCode::OK);
    assert_eq!(icon.headers()[header::CONTENT_TYPE], "image/x-icon");
    let bytes = icon.bytes().await.unwrap();
    assert_eq!(&bytes[..4], &[0, 0, 1, 0], "an ICO file");
    let sign_in = app
        .http
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(sign_in.contains(r#"rel="icon""#), "{sign_in}");
    let svg = app
        .http
        .get(app.url("/dashboard/assets/favicon.svg"))
        .send()
        .await
        .unwrap();
    assert_eq!(svg.status(), StatusCode::OK);
    assert_eq!(svg.headers()[header::CONTENT_TYPE], "image/svg+xml");
}
