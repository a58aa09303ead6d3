//! Growing the partition count online (`orderflow-api partitions grow`) against the real API,
//! workers, PostgreSQL and RabbitMQ: commands keep flowing through the switch, the running workers
//! take the new partitions over and balance them, every order's commands are applied in the order
//! they were accepted although they crossed from an old queue to a new one, and a producer that
//! still routes by the old count is not refused.

mod common;

use orderflow_contract::partition::partition_of;
use orderflow_domain::OrderId;
use orderflow_testkit::{Stack, wait_for};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

const ORDERS: usize = 16;
/// Follow-ups per order before the growth, and as many after.
const PER_PHASE: usize = 5;

fn item(n: usize) -> Value {
    json!({"type": "add_item", "sku": format!("SKU-{n}"), "quantity": 1, "unit_price_cents": 100})
}

/// Sends `count` follow-ups to every order, the orders concurrently and each order's in turn;
/// returns the command ids per order, in the order they were accepted.
async fn send_phase(app: &Stack, orders: &[String], from: usize, count: usize) -> Vec<Vec<String>> {
    let sends = orders.iter().map(|order| async move {
        let mut ids = Vec::with_capacity(count);
        for n in from..from + count {
            let accepted = app.send(order, item(n), None).await;
            ids.push(accepted["command_id"].as_str().unwrap().to_owned());
        }
        ids
    });
    futures_util::future::join_all(sends).await
}

/// Active leases per worker.
async fn held(app: &Stack) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select owner, count(*) from partition_leases
          where state = 'active' and owner is not null group by owner",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    rows.into_iter().collect()
}

#[tokio::test]
async fn growing_the_partitions_under_traffic_keeps_every_order_in_order_and_the_workers_follow() {
    let mut app = common::stack()
        .partitions(2)
        .api_config(|c| {
            // 16 orders' commands and their long-polls at once: the client's bucket out of the way.
            c.rate_limit_per_second = 100_000;
            c.rate_limit_burst = 100_000;
        })
        .worker()
        .start()
        .await;
    app.start_worker().await;
    let mut orders = Vec::with_capacity(ORDERS);
    for _ in 0..ORDERS {
        orders.push(
            app.create_order(json!([])).await["order_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let before = send_phase(&app, &orders, 0, PER_PHASE).await;

    // While the first phase is still being applied.
    assert_eq!(app.grow_partitions().await, 4);
    let stored: Vec<i32> =
        sqlx::query_scalar("select partitions from partition_layout order by generation")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(stored, [2, 4]);
    let after = send_phase(&app, &orders, PER_PHASE, PER_PHASE).await;

    // Every command applied, each order's in the order accepted (version = seq = event order).
    for (order, ids) in orders.iter().zip(before.iter().zip(&after)) {
        let ids: Vec<&String> = ids.0.iter().chain(ids.1).collect();
        for (n, id) in ids.iter().enumerate() {
            let done = app.wait_final(id).await;
            assert_eq!(done["status"], "applied", "{done}");
            assert_eq!(done["seq"], n + 2, "{done}");
            assert_eq!(done["version"], n + 2, "{done}");
        }
        let events = app.events(order).await;
        let applied: Vec<&str> = events[1..]
            .iter()
            .map(|e| e["command_id"].as_str().unwrap())
            .collect();
        assert_eq!(applied, ids.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    }

    // The API switched: orders whose partition split had their later commands routed to the
    // new partition, their earlier ones to the old.
    let split: Vec<Uuid> = sqlx::query_scalar(
        "select order_id from commands group by order_id having count(distinct partition) = 2",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let expected_split = orders
        .iter()
        .filter(|o| {
            let id = OrderId(Uuid::parse_str(o).unwrap());
            partition_of(id, 2) != partition_of(id, 4)
        })
        .count();
    assert!(
        expected_split > 0,
        "16 random orders all kept their partition"
    );
    assert_eq!(split.len(), expected_split);
    let on_new: i64 = sqlx::query_scalar("select count(*) from commands where partition >= 2")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(on_new > 0);
    // Each finished under the lease of the partition that applied it, recorded beside its epoch.
    let unfenced: i64 = sqlx::query_scalar(
        "select count(*) from commands where status = 'applied'
            and (epoch is null or lease_partition is null)",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(unfenced, 0);

    // The running workers took the new partitions over and balanced all four.
    wait_for("the two workers to hold two partitions each")
        .within(Duration::from_secs(30))
        .every(Duration::from_millis(100))
        .until(|| async {
            let now = held(&app).await;
            if now.len() == 2 && now.values().all(|&n| n == 2) {
                Ok(())
            } else {
                Err(format!("held now: {now:?}"))
            }
        })
        .await;

    // A producer that still routes by the old count is right too.
    let order = orders
        .iter()
        .map(|o| OrderId(Uuid::parse_str(o).unwrap()))
        .find(|&id| partition_of(id, 2) != partition_of(id, 4))
        .unwrap();
    let message = app.message(order, item(99), None);
    app.publish_raw(partition_of(order, 2), &message.to_bytes())
        .await;
    assert_eq!(app.wait_final_status(message.command_id).await, "applied");

    let dead_letters: i64 = sqlx::query_scalar("select count(*) from dead_letters")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(dead_letters, 0);
}

#[tokio::test]
async fn a_message_on_a_partition_no_count_ever_routed_its_order_to_is_still_dead_lettered() {
    let mut app = common::stack().partitions(2).worker().start().await;
    app.grow_partitions().await;
    // An order whose partition is 0 of 2 and 0 of 4: partitions 1 and 3 were never its own.
    let order = loop {
        let id = OrderId::new();
        if partition_of(id, 4) == 0 {
            break id;
        }
    };
    let message = app.message(
        order,
        json!({"type": "create", "customer_id": "c", "currency": "EUR", "items": []}),
        None,
    );
    app.publish_raw(3, &message.to_bytes()).await;
    let dead = app.dead_letters(1).await;
    assert!(
        dead[0]
            .reason
            .starts_with("routed to partition 3, but order"),
        "{}",
        dead[0].reason
    );
}
