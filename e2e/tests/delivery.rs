//! What the broker does to messages, and what orderflow makes of it: duplicates, out-of-order
//! deliveries, poison, a full queue, a worker stopped mid-stream, lost connections, and
//! commands published straight to the exchange by another service (the Python producer).

mod common;

use orderflow_contract::CommandMessage;
use orderflow_domain::{CommandId, OrderId};
use orderflow_testkit::{Stack, wait_for};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::time::Duration;
use uuid::Uuid;

fn create() -> Value {
    json!({"type": "create", "customer_id": "direct", "currency": "EUR",
           "items": [{"sku": "D-1", "quantity": 1, "unit_price_cents": 100}]})
}

/// Records a command the way the API does (next seq, marked published so no relay sends it)
/// without publishing it: the test decides when its message arrives.
async fn record_unsent(app: &Stack, order_id: OrderId, command: Value) -> CommandMessage {
    let message = app.message(order_id, command, None);
    app.record_published(&message).await;
    message
}

#[tokio::test]
async fn a_duplicated_delivery_is_applied_once() {
    let app = common::stack().worker().start().await;
    let order_id = OrderId::new();
    let created = app.message(order_id, create(), None);
    app.publish(&created).await;
    app.publish(&created).await;
    let add = app.message(
        order_id,
        json!({"type": "add_item", "sku": "D-2", "quantity": 2, "unit_price_cents": 50}),
        None,
    );
    app.publish(&add).await;
    app.publish(&add).await;
    // A third copy after the first was applied: still nothing new.
    let done = app.wait_final(&add.command_id.to_string()).await;
    assert_eq!(done["status"], "applied", "{done}");
    app.publish(&add).await;
    let marker = app.message(order_id, json!({"type": "reserve"}), None);
    app.publish(&marker).await;
    app.wait_final(&marker.command_id.to_string()).await;

    let events = app.events(&order_id.to_string()).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["order_created", "item_added"],
        "the reserve is rejected: no stock"
    );
    let order = app.order(&order_id.to_string()).await;
    assert_eq!(
        order["items"][1]["quantity"], 2,
        "added once, not three times"
    );
    let recorded = common::count(
        &app,
        "select count(*) from commands where order_id = $1",
        &order_id.to_string(),
    )
    .await;
    assert_eq!(recorded, 3);
}

