//! The workload's HTTP client: every request goes through here and leaves a [`RequestRecord`]
//! in the run's [`Log`], whatever became of it. Timeouts and connection errors are `unknown`
//! outcomes (the request may have taken effect), never retried behind the caller's back.

use crate::record::{IdempotencyProbe, Log, Outcome, RequestRecord};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

/// Longest wait for an ordinary request; the API answers in milliseconds when healthy.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request returned (already recorded).
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: Option<StatusCode>,
    pub body: Option<Value>,
    /// The `ETag` version of an order read.
    pub etag: Option<i64>,
}

impl Answer {
    pub fn is(&self, status: StatusCode) -> bool {
        self.status == Some(status)
    }
    pub fn command_id(&self) -> Option<Uuid> {
        uuid_field(self.body.as_ref()?, "command_id")
    }
    pub fn order_id(&self) -> Option<Uuid> {
        uuid_field(self.body.as_ref()?, "order_id")
    }
}

fn uuid_field(body: &Value, field: &str) -> Option<Uuid> {
    body.get(field)?.as_str()?.parse().ok()
}

/// A POST to send: the command body and its headers.
pub struct Post<'a> {
    pub scenario: &'static str,
    pub path: String,
    /// Short label for the report (`create`, `pay`, …).
    pub label: &'a str,
    pub body: Value,
    pub idempotency_key: String,
    pub if_match: Option<i64>,
    pub timeout: Duration,
    pub probe: Option<IdempotencyProbe>,
}

/// The recording client of one run.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
    log: Log,
}

impl Api {
    pub fn new(base: &str, key: &str, log: Log) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // Many tasks hit one API: keep enough idle connections to avoid reconnect storms.
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            log,
        })
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Sends a POST and records its outcome.
    pub async fn post(&self, post: Post<'_>) -> Answer {
        let mut request = self
            .http
            .post(format!("{}{}", self.base, post.path))
            .bearer_auth(&self.key)
            .header("idempotency-key", &post.idempotency_key)
            .timeout(post.timeout)
            .json(&post.body);
        if let Some(version) = post.if_match {
            request = request.header(header::IF_MATCH, format!("\"{version}\""));
        }
        let route = if post.path == "/v1/orders" {
            "POST /v1/orders"
        } else {
            "POST /v1/orders/{id}/commands"
        };
        let op = format!("{route} {}", post.label);
        self.send(post.scenario, op, request, post.probe).await
    }

    /// Creates an order with a fresh key.
    pub async fn create_order(&self, scenario: &'static str, items: Value) -> Answer {
        self.post(Post {
            scenario,
            path: "/v1/orders".into(),
            label: "create",
            body: json!({"customer_id": "audit", "currency": "EUR", "items": items}),
            idempotency_key: Uuid::new_v4().to_string(),
            if_match: None,
            timeout: REQUEST_TIMEOUT,
            probe: None,
        })
        .await
    }

    /// Sends a command with a fresh key.
    pub async fn command(
        &self,
        scenario: &'static str,
        order_id: Uuid,
        command: Value,
        if_match: Option<i64>,
    ) -> Answer {
        let label = command["type"].as_str().unwrap_or("unknown").to_owned();
        self.post(Post {
            scenario,
            path: format!("/v1/orders/{order_id}/commands"),
            label: &label,
            body: command,
            idempotency_key: Uuid::new_v4().to_string(),
            if_match,
            timeout: REQUEST_TIMEOUT,
            probe: None,
        })
        .await
    }

    /// Reads an order's projection (and its ETag).
    pub async fn order(&self, scenario: &'static str, order_id: Uuid) -> Answer {
        let request = self
            .http
            .get(format!("{}/v1/orders/{order_id}", self.base))
            .bearer_auth(&self.key)
            .timeout(REQUEST_TIMEOUT);
        self.send(scenario, "GET /v1/orders/{id}".into(), request, None)
            .await
    }

    /// Long-polls a command's status for up to `wait` (recorded like any request).
    pub async fn command_status(
        &self,
        scenario: &'static str,
        command_id: Uuid,
        wait: Duration,
    ) -> Answer {
        let request = self
            .http
            .get(format!(
                "{}/v1/commands/{command_id}?wait={}",
                self.base,
                wait.as_secs()
            ))
            .bearer_auth(&self.key)
            .timeout(wait + REQUEST_TIMEOUT);
        self.send(scenario, "GET /v1/commands/{id}".into(), request, None)
            .await
    }

    /// Sets a SKU's stock (admin).
    pub async fn set_stock(&self, sku: &str, available: i64) -> anyhow::Result<()> {
        let request = self
            .http
            .put(format!("{}/v1/inventory/{sku}", self.base))
            .bearer_auth(&self.key)
            .timeout(REQUEST_TIMEOUT)
            .json(&json!({ "available": available }));
        let answer = self
            .send("setup", "PUT /v1/inventory/{sku}".into(), request, None)
            .await;
        anyhow::ensure!(
            answer.is(StatusCode::OK),
            "setting the stock of {sku} answered {:?}: {:?} (is the key an admin key?)",
            answer.status,
            answer.body
        );
        self.log.stock(sku, available);
        Ok(())
    }

    async fn send(
        &self,
        scenario: &'static str,
        op: String,
        request: reqwest::RequestBuilder,
        probe: Option<IdempotencyProbe>,
    ) -> Answer {
        let (outcome, status, retry_after, replayed, etag, body) = match request.send().await {
            Err(_) => (Outcome::Unknown, None, false, false, None, None),
            Ok(response) => {
                let status = response.status();
                let headers = response.headers();
                let retry_after = headers.contains_key(header::RETRY_AFTER);
                let replayed = headers
                    .get("idempotent-replayed")
                    .is_some_and(|v| v == "true");
                let etag = headers
                    .get(header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim_matches('"').parse().ok());
                // A body cut off by a timeout leaves the outcome unknown only if the status was
                // not already a definite answer; the status line is what the server decided.
                let body = response.json::<Value>().await.ok();
                let outcome = if status.is_success() {
                    Outcome::Ok
                } else {
                    Outcome::Failed
                };
                (outcome, Some(status), retry_after, replayed, etag, body)
            }
        };
        let answer = Answer { status, body, etag };
        self.log.request(RequestRecord {
            scenario,
            op,
            outcome,
            status: status.map(|s| s.as_u16()),
            retry_after,
            command_id: answer
                .command_id()
                .filter(|_| answer.is(StatusCode::ACCEPTED)),
            order_id: answer.order_id(),
            replayed,
            probe,
        });
        answer
    }
}
