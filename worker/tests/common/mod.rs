//! What the worker's tests share beyond the test kit (`orderflow-testkit`, which runs the stack,
//! publishes, records and waits): their stack (two partitions, workers only, started by each
//! test with its own settings), the command bodies they send, and an order row held by the test.

#![allow(dead_code)]

use orderflow_domain::OrderId;
use orderflow_testkit::{Stack, StackBuilder, wait_for};
use serde_json::{Value, json};

/// Two partitions: the tests place orders on each (`Stack::order_in`).
pub const PARTITIONS: u16 = 2;

/// The worker tests' stack: no API, two partitions; `.worker()` starts a worker with it.
pub fn stack() -> StackBuilder {
    Stack::builder().partitions(PARTITIONS)
}

/// A create command body.
pub fn create() -> Value {
    json!({"type": "create", "customer_id": "c", "currency": "EUR", "items": []})
}

/// An add_item command body.
pub fn add_item(sku: &str) -> Value {
    json!({"type": "add_item", "sku": sku, "quantity": 1, "unit_price_cents": 100})
}

/// Creates an order on `partition` through the worker; returns it once applied.
pub async fn created_order(stack: &Stack, partition: u16) -> OrderId {
    let order = stack.order_in(partition);
    let created = stack.message(order, create(), None);
    stack.publish(&created).await;
    assert_eq!(stack.wait_final_status(created.command_id).await, "applied");
    order
}

/// Takes the order's row lock in a transaction of the test's own: the worker's next command on
/// it waits until the transaction ends.
pub async fn lock_order(
    stack: &Stack,
    order: OrderId,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = stack.db.begin().await.unwrap();
    sqlx::query("select 1 from orders where id = $1 for update")
        .bind(order.0)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Waits until the broker has pushed every message of `partition`'s queue to its consumer.
pub async fn all_pushed(stack: &Stack, partition: u16) {
    let queue = stack.topology.partition_queue(partition);
    let channel = stack.channel().await;
    wait_for("every message to be pushed to the consumer")
        .until(|| {
            let channel = channel.clone();
            let queue = queue.clone();
            async move {
                let declared = channel
                    .queue_declare(
                        queue.as_str().into(),
                        lapin::options::QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        Default::default(),
                    )
                    .await
                    .unwrap();
                (declared.message_count() == 0).then_some(())
            }
        })
        .await;
}
