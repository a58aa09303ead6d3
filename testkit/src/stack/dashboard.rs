//! The dashboard's live feed as a browser reads it: server-sent events from
//! `/dashboard/api/stream`.

use super::Stack;
use serde_json::Value;
use std::time::{Duration, Instant};

/// One server-sent event whose data is JSON.
#[derive(Clone, Debug)]
pub struct SseFrame {
    /// Its `id:` line (empty without one).
    pub id: String,
    /// Its `event:` line (`message` without one).
    pub event: String,
    pub data: Value,
}

/// Reads SSE frames (event name, data) from a streaming response until `want` says stop (true)
/// or `limit` passes, or the stream ends (false).
pub async fn read_frames(
    response: &mut reqwest::Response,
    limit: Duration,
    mut want: impl FnMut(&str, &Value) -> bool,
) -> bool {
    read_sse(response, limit, |frames| {
        let last = frames.last().expect("called after a frame");
        want(&last.event, &last.data)
    })
    .await
    .1
}

/// Reads SSE frames whose data is JSON (comments and other frames are skipped) until `want`,
/// given every frame read so far, says stop, `limit` passes or the stream ends; returns the
/// frames and whether `want` said stop.
pub async fn read_sse(
    response: &mut reqwest::Response,
    limit: Duration,
    mut want: impl FnMut(&[SseFrame]) -> bool,
) -> (Vec<SseFrame>, bool) {
    let until = Instant::now() + limit;
    let mut buffer = String::new();
    let mut frames = Vec::new();
    while Instant::now() < until {
        let chunk = match tokio::time::timeout(until - Instant::now(), response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            _ => return (frames, false),
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (String::new(), "message", String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if let Ok(data) = serde_json::from_str::<Value>(&data) {
                frames.push(SseFrame {
                    id,
                    event: event.to_owned(),
                    data,
                });
                if want(&frames) {
                    return (frames, true);
                }
            }
        }
    }
    (frames, false)
}

impl Stack {
    /// The live feed of an admin `key`, open and streaming (a statistics frame came within
    /// 10 s).
    pub async fn open_feed(&self, key: &str) -> reqwest::Response {
        let mut feed = self
            .http
            .get(self.url("/dashboard/api/stream"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(feed.status(), reqwest::StatusCode::OK);
        assert!(
            read_frames(&mut feed, Duration::from_secs(10), |event, _| event
                == "stats")
            .await,
            "the feed streams"
        );
        feed
    }
}

/// A signed-in operator, as a browser holds the session: the cookie and the CSRF token the
/// page reads from `GET /dashboard/session`.
#[derive(Clone, Debug)]
pub struct SignedIn {
    /// `orderflow_session=<token>`, for a `Cookie` header.
    pub cookie: String,
    pub csrf_token: String,
    /// The whole `Set-Cookie` header of the sign-in.
    pub set_cookie: String,
}

impl Stack {
    /// Creates an operator with `role` (`viewer`, `operator` or `admin`) and returns their
    /// password.
    pub async fn create_operator(&self, name: &str, role: &str) -> String {
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let hash = {
            let password = password.clone();
            tokio::task::spawn_blocking(move || {
                orderflow_api::operators::hash_password(&password).unwrap()
            })
            .await
            .unwrap()
        };
        let role = orderflow_storage::operators::Role::parse(role).expect("a role");
        let created = orderflow_storage::operators::create(&self.db, name, role, &hash)
            .await
            .unwrap();
        assert!(
            matches!(created, orderflow_storage::operators::Created::Created(_)),
            "{created:?}"
        );
        password
    }

    /// Signs `name` in, or panics with the answer.
    pub async fn sign_in(&self, name: &str, password: &str) -> SignedIn {
        let response = self
            .http
            .post(self.url("/dashboard/session"))
            .json(&serde_json::json!({"name": name, "password": password}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let set_cookie = response
            .headers()
            .get(reqwest::header::SET_COOKIE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        let set_cookie = set_cookie.expect("a sign-in sets the session cookie");
        SignedIn {
            cookie: set_cookie.split(';').next().unwrap().to_owned(),
            csrf_token: body["csrf_token"].as_str().unwrap().to_owned(),
            set_cookie,
        }
    }

    /// A request to the dashboard's `path` as the signed-in browser sends it: the cookie, and on
    /// changes the CSRF token.
    pub fn as_signed_in(
        &self,
        session: &SignedIn,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let change = !matches!(method, reqwest::Method::GET | reqwest::Method::HEAD);
        let request = self
            .http
            .request(method, self.url(path))
            .header(reqwest::header::COOKIE, &session.cookie);
        if change {
            request.header("x-csrf-token", &session.csrf_token)
        } else {
            request
        }
    }
}
