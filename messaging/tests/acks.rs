//! Acks against the real RabbitMQ (`AMQP_URL`, default the local one): an ack lands on a live
//! channel, and a step under way on a delivery's channel ends as soon as that channel dies, not
//! after the whole answer timeout (lapin can leave such a request unresolved).

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use orderflow_messaging::{ANSWER_TIMEOUT, ack, queue_depth, while_channel_lives};
use std::time::Duration;

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn connect() -> lapin::Connection {
    lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap()
}

/// A quorum queue of this test's own holding one message, and that message delivered (unacked)
/// on a channel of `connection`.
async fn delivered(connection: &lapin::Connection) -> (String, lapin::message::Delivery) {
    let queue = format!("test-acks-{}", uuid::Uuid::new_v4());
    let channel = connection.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the message is delivered")
        .expect("the consumer is open")
        .unwrap();
    (queue, delivery)
}

async fn delete(queue: &str) {
    let connection = connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn an_ack_on_a_live_channel_lands() {
    let connection = connect().await;
    let (queue, delivery) = delivered(&connection).await;

    ack(&delivery.acker, Default::default())
        .await
        .expect("acked");
    // Acked, the message does not come back when the connection goes.
    connection.close(200, "done".into()).await.unwrap();
    let other = connect().await;
    let channel = other.create_channel().await.unwrap();
    assert_eq!(queue_depth(&channel, &queue).await.unwrap().ready, 0);
    other.close(200, "done".into()).await.unwrap();
    delete(&queue).await;
}

#[tokio::test]
async fn a_step_under_way_ends_when_its_channel_dies_not_at_the_answer_timeout() {
    let connection = connect().await;
    let (queue, delivery) = delivered(&connection).await;

    // A request lapin never resolves, as it left an ack under way when a broker node was killed;
    // the connection goes once it is under way.
    let step = while_channel_lives(
        &delivery.acker,
        "acking",
        std::future::pending::<lapin::Result<()>>(),
    );
    tokio::pin!(step);
    assert!(futures_util::poll!(&mut step).is_pending(), "under way");
    connection.close(200, "gone".into()).await.unwrap();
    let outcome = tokio::time::timeout(ANSWER_TIMEOUT / 4, step)
        .await
        .expect("it ended when its channel died, not at the answer timeout");

    let error = outcome.expect_err("the channel died under it");
    assert!(
        matches!(error.kind(), lapin::ErrorKind::IOError(e) if e.kind() == std::io::ErrorKind::ConnectionAborted),
        "{error}"
    );
    delete(&queue).await;
}
