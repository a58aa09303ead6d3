//! The worker's telemetry against the real PostgreSQL and RabbitMQ: `/metrics` serves every named
//! series and each moves with the work it counts; the heartbeat rows, the commands' timeline
//! columns and the dead-letter records say what happened. Counters are compared with a scrape
//! taken before the work, so the assertions hold however many series the process already had.

mod common;

use common::{add_item, create, created_order, lock_order};
use orderflow_domain::ClientId;
use orderflow_testkit::{self as testing, Scrape, Stack, wait_for};
use orderflow_worker::metrics::*;
use sqlx::Row;
use std::time::Duration;

/// The outbox relay's advisory lock (storage/src/outbox.rs): holding it stops the relay.
const RELAY_LOCK: i64 = 0x6f72_6465_7266_6c6f;

/// (delivered_at is set, attempt) of a command.
async fn timeline(stack: &Stack, id: uuid::Uuid) -> (bool, Option<i32>) {
    let row = sqlx::query(
        "select delivered_at is not null as delivered, attempt from commands where id = $1",
    )
    .bind(id)
    .fetch_one(&stack.db)
    .await
    .unwrap();
    (row.get("delivered"), row.get("attempt"))
}

#[tokio::test]
async fn every_series_is_served_and_moves_with_applied_rejected_duplicate_and_redelivered_commands()
{
    let mut stack = common::stack().start().await;
    // Before the worker starts: a message that will come to it redelivered.
    let redelivered = stack.message(stack.order_in(1), create(), None);
    stack.publish(&redelivered).await;
    testing::broker::hand_back(&stack.topology, 1).await;
    stack.start_worker().await;
    let before = stack.worker_metrics().await;

    // Applied, then rejected for a stale expected version, then the create again (a duplicate).
    let order = stack.order_in(0);
    let created = stack.message(order, create(), None);
    stack.publish(&created).await;
    assert_eq!(stack.wait_final_status(created.command_id).await, "applied");
    let stale = stack.message(order, add_item("SKU-1"), Some(7));
    stack.publish(&stale).await;
    assert_eq!(stack.wait_final_status(stale.command_id).await, "rejected");
    stack.publish(&created).await;
    // Two commands recorded as the API does; the second's message comes first, so the first is
    // applied ahead of its own (late) message, which is then a duplicate.
    let late_order = stack.order_in(1);
    let first = stack.message(late_order, create(), None);
    let second = stack.message(late_order, add_item("SKU-2"), None);
    stack.record(&first, None).await;
    stack.record(&second, None).await;
    stack.publish(&second).await;
    assert_eq!(stack.wait_final_status(second.command_id).await, "applied");
    assert_eq!(stack.wait_final_status(first.command_id).await, "applied");
    stack.publish(&first).await;
    assert_eq!(
        stack.wait_final_status(redelivered.command_id).await,
        "applied"
    );

    let delta = |scrape: &Scrape, name: &str, labels: &[(&str, &str)]| {
        scrape.value(name, labels) - before.value(name, labels)
    };
    let scrape = stack
        .worker_metrics_until("both duplicates counted and the gauges sampled", |s| {
            delta(s, INBOX_DUPLICATES, &[]) >= 2.0
                && s.get(QUEUE_DEPTH, &[("partition", "1")]).is_some()
                && s.value(LAST_DELIVERY, &[("partition", "0")]) > 0.0
                && s.value(LAST_DELIVERY, &[("partition", "1")]) > 0.0
        })
        .await;
    let applied = |kind| [("type", kind), ("status", "applied"), ("reason", "none")];
    assert_eq!(delta(&scrape, COMMANDS_FINISHED, &applied("create")), 3.0);
    assert_eq!(delta(&scrape, COMMANDS_FINISHED, &applied("add_item")), 1.0);
    let conflict = [
        ("type", "add_item"),
        ("status", "rejected"),
        ("reason", "version_conflict"),
    ];
    assert_eq!(delta(&scrape, COMMANDS_FINISHED, &conflict), 1.0);
    assert_eq!(delta(&scrape, VERSION_CONFLICTS, &[]), 1.0);
    // Direct producers' commands only (`first` and `second` were recorded "by the API").
    let amqp = |kind| [("type", kind), ("source", "amqp")];
    assert_eq!(delta(&scrape, COMMANDS_ACCEPTED, &amqp("create")), 2.0);
    assert_eq!(delta(&scrape, COMMANDS_ACCEPTED, &amqp("add_item")), 1.0);
    assert_eq!(delta(&scrape, INBOX_DUPLICATES, &[]), 2.0);
    let p1 = [("partition", "1")];
    assert_eq!(delta(&scrape, REDELIVERIES, &p1), 1.0);
    let count = |name: &str| format!("{name}_count");
    let applied_status = [("status", "applied")];
    assert_eq!(
        delta(&scrape, &count(ACCEPT_TO_FINISHED), &applied_status),
        4.0
    );
    let rejected_status = [("status", "rejected")];
    assert_eq!(
        delta(&scrape, &count(ACCEPT_TO_FINISHED), &rejected_status),
        1.0
    );
    assert!(delta(&scrape, &count(APPLY_DURATION), &[]) >= 6.0);
    let now = chrono::Utc::now().timestamp() as f64;
    for p in ["0", "1"] {
        assert_eq!(scrape.get(CONSUMER_UP, &[("partition", p)]), Some(1.0));
        let last = scrape.value(LAST_DELIVERY, &[("partition", p)]);
        assert!((now - 60.0..=now + 1.0).contains(&last), "{last} vs {now}");
        assert!(scrape.get(QUEUE_DEPTH, &[("partition", p)]).is_some());
        assert!(
            scrape
                .get(OLDEST_PENDING_AGE, &[("partition", p)])
                .is_some()
        );
    }
    for gauge in [OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE, DEAD_LETTER_QUEUE_DEPTH] {
        assert!(scrape.get(gauge, &[]).is_some(), "{gauge}");
    }

    // The timeline: finished with its own message in hand (attempt 1), or ahead of it (null).
    assert_eq!(
        timeline(&stack, created.command_id.0).await,
        (true, Some(1))
    );
    assert_eq!(timeline(&stack, stale.command_id.0).await, (true, Some(1)));
    assert_eq!(timeline(&stack, second.command_id.0).await, (true, Some(1)));
    assert_eq!(timeline(&stack, first.command_id.0).await, (false, None));
    // A redelivery carries the count of started deliveries kept in `delivery_attempts`.
    assert_eq!(
        timeline(&stack, redelivered.command_id.0).await,
        (true, Some(1))
    );

    // The heartbeat: one row per partition with this worker's counts.
    let worker = stack.worker_name();
    let expected = vec![
        (0, true, true, 3_i64, 0_i64, 2_i64),
        (1, true, true, 3, 1, 3),
    ];
    let db = stack.db.clone();
    wait_for("the heartbeat to show every delivery")
        .until(|| {
            let (db, worker, expected) = (db.clone(), worker.clone(), expected.clone());
            async move {
                let rows = heartbeat(&db, &worker).await;
                (rows == expected).then_some(())
            }
        })
        .await;

    // Stopping: the last heartbeat says the consumers are gone; the listener is closed.
    let metrics_url = stack.worker_metrics_url();
    stack.stop_workers().await;
    let rows = heartbeat(&stack.db, &worker).await;
    assert!(rows.iter().all(|r| !r.1), "{rows:?}");
    assert!(stack.http.get(&metrics_url).send().await.is_err());
}

