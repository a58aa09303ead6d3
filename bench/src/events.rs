//! The events-exchange listener: a queue of its own bound to `<ns>.events` with `#` before the
//! workload starts, collecting every status event, so the checker can tell which final commands
//! were announced, in which order, and whether any was announced with two outcomes. It survives
//! the audit's broker faults: the queue is durable and the listener subscribes again.

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the checker reads of a status event ([`orderflow_contract::StatusEvent`]): command,
/// order, seq and status, and whether the broker had delivered it to the listener before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusEvent {
    pub command_id: uuid::Uuid,
    pub order_id: uuid::Uuid,
    pub seq: i64,
    pub status: String,
    /// Delivered before on a connection that died before the listener read it: a quorum queue
    /// (RabbitMQ 3.10) puts such a message back behind the ones published after it, so its
    /// place in the arrival order is the broker's, not the publisher's.
    pub redelivered: bool,
}

impl StatusEvent {
    pub fn parse(body: &[u8], redelivered: bool) -> Option<Self> {
        let event = orderflow_contract::StatusEvent::parse(body).ok()?;
        Some(Self {
            command_id: event.command_id.0,
            order_id: event.order_id.0,
            seq: event.seq,
            status: event.status.as_str().to_owned(),
            redelivered,
        })
    }
}

pub struct Listener {
    amqp_url: String,
    queue: String,
    received: Arc<Mutex<Vec<StatusEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    pub async fn start(amqp_url: &str, namespace: &str) -> anyhow::Result<Self> {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let queue = format!("{namespace}.audit-events.{}", &run[..8]);
        // The first subscription happens before the workload starts, and its errors are ours.
        let first = subscribe(amqp_url, namespace, &queue).await?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let (url, ns, name) = (amqp_url.to_owned(), namespace.to_owned(), queue.clone());
        let task =
            tokio::spawn(async move {
                let mut subscription = Some(first);
                loop {
                    if let Some((connection, mut consumer)) = subscription.take() {
                        // A broker restart can leave the consumer's stream open but silent: the
                        // connection's state is checked every second as well.
                        let mut check = tokio::time::interval(Duration::from_secs(1));
                        loop {
                            let delivery = tokio::select! {
                                next = consumer.next() => match next {
                                    Some(Ok(delivery)) => delivery,
                                    _ => break,
                                },
                                _ = check.tick() => {
                                    if connection.status().connected() {
                                        continue;
                                    }
                                    break;
                                }
                            };
                            if let Some(event) =
                                StatusEvent::parse(&delivery.data, delivery.redelivered)
                            {
                                sink.lock().expect("no panics holding it").push(event);
                            }
                            // Acked once kept: an event in flight when the connection drops comes
                            // again (a duplicate says nothing new to the checker).
                            // Bounded: an ack on a connection that died unnoticed can hang.
                            let ack = delivery.ack(BasicAckOptions::default());
                            if !matches!(tokio::time::timeout(ACK_TIMEOUT, ack).await, Ok(Ok(_))) {
                                break;
                            }
                        }
                        drop(connection);
                    }
                    // The broker closed us (a fault of the audit): the durable queue kept what was
                    // routed meanwhile; subscribe again once the broker is back. Bounded: a broker
                    // still starting can accept the connection and never answer.
                    tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                    subscription =
                        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(&url, &ns, &name))
                            .await
                        {
                            Ok(Ok(subscribed)) => {
                                tracing::info!(queue = name, "event listener subscribed again");
                                Some(subscribed)
                            }
                            Ok(Err(e)) => {
                                tracing::info!(error = %e, "event listener cannot subscribe yet");
                                None
                            }
                            Err(_) => {
                                tracing::info!("event listener's subscription timed out; retrying");
                                None
                            }
                        };
                }
            });
        Ok(Self {
            amqp_url: amqp_url.to_owned(),
            queue,
            received,
            task,
        })
    }

    /// Waits (bounded) until `expected` events arrived, then stops, deletes the queue and
    /// returns all received.
    pub async fn finish(self, expected: usize, timeout: Duration) -> Vec<StatusEvent> {
        let deadline = Instant::now() + timeout;
        while self.received.lock().expect("no panics").len() < expected && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.task.abort();
        // Best effort, bounded: a broker that does not answer must not hold up the report.
        let delete = async {
            let connection = crate::broker::connect(&self.amqp_url).await?;
            let channel = connection.create_channel().await?;
            channel
                .queue_delete(self.queue.as_str().into(), Default::default())
                .await?;
            connection.close(200, "audit done".into()).await?;
            anyhow::Ok(())
        };
        let _ = tokio::time::timeout(SUBSCRIBE_TIMEOUT, delete).await;
        self.received.lock().expect("no panics").clone()
    }
}

/// Pause before subscribing again after the broker closed the listener's connection.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(200);
/// Longest wait for one ack; past it the listener subscribes again.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one subscription (connect, declare, bind, consume).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects, declares the listener's queue and binds it to `<ns>.events` with `#`, and consumes.
async fn subscribe(
    amqp_url: &str,
    namespace: &str,
    queue: &str,
) -> anyhow::Result<(lapin::Connection, lapin::Consumer)> {
    let connection = crate::broker::connect(amqp_url)
        .await
        .context("connecting to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    // A quorum queue, not an exclusive one: it outlives a closed connection and a broker restart
    // (the audit's faults), so no status event is lost while the listener is away. `finish`
    // deletes it.
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    orderflow_messaging::declare_bound(
        &channel,
        queue,
        &format!("{namespace}.events"),
        "#",
        arguments,
    )
    .await
    .context("binding to the events exchange (is the stack running in this namespace?)")?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "audit".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await?;
    Ok((connection, consumer))
}