#[tokio::test]
async fn an_out_of_order_delivery_is_applied_in_the_order_the_commands_were_accepted() {
    let app = common::stack().worker().start().await;
    app.set_stock("WIDGET", 10).await;
    let order = app.new_order(json!([])).await;
    let order_id = OrderId(order.parse().unwrap());
    let second = record_unsent(
        &app,
        order_id,
        json!({"type": "add_item", "sku": "WIDGET", "quantity": 2, "unit_price_cents": 10}),
    )
    .await;
    let third = record_unsent(&app, order_id, json!({"type": "reserve"})).await;

    // The later command arrives first: the worker applies the earlier one from PostgreSQL first.
    app.publish(&third).await;
    let done = app.wait_final(&third.command_id.to_string()).await;
    assert_eq!(
        done["status"], "applied",
        "reserve found the item added before it: {done}"
    );
    assert_eq!(done["version"], 3);
    let earlier = app.wait_final(&second.command_id.to_string()).await;
    assert_eq!(
        (earlier["status"].clone(), earlier["version"].clone()),
        (json!("applied"), json!(2))
    );

    // The late message is now a duplicate.
    app.publish(&second).await;
    let marker = app.run(&order, json!({"type": "pay"}), None).await;
    assert_eq!(marker["version"], 4);
    let kinds: Vec<String> = app
        .events(&order)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "order_created",
            "item_added",
            "stock_reserved",
            "payment_captured"
        ]
    );
    assert_eq!(app.stock("WIDGET").await["reserved"], 2);
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_their_reason_and_the_partition_keeps_flowing() {
    let app = common::stack().worker().start().await;
    let order_id = OrderId::new();
    let partition = app.partition_of(order_id);

    app.publish_raw(partition, b"{not json").await;
    let mut unknown_type = serde_json::to_value(app.message(order_id, create(), None)).unwrap();
    unknown_type["command"]["type"] = json!("refund");
    app.publish_raw(partition, unknown_type.to_string().as_bytes())
        .await;
    let wrong_partition = (partition + 1) % app.topology.partitions;
    app.publish_raw(
        wrong_partition,
        &app.message(order_id, create(), None).to_bytes(),
    )
    .await;

    // The same partition still applies the next good message.
    let good = app.message(order_id, create(), None);
    app.publish(&good).await;
    assert_eq!(
        app.wait_final(&good.command_id.to_string()).await["status"],
        "applied"
    );

    let mut reasons: Vec<String> = app
        .dead_letters(3)
        .await
        .into_iter()
        .map(|letter| letter.reason)
        .collect();
    reasons.sort();
    assert!(
        reasons[0].contains("message is not a valid command"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("message is not a valid command") && reasons[1].contains("refund"),
        "{reasons:?}"
    );
    assert!(reasons[2].starts_with("routed to partition"), "{reasons:?}");
    let recorded: i64 = sqlx::query_scalar("select count(*) from commands")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(recorded, 1, "only the good command was recorded");
}

/// Polls until the command is recorded and parked.
async fn wait_parked(app: &Stack, command_id: CommandId) {
    wait_for(format!("command {command_id} to be parked"))
        .every(Duration::from_millis(20))
        .until(|| async {
            let parked: Option<bool> =
                sqlx::query_scalar("select parked_at is not null from commands where id = $1")
                    .bind(command_id.0)
                    .fetch_optional(&app.db)
                    .await
                    .unwrap();
            parked == Some(true)
        })
        .await;
}

#[tokio::test]
async fn a_follow_up_that_overtakes_its_create_waits_for_it_and_runs_after_it() {
    let app = common::stack().worker().start().await;
    let order_id = OrderId::new();
    // What a quorum queue does after a worker died holding the create: the follow-ups first.
    let add = app.message(
        order_id,
        json!({"type": "add_item", "sku": "D-2", "quantity": 3, "unit_price_cents": 50}),
        None,
    );
    let mut stale = app.message(order_id, json!({"type": "reserve"}), None);
    stale.expected_version = Some(1);
    app.publish(&add).await;
    wait_parked(&app, add.command_id).await;
    app.publish(&stale).await;
    wait_parked(&app, stale.command_id).await;
    let waiting: Vec<String> =
        sqlx::query_scalar("select status from commands where order_id = $1 order by seq")
            .bind(order_id.0)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        waiting,
        ["accepted", "accepted"],
        "parked commands wait for their create"
    );
    let status = app
        .request(Method::GET, &format!("/v1/commands/{}", add.command_id))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(status["status"], "accepted", "{status}");
    assert!(
        status["parked_at"].is_string(),
        "the status says it waits: {status}"
    );
    let streams: i64 = sqlx::query_scalar("select count(*) from orders where id = $1")
        .bind(order_id.0)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        streams, 0,
        "nothing was applied to an order that does not exist"
    );

    let created = app.message(order_id, create(), None);
    app.publish(&created).await;
    assert_eq!(
        app.wait_final(&created.command_id.to_string()).await["status"],
        "applied"
    );
    assert_eq!(
        app.wait_final(&add.command_id.to_string()).await["status"],
        "applied"
    );
    let late = app.wait_final(&stale.command_id.to_string()).await;
    assert_eq!(late["status"], "rejected", "{late}");
    assert_eq!(late["reason"], "version_conflict", "{late}");

    let order = order_id.to_string();
    let kinds: Vec<Value> = app
        .events(&order)
        .await
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(kinds, [json!("order_created"), json!("item_added")]);
    let seqs: Vec<(Uuid, i64)> =
        sqlx::query_as("select id, seq from commands where order_id = $1 order by seq")
            .bind(order_id.0)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        seqs,
        [
            (created.command_id.0, 1),
            (add.command_id.0, 2),
            (stale.command_id.0, 3)
        ],
        "the create took the seq its follow-ups left for it"
    );
    let (processed, has_parked): (i64, bool) =
        sqlx::query_as("select processed_seq, has_parked from order_streams where order_id = $1")
            .bind(order_id.0)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((processed, has_parked), (3, false));

    // A follow-up after all that runs as usual.
    let next = app.message(order_id, json!({"type": "cancel"}), None);
    app.publish(&next).await;
    assert_eq!(
        app.wait_final(&next.command_id.to_string()).await["status"],
        "applied"
    );
}

