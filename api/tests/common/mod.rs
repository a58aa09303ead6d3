//! The test harness: a fresh database and a fresh queue namespace per test, the real API
//! (`Application::build` on port 0) and the real worker running in-process, and helpers that
//! wait with deadlines (long-polls), never fixed sleeps. Everything is removed when the test ends.

#![allow(dead_code)]

use orderflow_api::{ApiConfig, Application};
use orderflow_messaging::Topology;
use orderflow_runtime::config::CommonConfig;
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_storage::clients;
use orderflow_testkit as testing;
use orderflow_worker::{Worker, WorkerConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const PARTITIONS: u16 = 4;

pub use orderflow_testkit::amqp_url;

/// Options of a test stack.
#[derive(Clone)]
pub struct Options {
    pub start_worker: bool,
    pub queue_max_length: i64,
    pub decline_over_cents: Option<i64>,
    /// The API's default per-client rate limit (else its own default).
    pub rate_limit: Option<orderflow_storage::clients::RateLimit>,
    pub max_in_flight: Option<u64>,
    pub max_waits_per_client: Option<usize>,
    /// `ORDERFLOW_KEY_CACHE_SECS` (else the API's default: 60 s).
    pub key_cache_secs: Option<u64>,
    pub max_pending_per_order: Option<i64>,
    /// `ORDERFLOW_ORDER_RATE_PER_SECOND` and `_BURST` (else the API's defaults).
    pub order_rate: Option<(u32, u32)>,
    /// The worker's park timeout (else 30 s).
    pub park_timeout_ms: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            start_worker: true,
            queue_max_length: 100_000,
            decline_over_cents: None,
            rate_limit: None,
            max_in_flight: None,
            max_waits_per_client: None,
            key_cache_secs: None,
            max_pending_per_order: None,
            order_rate: None,
            park_timeout_ms: None,
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub db: PgPool,
    pub database_url: String,
    database_name: String,
    pub namespace: String,
    pub topology: Topology,
    pub admin_key: String,
    pub key: String,
    pub client_id: Uuid,
    pub http: reqwest::Client,
    pub options: Options,
    api_shutdown: CancellationToken,
    api_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    worker_shutdown: Option<CancellationToken>,
    worker_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> Self {
        orderflow_runtime::telemetry::init("text");
        let id = Uuid::new_v4().simple().to_string();
        let (database_url, database_name) =
            testing::create_migrated_database(&id, &orderflow_storage::MIGRATOR).await;
        let namespace = format!("test.{id}");

        let mut common =
            CommonConfig::for_tests(database_url.clone(), namespace.clone(), PARTITIONS);
        common.amqp_url = amqp_url().into();
        common.queue_max_length = options.queue_max_length;
        let api_shutdown = CancellationToken::new();
        let mut config = ApiConfig::with_defaults(common.clone(), "127.0.0.1:0");
        if let Some(rate) = options.rate_limit {
            config.rate_limit_per_second = rate.per_second;
            config.rate_limit_burst = rate.burst;
        }
        if let Some(max) = options.max_in_flight {
            config.max_in_flight = max;
        }
        if let Some(max) = options.max_waits_per_client {
            config.max_waits_per_client = max;
        }
        if let Some(secs) = options.key_cache_secs {
            config.key_cache_secs = secs;
        }
        if let Some(max) = options.max_pending_per_order {
            config.max_pending_per_order = max;
        }
        if let Some((per_second, burst)) = options.order_rate {
            config.order_rate_per_second = per_second;
            config.order_rate_burst = burst;
        }
        let app = Application::build(config, api_shutdown.clone())
            .await
            .expect("the API builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let api_task = tokio::spawn(app.run_until_stopped());

        let db = PgPool::connect(&database_url).await.unwrap();
        let (_, admin_key) = clients::create(&db, "test-admin", true).await.unwrap();
        let (client, key) = clients::create(&db, "test-client", false).await.unwrap();

        let topology = Topology {
            namespace: namespace.clone(),
            partitions: PARTITIONS,
            queue_max_length: options.queue_max_length,
        };
        let mut app = TestApp {
            address,
            db,
            database_url,
            database_name,
            namespace,
            topology,
            admin_key,
            key,
            client_id: client.id.0,
            http: reqwest::Client::new(),
            options: options.clone(),
            api_shutdown,
            api_task: Some(api_task),
            worker_shutdown: None,
            worker_task: None,
        };
        if options.start_worker {
            app.start_worker().await;
        }
        app
    }

    pub fn worker_config(&self) -> WorkerConfig {
        let mut common = CommonConfig::for_tests(
            self.database_url.clone(),
            self.namespace.clone(),
            PARTITIONS,
        );
        common.amqp_url = amqp_url().into();
        common.queue_max_length = self.options.queue_max_length;
        WorkerConfig {
            republish_after_ms: 1000,
            park_timeout_ms: self.options.park_timeout_ms.unwrap_or(30_000),
            payment_decline_over_cents: self.options.decline_over_cents,
            ..WorkerConfig::with_defaults(common)
        }
    }

    /// Starts the in-process worker (the real `Worker`).
    pub async fn start_worker(&mut self) {
        assert!(self.worker_task.is_none(), "one worker per test app");
        let worker = Worker::build(self.worker_config())
            .await
            .expect("the worker builds");
        let shutdown = CancellationToken::new();
        self.worker_task = Some(tokio::spawn(worker.run_until_stopped(shutdown.clone())));
        self.worker_shutdown = Some(shutdown);
    }

    /// Stops the worker gracefully and waits until it has.
    pub async fn stop_worker(&mut self) {
        if let Some(shutdown) = self.worker_shutdown.take() {
            shutdown.cancel();
        }
        if let Some(task) = self.worker_task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the worker stops within 30 s")
                .unwrap()
                .unwrap();
        }
    }

    /// Shuts the API down gracefully; true if it stopped within `limit`.
    pub async fn stop_api(&mut self, limit: Duration) -> bool {
        self.api_shutdown.cancel();
        let task = self.api_task.take().expect("the API runs");
        match tokio::time::timeout(limit, task).await {
            Ok(result) => {
                result.unwrap().unwrap();
                true
            }
            Err(_) => false,
        }
    }

    /// The API's own `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A dead letter as the worker records one (the message as received, with its reason; the
    /// command and client ids when the body is a readable message); its id.
    pub async fn insert_dead_letter(&self, order: Option<&str>, reason: &str, body: &str) -> i64 {
        let message: Option<Value> = serde_json::from_str(body).ok();
        let id_of = |field: &str| {
            message
                .as_ref()
                .and_then(|m| m[field].as_str())
                .and_then(|s| Uuid::parse_str(s).ok())
        };
        sqlx::query_scalar(
            "insert into dead_letters (command_id, order_id, client_id, partition, reason, body)
             values ($1, $2, $3, 0, $4, $5) returning id",
        )
        .bind(id_of("command_id"))
        .bind(order.map(|o| Uuid::parse_str(o).unwrap()))
        .bind(id_of("client_id"))
        .bind(reason)
        .bind(body)
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    /// A series of the API's own `/metrics` (0 when it does not exist yet).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A request with the test client's key.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.key)
    }

    pub async fn set_stock(&self, sku: &str, available: i64) {
        let response = self
            .http
            .put(self.url(&format!("/v1/inventory/{sku}")))
            .bearer_auth(&self.admin_key)
            .json(&json!({ "available": available }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{:?}",
            response.text().await
        );
    }

    pub async fn stock(&self, sku: &str) -> Value {
        let response = self
            .request(Method::GET, &format!("/v1/inventory/{sku}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// POST /v1/orders with a fresh Idempotency-Key; returns the 202 body.
    pub async fn create_order(&self, items: Value) -> Value {
        let response = self
            .request(Method::POST, "/v1/orders")
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(&json!({"customer_id": "cust-1", "currency": "EUR", "items": items}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "{:?}",
            response.text().await
        );
        response.json().await.unwrap()
    }

    /// POST a command with a fresh Idempotency-Key (and If-Match when given); returns the 202 body.
    pub async fn send(&self, order_id: &str, command: Value, if_match: Option<i64>) -> Value {
        let mut request = self
            .request(Method::POST, &format!("/v1/orders/{order_id}/commands"))
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(&command);
        if let Some(version) = if_match {
            request = request.header("if-match", format!("\"{version}\""));
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "{:?}",
            response.text().await
        );
        response.json().await.unwrap()
    }

    /// Long-polls a command until it is final (waiting for it to exist, for commands sent
    /// straight to the exchange); panics after 20 s.
    pub async fn wait_final(&self, command_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let response = self
                .request(Method::GET, &format!("/v1/commands/{command_id}?wait=5"))
                .send()
                .await
                .unwrap();
            if response.status() == StatusCode::NOT_FOUND {
                // A command published straight to the exchange exists once the worker took it.
                assert!(
                    Instant::now() < deadline,
                    "command {command_id} never recorded"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            assert_eq!(response.status(), StatusCode::OK);
            let body: Value = response.json().await.unwrap();
            if body["status"] != "accepted" {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "command {command_id} still accepted: {body}"
            );
        }
    }

    /// Sends a command and waits for its outcome.
    pub async fn run(&self, order_id: &str, command: Value, if_match: Option<i64>) -> Value {
        let accepted = self.send(order_id, command, if_match).await;
        self.wait_final(accepted["command_id"].as_str().unwrap())
            .await
    }

    /// Creates an order, waits until it is applied, returns its id.
    pub async fn new_order(&self, items: Value) -> String {
        let accepted = self.create_order(items).await;
        let done = self
            .wait_final(accepted["command_id"].as_str().unwrap())
            .await;
        assert_eq!(done["status"], "applied", "{done}");
        accepted["order_id"].as_str().unwrap().to_owned()
    }

    pub async fn order(&self, order_id: &str) -> Value {
        let response = self
            .request(Method::GET, &format!("/v1/orders/{order_id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    pub async fn events(&self, order_id: &str) -> Vec<Value> {
        let response = self
            .request(Method::GET, &format!("/v1/orders/{order_id}/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["events"].as_array().unwrap().clone()
    }

    /// A channel on a fresh connection to the test broker.
    pub async fn amqp_channel(&self) -> (lapin::Connection, lapin::Channel) {
        let connection = lapin::Connection::connect(&amqp_url(), Default::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        (connection, channel)
    }

    /// Publishes raw bytes to the command exchange with a routing key, waiting for the confirm.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
        let (connection, channel) = self.amqp_channel().await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirm = channel
            .basic_publish(
                self.topology.command_exchange().as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                orderflow_messaging::json_properties().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            matches!(confirm, lapin::Confirmation::Ack(None)),
            "{confirm:?}"
        );
        let _ = connection.close(200, "done".into()).await;
    }

    /// Waits until the dead-letter queue holds `count` messages; returns them (body, reason).
    pub async fn dead_letters(&self, count: usize) -> Vec<(Vec<u8>, String)> {
        use lapin::options::{BasicAckOptions, BasicGetOptions};
        let (connection, channel) = self.amqp_channel().await;
        let mut found = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while found.len() < count {
            assert!(
                Instant::now() < deadline,
                "only {} dead letters: {found:?}",
                found.len()
            );
            match channel
                .basic_get(
                    self.topology.dead_letter_queue().as_str().into(),
                    BasicGetOptions::default(),
                )
                .await
                .unwrap()
            {
                Some(message) => {
                    let reason = message
                        .properties
                        .headers()
                        .as_ref()
                        .and_then(|h| h.inner().get(orderflow_messaging::REASON_HEADER).cloned())
                        .map(|v| match v {
                            lapin::types::AMQPValue::LongString(s) => s.to_string(),
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    message.ack(BasicAckOptions::default()).await.unwrap();
                    found.push((message.data.clone(), reason));
                }
                // Dead-lettering is asynchronous to the test: poll the queue with a deadline.
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let _ = connection.close(200, "done".into()).await;
        found
    }

    /// Counts rows of a table for an order (for checks straight on the truth).
    pub async fn count(&self, sql: &'static str, order_id: &str) -> i64 {
        sqlx::query_scalar(sql)
            .bind(Uuid::parse_str(order_id).unwrap())
            .fetch_one(&self.db)
            .await
            .unwrap()
    }
}

impl Drop for TestApp {
    /// Stops the servers and removes the database and every queue and exchange of the namespace.
    fn drop(&mut self) {
        self.api_shutdown.cancel();
        if let Some(shutdown) = &self.worker_shutdown {
            shutdown.cancel();
        }
        testing::remove(Some(self.topology.clone()), self.database_name.clone());
    }
}

/// Sends `read` (a request with a key just revoked) until it answers 401, every answer before
/// that being `before`; fails after 5 s. Returns how long the revocation took to land.
pub async fn until_unauthorized<F, Fut>(before: StatusCode, read: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let started = Instant::now();
    loop {
        let status = read().await.unwrap().status();
        if status == StatusCode::UNAUTHORIZED {
            return started.elapsed();
        }
        assert_eq!(status, before);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the revoked key is still served"
        );
    }
}
