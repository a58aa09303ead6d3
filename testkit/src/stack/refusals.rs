//! The API's refusals as a client checks them: every refusal is `application/problem+json` with
//! its stable `type`, and a refused write writes nothing.

use super::Stack;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;

const PROBLEM_JSON: &str = "application/problem+json";

/// Sends a request that must fail with `status` and problem `kind` (the last segment of its
/// `type`); checks the problem+json shape and returns the response headers and body. `what`
/// names the request in every failure message.
pub async fn problem(
    request: RequestBuilder,
    status: StatusCode,
    kind: &str,
    what: &str,
) -> (HeaderMap, Value) {
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let actual = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "{what}: {text}");
    assert_eq!(
        headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some(PROBLEM_JSON),
        "{what}: content-type of {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {text}"));
    assert_eq!(
        body["type"],
        format!("https://orderflow.dev/problems/{kind}"),
        "{what}: {body}"
    );
    assert_eq!(body["status"], status.as_u16(), "{what}: {body}");
    assert!(body["title"].is_string(), "{what}: {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {body}"
    );
    (headers, body)
}

/// The rows an accepted write creates. A refused write must leave all three unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Writes {
    pub commands: i64,
    pub order_streams: i64,
    pub idempotency_keys: i64,
}

impl Stack {
    /// How many rows an accepted write creates there are now.
    pub async fn writes(&self) -> Writes {
        let count = |sql: &'static str| async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&self.db)
                .await
                .unwrap()
        };
        Writes {
            commands: count("select count(*) from commands").await,
            order_streams: count("select count(*) from order_streams").await,
            idempotency_keys: count("select count(*) from idempotency_keys").await,
        }
    }

    /// A write that must be refused: the problem as [`problem`] checks it, and not one row
    /// written.
    pub async fn refused(
        &self,
        request: RequestBuilder,
        status: StatusCode,
        kind: &str,
        what: &str,
    ) -> (HeaderMap, Value) {
        let before = self.writes().await;
        let answer = problem(request, status, kind, what).await;
        assert_eq!(
            self.writes().await,
            before,
            "{what}: a refused write wrote rows"
        );
        answer
    }
}