/// (command_id, client_id, partition, reason, body) of a `dead_letters` row.
type DeadLetterRow = (Option<uuid::Uuid>, Option<uuid::Uuid>, i32, String, String);

/// (partition, consuming, has a last delivery, delivered, redelivered, finished) per partition.
async fn heartbeat(db: &sqlx::PgPool, worker: &str) -> Vec<(i32, bool, bool, i64, i64, i64)> {
    sqlx::query_as(
        "select partition, consuming, last_delivery_at is not null, delivered, redelivered, finished
         from worker_partitions where worker = $1 order by partition",
    )
    .bind(worker)
    .fetch_all(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_gauges_show_a_backed_up_partition_a_held_outbox_and_the_oldest_pending_command() {
    let stack = common::stack()
        .worker_config(|c| {
            // One message in hand per partition: the others stay ready in the queue.
            c.prefetch = 1;
            // The pending command below stays unpublished for the whole test.
            c.republish_after_ms = 3_600_000;
        })
        .worker()
        .start()
        .await;
    let pending = stack.message(stack.order_in(1), create(), None);
    stack.record(&pending, None).await;

    // Hold the outbox relay, apply a create (its event stays in the outbox), then hold its order
    // row: the consumer of partition 0 waits on it while more commands queue up behind.
    let mut relay = stack.db.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(RELAY_LOCK)
        .execute(&mut *relay)
        .await
        .unwrap();
    let order = created_order(&stack, 0).await;
    let row = lock_order(&stack, order).await;
    let mut queued = Vec::new();
    for i in 0..5 {
        let message = stack.message(order, add_item(&format!("SKU-{i}")), None);
        stack.publish(&message).await;
        queued.push(message.command_id);
    }
    let p0 = [("partition", "0")];
    let p1 = [("partition", "1")];
    stack
        .worker_metrics_until("the backlog to show", |s| {
            s.value(QUEUE_DEPTH, &p0) >= 4.0
                && s.value(OLDEST_PENDING_AGE, &p1) > 0.0
                && s.value(OUTBOX_BACKLOG, &[]) >= 1.0
                && s.value(OUTBOX_OLDEST_AGE, &[]) > 0.0
        })
        .await;

    // Let go: the partition drains and the relay empties the outbox.
    row.rollback().await.unwrap();
    for id in queued {
        assert_eq!(stack.wait_final_status(id).await, "applied");
    }
    relay.rollback().await.unwrap();
    stack
        .worker_metrics_until("the backlog to clear", |s| {
            s.get(QUEUE_DEPTH, &p0) == Some(0.0)
                && s.get(OUTBOX_BACKLOG, &[]) == Some(0.0)
                && s.get(OUTBOX_OLDEST_AGE, &[]) == Some(0.0)
                // Still pending: it was never published.
                && s.value(OLDEST_PENDING_AGE, &p1) > 0.0
        })
        .await;
}

#[tokio::test]
async fn dead_lettered_messages_are_recorded_and_counted_and_a_failed_command_with_its_record() {
    let mut stack = common::stack().start().await;
    // A command recorded as the API does, whose message comes back redelivered: with no
    // redelivered start allowed, the worker fails it and dead-letters the message.
    let doomed = stack.message(stack.order_in(0), create(), None);
    stack.record(&doomed, None).await;
    stack.publish(&doomed).await;
    testing::broker::hand_back(&stack.topology, 0).await;
    stack
        .start_worker_with(|c| c.poison_after_deliveries = 0)
        .await;
    let before = stack.worker_metrics().await;
    // Not a command at all (with a NUL byte, which a text column cannot hold), and a valid
    // command of a client nobody knows.
    stack.publish_raw(1, b"not json\0at all").await;
    let mut stranger = stack.message(stack.order_in(1), create(), None);
    stranger.client_id = ClientId::new();
    stack.publish(&stranger).await;

    assert_eq!(stack.wait_final_status(doomed.command_id).await, "failed");
    // Written in the failing transaction: visible together with the status.
    let record: (uuid::Uuid, uuid::Uuid, i32, String, String) = sqlx::query_as(
        "select order_id, client_id, partition, reason, body from dead_letters where command_id = $1",
    )
    .bind(doomed.command_id.0)
    .fetch_one(&stack.db)
    .await
    .unwrap();
    assert_eq!(record.0, doomed.order_id.0);
    assert_eq!(record.1, doomed.client_id.0);
    assert_eq!(record.2, 0);
    assert!(
        record.3.contains("started applying this message 1 times"),
        "{}",
        record.3
    );
    assert_eq!(record.4.as_bytes(), doomed.to_bytes().as_slice());
    assert_eq!(timeline(&stack, doomed.command_id.0).await, (true, Some(1)));

    let db = stack.db.clone();
    let rows: Vec<DeadLetterRow> =
        wait_for("three dead letters").until(|| {
            let db = db.clone();
            async move {
                let rows: Vec<_> = sqlx::query_as(
                    "select command_id, client_id, partition, reason, body from dead_letters order by id",
                )
                .fetch_all(&db)
                .await
                .unwrap();
                (rows.len() == 3).then_some(rows)
            }
        })
        .await;
    let garbage = rows.iter().find(|r| r.0.is_none()).expect("the garbage");
    assert_eq!(garbage.2, 1);
    assert!(
        garbage.3.starts_with("message is not a valid command"),
        "{}",
        garbage.3
    );
    assert_eq!(garbage.4, "not json\u{FFFD}at all");
    let refused = rows
        .iter()
        .find(|r| r.0 == Some(stranger.command_id.0))
        .expect("the stranger's command");
    assert_eq!(refused.1, Some(stranger.client_id.0));
    assert!(refused.3.starts_with("unknown client"), "{}", refused.3);

    let delta = |scrape: &Scrape, name: &str, labels: &[(&str, &str)]| {
        scrape.value(name, labels) - before.value(name, labels)
    };
    let scrape = stack
        .worker_metrics_until("three dead letters counted and in the queue", |s| {
            delta(s, DEAD_LETTERS, &[]) >= 3.0 && s.value(DEAD_LETTER_QUEUE_DEPTH, &[]) >= 3.0
        })
        .await;
    for reason in ["malformed", "unknown_client"] {
        assert_eq!(
            delta(&scrape, DEAD_LETTERS, &[("reason", reason)]),
            1.0,
            "{reason}"
        );
    }
    // The doomed one was handled before the `before` scrape could be taken, or after.
    assert_eq!(
        scrape.value(DEAD_LETTERS, &[("reason", "delivery_limit")]),
        1.0
    );
    let failed = [
        ("type", "create"),
        ("status", "failed"),
        ("reason", "delivery_limit"),
    ];
    assert_eq!(scrape.value(COMMANDS_FINISHED, &failed), 1.0);
}

#[tokio::test]
async fn a_transaction_that_times_out_waiting_for_a_lock_is_retried_and_counted_by_cause() {
    let mut stack = common::stack().start().await;
    // The worker's sessions give up on a lock after 200 ms (a transient error, retried).
    let database: String = sqlx::query_scalar("select current_database()")
        .fetch_one(&stack.db)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"alter database "{database}" set lock_timeout = '200ms'"#
    )))
    .execute(&stack.db)
    .await
    .unwrap();
    stack.start_worker().await;
    let order = created_order(&stack, 0).await;
    let before = stack.worker_metrics().await;

    let row = lock_order(&stack, order).await;
    let added = stack.message(order, add_item("SKU-1"), None);
    stack.publish(&added).await;
    let cause = [("cause", "lock_timeout")];
    stack
        .worker_metrics_until("a retry after a lock timeout", |s| {
            s.value(TX_RETRIES, &cause) > before.value(TX_RETRIES, &cause)
        })
        .await;
    row.rollback().await.unwrap();
    assert_eq!(stack.wait_final_status(added.command_id).await, "applied");
    // However many attempts it took, the command is counted once.
    let applied = [("type", "add_item"), ("status", "applied")];
    let scrape = stack.worker_metrics().await;
    assert_eq!(
        scrape.value(COMMANDS_FINISHED, &applied) - before.value(COMMANDS_FINISHED, &applied),
        1.0
    );
    tokio::time::timeout(Duration::from_secs(30), stack.stop_workers())
        .await
        .unwrap();
}
