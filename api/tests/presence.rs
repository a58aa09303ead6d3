//! Presence on the desk and edit leases, against the real API and PostgreSQL: who has an order
//! open (live, on every dashboard's feed), leaving it (by saying so, by a session that ends, by
//! a page that stops renewing), and the edit lease: it warns others, only its holder renews it,
//! an admin breaks it (audited), a lapsed one is free, and it is people's, not scripts'.

use orderflow_testkit::{SignedIn, Stack, read_frames};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

async fn signed_in(app: &Stack, name: &str, role: &str) -> SignedIn {
    let password = app.create_operator(name, role).await;
    app.sign_in(name, &password).await
}

async fn call(app: &Stack, who: &SignedIn, method: Method, path: &str) -> (StatusCode, Value) {
    let response = app.as_signed_in(who, method, path).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn names(presence: &Value) -> Vec<&str> {
    presence["viewers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect()
}

/// Reads `feed` until a presence frame of `order` satisfies `want`.
async fn presence_frame(
    feed: &mut reqwest::Response,
    order: &str,
    want: impl Fn(&Value) -> bool,
) -> bool {
    read_frames(feed, Duration::from_secs(10), |event, data| {
        event == "presence" && data["order_id"] == order && want(data)
    })
    .await
}

#[tokio::test]
async fn presence_shows_who_has_an_order_open_live_and_leaving_in_any_way_ends_it() {
    let app = Stack::builder().api().start().await;
    let ann = signed_in(&app, "ann", "operator").await;
    let vic = signed_in(&app, "vic", "viewer").await;
    let ben = signed_in(&app, "ben", "operator").await;
    let order = app.create_order(json!([])).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/dashboard/api/orders/{order}/presence");
    let mut feed = app.open_feed(&app.admin_key).await;

    let (status, presence) = call(&app, &ann, Method::PUT, &path).await;
    assert_eq!(status, StatusCode::OK, "{presence}");
    assert_eq!(names(&presence), ["ann"]);
    assert!(
        presence_frame(&mut feed, &order, |p| names(p) == ["ann"]).await,
        "ann's arrival is on the feed"
    );
    let (_, presence) = call(&app, &vic, Method::PUT, &path).await;
    assert_eq!(names(&presence), ["ann", "vic"], "a viewer is present too");
    assert_eq!(presence["viewers"][1]["role"], "viewer");
    // Renewing announces nothing new but keeps the row; an admin key reads, never holds.
    let (status, _) = call(&app, &ann, Method::PUT, &path).await;
    assert_eq!(status, StatusCode::OK);
    let read = app.admin_request(Method::GET, &path).send().await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(names(&read.json().await.unwrap()), ["ann", "vic"]);
    let held = app.admin_request(Method::PUT, &path).send().await.unwrap();
    assert_eq!(held.status(), StatusCode::FORBIDDEN);
    let problem: Value = held.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://orderflow.dev/problems/people-only"
    );
    // No such order: nobody can have it open.
    let (status, _) = call(
        &app,
        &ann,
        Method::PUT,
        &format!("/dashboard/api/orders/{}/presence", uuid::Uuid::now_v7()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Without the CSRF token: refused, nothing written.
    let forged = app
        .http
        .put(app.url(&path))
        .header(reqwest::header::COOKIE, &ben.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    // Leaving by saying so.
    let (status, _) = call(&app, &vic, Method::DELETE, &path).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(presence_frame(&mut feed, &order, |p| names(p) == ["ann"]).await);
    // Leaving by signing out: the session's rows go with it.
    call(&app, &ben, Method::PUT, &path).await;
    assert!(presence_frame(&mut feed, &order, |p| names(p) == ["ann", "ben"]).await);
    let (status, _) = call(&app, &ben, Method::DELETE, "/dashboard/session").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        presence_frame(&mut feed, &order, |p| names(p) == ["ann"]).await,
        "a signed-out session leaves at once"
    );
    // Leaving by going quiet: a page that stops renewing is swept once its time passes.
    sqlx::query("update order_presence set expires_at = now() - interval '1 second'")
        .execute(&app.db)
        .await
        .unwrap();
    assert!(
        presence_frame(&mut feed, &order, |p| names(p).is_empty()).await,
        "a lapsed presence is swept and announced"
    );
    let left: i64 = sqlx::query_scalar("select count(*) from order_presence")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn an_edit_lease_warns_others_is_renewed_by_its_holder_only_and_an_admin_breaks_it() {
    let app = Stack::builder().api().start().await;
    let ann = signed_in(&app, "ann", "operator").await;
    let ben = signed_in(&app, "ben", "operator").await;
    let vic = signed_in(&app, "vic", "viewer").await;
    let ada = signed_in(&app, "ada", "admin").await;
    let order = app.create_order(json!([])).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lease = format!("/dashboard/api/orders/{order}/edit-lease");
    let presence = format!("/dashboard/api/orders/{order}/presence");

    let (status, taken) = call(&app, &ann, Method::POST, &lease).await;
    assert_eq!(status, StatusCode::OK, "{taken}");
    assert_eq!(taken["editor"]["name"], "ann");
    assert_eq!(taken["renew_every_ms"], 5000);
    let since = taken["editor"]["since"].clone();
    // Taking it again renews it and keeps when the editing started.
    let (status, again) = call(&app, &ann, Method::POST, &lease).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["editor"]["since"], since);
    let (_, seen) = call(&app, &vic, Method::GET, &presence).await;
    assert_eq!(seen["editor"]["name"], "ann", "everyone sees who edits");

    // Ben is warned; he cannot renew what is not his; a viewer cannot take it at all.
    let (status, problem) = call(&app, &ben, Method::POST, &lease).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("ann is editing this order since"),
        "{problem}"
    );
    let (status, _) = call(&app, &ben, Method::PUT, &lease).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, problem) = call(&app, &vic, Method::POST, &lease).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        problem["type"],
        "https://orderflow.dev/problems/role-required"
    );
    // Only an admin breaks it.
    let (status, _) = call(&app, &ben, Method::POST, &format!("{lease}/break")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&app, &ben, Method::DELETE, &lease).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, seen) = call(&app, &vic, Method::GET, &presence).await;
    assert_eq!(
        seen["editor"]["name"], "ann",
        "ben's DELETE lets go of his own only"
    );
    let (status, broken) = call(&app, &ada, Method::POST, &format!("{lease}/break")).await;
    assert_eq!(status, StatusCode::OK, "{broken}");
    assert_eq!(broken["editor"]["name"], "ann");
    let audited: (String, Value) = sqlx::query_as(
        "select o.name, a.detail from admin_actions a join operators o on o.id = a.operator_id
          where a.action = 'break_edit_lease' and a.target = $1",
    )
    .bind(&order)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(audited.0, "ada");
    assert_eq!(audited.1["editor"], "ann");
    // Ann's page learns at its next renewal, and does not get it back by renewing.
    let (status, problem) = call(&app, &ann, Method::PUT, &lease).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("your edit lease ended"),
        "{problem}"
    );
    let (_, seen) = call(&app, &vic, Method::GET, &presence).await;
    assert_eq!(seen["editor"], Value::Null);

    // Ben takes it now; once it lapses (his page stopped renewing), ann may take it.
    let (status, taken) = call(&app, &ben, Method::POST, &lease).await;
    assert_eq!(status, StatusCode::OK, "{taken}");
    sqlx::query("update order_edit_leases set expires_at = now() - interval '1 second'")
        .execute(&app.db)
        .await
        .unwrap();
    let (status, taken) = call(&app, &ann, Method::POST, &lease).await;
    assert_eq!(status, StatusCode::OK, "{taken}");
    assert_eq!(taken["editor"]["name"], "ann");
    assert_ne!(taken["editor"]["since"], since, "a new lease, a new start");
    let (status, _) = call(&app, &ann, Method::DELETE, &lease).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, seen) = call(&app, &vic, Method::GET, &presence).await;
    assert_eq!(seen["editor"], Value::Null);
    // A script's admin key may break leases but holds none.
    let held = app
        .admin_request(Method::POST, &lease)
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), StatusCode::FORBIDDEN);
}
