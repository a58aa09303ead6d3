//! Partition leases against the real PostgreSQL and RabbitMQ: live workers share the partitions
//! evenly and hand them over on a join or a leave without a single redelivery, a graceful stop
//! frees every lease, and a worker whose lease was taken commits nothing more for the partition
//! (the fence) and leaves its message to the broker.

mod common;

use orderflow_messaging::queue_depth;
use orderflow_testkit::{Stack, base_database_url, wait_for};
use orderflow_worker::metrics::{DRAIN_OVERRUNS, LEASE_EPOCH, LEASE_HELD, REBALANCES};
use std::collections::BTreeMap;
use std::time::Duration;

const PARTITIONS: u16 = 6;

/// A redelivered start that repeated work: partition, starts, the epoch it started under, the
/// epoch its command was applied under, the command's status.
type Repeated = (i32, i32, Option<i64>, Option<i64>, String);

/// Partitions held per worker (active leases only).
async fn held(stack: &Stack) -> BTreeMap<String, usize> {
    let owners: Vec<String> = sqlx::query_scalar(
        "select owner from partition_leases where state = 'active' and owner is not null",
    )
    .fetch_all(&stack.db)
    .await
    .unwrap();
    let mut held = BTreeMap::new();
    for owner in owners {
        *held.entry(owner).or_insert(0) += 1;
    }
    held
}

/// Waits until the active leases are exactly `expected` (worker → partitions held).
async fn wait_held(stack: &Stack, expected: &[(&str, usize)]) {
    wait_held_within(stack, expected, Duration::from_secs(30)).await;
}

/// [`wait_held`] with a deadline of `within`.
async fn wait_held_within(stack: &Stack, expected: &[(&str, usize)], within: Duration) {
    let expected: BTreeMap<String, usize> = expected
        .iter()
        .map(|(name, n)| ((*name).to_owned(), *n))
        .collect();
    wait_for(format!("the leases to be held as {expected:?}"))
        .within(within)
        .every(Duration::from_millis(100))
        .until(|| async {
            let now = held(stack).await;
            if now == expected {
                Ok(())
            } else {
                Err(format!("held now: {now:?}"))
            }
        })
        .await;
}

async fn named(stack: &mut Stack, name: &str) {
    let name = name.to_owned();
    stack
        .start_worker_with(move |c| c.worker_name = Some(name))
        .await;
}

/// Publishes `count` creates spread over every partition; returns their command ids.
async fn publish_creates(stack: &Stack, count: usize) -> Vec<uuid::Uuid> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let order = stack.order_in((i % usize::from(PARTITIONS)) as u16);
        let message = stack.message(order, common::create(), None);
        stack.publish(&message).await;
        ids.push(message.command_id.0);
    }
    ids
}

/// Redelivered starts that were not the one start applying their command under its epoch.
async fn repeated_work(stack: &Stack) -> Vec<Repeated> {
    sqlx::query_as(
        "select c.partition, a.attempts, a.epoch, c.epoch, c.status from delivery_attempts a
           join commands c on c.id = a.command_id
          where a.attempts <> 1 or a.epoch is distinct from c.epoch or c.status <> 'applied'",
    )
    .fetch_all(&stack.db)
    .await
    .unwrap()
}

async fn count(stack: &Stack, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&stack.db).await.unwrap()
}

/// Sessions of the test's database waiting on a lock (a worker's transaction behind an order
/// row the test holds).
async fn lock_waits(stack: &Stack) -> i64 {
    count(
        stack,
        "select count(*) from pg_stat_activity
          where datname = current_database() and wait_event_type = 'Lock'",
    )
    .await
}

/// Creates an order on each of partitions 0 and 1, holds each order's row in a transaction of
/// the test's own, and publishes `per_order` add-items (`{label}-{n}`) for each: each
/// partition's first transaction waits on its row with more messages behind it. Returns the
/// held rows and, per partition, the command ids in order.
async fn behind_held_orders(
    stack: &Stack,
    per_order: usize,
    label: &str,
) -> (
    Vec<sqlx::Transaction<'static, sqlx::Postgres>>,
    Vec<Vec<uuid::Uuid>>,
) {
    let orders = [
        common::created_order(stack, 0).await,
        common::created_order(stack, 1).await,
    ];
    let mut locks = Vec::new();
    let mut sent: Vec<Vec<uuid::Uuid>> = vec![Vec::new(), Vec::new()];
    for (i, order) in orders.iter().enumerate() {
        locks.push(common::lock_order(stack, *order).await);
        for n in 0..per_order {
            let message = stack.message(*order, common::add_item(&format!("{label}-{n}")), None);
            stack.publish(&message).await;
            sent[i].push(message.command_id.0);
        }
    }
    (locks, sent)
}

