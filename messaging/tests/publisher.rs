//! The confirmed publisher against the real RabbitMQ (`AMQP_URL`, default the local one): a
//! batch's messages are handed to the broker together, and still arrive in the order given, each
//! with its own outcome.

use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use orderflow_messaging::{Outgoing, PublishError, Publisher, declare_bound, json_properties};

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A direct exchange and a queue bound to it with the key "k", both named for this test alone: a
/// quorum queue like the partitions', or with `max_length` a classic one that refuses publishes
/// beyond it (a quorum queue applies its limit a little late: a batch sent at once may pass it).
struct Rig {
    connection: lapin::Connection,
    channel: lapin::Channel,
    exchange: String,
    queue: String,
    publisher: Publisher,
}

impl Rig {
    async fn new(max_length: Option<i64>) -> Self {
        let name = format!("test-publisher-{}", uuid::Uuid::new_v4());
        let connection =
            lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
                .await
                .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let exchange = format!("{name}.x");
        let queue = format!("{name}.q");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut args = FieldTable::default();
        if let Some(max_length) = max_length {
            args.insert("x-max-length".into(), AMQPValue::LongLongInt(max_length));
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
        } else {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        declare_bound(&channel, &queue, &exchange, "k", args)
            .await
            .unwrap();
        let publisher = Publisher::new(orderflow_messaging::pool(&amqp_url(), &name).unwrap());
        Self {
            connection,
            channel,
            exchange,
            queue,
            publisher,
        }
    }

    /// The bodies of the queue's first `count` messages, in the order the broker delivers them.
    async fn bodies(&self, count: usize) -> Vec<String> {
        let mut consumer = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                "test".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut bodies = Vec::with_capacity(count);
        while bodies.len() < count {
            let delivery =
                tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
                    .await
                    .expect("the queue delivers what it holds")
                    .expect("the consumer is open")
                    .unwrap();
            bodies.push(String::from_utf8(delivery.data.clone()).unwrap());
        }
        // Before the queue is deleted: RabbitMQ 3.10 fails the channel that deletes a quorum
        // queue it still consumes from.
        self.channel
            .basic_cancel("test".into(), BasicCancelOptions::default())
            .await
            .unwrap();
        bodies
    }

    async fn remove(self) {
        self.channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        self.channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .unwrap();
        self.connection.close(200, "done".into()).await.unwrap();
    }
}

fn batch<'a>(bodies: &'a [String], routing_key: &'static str) -> Vec<Outgoing<'a>> {
    bodies
        .iter()
        .map(|body| Outgoing {
            routing_key,
            body: body.as_bytes(),
            properties: json_properties(),
        })
        .collect()
}

#[tokio::test]
async fn a_batch_arrives_in_the_order_given_and_every_message_is_confirmed() {
    let rig = Rig::new(None).await;
    let first: Vec<String> = (0..300).map(|n| format!("{{\"n\":{n}}}")).collect();
    let second: Vec<String> = (300..310).map(|n| format!("{{\"n\":{n}}}")).collect();

    for bodies in [&first, &second] {
        let results = rig
            .publisher
            .publish_batch(&rig.exchange, &batch(bodies, "k"), true)
            .await;
        assert_eq!(results.len(), bodies.len());
        assert!(
            results.iter().all(Result::is_ok),
            "every message confirmed: {results:?}"
        );
    }

    let expected: Vec<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(rig.bodies(expected.len()).await, expected);
    rig.remove().await;
}

#[tokio::test]
async fn each_message_of_a_batch_gets_its_own_outcome() {
    // Room for 3: the queue refuses the rest of a batch of 5 (reject-publish nacks them).
    let rig = Rig::new(Some(3)).await;
    let bodies: Vec<String> = (0..5).map(|n| format!("{{\"n\":{n}}}")).collect();

    let results = rig
        .publisher
        .publish_batch(&rig.exchange, &batch(&bodies, "k"), true)
        .await;
    let outcomes: Vec<&str> = results
        .iter()
        .map(|r| match r {
            Ok(()) => "ok",
            Err(PublishError::Refused) => "refused",
            Err(PublishError::Unroutable) => "unroutable",
            Err(PublishError::Unavailable(_)) => "unavailable",
        })
        .collect();
    assert_eq!(outcomes, ["ok", "ok", "ok", "refused", "refused"]);

    // Mandatory and unroutable: a key no queue is bound with.
    let unroutable = rig
        .publisher
        .publish_batch(&rig.exchange, &batch(&bodies[..2], "nobody"), true)
        .await;
    assert!(
        unroutable
            .iter()
            .all(|r| matches!(r, Err(PublishError::Unroutable))),
        "{unroutable:?}"
    );

    assert_eq!(rig.bodies(3).await, bodies[..3]);
    rig.remove().await;
}
