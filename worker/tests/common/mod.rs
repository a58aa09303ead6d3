//! The worker test harness: a fresh migrated database, a fresh queue namespace, a client, the
//! real `Worker` in-process (metrics on port 0), a publisher to the command exchange, a scraper
//! of `/metrics`, and waits with deadlines, never fixed sleeps. Everything is removed at the end.

#![allow(dead_code)]

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use orderflow_contract::partition::partition_of;
use orderflow_contract::{CONTRACT_VERSION, CommandMessage};
use orderflow_domain::{ClientId, CommandId, OrderId};
use orderflow_messaging::{Topology, json_properties, with_traceparent};
use orderflow_runtime::config::CommonConfig;
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_storage::commands::{self, NewCommand, Source};
use orderflow_storage::{self as db, clients};
use orderflow_testkit as testing;
use orderflow_worker::{Worker, WorkerConfig};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const PARTITIONS: u16 = 2;

pub struct Stack {
    pub db: PgPool,
    pub database_url: String,
    database_name: String,
    pub topology: Topology,
    pub client: ClientId,
    connection: lapin::Connection,
    /// Confirm-mode channel for publishing commands.
    channel: lapin::Channel,
    worker: Option<Running>,
    pub http: reqwest::Client,
}

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    metrics: SocketAddr,
    name: String,
}