/// Takes `partition`'s lease for a new member `thief` (live for `lives_secs`, judged by its TTL)
/// in one transaction, as a worker that found the lease expired would: epoch + 1. Returns the
/// new epoch.
async fn take_behind_its_back(stack: &Stack, partition: i32, thief: &str, lives_secs: i32) -> i64 {
    let mut steal = stack.db.begin().await.unwrap();
    sqlx::query(
        "insert into worker_members (name, incarnation, expires_at)
         values ($1, gen_random_uuid(), now() + make_interval(secs => $2))",
    )
    .bind(thief)
    .bind(lives_secs)
    .execute(&mut *steal)
    .await
    .unwrap();
    let stolen = take_for(&mut *steal, partition, thief).await;
    steal.commit().await.unwrap();
    stolen
}

/// Writes what a take of `partition` by the member `name` commits (its process, epoch + 1,
/// active), without that member being told; returns the new epoch.
async fn take_for(db: impl sqlx::PgExecutor<'_>, partition: i32, name: &str) -> i64 {
    sqlx::query_scalar(
        "update partition_leases
            set owner = m.name, incarnation = m.incarnation, epoch = epoch + 1, state = 'active'
           from worker_members m
          where partition = $2 and m.name = $1 returning epoch",
    )
    .bind(name)
    .bind(partition)
    .fetch_one(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn workers_share_the_partitions_evenly_and_a_join_or_a_leave_starts_no_work_twice() {
    let mut stack = Stack::builder().partitions(PARTITIONS).start().await;
    named(&mut stack, "lease-a").await;
    wait_held(&stack, &[("lease-a", 6)]).await;

    // Traffic queued on every partition while the partitions move.
    let mut sent = publish_creates(&stack, 120).await;
    named(&mut stack, "lease-b").await;
    sent.extend(publish_creates(&stack, 120).await);
    wait_held(&stack, &[("lease-a", 3), ("lease-b", 3)]).await;
    named(&mut stack, "lease-c").await;
    sent.extend(publish_creates(&stack, 120).await);
    wait_held(&stack, &[("lease-a", 2), ("lease-b", 2), ("lease-c", 2)]).await;
    stack.stop_worker("lease-b").await;
    sent.extend(publish_creates(&stack, 120).await);
    wait_held(&stack, &[("lease-a", 3), ("lease-c", 3)]).await;

    wait_for("every published create to be applied")
        .within(Duration::from_secs(60))
        .until(|| async {
            let applied: i64 = sqlx::query_scalar(
                "select count(*) from commands where id = any($1) and status = 'applied'",
            )
            .bind(&sent)
            .fetch_one(&stack.db)
            .await
            .unwrap();
            (applied == sent.len() as i64).then_some(())
        })
        .await;
    stack.stop_workers().await;

    // No work was started twice. A draining worker finishes and acks everything it was given;
    // what RabbitMQ still had in flight to its cancelled consumer comes back marked redelivered
    // without any worker having opened it. Each start of a redelivered command message is
    // counted in delivery_attempts with the lease epoch it started under: every one of them is
    // the start that applied its command, under that same epoch, once.
    let repeated = repeated_work(&stack).await;
    assert!(
        repeated.is_empty(),
        "work started twice (partition, starts, started under epoch, applied under epoch, status): {repeated:?}"
    );
    let returned = count(&stack, "select count(*) from delivery_attempts").await;
    eprintln!("{returned} messages were handed back unopened by the broker during the moves");
    // Every command was applied under the lease of the worker that applied it: its epoch is
    // recorded, and never above the partition's epoch now.
    assert_eq!(
        count(
            &stack,
            "select count(*) from commands c join partition_leases l using (partition)
              where c.epoch is null or c.epoch < 1 or c.epoch > l.epoch"
        )
        .await,
        0
    );
    // Stopped gracefully: every lease is free, nobody is a live member, and each move is on
    // record (6 first takes, then the hand-overs).
    assert_eq!(
        count(
            &stack,
            "select count(*) from partition_leases where state <> 'free'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&stack, "select count(*) from worker_members").await,
        0
    );
    assert_eq!(
        count(
            &stack,
            "select count(*) from partition_moves where kind = 'first'"
        )
        .await,
        6
    );
    assert!(
        count(
            &stack,
            "select count(*) from partition_moves where kind = 'handover'"
        )
        .await
            >= 3 + 2 + 2,
        "a join of a second worker hands 3 partitions over, a third 2, a leave 2"
    );
    assert_eq!(
        count(
            &stack,
            "select count(*) from partition_moves where kind = 'takeover'"
        )
        .await,
        0,
        "nothing expired: every move was a hand-over"
    );
}

#[tokio::test]
async fn a_join_a_drained_consumer_and_a_release_are_acted_on_at_once_not_on_the_next_round() {
    // A TTL of 120 s: the keepers' rounds on the timer come only every 12 s. A join handed over
    // well within one of them was handed over by the notifications: the joiner's membership
    // wakes the holder, whose drained consumer wakes it again to release, and the release wakes
    // the joiner to take.
    let mut stack = Stack::builder().partitions(2).start().await;
    let rare_rounds = |name: &'static str| {
        move |c: &mut orderflow_worker::WorkerConfig| {
            c.worker_name = Some(name.into());
            c.lease_ttl_ms = 120_000;
        }
    };
    stack.start_worker_with(rare_rounds("first")).await;
    wait_held(&stack, &[("first", 2)]).await;
    stack.start_worker_with(rare_rounds("second")).await;
    wait_held_within(
        &stack,
        &[("first", 1), ("second", 1)],
        Duration::from_secs(6),
    )
    .await;
    // And a leave: the partition it released is taken by the other at once.
    stack.stop_worker("second").await;
    wait_held_within(&stack, &[("first", 2)], Duration::from_secs(6)).await;
}

#[tokio::test]
async fn a_drain_cancels_the_consumer_while_its_run_is_still_applying_and_finishes_only_what_it_was_given()
 {
    // A window of 4 applied in runs of 2: the first run waits on the order row the test holds,
    // with two more messages delivered behind it and the rest still in the queue.
    let mut stack = Stack::builder().partitions(2).start().await;
    stack
        .start_worker_with(|c| {
            c.worker_name = Some("holder".into());
            c.prefetch = 4;
            c.batch_max = 2;
        })
        .await;
    wait_held(&stack, &[("holder", 2)]).await;
    let (locks, sent) = behind_held_orders(&stack, 10, "HELD").await;
    let channel = stack.channel().await;
    wait_for("each partition's window to be delivered, its first run waiting on the order row")
        .until(|| async {
            let waiting = lock_waits(&stack).await;
            let mut ready = 0;
            for partition in 0..2 {
                let queue = stack.topology.partition_queue(partition);
                ready += queue_depth(&channel, &queue).await.unwrap().ready;
            }
            (waiting >= 1 && ready == 12).then_some(())
        })
        .await;

    // A second worker joins: one partition is handed over. Its consumer is cancelled at the
    // broker while its run still waits on the lock, not after the run: the broker sends it
    // nothing more.
    named(&mut stack, "joiner").await;
    // The broker's own listing (over AMQP a quorum queue still counts a cancelled consumer
    // until its messages are settled).
    let queues: Vec<String> = (0..2).map(|p| stack.topology.partition_queue(p)).collect();
    wait_for(
        "the handed-over partition's consumer to be cancelled at the broker while its run waits",
    )
    .within(Duration::from_secs(10))
    .every(Duration::from_millis(200))
    .until(|| async {
        let listed = orderflow_testkit::broker::list_consumers(&[]).await?;
        let consumers: Vec<usize> = queues
            .iter()
            .map(|q| {
                listed
                    .lines()
                    .filter(|l| l.split('\t').next() == Some(q.as_str()))
                    .count()
            })
            .collect();
        if consumers.contains(&0) {
            Ok(())
        } else {
            Err(format!("consumers per queue: {consumers:?}"))
        }
    })
    .await;
    let waiting = lock_waits(&stack).await;
    assert!(waiting >= 1, "the run was still waiting on the lock");
    for lock in locks {
        lock.rollback().await.unwrap();
    }
    wait_held(&stack, &[("holder", 1), ("joiner", 1)]).await;
    for id in sent.iter().flatten() {
        assert_eq!(
            stack
                .wait_final_status(orderflow_domain::CommandId(*id))
                .await,
            "applied"
        );
    }
    // The old holder finished exactly its window (the run in flight and the two behind it),
    // the new holder the rest, none of them redelivered.
    let moved: i32 =
        sqlx::query_scalar("select partition from partition_leases where owner = 'joiner'")
            .fetch_one(&stack.db)
            .await
            .unwrap();
    let by_epoch: Vec<(Option<i64>, i64)> = sqlx::query_as(
        "select epoch, count(*) from commands where id = any($1) group by epoch order by epoch",
    )
    .bind(&sent[moved as usize])
    .fetch_all(&stack.db)
    .await
    .unwrap();
    assert_eq!(
        by_epoch.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        vec![4, 6],
        "commands applied per epoch on the moved partition: {by_epoch:?}"
    );
    assert_eq!(
        count(&stack, "select count(*) from delivery_attempts").await,
        0
    );
    let repeated = repeated_work(&stack).await;
    assert!(repeated.is_empty(), "work started twice: {repeated:?}");
}

#[tokio::test]
async fn a_drain_past_its_limit_finishes_the_transaction_in_flight_and_hands_the_rest_back_unopened()
 {
    let mut stack = Stack::builder().partitions(2).start().await;
    stack
        .start_worker_with(|c| {
            c.worker_name = Some("slow".into());
            c.drain_limit_ms = 300;
            c.batch_max = 2;
        })
        .await;
    wait_held(&stack, &[("slow", 2)]).await;
    // Each order's row held by the test: each partition's first transaction waits on it, with
    // more of the order's messages delivered behind it.
    let (locks, sent) = behind_held_orders(&stack, 6, "SLOW").await;
    wait_for("both partitions' transactions to wait on the order rows")
        .until(|| async {
            let waiting = lock_waits(&stack).await;
            (waiting == 2).then_some(())
        })
        .await;

    // A second worker joins: one partition is handed over, and its drain cannot end while its
    // transaction waits: past the limit it is told to give back.
    named(&mut stack, "joiner").await;
    stack
        .worker_metrics_until("the drain to overrun", |s| {
            s.value(DRAIN_OVERRUNS, &[]) == 1.0
        })
        .await;
    for lock in locks {
        lock.rollback().await.unwrap();
    }
    wait_held(&stack, &[("slow", 1), ("joiner", 1)]).await;
    for id in sent.iter().flatten() {
        assert_eq!(
            stack
                .wait_final_status(orderflow_domain::CommandId(*id))
                .await,
            "applied"
        );
    }

    // On the moved partition: the transaction that was in flight committed under the old
    // holder's epoch (it was not rolled back and redone), the rest under the new holder's,
    // redelivered unopened.
    let moved: i32 =
        sqlx::query_scalar("select partition from partition_leases where owner = 'joiner'")
            .fetch_one(&stack.db)
            .await
            .unwrap();
    let epochs: Vec<(i64, i64)> = sqlx::query_as(
        "select c.epoch, l.epoch from commands c join partition_leases l using (partition)
          where c.id = any($1) order by c.seq",
    )
    .bind(&sent[moved as usize])
    .fetch_all(&stack.db)
    .await
    .unwrap();
    assert!(
        epochs[0].0 < epochs[0].1,
        "the first command, in flight at the overrun, applied by the old holder: {epochs:?}"
    );
    assert!(
        epochs.last().unwrap().0 == epochs[0].1,
        "the last command applied by the new holder: {epochs:?}"
    );
    let handed_back = count(&stack, "select count(*) from delivery_attempts").await;
    assert!(handed_back >= 1, "the rest came back redelivered");
    let repeated = repeated_work(&stack).await;
    assert!(repeated.is_empty(), "work started twice: {repeated:?}");
}

#[tokio::test]
async fn a_redelivered_message_a_drain_hands_back_unfinished_counts_as_started_once() {
    let mut stack = Stack::builder().partitions(2).start().await;
    let slow = |c: &mut orderflow_worker::WorkerConfig| {
        c.worker_name = Some("slow".into());
        c.drain_limit_ms = 300;
    };
    stack.start_worker_with(slow).await;
    wait_held(&stack, &[("slow", 2)]).await;
    let orders = [
        common::created_order(&stack, 0).await,
        common::created_order(&stack, 1).await,
    ];
    stack.stop_worker("slow").await;
    // One message per order, taken once and handed back by another consumer: the next worker
    // gets it redelivered and counts its start.
    let mut sent = Vec::new();
    for (partition, order) in orders.iter().enumerate() {
        let message = stack.message(*order, common::add_item("BACK"), None);
        stack.publish(&message).await;
        orderflow_testkit::broker::hand_back(&stack.topology, partition as u16).await;
        sent.push(message.command_id.0);
    }
    // Each order's row held by the test: each counted start's transaction waits on it.
    let mut locks = Vec::new();
    for order in &orders {
        locks.push(common::lock_order(&stack, *order).await);
    }
    stack.start_worker_with(slow).await;
    wait_for("both counted starts to wait on the order rows")
        .until(|| async {
            let counted = count(&stack, "select count(*) from delivery_attempts").await;
            let waiting = lock_waits(&stack).await;
            (counted == 2 && waiting == 2).then_some(())
        })
        .await;

    // A second worker joins: one partition is handed over. Its drain cannot end while the
    // transaction waits, nor can giving back: past twice the limit the consumer is abandoned,
    // and the message it started goes back to the queue.
    named(&mut stack, "joiner").await;
    let channel = stack.channel().await;
    wait_for("the abandoned message to be back in its queue")
        .within(Duration::from_secs(30))
        .until(|| async {
            let mut ready = 0;
            for partition in 0..2 {
                let queue = stack.topology.partition_queue(partition);
                ready += queue_depth(&channel, &queue).await.unwrap().ready;
            }
            (ready == 1).then_some(())
        })
        .await;
    for lock in locks {
        lock.rollback().await.unwrap();
    }
    wait_held(&stack, &[("slow", 1), ("joiner", 1)]).await;
    for id in &sent {
        assert_eq!(
            stack
                .wait_final_status(orderflow_domain::CommandId(*id))
                .await,
            "applied"
        );
    }
    // The start the drain gave up on was withdrawn: the next holder's start is the one that
    // counts, under the epoch that applied the command.
    let repeated = repeated_work(&stack).await;
    assert!(repeated.is_empty(), "work started twice: {repeated:?}");
}

#[tokio::test]
async fn a_redelivered_copy_of_a_command_already_finished_counts_no_start() {
    let mut stack = Stack::builder().partitions(1).start().await;
    let order = stack.order_in(0);
    // Two copies of one command (what the command relay's republish of an overtaken command
    // and its original make), both taken and handed back by another consumer: the worker gets
    // both redelivered. The first applies the command; the second finds it finished.
    let message = stack.message(order, common::create(), None);
    stack.publish(&message).await;
    stack.publish(&message).await;
    orderflow_testkit::broker::hand_back_n(&stack.topology, 0, 2).await;
    named(&mut stack, "worker").await;
    // Queued behind both copies: once it is applied, both were taken.
    let after = stack.message(order, common::add_item("AFTER"), None);
    stack.publish(&after).await;
    assert_eq!(stack.wait_final_status(after.command_id).await, "applied");
    assert_eq!(stack.wait_final_status(message.command_id).await, "applied");

    // The copy that found its command finished did no work: it is no second start.
    let repeated = repeated_work(&stack).await;
    assert!(repeated.is_empty(), "work started twice: {repeated:?}");
    let starts = count(
        &stack,
        "select coalesce(sum(attempts), 0)::bigint from delivery_attempts",
    )
    .await;
    assert_eq!(starts, 1);
}

#[tokio::test]
async fn a_worker_whose_lease_was_taken_commits_nothing_more_and_leaves_the_message_queued() {
    let mut stack = Stack::builder()
        .partitions(2)
        .worker_config(|c| c.lease_ttl_ms = 2000)
        .start()
        .await;
    named(&mut stack, "fenced").await;
    wait_held(&stack, &[("fenced", 2)]).await;
    let order = common::created_order(&stack, 1).await;

    // Another worker ("thief") takes partition 1 behind this one's back, as a worker that found
    // its lease expired would: epoch + 1. Its membership runs for a few seconds; holding
    // partition 1, the shared (sticky) assignment leaves it there, so that "fenced" keeps
    // partition 0 meanwhile.
    let thief = "thief".to_owned();
    assert_eq!(
        orderflow_worker::assignment::partitions_of(
            2,
            &["fenced", &thief],
            &[Some("fenced"), Some(&thief)],
            &thief
        ),
        [1]
    );
    // One transaction: the worker, woken by the join's notification, must find the lease
    // already taken (alone, the join would make it hand partition 1 over gracefully first).
    let stolen = take_behind_its_back(&stack, 1, &thief, 4).await;
    let add = stack.message(order, common::add_item("FENCED-1"), None);
    stack.publish(&add).await;

    // The worker notices (its fence refuses the apply, or its renewal misses the lease) and
    // stops consuming partition 1: the message is back in the queue, its command unapplied.
    let channel = stack.channel().await;
    let queue = stack.topology.partition_queue(1);
    wait_for("the message to be back in partition 1's queue, unapplied")
        .until(|| async {
            let depth = queue_depth(&channel, &queue).await.unwrap();
            let consumers = depth.consumers;
            let status: Option<String> =
                sqlx::query_scalar("select status from commands where id = $1")
                    .bind(add.command_id.0)
                    .fetch_optional(&stack.db)
                    .await
                    .unwrap();
            (depth.ready == 1 && consumers == 0 && status.is_none()).then_some(())
        })
        .await;

    // The thief's membership expires; the worker, the only live one, takes the partition back
    // with a new epoch and applies the message under it.
    assert_eq!(stack.wait_final_status(add.command_id).await, "applied");
    let epoch: Option<i64> = sqlx::query_scalar("select epoch from commands where id = $1")
        .bind(add.command_id.0)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert_eq!(epoch, Some(stolen + 1));
    assert_eq!(
        count(
            &stack,
            "select count(*) from partition_moves where kind = 'takeover' and partition = 1"
        )
        .await,
        1
    );
    // The worker's /metrics say so: it lost one lease and took it back at the new epoch.
    let epoch = (stolen + 1) as f64;
    stack
        .worker_metrics_until("the lease's loss and retake in the metrics", |s| {
            s.value(REBALANCES, &[("kind", "lost")]) == 1.0
                && s.value(REBALANCES, &[("kind", "taken")]) == 3.0
                && s.value(LEASE_HELD, &[("partition", "1")]) == 1.0
                && s.value(LEASE_EPOCH, &[("partition", "1")]) == epoch
        })
        .await;
}

/// Ends every session of the worker (both its pools) and refuses the database's new
/// connections, as a network cut between that worker and PostgreSQL would; the broker stays
/// reachable. Returns how many sessions it ended.
async fn cut_off_from_postgres(stack: &Stack, worker: &str) -> i64 {
    allow_connections(stack, false).await;
    sqlx::query_scalar(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity
          where datname = current_database() and application_name like $1",
    )
    .bind(format!("orderflow-worker {worker}%"))
    .fetch_one(&stack.db)
    .await
    .unwrap()
}

/// Lets the test database take new connections or not (from another database: PostgreSQL
/// refuses to change that for the database of the session asking).
async fn allow_connections(stack: &Stack, allow: bool) {
    let statement = format!(
        "alter database \"{}\" allow_connections {allow}",
        stack.database_name()
    );
    let admin = sqlx::PgPool::connect(&base_database_url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

#[tokio::test]
async fn a_worker_cut_off_from_postgres_stops_consuming_before_its_leases_expire() {
    let mut stack = Stack::builder()
        .partitions(2)
        .worker_config(|c| c.lease_ttl_ms = 2000)
        .start()
        .await;
    named(&mut stack, "cut-off").await;
    wait_held(&stack, &[("cut-off", 2)]).await;
    let channel = stack.channel().await;
    let consumers = |partition: u16| {
        let (channel, queue) = (&channel, stack.topology.partition_queue(partition));
        async move { queue_depth(channel, &queue).await.unwrap().consumers }
    };
    // A lease is recorded before its consumer starts (CI once looked in between): wait for both.
    wait_for("the worker consuming both partitions")
        .within(Duration::from_secs(10))
        .until(|| async { (consumers(0).await == 1 && consumers(1).await == 1).then_some(()) })
        .await;

    let cut = std::time::Instant::now();
    assert!(cut_off_from_postgres(&stack, "cut-off").await > 0);
    // Still connected to RabbitMQ, it can renew nothing: it cancels its consumers by itself
    // before anyone could take the leases (2 s after the last renewal), so the broker stops
    // feeding it.
    wait_for("the cut-off worker to cancel its consumers")
        .within(Duration::from_secs(10))
        .until(|| async { (consumers(0).await == 0 && consumers(1).await == 0).then_some(()) })
        .await;
    let gave_up = cut.elapsed();
    assert!(
        gave_up < Duration::from_secs(2),
        "gave up after {gave_up:?}"
    );

    // Reachable again: it takes its expired leases back and applies what was queued meanwhile.
    let order = stack.order_in(1);
    let created = stack.message(order, common::create(), None);
    stack.publish(&created).await;
    allow_connections(&stack, true).await;
    assert_eq!(stack.wait_final_status(created.command_id).await, "applied");
    assert_eq!(
        count(
            &stack,
            "select count(*) from partition_moves where kind = 'takeover'"
        )
        .await,
        2
    );
}

/// A stopped holder's session that PostgreSQL does not end by itself (its idle-in-transaction
/// timeout covers a session waiting for its next request, not one waiting for the rest of a
/// pipelined one, nor a session configured without it) keeps its lease row locked FOR SHARE from
/// its fence on. Once the holder's membership expired, whoever takes the lease over ends that
/// session instead of waiting for the holder to wake (found by the race audit's `stop-worker`:
/// two partitions resumed only when the stopped worker woke, 12.6 s after the stop).
#[tokio::test]
async fn a_lease_held_by_an_expired_holders_open_transaction_is_taken_over_without_waiting_for_it()
{
    let mut stack = Stack::builder().partitions(1).start().await;
    let zombie = uuid::Uuid::new_v4();
    sqlx::query(
        "insert into worker_members (name, incarnation, expires_at, liveness_lock)
         values ('zombie', $1, now() + interval '1 second', false)",
    )
    .bind(zombie)
    .execute(&stack.db)
    .await
    .unwrap();
    sqlx::query(
        "insert into partition_leases (partition, owner, incarnation, epoch, state)
         values (0, 'zombie', $1, 1, 'active')
         on conflict (partition) do update
            set owner = excluded.owner, incarnation = excluded.incarnation,
                epoch = excluded.epoch, state = excluded.state",
    )
    .bind(zombie)
    .execute(&stack.db)
    .await
    .unwrap();
    // One of the zombie's sessions (its pool's name), inside a transaction past its fence, and
    // never ended by PostgreSQL.
    let options: sqlx::postgres::PgConnectOptions = stack.database_url.parse().unwrap();
    let mut session = <sqlx::PgConnection as sqlx::Connection>::connect_with(
        &options
            .application_name("orderflow-worker zombie")
            .options([("idle_in_transaction_session_timeout", "0")]),
    )
    .await
    .unwrap();
    sqlx::query("begin").execute(&mut session).await.unwrap();
    sqlx::query("select orderflow_fence(array[0], array[1::bigint], 'zombie', $1)")
        .bind(zombie)
        .execute(&mut session)
        .await
        .unwrap();

    // Its membership expires; a worker joins and must take the partition within a few rounds.
    named(&mut stack, "taker").await;
    wait_for("the taker to hold partition 0")
        .within(Duration::from_secs(10))
        .every(Duration::from_millis(100))
        .until(|| async {
            let owner: Option<String> =
                sqlx::query_scalar("select owner from partition_leases where partition = 0")
                    .fetch_one(&stack.db)
                    .await
                    .unwrap();
            (owner.as_deref() == Some("taker"))
                .then_some(())
                .ok_or(format!("owner now: {owner:?}"))
        })
        .await;
    // The zombie's transaction was ended, not left to commit when it wakes.
    assert!(
        sqlx::query("commit").execute(&mut session).await.is_err(),
        "the zombie's session still commits"
    );
}

/// A take whose commit reached PostgreSQL but whose answer never reached the worker (the round
/// timed out, or the primary moved under it: the cluster audit's `pg-promote` left a partition
/// owned by a live worker that did not know, and nobody consumed it for the rest of the run).
/// The lease names this worker's process and is active, so no one else takes it while it lives:
/// the worker must find it on its next round and consume it at the epoch the lost take wrote.
#[tokio::test]
async fn a_lease_whose_take_committed_while_its_answer_was_lost_is_consumed_by_its_holder() {
    let mut stack = Stack::builder()
        .partitions(2)
        .worker_config(|c| c.lease_ttl_ms = 2000)
        .start()
        .await;
    named(&mut stack, "holder").await;
    wait_held(&stack, &[("holder", 2)]).await;
    let order = common::created_order(&stack, 1).await;

    // Partition 1 is taken from "holder" (as in the fence test above), so that it stops
    // consuming it: the state a worker is in before it takes a lease.
    take_behind_its_back(&stack, 1, "thief", 30).await;
    let channel = stack.channel().await;
    let queue = stack.topology.partition_queue(1);
    wait_for("the holder to stop consuming partition 1")
        .until(|| async {
            let depth = queue_depth(&channel, &queue).await.unwrap();
            (depth.consumers == 0).then_some(())
        })
        .await;

    // The holder's take of partition 1 commits, and the thief leaves; the take's answer is
    // what gets lost, so the worker is told nothing but what its next rounds read. It commits
    // in the middle of one of the holder's rounds (held back on the layout's lock, which each
    // round reads after the leases): a round that read what it holds before the commit and who
    // holds what after it took the lease again, at the next epoch (CI, once in a few runs).
    let mut lost_answer = stack.db.begin().await.unwrap();
    sqlx::query("lock table partition_layout in access exclusive mode")
        .execute(&mut *lost_answer)
        .await
        .unwrap();
    wait_for("a round of the holder's lease keeper to wait on the layout")
        .every(Duration::from_millis(10))
        .until(|| async {
            let waiting: bool = sqlx::query_scalar(
                "select exists (select 1 from pg_stat_activity
                                 where datname = current_database()
                                   and application_name = 'orderflow-worker holder leases'
                                   and wait_event_type = 'Lock'
                                   and query like '%partition_layout%')",
            )
            .fetch_one(&stack.db)
            .await
            .unwrap();
            waiting.then_some(())
        })
        .await;
    let taken = take_for(&mut *lost_answer, 1, "holder").await;
    sqlx::query("delete from worker_members where name = 'thief'")
        .execute(&mut *lost_answer)
        .await
        .unwrap();
    lost_answer.commit().await.unwrap();

    // The holder consumes partition 1 at that very epoch: it does not take it again.
    let add = stack.message(order, common::add_item("LOST-ANSWER-1"), None);
    stack.publish(&add).await;
    assert_eq!(stack.wait_final_status(add.command_id).await, "applied");
    let (partition, epoch): (Option<i32>, Option<i64>) =
        sqlx::query_as("select lease_partition, epoch from commands where id = $1")
            .bind(add.command_id.0)
            .fetch_one(&stack.db)
            .await
            .unwrap();
    assert_eq!((partition, epoch), (Some(1), Some(taken)));
    let owner: (String, i64) =
        sqlx::query_as("select owner, epoch from partition_leases where partition = 1")
            .fetch_one(&stack.db)
            .await
            .unwrap();
    assert_eq!(owner, ("holder".to_owned(), taken));
}

/// The case the cluster audit found: the lost take's partition is not in its holder's share.
/// Its rightful worker cannot take it (a live worker holds it) and waits for the hand-over; the
/// holder, not consuming it, never handed it over, and the partition stalled for good. It must
/// be consumed and then handed on, and its messages applied.
#[tokio::test]
async fn a_lost_take_of_a_partition_outside_its_holders_share_is_handed_on_not_orphaned() {
    let mut stack = Stack::builder()
        .partitions(2)
        .worker_config(|c| c.lease_ttl_ms = 2000)
        .start()
        .await;
    named(&mut stack, "holder").await;
    wait_held(&stack, &[("holder", 2)]).await;
    named(&mut stack, "other").await;
    wait_held(&stack, &[("holder", 1), ("other", 1)]).await;
    let theirs: i32 = sqlx::query_scalar(
        "select partition from partition_leases where owner = 'other' and state = 'active'",
    )
    .fetch_one(&stack.db)
    .await
    .unwrap();
    let order = common::created_order(&stack, theirs as u16).await;

    // "holder" took the other worker's partition (as it would have had that worker's
    // membership lapsed), and the answer never reached it.
    let taken = take_for(&stack.db, theirs, "holder").await;

    let add = stack.message(order, common::add_item("LOST-ANSWER-2"), None);
    stack.publish(&add).await;
    assert_eq!(stack.wait_final_status(add.command_id).await, "applied");
    let epoch: Option<i64> = sqlx::query_scalar("select epoch from commands where id = $1")
        .bind(add.command_id.0)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert!(
        epoch.is_some_and(|e| e >= taken),
        "applied under the lost take's lease or a later one: {epoch:?} (taken at {taken})"
    );
    // And the partition went back to the worker whose share it is.
    wait_held(&stack, &[("holder", 1), ("other", 1)]).await;
    let owner: String =
        sqlx::query_scalar("select owner from partition_leases where partition = $1")
            .bind(theirs)
            .fetch_one(&stack.db)
            .await
            .unwrap();
    assert_eq!(owner, "other");
}
