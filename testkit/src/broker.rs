//! The test broker (`AMQP_URL`): connections, a subscriber of a namespace's status events, its
//! dead-letter queue, and the removal of a namespace when its test ends.

use crate::servers::amqp_url;
use crate::wait::wait_for;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use orderflow_messaging::{REASON_HEADER, Topology};
use std::cell::RefCell;

/// A fresh connection to the test broker and a channel on it (close the connection at the end).
pub async fn channel() -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .expect("the broker of AMQP_URL is up");
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// Takes the next message of `partition`'s queue with a consumer of its own and hands it back
/// unacked, so that the broker redelivers it (flagged redelivered) to the next consumer. Call it
/// while no worker consumes the queue: with single-active-consumer this one would only wait.
pub async fn hand_back(topology: &Topology, partition: u16) {
    hand_back_n(topology, partition, 1).await;
}

/// [`hand_back`] for the next `n` messages of the queue: each is taken (none redelivered yet)
/// before the channel closes and returns them all.
pub async fn hand_back_n(topology: &Topology, partition: u16, n: usize) {
    use futures_util::StreamExt;
    let (connection, channel) = channel().await;
    // A consumer, not basic.get: quorum queues with a single active consumer refuse gets.
    let mut consumer = channel
        .basic_consume(
            topology.partition_queue(partition).as_str().into(),
            "hand-back".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..n {
        let delivery = tokio::time::timeout(std::time::Duration::from_secs(20), consumer.next())
            .await
            .expect("a message to take")
            .unwrap()
            .unwrap();
        assert!(!delivery.redelivered);
    }
    // Closing the channel without an ack returns the messages to the queue.
    channel.close(200, "handing back".into()).await.unwrap();
    let _ = connection.close(200, "done".into()).await;
}

/// A subscriber of `topology`'s status events: an exclusive, server-named queue bound with
/// `binding` (e.g. `#`) on a connection of its own. Returns the connection (close it at the end),
/// the channel and the queue's name.
pub async fn subscribe_events(
    topology: &Topology,
    binding: &str,
) -> (lapin::Connection, lapin::Channel, String) {
    let (connection, channel) = channel().await;
    let queue = bound_queue(&channel, topology, binding, FieldTable::default()).await;
    (connection, channel, queue)
}

/// [`subscribe_events`] with a consumer of the queue (no acks): the events in arrival order.
pub async fn consume_events(
    topology: &Topology,
    binding: &str,
) -> (lapin::Connection, lapin::Consumer) {
    let (connection, channel, queue) = subscribe_events(topology, binding).await;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    (connection, consumer)
}

/// An exclusive, server-named queue with `arguments`, bound to `topology`'s events exchange with
/// `binding`, on `channel`; returns its name.
pub async fn bound_queue(
    channel: &lapin::Channel,
    topology: &Topology,
    binding: &str,
    arguments: FieldTable,
) -> String {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.name().clone(),
            topology.events_exchange().as_str().into(),
            binding.into(),
            QueueBindOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    queue.name().to_string()
}

/// A message taken from a namespace's dead-letter queue.
#[derive(Debug)]
pub struct DeadLetter {
    /// The message as the worker received it.
    pub body: Vec<u8>,
    /// Why it was dead-lettered (the `x-orderflow-reason` header; empty without one).
    pub reason: String,
    headers: FieldTable,
}

impl DeadLetter {
    /// A header of the message that is a string (`None`: absent, or not a string).
    pub fn header(&self, name: &str) -> Option<String> {
        match self.headers.inner().get(name)? {
            AMQPValue::LongString(s) => Some(s.to_string()),
            _ => None,
        }
    }
}

/// Waits until `topology`'s dead-letter queue has given `count` messages (taken and acked, in
/// queue order); panics after 20 s.
pub async fn dead_letters(topology: &Topology, count: usize) -> Vec<DeadLetter> {
    let (connection, channel) = channel().await;
    let queue = topology.dead_letter_queue();
    let found = RefCell::new(Vec::new());
    // Dead-lettering is asynchronous to the test: poll the queue.
    wait_for(format!("{count} dead letters in {queue}"))
        .until(|| async {
            while found.borrow().len() < count {
                let Some(message) = channel
                    .basic_get(queue.as_str().into(), BasicGetOptions::default())
                    .await
                    .unwrap()
                else {
                    break;
                };
                message.ack(BasicAckOptions::default()).await.unwrap();
                let headers = message.properties.headers().clone().unwrap_or_default();
                let reason = match headers.inner().get(REASON_HEADER) {
                    Some(AMQPValue::LongString(s)) => s.to_string(),
                    Some(other) => format!("{other:?}"),
                    None => String::new(),
                };
                found.borrow_mut().push(DeadLetter {
                    body: message.data.clone(),
                    reason,
                    headers,
                });
            }
            let found = found.borrow();
            if found.len() >= count {
                Ok(())
            } else {
                Err(format!("only {}: {found:?}", found.len()))
            }
        })
        .await;
    let _ = connection.close(200, "done".into()).await;
    found.into_inner()
}

/// Deletes the namespace's queues and exchanges; nothing if the broker is unreachable (cleanup is
/// best effort).
pub async fn delete_namespace(topology: &Topology) {
    if let Ok(connection) = lapin::Connection::connect(&amqp_url(), Default::default()).await {
        if let Ok(channel) = connection.create_channel().await {
            let _ = topology.delete(&channel).await;
        }
        let _ = connection.close(200, "test done".into()).await;
    }
}

/// Every consumer the local broker lists (`rabbitmqctl list_consumers`, tab-separated, the
/// queue's name first, then `columns`), over every test's queues. Over AMQP a single-active-
/// consumer queue reports only its active consumer, and a quorum queue still counts a cancelled
/// one until its messages are settled; this is the broker's own view. `Err` when the listing
/// failed or was cut short (another test deleted a queue while it was listed: a `badrpc` line),
/// for the caller to take again.
pub async fn list_consumers(columns: &[&str]) -> Result<String, String> {
    let listed = tokio::process::Command::new("rabbitmqctl")
        .args(["list_consumers", "-q", "--no-table-headers", "queue_name"])
        .args(columns)
        .output()
        .await
        .expect("rabbitmqctl (the test broker is local)");
    let stdout = String::from_utf8_lossy(&listed.stdout).to_string();
    if listed.status.success() && !stdout.contains("badrpc") {
        Ok(stdout)
    } else {
        Err(format!("{listed:?}"))
    }
}
