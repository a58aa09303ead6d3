//! Micro-batches: the messages of a partition that are already delivered when a transaction
//! ends are applied together in the next one, in order, and acked after its commit. A batch
//! that cannot commit as a whole falls back to one transaction per message, and every message
//! still gets exactly its due.

mod common;

use common::{add_item, all_pushed, create, created_order, lock_order};
use orderflow_domain::{CommandId, OrderId, Sku};
use orderflow_storage::inventory;
use orderflow_testkit::{Stack, wait_for};
use serde_json::json;
use uuid::Uuid;

const BATCH_SIZE: &str = "orderflow_apply_batch_messages_count";

/// Holds partition 0: `blocker`'s row is locked and a command for it is published, so the
/// partition's consumer waits in that command's transaction while `then` is published behind
/// it. Returns once the broker has pushed every one of them to the consumer (none left ready in
/// the queue), so that they arrive together when the lock is released.
async fn behind_a_held_order(stack: &Stack, blocker: OrderId, then: &[Vec<u8>]) -> CommandId {
    let held = lock_order(stack, blocker).await;
    let first = stack.message(blocker, add_item("HELD"), None);
    stack.publish(&first).await;
    // The consumer has it in hand (its transaction waits for the lock) before the rest come.
    let db = stack.db.clone();
    wait_for("the worker to wait for the held order")
        .until(|| {
            let db = db.clone();
            async move {
                let waiting: i64 = sqlx::query_scalar(
                    "select count(*) from pg_stat_activity
                 where datname = current_database() and wait_event_type = 'Lock'",
                )
                .fetch_one(&db)
                .await
                .unwrap();
                (waiting == 1).then_some(())
            }
        })
        .await;
    for body in then {
        stack.publish_raw(0, body).await;
    }
    all_pushed(stack, 0).await;
    held.rollback().await.unwrap();
    first.command_id
}

async fn statuses(stack: &Stack, ids: &[CommandId]) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for id in ids {
        let status = stack.wait_final_status(*id).await;
        let events: i64 =
            sqlx::query_scalar("select count(*) from order_events where command_id = $1")
                .bind(id.0)
                .fetch_one(&stack.db)
                .await
                .unwrap();
        out.push((status, events));
    }
    out
}

/// The order's event seqs, in order, and its projection's version.
async fn history(stack: &Stack, order: OrderId) -> (Vec<i64>, i64) {
    let seqs = sqlx::query_scalar("select seq from order_events where order_id = $1 order by seq")
        .bind(order.0)
        .fetch_all(&stack.db)
        .await
        .unwrap();
    let version = sqlx::query_scalar("select version from orders where id = $1")
        .bind(order.0)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    (seqs, version)
}

