//! Broker failover on connect, against the real RabbitMQ (`AMQP_URL`, default the local one):
//! a list whose first node is down, or silent, still connects, and later connections start with
//! the node that answered.

use orderflow_messaging::{Brokers, brokers::CONNECT_TIMEOUT};
use std::time::Instant;

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// An address where nothing listens: a port bound and released at once.
fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

#[tokio::test]
async fn a_node_that_refuses_is_skipped() {
    let brokers = Brokers::parse(&format!("{},{}", closed_address(), amqp_url())).unwrap();
    let connection = brokers
        .connect(lapin::ConnectionProperties::default())
        .await
        .expect("the second node answers");
    assert!(connection.status().connected());
    connection.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn a_node_that_accepts_but_never_speaks_costs_one_timeout_and_then_nothing() {
    // A node cut off mid-handshake: TCP accepted, no AMQP greeting ever.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let list = format!("amqp://guest:guest@127.0.0.1:{port}/%2f,{}", amqp_url());
    let brokers = Brokers::parse(&list).unwrap();

    let started = Instant::now();
    let first = brokers
        .connect(lapin::ConnectionProperties::default())
        .await
        .expect("the second node answers");
    let first_took = started.elapsed();
    assert!(
        first_took >= CONNECT_TIMEOUT,
        "the silent node was given its timeout: {first_took:?}"
    );
    first.close(200, "done".into()).await.unwrap();

    let started = Instant::now();
    let second = brokers
        .connect(lapin::ConnectionProperties::default())
        .await
        .unwrap();
    assert!(
        started.elapsed() < CONNECT_TIMEOUT,
        "the node that answered is tried first: {:?}",
        started.elapsed()
    );
    second.close(200, "done".into()).await.unwrap();
    holder.abort();
}

#[tokio::test]
async fn no_node_answering_is_an_error_not_a_hang() {
    let brokers = Brokers::parse(&format!("{},{}", closed_address(), closed_address())).unwrap();
    assert!(
        brokers
            .connect(lapin::ConnectionProperties::default())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_pool_hands_out_connections_from_whichever_node_answers() {
    let pool = orderflow_messaging::pool(
        &format!("{},{}", closed_address(), amqp_url()),
        "orderflow brokers test",
    )
    .unwrap();
    let connection = pool.get().await.expect("a connection from the live node");
    let channel = connection.create_channel().await.unwrap();
    channel.close(200, "done".into()).await.unwrap();
}