#[tokio::test]
async fn a_parked_follow_up_whose_create_never_comes_fails_visibly_and_is_dead_lettered() {
    let app = common::stack()
        .worker_config(|c| c.park_timeout_ms = 500)
        .worker()
        .start()
        .await;
    let order_id = OrderId::new();
    let orphan = app.message(order_id, json!({"type": "pay"}), None);
    app.publish(&orphan).await;
    let failed = app.wait_final(&orphan.command_id.to_string()).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["reason"], "parked_too_long", "{failed}");
    let detail = failed["detail"].as_str().unwrap();
    assert!(
        detail.contains("never arrived") && detail.contains(&order_id.to_string()),
        "{detail}"
    );
    let dead = app.dead_letters(1).await;
    assert_eq!(dead[0].reason, detail);
    let body: CommandMessage = serde_json::from_slice(&dead[0].body).unwrap();
    assert_eq!(body.command_id, orphan.command_id);
    let recorded: i64 =
        sqlx::query_scalar("select count(*) from dead_letters where command_id = $1")
            .bind(orphan.command_id.0)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(recorded, 1);

    // The create may still come: the order starts, and the failed command stays failed.
    let created = app.message(order_id, create(), None);
    app.publish(&created).await;
    assert_eq!(
        app.wait_final(&created.command_id.to_string()).await["status"],
        "applied"
    );
    let order = app.order(&order_id.to_string()).await;
    assert_eq!(
        (order["status"].clone(), order["version"].clone()),
        (json!("pending"), json!(1))
    );
    let processed: i64 =
        sqlx::query_scalar("select processed_seq from order_streams where order_id = $1")
            .bind(order_id.0)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(processed, 2, "the failed follow-up counts as dealt with");
}

#[tokio::test]
async fn a_confirmed_command_the_broker_never_delivered_is_published_again() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    let order_id = OrderId(order.parse().unwrap());
    // Recorded and "confirmed" a while ago, but its message is lost (RabbitMQ can confirm a
    // publish to a full quorum queue and drop it).
    let lost = record_unsent(&app, order_id, json!({"type": "cancel"})).await;
    sqlx::query("update commands set published_at = now() - interval '10 seconds' where id = $1")
        .bind(lost.command_id.0)
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(
        common::count(
            &app,
            "select count(*) from commands where order_id = $1::uuid and status = 'accepted'",
            &order
        )
        .await,
        1
    );
    // A later message on the same partition is delivered: the lost one is overtaken.
    let other = app.order_in(app.partition_of(order_id));
    let later = app.message(other, create(), None);
    app.publish(&later).await;
    app.wait_final(&later.command_id.to_string()).await;

    let done = app.wait_final(&lost.command_id.to_string()).await;
    assert_eq!(done["status"], "applied", "{done}");
    assert_eq!(app.order(&order).await["status"], "cancelled");
}

