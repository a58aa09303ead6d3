//! Combined transactions: the runs of ready messages that several partitions hand over together
//! are applied in one transaction, each partition's commands under its own lease; a combined
//! transaction that cannot commit sends every run back to its partition, and each gets its due
//! on its own.

mod common;

use common::{add_item, all_pushed, created_order, lock_order};
use orderflow_domain::{CommandId, OrderId};
use orderflow_testkit::{Stack, wait_for};
use uuid::Uuid;

const RUNS_WAITING: &str = "orderflow_apply_runs_waiting";
const FALLBACKS: &str = "orderflow_apply_combined_fallbacks_total";
const PARTITIONS_PER_TRANSACTION: &str = "orderflow_apply_transaction_partitions";

/// Three partitions and one combined writer, so that what waits for it is predictable.
async fn stack() -> Stack {
    Stack::builder()
        .partitions(3)
        .worker_config(|c| c.apply_writers = 1)
        .worker()
        .start()
        .await
}

/// Keeps the one writer busy in a transaction that waits for `blocker`'s row lock, then
/// publishes `then` (one message per partition other than the blocker's) and waits until each
/// partition has handed its run over. Releases the lock and returns the blocker's command.
async fn while_the_writer_is_held(stack: &Stack, blocker: OrderId, then: &[Vec<u8>]) -> CommandId {
    let held = lock_order(stack, blocker).await;
    let first = stack.message(blocker, add_item("HELD"), None);
    stack.publish(&first).await;
    let db = stack.db.clone();
    wait_for("the writer to wait for the held order")
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
    for (partition, body) in (1..).zip(then) {
        stack.publish_raw(partition, body).await;
    }
    let runs = then.len() as f64;
    stack
        .worker_metrics_until("every partition's run to wait for the writer", |s| {
            s.value(RUNS_WAITING, &[]) == runs
        })
        .await;
    held.rollback().await.unwrap();
    first.command_id
}

/// `(command, xmin, lease_partition, epoch)` of each command, in the order given.
async fn recorded(
    stack: &Stack,
    ids: &[CommandId],
) -> Vec<(Uuid, String, Option<i32>, Option<i64>)> {
    let mut out = Vec::new();
    for id in ids {
        out.push(
            sqlx::query_as(
                "select id, xmin::text, lease_partition, epoch from commands where id = $1",
            )
            .bind(id.0)
            .fetch_one(&stack.db)
            .await
            .unwrap(),
        );
    }
    out
}