impl Stack {
    pub async fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (database_url, database_name) =
            testing::create_migrated_database(&id, &orderflow_storage::MIGRATOR).await;
        let db = PgPool::connect(&database_url).await.unwrap();
        db::MIGRATOR.run(&db).await.unwrap();
        let (client, _) = clients::create(&db, "producer", false).await.unwrap();
        let topology = Topology {
            namespace: format!("test.{id}"),
            partitions: PARTITIONS,
            queue_max_length: 100_000,
        };
        let connection = lapin::Connection::connect(&testing::amqp_url(), Default::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        topology.declare(&channel).await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            db,
            database_url,
            database_name,
            topology,
            client: client.id,
            connection,
            channel,
            worker: None,
            http: reqwest::Client::new(),
        }
    }

    /// The worker's settings for this stack (metrics on a free port).
    pub fn config(&self) -> WorkerConfig {
        let mut common = CommonConfig::for_tests(
            self.database_url.clone(),
            self.topology.namespace.clone(),
            PARTITIONS,
        );
        common.amqp_url = testing::amqp_url().into();
        WorkerConfig::with_defaults(common)
    }

    /// Builds and starts the real worker; returns its metrics address.
    pub async fn start(&mut self, config: WorkerConfig) -> SocketAddr {
        assert!(self.worker.is_none(), "one worker at a time");
        let worker = Worker::build(config).await.expect("the worker builds");
        let metrics = worker.metrics_addr();
        let name = worker.name().to_owned();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
        self.worker = Some(Running {
            shutdown,
            task,
            metrics,
            name,
        });
        metrics
    }

    /// Stops the worker gracefully and waits until it has.
    pub async fn stop(&mut self) {
        let running = self.worker.take().expect("a worker is running");
        running.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), running.task)
            .await
            .expect("the worker stops within 30 s")
            .unwrap()
            .unwrap();
    }

    pub fn worker_name(&self) -> String {
        self.worker.as_ref().expect("running").name.clone()
    }

    pub fn metrics_url(&self) -> String {
        let addr = self.worker.as_ref().expect("running").metrics;
        format!("http://{addr}/metrics")
    }

    /// One scrape of `/metrics`.
    pub async fn scrape(&self) -> Scrape {
        let response = self.http.get(self.metrics_url()).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert_eq!(content_type, "text/plain; version=0.0.4");
        Scrape::parse(&response.text().await.unwrap())
    }

    /// Scrapes until `check` holds; panics with the last scrape after 20 s.
    pub async fn scrape_until(&self, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let scrape = self.scrape().await;
            if check(&scrape) {
                return scrape;
            }
            assert!(
                Instant::now() < deadline,
                "{what}; last scrape:\n{}",
                scrape.text
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A fresh order id that falls in `partition`.
    pub fn order_in(&self, partition: u16) -> OrderId {
        loop {
            let id = OrderId::new();
            if partition_of(id, PARTITIONS) == partition {
                return id;
            }
        }
    }

    /// Creates an order on `partition` through the worker; returns it once applied.
    pub async fn created_order(&self, partition: u16) -> OrderId {
        let order = self.order_in(partition);
        let created = self.message(order, create(), None);
        self.publish(&created, None).await;
        assert_eq!(self.wait_final(created.command_id).await, "applied");
        order
    }

    /// Takes the order's row lock in a transaction of the test's own: the worker's next
    /// command on it waits until the transaction ends.
    pub async fn lock_order(&self, order: OrderId) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut tx = self.db.begin().await.unwrap();
        sqlx::query("select 1 from orders where id = $1 for update")
            .bind(order.0)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx
    }

    /// A new channel on the stack's connection.
    pub async fn channel(&self) -> lapin::Channel {
        self.connection.create_channel().await.unwrap()
    }

    /// A command message of this stack's client.
    pub fn message(
        &self,
        order_id: OrderId,
        command: Value,
        expected: Option<i64>,
    ) -> CommandMessage {
        CommandMessage {
            version: CONTRACT_VERSION,
            command_id: CommandId::new(),
            client_id: self.client,
            order_id,
            expected_version: expected,
            command: serde_json::from_value(command).unwrap(),
        }
    }

    /// Publishes a message to the order's partition (with a `traceparent` header if given) and
    /// waits for the broker's confirm.
    pub async fn publish(&self, message: &CommandMessage, traceparent: Option<&str>) {
        let partition = partition_of(message.order_id, PARTITIONS);
        self.publish_raw(partition, &message.to_bytes(), traceparent)
            .await;
    }

    pub async fn publish_raw(&self, partition: u16, body: &[u8], traceparent: Option<&str>) {
        let properties = with_traceparent(json_properties().with_delivery_mode(2), traceparent);
        let confirm = self
            .channel
            .basic_publish(
                self.topology.command_exchange().as_str().into(),
                partition.to_string().as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            matches!(confirm, lapin::Confirmation::Ack(None)),
            "{confirm:?}"
        );
    }

    /// Records a command as the API does (not published): its own stream for a create, the
    /// next seq otherwise. Returns the message the API would publish for it.
    pub async fn record(&self, message: &CommandMessage, traceparent: Option<&str>) -> i64 {
        let mut tx = self.db.begin().await.unwrap();
        let seq = if commands::open_stream(&mut *tx, message.order_id, self.client)
            .await
            .unwrap()
        {
            1
        } else {
            commands::next_seq(&mut *tx, message.order_id, self.client)
                .await
                .unwrap()
                .expect("the stream exists")
        };
        let body = serde_json::to_value(&message.command).unwrap();
        let new = NewCommand {
            id: message.command_id,
            client_id: self.client,
            order_id: message.order_id,
            kind: message.command.kind(),
            body: &body,
            expected_version: message.expected_version,
            source: Source::Http,
            partition: partition_of(message.order_id, PARTITIONS),
            received_at: Some(chrono::Utc::now()),
            traceparent,
        };
        commands::insert(&mut *tx, &new, seq).await.unwrap();
        tx.commit().await.unwrap();
        seq
    }

    /// Waits until the command has a final status; returns it.
    pub async fn wait_final(&self, command_id: CommandId) -> String {
        let db = self.db.clone();
        wait("the command to finish", || {
            let db = db.clone();
            async move {
                sqlx::query_scalar::<_, String>(
                    "select status from commands where id = $1 and status <> 'accepted'",
                )
                .bind(command_id.0)
                .fetch_optional(&db)
                .await
                .unwrap()
            }
        })
        .await
    }
}

/// A create command body.
pub fn create() -> Value {
    json!({"type": "create", "customer_id": "c", "currency": "EUR", "items": []})
}

/// An add_item command body.
pub fn add_item(sku: &str) -> Value {
    json!({"type": "add_item", "sku": sku, "quantity": 1, "unit_price_cents": 100})
}

/// Polls `probe` until it gives a value; panics after 20 s.
pub async fn wait<T, F, Fut>(what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Stack {
    /// Stops the worker (if still running) and removes the database and the namespace.
    fn drop(&mut self) {
        if let Some(running) = self.worker.take() {
            running.shutdown.cancel();
        }
        testing::remove(Some(self.topology.clone()), self.database_name.clone());
    }
}

/// A parsed Prometheus text exposition.
pub struct Scrape {
    pub text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let value: f64 = value.parse().expect("a number");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
                            (key.to_owned(), value.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeMap::new()),
            };
            samples.push((name, labels, value));
        }
        Self {
            text: text.to_owned(),
            samples,
        }
    }

    /// The sum of the samples of `name` whose labels include `labels` (`None`: no such series).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, value)| *value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Like [`Scrape::get`], 0 when the series does not exist yet.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}
