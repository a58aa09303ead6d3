//! Direct producers act only for the clients their broker user is granted: the worker reads the
//! message's `user_id` property (which RabbitMQ validates against the publishing connection's
//! user) and records a direct command only if that user is granted the command's client.

mod common;

use common::{add_item, create};
use lapin::options::BasicPublishOptions;
use orderflow_domain::ClientId;
use orderflow_messaging::json_properties;
use orderflow_storage::{clients, producers};
use orderflow_testkit::{Stack, servers, wait_for};

/// Rows a direct producer's command would have written: its command and its order's stream.
async fn written_for(stack: &Stack, client: ClientId) -> (i64, i64) {
    sqlx::query_as(
        "select (select count(*) from commands where client_id = $1),
                (select count(*) from order_streams where client_id = $1)",
    )
    .bind(client.0)
    .fetch_one(&stack.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_direct_command_that_does_not_name_its_broker_user_is_dead_lettered_and_writes_nothing() {
    let stack = common::stack().worker().start().await;
    let anonymous = stack.message(stack.order_in(0), create(), None);
    stack.publish_as(0, &anonymous.to_bytes(), None, None).await;
    let dead = stack.dead_letters(1).await;
    assert_eq!(dead[0].body, anonymous.to_bytes());
    assert!(
        dead[0].reason.contains("no user_id property"),
        "{}",
        dead[0].reason
    );
    assert_eq!(written_for(&stack, stack.client_id).await, (0, 0));
    // The same command with the producer's broker user, which the stack grants its client.
    stack.publish(&anonymous).await;
    assert_eq!(
        stack.wait_final_status(anonymous.command_id).await,
        "applied"
    );
}

#[tokio::test]
async fn a_broker_user_acts_only_for_the_clients_it_is_granted_from_grant_to_revoke() {
    let stack = common::stack().worker().start().await;
    let user = servers::amqp_user();
    let (other, _) = clients::create(&stack.db, "other", false).await.unwrap();
    let mut create_other = stack.message(stack.order_in(1), create(), None);
    create_other.client_id = other.id;

    // Not granted `other`: refused with the reason, nothing written for it.
    stack.publish(&create_other).await;
    let dead = stack.dead_letters(1).await;
    assert_eq!(dead[0].body, create_other.to_bytes());
    assert_eq!(
        dead[0].reason,
        format!(
            "broker user {user} is not granted client {} (orderflow-api producer grant)",
            other.id
        )
    );
    assert_eq!(written_for(&stack, other.id).await, (0, 0));

    // Granted: the same message again is recorded and applied as `other`'s.
    assert_eq!(
        producers::grant(&stack.db, &user, other.id).await.unwrap(),
        producers::Granted::Granted
    );
    assert_eq!(
        producers::grant(&stack.db, &user, other.id).await.unwrap(),
        producers::Granted::AlreadyGranted
    );
    stack.publish(&create_other).await;
    assert_eq!(
        stack.wait_final_status(create_other.command_id).await,
        "applied"
    );
    assert_eq!(written_for(&stack, other.id).await, (1, 1));

    // Revoked: the next command for `other` is refused; what was recorded stays.
    assert!(producers::revoke(&stack.db, &user, other.id).await.unwrap());
    assert!(!producers::revoke(&stack.db, &user, other.id).await.unwrap());
    let mut add = stack.message(create_other.order_id, add_item("SKU-1"), None);
    add.client_id = other.id;
    stack.publish(&add).await;
    let dead = stack.dead_letters(1).await;
    assert_eq!(dead[0].body, add.to_bytes());
    assert!(
        dead[0].reason.contains("is not granted client"),
        "{}",
        dead[0].reason
    );
    assert_eq!(written_for(&stack, other.id).await, (1, 1));

    // The grant of the stack's own client was never touched.
    let own = stack.message(stack.order_in(0), create(), None);
    stack.publish(&own).await;
    assert_eq!(stack.wait_final_status(own.command_id).await, "applied");
    // A revoked client cannot be granted.
    clients::revoke(&stack.db, other.id).await.unwrap();
    assert_eq!(
        producers::grant(&stack.db, &user, other.id).await.unwrap(),
        producers::Granted::UnknownClient
    );
}

/// The trust rests on the broker: a connection cannot publish as another broker user.
#[tokio::test]
async fn the_broker_refuses_a_user_id_that_is_not_the_connections_user() {
    let stack = common::stack().worker().start().await;
    let forged = stack.message(stack.order_in(0), create(), None);
    let channel = stack.channel().await;
    // Not in confirm mode: the publish is sent, and the broker answers by closing the channel
    // (406 PRECONDITION_FAILED) instead of routing the message.
    let _ = channel
        .basic_publish(
            stack.topology.command_exchange().as_str().into(),
            "0".into(),
            BasicPublishOptions::default(),
            &forged.to_bytes(),
            json_properties()
                .with_delivery_mode(2)
                .with_user_id("someone-else".into()),
        )
        .await;
    wait_for("the broker to close the channel")
        .until(|| async { (!channel.status().connected()).then_some(()) })
        .await;
    // Nothing reached the worker: no command, no dead letter.
    let own = stack.message(stack.order_in(0), create(), None);
    stack.publish(&own).await;
    assert_eq!(stack.wait_final_status(own.command_id).await, "applied");
    assert_eq!(written_for(&stack, stack.client_id).await, (1, 1));
}