async fn lease_epoch(stack: &Stack, partition: i32) -> i64 {
    sqlx::query_scalar("select epoch from partition_leases where partition = $1")
        .bind(partition)
        .fetch_one(&stack.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn runs_of_several_partitions_commit_in_one_transaction_each_under_its_own_lease() {
    let stack = stack().await;
    let blocker = created_order(&stack, 0).await;
    let one = created_order(&stack, 1).await;
    let two = created_order(&stack, 2).await;
    let messages = [
        stack.message(one, add_item("SKU-1"), None),
        stack.message(two, add_item("SKU-2"), None),
    ];
    let bodies: Vec<Vec<u8>> = messages.iter().map(|m| m.to_bytes()).collect();
    let held = while_the_writer_is_held(&stack, blocker, &bodies).await;
    assert_eq!(stack.wait_final_status(held).await, "applied");
    let ids: Vec<CommandId> = messages.iter().map(|m| m.command_id).collect();
    for id in &ids {
        assert_eq!(stack.wait_final_status(*id).await, "applied");
    }

    let rows = recorded(&stack, &ids).await;
    assert_eq!(
        rows[0].1, rows[1].1,
        "one transaction for both partitions: {rows:?}"
    );
    // Each command names the lease of the partition it was applied for, not the other's.
    for (row, partition) in rows.iter().zip([1, 2]) {
        assert_eq!(row.2, Some(partition), "{rows:?}");
        assert_eq!(
            row.3,
            Some(lease_epoch(&stack, partition).await),
            "{rows:?}"
        );
    }
    let scrape = stack
        .worker_metrics_until("the combined transactions to be counted", |s| {
            s.value(&format!("{PARTITIONS_PER_TRANSACTION}_count"), &[]) >= 2.0
        })
        .await;
    // The held command alone, then the two runs together. (The three creates were each its
    // partition's first run since the worker took it, which a move waits for: each went in a
    // transaction of its own at once, not combined.)
    assert_eq!(
        scrape.value(&format!("{PARTITIONS_PER_TRANSACTION}_count"), &[]),
        2.0,
        "{}",
        scrape.text
    );
    assert_eq!(
        scrape.value(&format!("{PARTITIONS_PER_TRANSACTION}_sum"), &[]),
        3.0,
        "{}",
        scrape.text
    );
    assert_eq!(scrape.value(RUNS_WAITING, &[]), 0.0);
    assert_eq!(scrape.value(FALLBACKS, &[]), 0.0);
}

#[tokio::test]
async fn a_combined_transaction_that_cannot_commit_sends_each_run_back_to_its_partition() {
    let stack = stack().await;
    let blocker = created_order(&stack, 0).await;
    let one = created_order(&stack, 1).await;
    let two = created_order(&stack, 2).await;
    // Partition 1 hands over a fresh message of a command it applied already (a producer's
    // duplicate): the combined transaction meets it and commits nothing. Each partition then applies its own: the duplicate is acked as done, the
    // other command applied, in a transaction without the first.
    let done = stack.message(one, add_item("SKU-0"), None);
    stack.publish(&done).await;
    assert_eq!(stack.wait_final_status(done.command_id).await, "applied");
    let fresh = stack.message(two, add_item("SKU-2"), None);
    let bodies = [done.to_bytes(), fresh.to_bytes()];
    let held = while_the_writer_is_held(&stack, blocker, &bodies).await;
    assert_eq!(stack.wait_final_status(held).await, "applied");
    assert_eq!(stack.wait_final_status(fresh.command_id).await, "applied");

    let scrape = stack
        .worker_metrics_until("the fallback to be counted", |s| {
            s.value(FALLBACKS, &[]) >= 1.0
        })
        .await;
    assert_eq!(scrape.value(FALLBACKS, &[]), 1.0, "{}", scrape.text);
    // Nothing applied twice, nothing lost: each order's history is gapless, once each.
    for (order, version) in [(one, 2_i64), (two, 2)] {
        let seqs: Vec<i64> =
            sqlx::query_scalar("select seq from order_events where order_id = $1 order by seq")
                .bind(order.0)
                .fetch_all(&stack.db)
                .await
                .unwrap();
        assert_eq!(seqs, (1..=version).collect::<Vec<_>>());
    }
    let rows = recorded(&stack, &[fresh.command_id]).await;
    assert_eq!(rows[0].2, Some(2));
    assert_eq!(rows[0].3, Some(lease_epoch(&stack, 2).await));
    // The duplicate was found on its own, once, and acked as done.
    assert_eq!(
        stack
            .worker_metrics()
            .await
            .value("orderflow_inbox_duplicates_total", &[]),
        1.0
    );
}

const TRANSACTIONS: &str = "orderflow_apply_transactions_total";

#[tokio::test]
async fn a_run_of_plain_commands_is_written_set_based_each_seeing_the_one_before() {
    let stack = stack().await;
    let blocker = created_order(&stack, 1).await;
    let order = created_order(&stack, 1).await;
    // The writer waits on the blocker's row with partition 1's first run; its next messages
    // gather in the consumer meanwhile and arrive as one run.
    let held = lock_order(&stack, blocker).await;
    let first = stack.message(blocker, add_item("HELD"), None);
    stack.publish(&first).await;
    let messages = [
        stack.message(order, add_item("SKU-A"), Some(1)),
        // Sees the first's version.
        stack.message(order, add_item("SKU-B"), Some(2)),
        // Stale by then: rejected, and it writes no event.
        stack.message(order, add_item("SKU-C"), Some(2)),
        stack.message(order, add_item("SKU-D"), None),
    ];
    // Recorded as the API records them (a direct producer's command is recorded by the worker,
    // message by message).
    for m in &messages {
        stack.record_published(m).await;
        stack.publish(m).await;
    }
    all_pushed(&stack, 1).await;
    let before = stack
        .worker_metrics()
        .await
        .value(TRANSACTIONS, &[("path", "set_based")]);
    held.rollback().await.unwrap();
    assert_eq!(stack.wait_final_status(first.command_id).await, "applied");
    let ids: Vec<CommandId> = messages.iter().map(|m| m.command_id).collect();
    let mut statuses = Vec::new();
    for id in &ids {
        statuses.push(stack.wait_final_status(*id).await);
    }
    assert_eq!(statuses, ["applied", "applied", "rejected", "applied"]);

    let rows = recorded(&stack, &ids).await;
    assert!(
        rows.iter().all(|r| r.1 == rows[0].1),
        "one transaction for the run: {rows:?}"
    );
    for row in &rows {
        assert_eq!(row.2, Some(1), "{rows:?}");
        assert_eq!(row.3, Some(lease_epoch(&stack, 1).await), "{rows:?}");
    }
    let (reason, version): (String, Option<i64>) =
        sqlx::query_as("select reason, result_version from commands where id = $1")
            .bind(ids[2].0)
            .fetch_one(&stack.db)
            .await
            .unwrap();
    assert_eq!((reason.as_str(), version), ("version_conflict", Some(3)));
    // The order's history: create, then A, B and D as 2, 3 and 4; the projection at the last,
    // with every line; its stream processed through the last command.
    let events: Vec<(i64, Uuid)> =
        sqlx::query_as("select seq, command_id from order_events where order_id = $1 order by seq")
            .bind(order.0)
            .fetch_all(&stack.db)
            .await
            .unwrap();
    let applied: Vec<Uuid> = events[1..].iter().map(|e| e.1).collect();
    assert_eq!(events.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(applied, [ids[0].0, ids[1].0, ids[3].0]);
    let (version, lines, processed): (i64, i64, i64) = sqlx::query_as(
        "select o.version, jsonb_array_length(o.items)::bigint, s.processed_seq
           from orders o join order_streams s on s.order_id = o.id where o.id = $1",
    )
    .bind(order.0)
    .fetch_one(&stack.db)
    .await
    .unwrap();
    assert_eq!((version, lines, processed), (4, 3, 5));
    // The status events in the feed in the commands' order.
    let db = stack.db.clone();
    let fed = wait_for("the run's four status events in the feed")
        .until(|| {
            let db = db.clone();
            async move {
                let fed: Vec<Uuid> = sqlx::query_scalar(
                    "select command_id from client_events where order_id = $1 order by position",
                )
                .bind(order.0)
                .fetch_all(&db)
                .await
                .unwrap();
                (fed.len() == 5).then_some(fed)
            }
        })
        .await;
    assert_eq!(fed[1..], ids.iter().map(|id| id.0).collect::<Vec<_>>()[..]);
    let scrape = stack
        .worker_metrics_until("the set-based transaction to be counted", |s| {
            s.value(TRANSACTIONS, &[("path", "set_based")]) > before
        })
        .await;
    // The run's (the held command, a direct producer's, went message by message).
    assert_eq!(
        scrape.value(TRANSACTIONS, &[("path", "set_based")]),
        before + 1.0,
        "{}",
        scrape.text
    );
}

#[tokio::test]
async fn a_run_that_moves_stock_is_not_combined_and_the_plain_runs_still_are() {
    let stack = stack().await;
    let blocker = created_order(&stack, 0).await;
    let stocked = created_order(&stack, 1).await;
    let plain = created_order(&stack, 2).await;
    // A reserve takes the message-by-message path with its order's SKUs locked until the
    // commit: combined with partition 2's run it would hold them for both.
    let messages = [
        stack.message(stocked, serde_json::json!({"type": "reserve"}), None),
        stack.message(plain, add_item("SKU-2"), None),
    ];
    let bodies: Vec<Vec<u8>> = messages.iter().map(|m| m.to_bytes()).collect();
    let held = while_the_writer_is_held(&stack, blocker, &bodies).await;
    assert_eq!(stack.wait_final_status(held).await, "applied");
    let ids: Vec<CommandId> = messages.iter().map(|m| m.command_id).collect();
    for id in &ids {
        assert!(
            ["applied", "rejected"].contains(&stack.wait_final_status(*id).await.as_str()),
            "{id:?} ended"
        );
    }

    let rows = recorded(&stack, &ids).await;
    assert_ne!(
        rows[0].1, rows[1].1,
        "the reserve committed apart from the plain run: {rows:?}"
    );
    for (row, partition) in rows.iter().zip([1, 2]) {
        assert_eq!(row.2, Some(partition), "{rows:?}");
    }
    let scrape = stack
        .worker_metrics_until("the combined transactions to be counted", |s| {
            s.value(&format!("{PARTITIONS_PER_TRANSACTION}_count"), &[]) >= 2.0
        })
        .await;
    // The held command alone, then partition 2's run (alone now, but through the writer);
    // the reserve went back to its partition before any transaction began: not a fallback.
    assert_eq!(
        scrape.value(&format!("{PARTITIONS_PER_TRANSACTION}_sum"), &[]),
        2.0,
        "{}",
        scrape.text
    );
    assert_eq!(scrape.value(RUNS_WAITING, &[]), 0.0);
    assert_eq!(scrape.value(FALLBACKS, &[]), 0.0);
}
