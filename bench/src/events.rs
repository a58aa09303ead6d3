//! The events-exchange listener: an exclusive queue bound to `<ns>.events` with `#` before the
//! workload starts, collecting every status event, so the checker can tell which final commands
//! were announced, in which order, and whether any was announced with two outcomes.

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One status event as received: command, order, seq and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusEvent {
    pub command_id: uuid::Uuid,
    pub order_id: uuid::Uuid,
    pub seq: i64,
    pub status: String,
}

impl StatusEvent {
    pub fn parse(body: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(body).ok()?;
        Some(Self {
            command_id: v["command_id"].as_str()?.parse().ok()?,
            order_id: v["order_id"].as_str()?.parse().ok()?,
            seq: v["seq"].as_i64()?,
            status: v["status"].as_str()?.to_owned(),
        })
    }
}

pub struct Listener {
    connection: lapin::Connection,
    received: Arc<Mutex<Vec<StatusEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    pub async fn start(amqp_url: &str, namespace: &str) -> anyhow::Result<Self> {
        let connection = lapin::Connection::connect(amqp_url, Default::default())
            .await
            .context("connecting to RabbitMQ")?;
        let channel = connection.create_channel().await?;
        // Exclusive and server-named: it is ours alone and vanishes with the connection.
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                format!("{namespace}.events").as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                Default::default(),
            )
            .await
            .context("binding to the events exchange (is the stack running in this namespace?)")?;
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "audit".into(),
                // no_ack: the queue is ours and dies with us; nothing to redeliver to.
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                if let Some(event) = StatusEvent::parse(&delivery.data) {
                    sink.lock().expect("no panics holding it").push(event);
                }
            }
        });
        Ok(Self {
            connection,
            received,
            task,
        })
    }

    /// Waits (bounded) until `expected` events arrived, then stops and returns all received.
    pub async fn finish(self, expected: usize, timeout: Duration) -> Vec<StatusEvent> {
        let deadline = Instant::now() + timeout;
        while self.received.lock().expect("no panics").len() < expected && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.connection.close(200, "audit done".into()).await;
        self.task.abort();
        self.received.lock().expect("no panics").clone()
    }
}