#[tokio::test]
async fn a_producer_cannot_touch_another_clients_order() {
    let app = common::stack().worker().start().await;
    let order = app.new_order(json!([])).await;
    let (other, _) = orderflow_storage::clients::create(&app.db, "other", false)
        .await
        .unwrap();
    // The producer may act for `other`, and tries it on the test client's order.
    orderflow_storage::producers::grant(
        &app.db,
        &orderflow_testkit::servers::amqp_user(),
        other.id,
    )
    .await
    .unwrap();
    let mut hijack = app.message(
        OrderId(order.parse().unwrap()),
        json!({"type": "cancel"}),
        None,
    );
    hijack.client_id = other.id;
    app.publish(&hijack).await;
    let dead = app.dead_letters(1).await;
    assert!(
        dead[0].reason.contains("belongs to another client"),
        "{:?}",
        dead[0].reason
    );
    assert_eq!(app.order(&order).await["status"], "pending");
}

#[tokio::test]
async fn a_command_that_breaks_an_invariant_fails_visibly_and_is_dead_lettered() {
    let app = common::stack().worker().start().await;
    app.set_stock("WIDGET", 5).await;
    let order = app
        .new_order(json!([{"sku": "WIDGET", "quantity": 2, "unit_price_cents": 10}]))
        .await;
    app.run(&order, json!({"type": "reserve"}), None).await;
    app.run(&order, json!({"type": "pay"}), None).await;
    // Someone corrupts the stock behind orderflow's back: shipping can no longer succeed.
    sqlx::query("update inventory set reserved = 0 where sku = 'WIDGET'")
        .execute(&app.db)
        .await
        .unwrap();
    let ship = app.run(&order, json!({"type": "ship"}), None).await;
    assert_eq!(ship["status"], "failed", "{ship}");
    assert_eq!(ship["reason"], "invariant_violated", "{ship}");
    assert!(
        ship["detail"]
            .as_str()
            .unwrap()
            .contains("less reserved stock"),
        "{ship}"
    );
    let dead = app.dead_letters(1).await;
    let body: Value = serde_json::from_slice(&dead[0].body).unwrap();
    assert_eq!(body["command_id"], ship["command_id"]);
    assert_eq!(dead[0].reason, ship["detail"].as_str().unwrap());
    // Nothing of the failed command was applied, and the order still takes commands.
    assert_eq!(app.order(&order).await["status"], "paid");
    assert_eq!(
        app.run(&order, json!({"type": "cancel"}), None).await["status"],
        "failed",
        "the same corruption fails the cancel too"
    );
    assert_eq!(
        app.new_order(json!([])).await.len(),
        36,
        "other orders flow"
    );
}

