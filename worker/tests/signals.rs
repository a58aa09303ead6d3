//! The worker binary on SIGTERM: it finishes and acks what it holds, exits 0, and a restarted
//! worker takes up the rest — nothing lost, nothing applied twice.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use orderflow_shared::amqp::{Topology, json_properties};
use orderflow_shared::contract::{CONTRACT_VERSION, CommandMessage};
use orderflow_shared::db::{self, clients};
use orderflow_shared::domain::{CommandId, OrderId};
use orderflow_shared::partition::partition_of;
use orderflow_shared::testing;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PARTITIONS: u16 = 2;

fn spawn_worker(database_url: &str, namespace: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_orderflow-worker"))
        .env("DATABASE_URL", database_url)
        .env("ORDERFLOW_NAMESPACE", namespace)
        .env("ORDERFLOW_PARTITIONS", PARTITIONS.to_string())
        // Any free port: a worker of a local stack may hold the default one.
        .env("ORDERFLOW_METRICS_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn sigterm_finishes_the_message_in_hand_and_a_restart_applies_the_rest_once() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (url, name) = testing::create_database(&id).await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    db::MIGRATOR.run(&pool).await.unwrap();
    let (client, _) = clients::create(&pool, "producer", false).await.unwrap();
    let namespace = format!("test.{name}");
    let topology = Topology {
        namespace: namespace.clone(),
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

    let mut worker = spawn_worker(&url, &namespace);
    const ORDERS: usize = 300;
    for _ in 0..ORDERS {
        let order_id = OrderId::new();
        let message = CommandMessage {
            version: CONTRACT_VERSION,
            command_id: CommandId::new(),
            client_id: client.id,
            order_id,
            expected_version: None,
            command: serde_json::from_value(serde_json::json!({
                "type": "create", "customer_id": "c", "currency": "EUR", "items": []
            }))
            .unwrap(),
        };
        channel
            .basic_publish(
                topology.command_exchange().as_str().into(),
                partition_of(order_id, PARTITIONS)
                    .to_string()
                    .as_str()
                    .into(),
                BasicPublishOptions::default(),
                &message.to_bytes(),
                json_properties().with_delivery_mode(2),
            )
            .await
            .unwrap();
    }
    channel.wait_for_confirms().await.unwrap();

    // Stop it while it works through the backlog.
    let applied = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("select count(*) from commands where status = 'applied'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied(pool.clone()).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the worker never applied anything"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let term = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exit = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "a clean exit on SIGTERM: {exit:?}");
    let after_stop = applied(pool.clone()).await;

    let mut restarted = spawn_worker(&url, &namespace);
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied(pool.clone()).await < ORDERS as i64 {
        assert!(
            Instant::now() < deadline,
            "the restarted worker did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = restarted.kill();
    let _ = restarted.wait();
    let events: i64 = sqlx::query_scalar("select count(*) from order_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, ORDERS as i64, "each order created exactly once");
    let unfinished: i64 =
        sqlx::query_scalar("select count(*) from commands where status <> 'applied'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(unfinished, 0);
    eprintln!("applied {after_stop} of {ORDERS} before SIGTERM");

    let _ = connection.close(200, "done".into()).await;
    pool.close().await;
    testing::remove(Some(topology), name);
}
