//! The outbox relay against the real PostgreSQL and RabbitMQ: status events reach a subscriber in
//! their order's sequence even when the broker refuses one of them (a quorum queue losing its
//! leader nacks what it held while a later publish is confirmed), and a refused event holds back
//! only its own order.

mod common;

use common::{add_item, create, created_order};
use futures_util::StreamExt;
use lapin::options::QueueDeleteOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use orderflow_contract::StatusEvent;
use orderflow_domain::CommandId;
use orderflow_testkit as testing;
use std::time::Duration;

/// Every status event of this consumer, in arrival order, taken until `done` holds of them.
async fn events_until(
    events: &mut lapin::Consumer,
    seen: &mut Vec<StatusEvent>,
    what: &str,
    done: impl Fn(&[StatusEvent]) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !done(seen) {
            let delivery = events.next().await.unwrap().unwrap();
            seen.push(StatusEvent::parse(&delivery.data).unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}; saw {seen:?}"));
}

fn has(seen: &[StatusEvent], id: CommandId) -> bool {
    seen.iter().any(|e| e.command_id == id)
}

#[tokio::test]
async fn an_event_the_broker_refuses_holds_back_its_orders_later_events_and_no_other_orders() {
    let stack = common::stack().worker().start().await;
    let (observer_connection, mut events) =
        testing::broker::consume_events(&stack.topology, "#").await;
    // A queue that refuses every rejection event (full at length 0, rejecting publishes): the
    // broker nacks those and confirms the rest, as a cluster does while a queue changes leader.
    let (blocker_connection, blocker) = testing::broker::channel().await;
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let refuser =
        testing::broker::bound_queue(&blocker, &stack.topology, "command.rejected.#", arguments)
            .await;

    // Order A: created, then a rejected command (its event refused), then an applied one.
    let a = created_order(&stack, 0).await;
    let stale = stack.message(a, add_item("SKU-1"), Some(9));
    stack.publish(&stale).await;
    assert_eq!(stack.wait_final_status(stale.command_id).await, "rejected");
    let later = stack.message(a, add_item("SKU-2"), None);
    stack.publish(&later).await;
    assert_eq!(stack.wait_final_status(later.command_id).await, "applied");
    // Order B, on the other partition, after all of A's.
    let b = stack.order_in(1);
    let b_created = stack.message(b, create(), None);
    stack.publish(&b_created).await;
    assert_eq!(
        stack.wait_final_status(b_created.command_id).await,
        "applied"
    );

    // B's event is not held back by A's refused one; A's later event is.
    let mut seen = Vec::new();
    events_until(&mut events, &mut seen, "order B's event", |seen| {
        has(seen, b_created.command_id)
    })
    .await;
    assert!(
        !has(&seen, later.command_id),
        "order A's seq 3 went out while its seq 2 was unconfirmed: {seen:?}"
    );

    // The broker takes rejections again: A's held events follow, in A's order.
    blocker
        .queue_delete(refuser.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    events_until(&mut events, &mut seen, "order A's held events", |seen| {
        has(seen, later.command_id)
    })
    .await;
    let mut first = std::collections::HashSet::new();
    let a_seqs: Vec<i64> = seen
        .iter()
        .filter(|e| e.order_id == a && first.insert(e.command_id))
        .map(|e| e.seq)
        .collect();
    assert_eq!(a_seqs, [1, 2, 3], "order A's events as they arrived");

    let _ = blocker_connection
        .close(200, ShortString::from("done"))
        .await;
    let _ = observer_connection.close(200, "done".into()).await;
}

/// A worker announces what it finished after the commit, in a transaction of its own; one that
/// died in between announced nothing. Its committed outbox row is still relayed, by the relay's
/// sweep: here a row committed with no notification while nothing else happens.
#[tokio::test]
async fn an_event_committed_without_its_announcement_is_relayed_by_the_sweep() {
    let stack = common::stack().worker().start().await;
    let (observer_connection, mut events) =
        testing::broker::consume_events(&stack.topology, "#").await;
    let order = created_order(&stack, 0).await;
    let mut seen = Vec::new();
    events_until(&mut events, &mut seen, "the create's event", |seen| {
        seen.iter().any(|e| e.order_id == order)
    })
    .await;

    // The event of a command finished by a worker that died before announcing it: the same
    // order's next event, written as `commands::finish` writes it, with no NOTIFY.
    let mut unannounced = seen.iter().find(|e| e.order_id == order).unwrap().clone();
    unannounced.command_id = CommandId(uuid::Uuid::new_v4());
    unannounced.seq += 1;
    sqlx::query("insert into outbox (order_id, routing_key, payload) values ($1, $2, $3)")
        .bind(order.0)
        .bind(unannounced.routing_key())
        .bind(sqlx::types::Json(&unannounced))
        .execute(&stack.db)
        .await
        .unwrap();

    events_until(&mut events, &mut seen, "the unannounced event", |seen| {
        has(seen, unannounced.command_id)
    })
    .await;
    let _ = observer_connection.close(200, "done".into()).await;
}
