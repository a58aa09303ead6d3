//! A broker that goes silent without closing anything (a network partition, a frozen node: no
//! FIN, no RST, nothing answers) against the real PostgreSQL and RabbitMQ, through a TCP proxy
//! of the test's own that can freeze the connections it carries while still passing new ones
//! through. The worker must notice (heartbeats, and bounded waits on every broker step), open a
//! new connection and go on: nothing stalls, nothing is applied twice.

mod common;

use orderflow_testkit::{Stack, servers, wait_for};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards connections to the broker until told to freeze: from then on the connections it
/// carries pass nothing either way and stay open; connections made after the freeze pass.
struct FreezingProxy {
    port: u16,
    /// The freeze generation: a connection made under generation g freezes once it is > g.
    generation: watch::Sender<u64>,
}

impl FreezingProxy {
    async fn start(upstream: String) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (generation, _) = watch::channel(0u64);
        let proxy = Arc::new(Self { port, generation });
        let forwarding = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut frozen = forwarding.generation.subscribe();
                let born = *frozen.borrow_and_update();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let freeze = async move {
                        loop {
                            let now = *frozen.borrow_and_update();
                            if now > born || frozen.changed().await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = freeze => {
                            // Both sockets stay open and unread: silence, not a close.
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        proxy
    }

    /// Freezes every connection made so far.
    fn freeze(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// The broker URL with this proxy's address in place of the broker's.
    fn url(&self, broker_url: &str) -> String {
        let (before, after) = split_address(broker_url);
        format!("{before}127.0.0.1:{}{after}", self.port)
    }
}

/// An AMQP URL cut around its `host:port`: (scheme and credentials, the rest).
fn split_address(broker_url: &str) -> (&str, &str) {
    let start = broker_url
        .find('@')
        .map_or_else(|| broker_url.find("://").expect("a URL") + 3, |at| at + 1);
    let end = broker_url[start..]
        .find(['/', '?'])
        .map_or(broker_url.len(), |i| start + i);
    (&broker_url[..start], &broker_url[end..])
}

/// The broker's `host:port`, from its URL.
fn broker_address(broker_url: &str) -> String {
    let (before, after) = split_address(broker_url);
    let address = &broker_url[before.len()..broker_url.len() - after.len()];
    if address.contains(':') {
        address.to_owned()
    } else {
        format!("{address}:5672")
    }
}

async fn applied_count(stack: &Stack, order: orderflow_domain::OrderId) -> i64 {
    sqlx::query_scalar("select count(*) from order_events where order_id = $1")
        .bind(order.0)
        .fetch_one(&stack.db)
        .await
        .unwrap()
}

/// The worker's broker connections freeze while a command is inside its apply transaction (so
/// its ack goes out on a dead connection) and while more commands wait: every one of them is
/// applied once, on a new connection, within the time the heartbeats and the bounded broker
/// steps allow.
#[tokio::test]
async fn a_broker_that_goes_silent_mid_apply_stalls_no_partition() {
    let broker = servers::amqp_url();
    let proxy = FreezingProxy::start(broker_address(&broker)).await;
    let mut stack = common::stack().start().await;
    let proxied = proxy.url(&broker);
    stack
        .start_worker_with(move |c| c.common.amqp_url = proxied.into())
        .await;
    let order = common::created_order(&stack, 0).await;

    // One command held inside its apply by the order's row lock, then the connections freeze
    // under it: its commit comes after the freeze, its ack goes nowhere.
    let lock = common::lock_order(&stack, order).await;
    let held = stack.message(order, common::add_item("held"), None);
    stack.publish(&held).await;
    wait_for("the held command to be delivered and waiting on the row lock")
        .until(|| async {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
                  where wait_event_type = 'Lock' and datname = current_database()",
            )
            .fetch_one(&stack.db)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        })
        .await;
    proxy.freeze();
    lock.rollback().await.unwrap();

    // More commands for the same partition, published straight to the broker meanwhile.
    let mut later = Vec::new();
    for sku in ["after-1", "after-2", "after-3"] {
        let message = stack.message(order, common::add_item(sku), None);
        stack.publish(&message).await;
        later.push(message.command_id);
    }
    // Heartbeats (3 s) lose the frozen connection within about 6-8 s on both sides; the broker
    // then hands the unacked message back; the bounded broker steps cover what lapin leaves
    // hanging. A minute is far beyond any of it.
    for id in std::iter::once(held.command_id).chain(later) {
        let status = stack
            .wait_final_status_within(id, Duration::from_secs(60))
            .await;
        assert_eq!(status, "applied", "command {id}");
    }
    // The create and four items, each once: the held one's redelivery found it applied.
    assert_eq!(applied_count(&stack, order).await, 5);
    stack.stop_workers().await;
}