#[tokio::test]
async fn a_full_partition_answers_503_and_the_refused_command_never_runs() {
    let mut app = common::stack().queue_max_length(1).start().await;
    // The API assigns order ids, so keep creating orders until every partition holds its one
    // message and a publish is refused.
    let accepted = RefCell::new(Vec::new());
    let refused = Cell::new(0);
    let body = json!({"customer_id": "c", "currency": "EUR", "items": []});
    let post = |key: String| {
        app.request(Method::POST, "/v1/orders")
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    wait_for("two publishes to be refused")
        .within(Duration::from_secs(30))
        .every(Duration::ZERO)
        .until(|| async {
            let key = Uuid::new_v4().to_string();
            let response = post(key.clone()).await.unwrap();
            match response.status() {
                StatusCode::ACCEPTED => {
                    let body = response.json::<Value>().await.unwrap();
                    accepted.borrow_mut().push(body);
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(response.headers()["retry-after"], "1");
                    let problem: Value = response.json().await.unwrap();
                    assert_eq!(problem["type"], "https://orderflow.dev/problems/queue-full");
                    refused.set(refused.get() + 1);
                    // The key was released: a retry with it is a new attempt, never a replay.
                    let retry = post(key).await.unwrap();
                    assert!(retry.headers().get("idempotent-replayed").is_none());
                    match retry.status() {
                        StatusCode::ACCEPTED => {
                            let body = retry.json::<Value>().await.unwrap();
                            accepted.borrow_mut().push(body);
                        }
                        StatusCode::SERVICE_UNAVAILABLE => refused.set(refused.get() + 1),
                        other => panic!("unexpected {other}"),
                    }
                }
                other => panic!("unexpected {other}"),
            }
            refused.get() >= 2
        })
        .await;
    let (accepted, refused) = (accepted.into_inner(), refused.get());
    let rejected: Vec<(Uuid, String)> =
        sqlx::query_as("select id, reason from commands where status = 'rejected'")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        rejected.len(),
        refused,
        "every refusal left a rejected command"
    );
    assert!(rejected.iter().all(|(_, r)| r == "queue_full"));

    app.start_worker().await;
    for a in &accepted {
        assert_eq!(
            app.wait_final(a["command_id"].as_str().unwrap()).await["status"],
            "applied"
        );
    }
    // Let the relays run a full cycle past the republish delay: still nothing refused ran.
    let probe = app.new_order(json!([])).await;
    assert!(!probe.is_empty());
    let orders: i64 = sqlx::query_scalar("select count(*) from orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(orders as usize, accepted.len() + 1);
    let still_rejected: i64 = sqlx::query_scalar(
        "select count(*) from commands where reason = 'queue_full' and status = 'rejected'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(still_rejected as usize, refused);
}

#[tokio::test]
async fn a_refusal_cut_off_mid_transaction_is_read_back_and_still_answers_503() {
    let mut app = common::stack().queue_max_length(1).start().await;
    // The first transaction that marks a command refused loses its connection midway (the
    // backend terminates itself): the API cannot tell from the error whether it committed. A
    // sequence counts the attempts, since it is not rolled back with them.
    sqlx::raw_sql(
        "create sequence refusal_attempts;
         create function cut_first_refusal() returns trigger language plpgsql as $$
         begin
             if nextval('refusal_attempts') = 1 then
                 perform pg_terminate_backend(pg_backend_pid());
             end if;
             return new;
         end $$;
         create trigger cut_first_refusal before update on commands
             for each row when (new.status = 'rejected') execute function cut_first_refusal();",
    )
    .execute(&app.db)
    .await
    .unwrap();

    let body = json!({"customer_id": "c", "currency": "EUR", "items": []});
    let accepted = RefCell::new(Vec::new());
    let problem = wait_for("a publish to be refused")
        .within(Duration::from_secs(30))
        .every(Duration::ZERO)
        .until(|| async {
            let response = app
                .request(Method::POST, "/v1/orders")
                .header("idempotency-key", Uuid::new_v4().to_string())
                .json(&body)
                .send()
                .await
                .unwrap();
            match response.status() {
                StatusCode::ACCEPTED => {
                    let body = response.json::<Value>().await.unwrap();
                    accepted.borrow_mut().push(body);
                    None
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(response.headers()["retry-after"], "1");
                    Some(response.json::<Value>().await.unwrap())
                }
                other => panic!("unexpected {other}"),
            }
        })
        .await;
    let accepted = accepted.into_inner();
    assert_eq!(problem["type"], "https://orderflow.dev/problems/queue-full");
    let attempts: i64 = sqlx::query_scalar("select last_value from refusal_attempts")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        attempts, 2,
        "the first refusal was cut off, the second landed"
    );
    let rejected: Vec<Uuid> = sqlx::query_scalar(
        "select id from commands where status = 'rejected' and reason = 'queue_full'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(rejected.len(), 1);
    assert!(
        accepted
            .iter()
            .all(|a| a["command_id"].as_str() != Some(rejected[0].to_string().as_str())),
        "the refused command was never answered 202"
    );
    // And no 202 stands for a command the broker never took (as one would if the API had
    // given up on the cut-off refusal and answered 202 for the relay to publish): every
    // accepted command gets its confirm recorded (a moment after its 202; no worker runs, so
    // nothing else would record a publish).
    wait_for("every accepted command's confirm to be recorded")
        .until(|| async {
            let unpublished: i64 = sqlx::query_scalar(
                "select count(*) from commands where status = 'accepted' and published_at is null",
            )
            .fetch_one(&app.db)
            .await
            .unwrap();
            (unpublished == 0)
                .then_some(())
                .ok_or(format!("{unpublished} unpublished"))
        })
        .await;

    // Everything answered 202 runs; the refused command stays refused.
    app.start_worker().await;
    for a in &accepted {
        assert_eq!(
            app.wait_final(a["command_id"].as_str().unwrap()).await["status"],
            "applied"
        );
    }
    let status: String = sqlx::query_scalar("select status from commands where id = $1")
        .bind(rejected[0])
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(status, "rejected");
}

#[tokio::test]
async fn a_worker_stopped_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let mut app = common::stack().worker().start().await;
    let mut accepted = Vec::new();
    for _ in 0..40 {
        accepted.push(app.create_order(json!([])).await);
    }
    app.stop_workers().await;
    for _ in 0..10 {
        accepted.push(app.create_order(json!([])).await);
    }
    app.start_worker().await;
    for a in &accepted {
        let done = app.wait_final(a["command_id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "applied");
    }
    let events: i64 = sqlx::query_scalar("select count(*) from order_events")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(events, 50, "one event per order, none twice");
}

#[tokio::test]
async fn commands_from_the_python_producer_are_applied() {
    let app = common::stack().worker().start().await;
    app.set_stock("PY-SKU-1", 10).await;
    app.set_stock("PY-SKU-2", 10).await;
    // The contract crate's folder, beside this crate.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate is inside the workspace")
        .join("contract")
        .join("producer.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--amqp-url", &orderflow_testkit::amqp_url()])
        .args(["--namespace", &app.namespace])
        .args(["--partitions", &app.topology.partitions.to_string()])
        .args(["--client-id", &app.client_id.to_string()])
        .arg("--count-duplicates")
        .output()
        .await
        .expect("python3 runs (deploy/run-tests.sh installs pika)");
    assert!(
        output.status.success(),
        "producer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let published: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = published
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["create", "add_item", "reserve"]);
    for p in &published {
        let done = app.wait_final(p["command_id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "applied", "{done}");
    }
    let order = app.order(published[0]["order_id"].as_str().unwrap()).await;
    assert_eq!(order["status"], "reserved");
    assert_eq!(order["version"], 3, "the duplicated add_item applied once");
    assert_eq!(app.stock("PY-SKU-2").await["reserved"], 1);
}

#[tokio::test]
async fn status_events_reach_subscribers_in_per_order_order() {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let app = common::stack().worker().start().await;
    let (connection, channel, queue) =
        orderflow_testkit::broker::subscribe_events(&app.topology, "command.#").await;

    let order = app.new_order(json!([])).await;
    let mut sent = Vec::new();
    for i in 1..=5 {
        let add = json!({"type": "add_item", "sku": format!("S{i}"), "quantity": 1, "unit_price_cents": 1});
        sent.push(app.send(&order, add, None).await["command_id"].clone());
    }
    sent.push(app.send(&order, json!({"type": "reserve"}), None).await["command_id"].clone());
    app.wait_final(sent.last().unwrap().as_str().unwrap()).await;

    // The relay publishes asynchronously to the test: poll the queue.
    let events = RefCell::new(Vec::new());
    wait_for("7 status events")
        .every(Duration::from_millis(20))
        .until(|| async {
            while events.borrow().len() < 7 {
                let Some(message) = channel
                    .basic_get(queue.as_str().into(), BasicGetOptions::default())
                    .await
                    .unwrap()
                else {
                    break;
                };
                message.ack(BasicAckOptions::default()).await.unwrap();
                let event: Value = serde_json::from_slice(&message.data).unwrap();
                let key = message.routing_key.to_string();
                events.borrow_mut().push((key, event));
            }
            let events = events.borrow();
            if events.len() >= 7 {
                Ok(())
            } else {
                Err(format!("only {} events: {events:?}", events.len()))
            }
        })
        .await;
    let events = events.into_inner();
    let seqs: Vec<i64> = events
        .iter()
        .map(|(_, e)| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>(), "in per-order order");
    assert_eq!(events[0].0, "command.applied.create");
    assert_eq!(events[1].1["event"]["type"], "item_added");
    assert_eq!(events[6].0, "command.rejected.reserve");
    assert_eq!(events[6].1["reason"], "insufficient_stock");
    assert_eq!(events[6].1["command_id"], sent[5]);
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_message_that_keeps_killing_its_worker_is_dead_lettered_and_its_command_failed() {
    let mut app = common::stack().start().await;
    let accepted = app.create_order(json!([])).await;
    let command_id: Uuid = accepted["command_id"].as_str().unwrap().parse().unwrap();
    let order_id = OrderId(accepted["order_id"].as_str().unwrap().parse().unwrap());
    // Five earlier workers started on it and died (the count they left behind) ...
    sqlx::query("insert into delivery_attempts (command_id, attempts) values ($1, 5)")
        .bind(command_id)
        .execute(&app.db)
        .await
        .unwrap();
    // ... and the last one died holding it: taken without an ack, then the connection dropped.
    let (connection, channel) = orderflow_testkit::broker::channel().await;
    let queue = app.topology.partition_queue(app.partition_of(order_id));
    channel.basic_qos(1, Default::default()).await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let held = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::StreamExt::next(&mut consumer),
    )
    .await
    .expect("the message is delivered");
    assert!(matches!(held, Some(Ok(_))));
    connection
        .close(320, "simulated crash".into())
        .await
        .unwrap();

    app.start_worker().await;
    let done = app.wait_final(&command_id.to_string()).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["reason"], "delivery_limit", "{done}");
    assert!(
        done["detail"].as_str().unwrap().contains("6 times"),
        "{done}"
    );
    let dead = app.dead_letters(1).await;
    assert_eq!(dead[0].reason, done["detail"].as_str().unwrap());
    let orders: i64 = sqlx::query_scalar("select count(*) from orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(orders, 0, "nothing of it was applied");
}

#[tokio::test]
async fn a_broken_earlier_command_is_failed_itself_and_the_later_one_still_runs() {
    let app = common::stack().worker().start().await;
    app.set_stock("A", 5).await;
    let order = app
        .new_order(json!([{"sku": "A", "quantity": 1, "unit_price_cents": 1}]))
        .await;
    app.run(&order, json!({"type": "reserve"}), None).await;
    app.run(&order, json!({"type": "pay"}), None).await;
    let order_id = OrderId(order.parse().unwrap());
    let ship = record_unsent(&app, order_id, json!({"type": "ship"})).await;
    let deliver = record_unsent(&app, order_id, json!({"type": "deliver"})).await;
    // The stock is corrupted behind orderflow's back: the ship can never apply.
    sqlx::query("update inventory set reserved = 0 where sku = 'A'")
        .execute(&app.db)
        .await
        .unwrap();
    // The later command arrives first; the worker applies the ship ahead of it, which breaks.
    app.publish(&deliver).await;
    let done = app.wait_final(&deliver.command_id.to_string()).await;
    assert_eq!(
        (done["status"].clone(), done["reason"].clone()),
        (json!("rejected"), json!("invalid_transition")),
        "the deliver ran, after the failed ship: {done}"
    );
    let failed = app.wait_final(&ship.command_id.to_string()).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["reason"], "invariant_violated", "{failed}");
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("less reserved stock"),
        "{failed}"
    );
    // The ship's own late message ends in the dead-letter queue with the reason it failed for.
    app.publish(&ship).await;
    let dead = app.dead_letters(1).await;
    assert_eq!(dead[0].reason, failed["detail"].as_str().unwrap());
    assert_eq!(app.order(&order).await["status"], "paid");
}
