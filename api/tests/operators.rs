//! Operators on the dashboard against the real API and PostgreSQL: signing in with a password,
//! the session cookie (a random token, stored hashed), roles, the CSRF token on changes, the
//! ends of a session (sign-out, disable, expiry) ending its live feeds, and the throttle on
//! password guessing.

use orderflow_testkit::{SignedIn, Stack, read_frames};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// Sessions ever started on the stack's database.
async fn sessions(app: &Stack) -> i64 {
    sqlx::query_scalar("select count(*) from operator_sessions")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

async fn sign_in_status(app: &Stack, name: &str, password: &str) -> (StatusCode, Value) {
    let response = app
        .http
        .post(app.url("/dashboard/session"))
        .json(&json!({"name": name, "password": password}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_operator_signs_in_with_a_password_and_the_cookie_holds_only_a_random_token() {
    let app = Stack::builder().api().start().await;
    let password = app.create_operator("alice", "viewer").await;

    for (name, password) in [("alice", "wrong password!"), ("nobody", password.as_str())] {
        let (status, problem) = sign_in_status(&app, name, password).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
        assert_eq!(
            problem["type"],
            "https://orderflow.dev/problems/sign-in-failed"
        );
    }
    assert_eq!(sessions(&app).await, 0, "a failed sign-in writes nothing");

    let session = app.sign_in("alice", &password).await;
    let set_cookie = &session.set_cookie;
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    let token = session.cookie.strip_prefix("orderflow_session=").unwrap();
    assert!(token.starts_with("ofs_") && token.len() >= 60, "{token}");
    let stored: Vec<u8> = sqlx::query_scalar("select token_hash from operator_sessions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, Sha256::digest(token.as_bytes()).to_vec());
    let hash: String = sqlx::query_scalar("select password_hash from operators")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");

    // Behind a TLS proxy the cookie is Secure.
    let over_tls = app
        .http
        .post(app.url("/dashboard/session"))
        .header("x-forwarded-proto", "https")
        .json(&json!({"name": "alice", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(over_tls.status(), StatusCode::OK);
    assert!(
        over_tls.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .ends_with("; Secure")
    );

    let me: Value = app
        .as_signed_in(&session, Method::GET, "/dashboard/session")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "alice");
    assert_eq!(me["role"], "viewer");
    assert_eq!(me["csrf_token"], session.csrf_token.as_str());
    let page = app
        .as_signed_in(&session, Method::GET, "/")
        .send()
        .await
        .unwrap();
    assert!(page.text().await.unwrap().contains("tab-partitions"));
    // A session is for the dashboard: the API's routes want a key.
    let api = app
        .as_signed_in(&session, Method::GET, "/v1/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn roles_decide_what_a_session_may_do_and_every_change_needs_its_csrf_token() {
    let app = Stack::builder().api().start().await;
    let mut sessions = Vec::new();
    for role in ["viewer", "operator", "admin"] {
        let password = app.create_operator(role, role).await;
        sessions.push((role, app.sign_in(role, &password).await));
    }
    for (role, session) in &sessions {
        let read = app
            .as_signed_in(session, Method::GET, "/dashboard/api/dead-letters")
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), StatusCode::OK, "{role} reads");
        let redrive = app
            .as_signed_in(
                session,
                Method::POST,
                "/dashboard/api/dead-letters/1/redrive",
            )
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let status = redrive.status();
        let problem: Value = redrive.json().await.unwrap();
        if *role == "admin" {
            // Past the role check: there is no dead letter 1.
            assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
        } else {
            assert_eq!(status, StatusCode::FORBIDDEN, "{role}: {problem}");
            assert_eq!(
                problem["type"],
                "https://orderflow.dev/problems/role-required"
            );
        }
    }
    let admin = &sessions[2].1;
    // A change with the cookie but without (or with another session's) CSRF token: refused.
    for token in [None, Some(sessions[0].1.csrf_token.as_str())] {
        let mut forged = app
            .http
            .post(app.url("/dashboard/api/dead-letters/1/acknowledge"))
            .header(header::COOKIE, &admin.cookie)
            .json(&json!({}));
        if let Some(token) = token {
            forged = forged.header("x-csrf-token", token);
        }
        let forged = forged.send().await.unwrap();
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        let problem: Value = forged.json().await.unwrap();
        assert_eq!(
            problem["type"],
            "https://orderflow.dev/problems/csrf-token-missing"
        );
    }
    let sign_out = app
        .http
        .delete(app.url("/dashboard/session"))
        .header(header::COOKIE, &admin.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(
        sign_out.status(),
        StatusCode::FORBIDDEN,
        "sign-out is a change"
    );

    let signed_out = app
        .as_signed_in(admin, Method::DELETE, "/dashboard/session")
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.status(), StatusCode::NO_CONTENT);
    assert!(
        signed_out.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = app
        .as_signed_in(admin, Method::GET, "/dashboard/api/dead-letters")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    let page = app
        .as_signed_in(admin, Method::GET, "/")
        .send()
        .await
        .unwrap();
    assert!(page.text().await.unwrap().contains("sign-in-form"));
    // The other sessions live on.
    let viewer = app
        .as_signed_in(&sessions[0].1, Method::GET, "/dashboard/api/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status(), StatusCode::OK);
}

/// Opens a session's live feed and waits for its first statistics frame.
async fn open_feed(app: &Stack, session: &SignedIn) -> reqwest::Response {
    let mut feed = app
        .as_signed_in(session, Method::GET, "/dashboard/api/stream")
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), StatusCode::OK);
    assert!(
        read_frames(&mut feed, Duration::from_secs(10), |event, _| event
            == "stats")
        .await,
        "the feed streams"
    );
    feed
}

/// Reads the feed until it ends; how long that took, or None if it still streams after `limit`.
async fn ended_within(feed: &mut reqwest::Response, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, feed.chunk()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(_) => return Some(start.elapsed()),
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn sign_out_disable_and_expiry_each_end_the_sessions_live_feeds_within_two_seconds() {
    let app = Stack::builder()
        .api_config(|c| c.session_ttl_secs = 4)
        .api()
        .start()
        .await;
    let password = app.create_operator("bob", "operator").await;

    // Signed out from another tab: the feed of this tab ends too.
    let session = app.sign_in("bob", &password).await;
    let mut feed = open_feed(&app, &session).await;
    let signed_out = app
        .as_signed_in(&session, Method::DELETE, "/dashboard/session")
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.status(), StatusCode::NO_CONTENT);
    assert!(
        ended_within(&mut feed, Duration::from_secs(2))
            .await
            .is_some(),
        "the feed outlived the sign-out"
    );

    // Disabled (as `operator disable` does): every session ends, and every feed with it.
    let (one, two) = (
        app.sign_in("bob", &password).await,
        app.sign_in("bob", &password).await,
    );
    let mut feeds = [open_feed(&app, &one).await, open_feed(&app, &two).await];
    assert!(
        orderflow_storage::operators::disable(&app.db, "bob")
            .await
            .unwrap()
    );
    for feed in &mut feeds {
        assert!(
            ended_within(feed, Duration::from_secs(2)).await.is_some(),
            "a feed outlived its operator's disabling"
        );
    }
    let (status, _) = sign_in_status(&app, "bob", &password).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a disabled operator");

    // Expired: the feed ends at the session's end, unasked.
    let password = app.create_operator("carol", "viewer").await;
    let session = app.sign_in("carol", &password).await;
    let signed_in_at = Instant::now();
    let mut feed = open_feed(&app, &session).await;
    ended_within(&mut feed, Duration::from_secs(8))
        .await
        .expect("the feed outlived its session's expiry");
    let lasted = signed_in_at.elapsed();
    assert!(
        lasted >= Duration::from_secs(3) && lasted <= Duration::from_secs(6),
        "a 4 s session's feed lasted {lasted:?}"
    );
    let after = app
        .as_signed_in(&session, Method::GET, "/dashboard/api/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn password_guessing_is_throttled_per_name_and_per_address() {
    let app = Stack::builder().api().start().await;
    let password = app.create_operator("dave", "admin").await;
    let started = Instant::now();
    // Five tries a name at once; the sixth is refused before the password is looked at, even
    // the right one.
    for _ in 0..5 {
        let (status, _) = sign_in_status(&app, "dave", "guess guess guess").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let response = app
        .http
        .post(app.url("/dashboard/session"))
        .json(&json!({"name": "dave", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry_after), "{retry_after}");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://orderflow.dev/problems/sign-in-throttled"
    );
    assert_eq!(sessions(&app).await, 0);

    // From one address, twenty tries at once (six spent above), whatever the names; then one
    // every 3 s.
    let mut refused_at = None;
    for attempt in 7..=40 {
        let (status, _) =
            sign_in_status(&app, &format!("guess-{attempt}"), "guess guess guess").await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            refused_at = Some(attempt);
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let refilled = started.elapsed().as_secs() / 3;
    let refused_at = refused_at.expect("the address was never throttled");
    assert!(
        refused_at > 20 && refused_at <= 21 + refilled,
        "refused at try {refused_at}, {refilled} tokens refilled meanwhile"
    );
}

#[tokio::test]
async fn a_bad_sign_in_body_is_a_problem_and_writes_nothing() {
    let app = Stack::builder().api().start().await;
    for body in [
        json!({"key": "of_x"}),
        json!({"name": "a"}),
        json!({"name": "a", "password": "x", "extra": 1}),
        json!({"name": 1, "password": "x"}),
    ] {
        let response = app
            .http
            .post(app.url("/dashboard/session"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
    let long = "x".repeat(2000);
    let (status, _) = sign_in_status(&app, &long, &long).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = sign_in_status(&app, "al\u{0}ice", "password\u{0}").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(sessions(&app).await, 0);
}

#[tokio::test]
async fn admins_create_and_disable_operators_on_the_dashboard_and_each_change_is_recorded() {
    let app = Stack::builder().api().start().await;
    let password = app.create_operator("root-admin", "admin").await;
    let admin = app.sign_in("root-admin", &password).await;
    let password = app.create_operator("plain", "operator").await;
    let operator = app.sign_in("plain", &password).await;

    let create = |session: &SignedIn, body: Value| {
        app.as_signed_in(session, Method::POST, "/dashboard/api/operators")
            .json(&body)
            .send()
    };
    let new = json!({"name": "newbie", "role": "viewer", "password": "a long enough password"});
    // Only admins manage operators, and only with the session's CSRF token.
    let refused = create(&operator, new.clone()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let listed = app
        .as_signed_in(&operator, Method::GET, "/dashboard/api/operators")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::FORBIDDEN);
    let forged = app
        .http
        .post(app.url("/dashboard/api/operators"))
        .header(header::COOKIE, &admin.cookie)
        .json(&new)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    // Bad input: a problem each, nothing written.
    for (body, status) in [
        (
            json!({"name": "Bad Name", "role": "viewer", "password": "a long enough password"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "x", "role": "root", "password": "a long enough password"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "x", "role": "viewer", "password": "short"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "plain", "role": "viewer", "password": "a long enough password"}),
            StatusCode::CONFLICT,
        ),
    ] {
        let response = create(&admin, body.clone()).await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
    let count = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from operators")
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    assert_eq!(count().await, 2);

    let created = create(&admin, new).await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let newbie = app.sign_in("newbie", "a long enough password").await;
    let list: Value = app
        .as_signed_in(&admin, Method::GET, "/dashboard/api/operators")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "newbie")
        .unwrap();
    assert_eq!(row["role"], "viewer");
    assert_eq!(row["live_sessions"], 1);
    assert!(row["disabled_at"].is_null());
    assert!(row.get("password_hash").is_none(), "{row}");

    // Disabling ends the session (and its feed); an admin cannot disable themselves.
    let mut feed = open_feed(&app, &newbie).await;
    let disable = |session: &SignedIn, name: &str| {
        app.as_signed_in(
            session,
            Method::POST,
            &format!("/dashboard/api/operators/{name}/disable"),
        )
        .json(&json!({}))
        .send()
    };
    assert_eq!(
        disable(&operator, "newbie").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        disable(&admin, "newbie").await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert!(
        ended_within(&mut feed, Duration::from_secs(2))
            .await
            .is_some()
    );
    assert_eq!(
        disable(&admin, "newbie").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        disable(&admin, "root-admin").await.unwrap().status(),
        StatusCode::CONFLICT
    );
    let after = app
        .as_signed_in(&newbie, Method::GET, "/dashboard/api/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    let actions: Vec<(String, String, String)> = sqlx::query_as(
        "select a.action, a.target, o.name from admin_actions a
           join operators o on o.id = a.operator_id order by a.id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        actions,
        [
            (
                "create_operator".into(),
                "newbie".into(),
                "root-admin".into()
            ),
            (
                "disable_operator".into(),
                "newbie".into(),
                "root-admin".into()
            ),
        ]
    );
}