/// The transactions (by PostgreSQL transaction id) that finished these commands.
async fn transactions(stack: &Stack, ids: &[CommandId]) -> i64 {
    let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    sqlx::query_scalar("select count(distinct xmin::text) from commands where id = any($1)")
        .bind(&ids)
        .fetch_one(&stack.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn messages_ready_together_are_applied_in_one_transaction_in_order() {
    let stack = common::stack().worker().start().await;
    for sku in ["SKU-A", "SKU-B", "SKU-C"] {
        inventory::set_available(&stack.db, &Sku::parse(sku).unwrap(), 5)
            .await
            .unwrap();
    }
    let blocker = created_order(&stack, 0).await;
    let one = created_order(&stack, 0).await;
    let two = created_order(&stack, 0).await;
    // Two orders that reserve overlapping SKUs in opposite line order, each adding a line
    // first (the reservation must see it), and a conditional command that is stale by then.
    let messages = [
        stack.message(one, add_item("SKU-C"), None),
        stack.message(two, add_item("SKU-A"), None),
        stack.message(one, add_item("SKU-A"), None),
        stack.message(two, add_item("SKU-C"), None),
        stack.message(one, json!({"type": "reserve"}), None),
        stack.message(two, json!({"type": "reserve"}), Some(3)),
        stack.message(one, add_item("SKU-B"), Some(1)),
    ];
    let bodies: Vec<Vec<u8>> = messages.iter().map(|m| m.to_bytes()).collect();
    let held = behind_a_held_order(&stack, blocker, &bodies).await;
    let ids: Vec<CommandId> = messages.iter().map(|m| m.command_id).collect();

    assert_eq!(stack.wait_final_status(held).await, "applied");
    let applied = ("applied".to_owned(), 1);
    let stale = ("rejected".to_owned(), 0);
    assert_eq!(
        statuses(&stack, &ids).await,
        [
            applied.clone(),
            applied.clone(),
            applied.clone(),
            applied.clone(),
            applied.clone(),
            applied,
            stale
        ]
    );
    assert_eq!(
        transactions(&stack, &ids).await,
        1,
        "one transaction for all"
    );
    let reason: String = sqlx::query_scalar("select reason from commands where id = $1")
        .bind(ids[6].0)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert_eq!(reason, "version_conflict");
    // Both reservations took both of their lines.
    let stock: Vec<(String, i64, i64)> =
        sqlx::query_as("select sku, available, reserved from inventory order by sku")
            .fetch_all(&stack.db)
            .await
            .unwrap();
    assert_eq!(
        stock,
        [
            ("SKU-A".to_owned(), 3, 2),
            ("SKU-B".to_owned(), 5, 0),
            ("SKU-C".to_owned(), 3, 2)
        ]
    );
    // In order: each order's events are gapless and its projection is at the last one.
    for (order, version) in [(one, 4_i64), (two, 4)] {
        let (seqs, projected) = history(&stack, order).await;
        assert_eq!(seqs, (1..=version).collect::<Vec<_>>());
        assert_eq!(projected, version);
    }
    let scrape = stack
        .worker_metrics_until("the batch to be counted", |s| {
            s.value(BATCH_SIZE, &[]) >= 1.0
        })
        .await;
    assert_eq!(
        scrape.value("orderflow_apply_batch_messages_sum", &[]),
        7.0,
        "{}",
        scrape.text
    );
}

#[tokio::test]
async fn a_batch_that_cannot_commit_whole_falls_back_and_every_message_gets_its_due() {
    let stack = common::stack().worker().start().await;
    let blocker = created_order(&stack, 0).await;
    let order = stack.order_in(0);
    let created = stack.message(order, create(), None);
    stack.publish(&created).await;
    assert_eq!(stack.wait_final_status(created.command_id).await, "applied");

    // A duplicate in the middle: the batch has written the first command when it meets it, so
    // the whole transaction is rolled back and each message is applied on its own.
    let first = stack.message(order, add_item("SKU-1"), None);
    let second = stack.message(order, add_item("SKU-2"), None);
    let bodies = [first.to_bytes(), created.to_bytes(), second.to_bytes()];
    let held = behind_a_held_order(&stack, blocker, &bodies).await;
    assert_eq!(stack.wait_final_status(held).await, "applied");
    let ids = [first.command_id, second.command_id];
    let applied = ("applied".to_owned(), 1);
    assert_eq!(
        statuses(&stack, &ids).await,
        [applied.clone(), applied.clone()]
    );
    assert_eq!(transactions(&stack, &ids).await, 2, "one transaction each");

    // A message that is not a command in the middle: dead-lettered, the others applied.
    let third = stack.message(order, add_item("SKU-3"), None);
    let fourth = stack.message(order, add_item("SKU-4"), None);
    let bodies = [third.to_bytes(), b"{not json".to_vec(), fourth.to_bytes()];
    let held = behind_a_held_order(&stack, blocker, &bodies).await;
    assert_eq!(stack.wait_final_status(held).await, "applied");
    let ids = [third.command_id, fourth.command_id];
    assert_eq!(statuses(&stack, &ids).await, [applied.clone(), applied]);
    let db = stack.db.clone();
    wait_for("the malformed message's dead letter")
        .until(|| {
            let db = db.clone();
            async move {
                let letters: i64 = sqlx::query_scalar("select count(*) from dead_letters")
                    .fetch_one(&db)
                    .await
                    .unwrap();
                (letters == 1).then_some(())
            }
        })
        .await;
    let (seqs, version) = history(&stack, order).await;
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(version, 5);
    // No batch of these committed: nothing counted.
    assert_eq!(stack.worker_metrics().await.value(BATCH_SIZE, &[]), 0.0);
}
