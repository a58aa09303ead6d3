//! The stack as another service sees it: a direct producer publishing to the command exchange,
//! commands recorded in PostgreSQL as the API records them, the dead-letter queue, and command
//! outcomes read from the database.

use super::Stack;
use crate::broker::{self, DeadLetter};
use crate::wait::wait_for;
use lapin::options::BasicPublishOptions;
use orderflow_contract::partition::partition_of;
use orderflow_contract::{CONTRACT_VERSION, CommandMessage};
use orderflow_domain::{CommandId, OrderId};
use orderflow_messaging::{json_properties, with_traceparent};
use orderflow_storage::commands::{self, NewCommand, Source};
use serde_json::Value;

impl Stack {
    /// A new channel on the stack's own broker connection.
    pub async fn channel(&self) -> lapin::Channel {
        self.connection.create_channel().await.unwrap()
    }

    /// A command message from the stack's client (`test-client`) for `order_id`.
    pub fn message(
        &self,
        order_id: OrderId,
        command: Value,
        expected_version: Option<i64>,
    ) -> CommandMessage {
        CommandMessage {
            version: CONTRACT_VERSION,
            command_id: CommandId::new(),
            client_id: self.client_id,
            order_id,
            expected_version,
            command: serde_json::from_value(command).expect("a valid command body"),
        }
    }

    /// The partition of `order_id` in this stack.
    pub fn partition_of(&self, order_id: OrderId) -> u16 {
        partition_of(order_id, self.topology.partitions)
    }

    /// A fresh order id that falls in `partition`.
    pub fn order_in(&self, partition: u16) -> OrderId {
        loop {
            let id = OrderId::new();
            if self.partition_of(id) == partition {
                return id;
            }
        }
    }

    /// Publishes a message to its order's partition and waits for the broker's confirm.
    pub async fn publish(&self, message: &CommandMessage) {
        let partition = self.partition_of(message.order_id);
        self.publish_bytes(partition, &message.to_bytes(), None)
            .await;
    }

    /// [`Stack::publish`] with a W3C `traceparent` header.
    pub async fn publish_traced(&self, message: &CommandMessage, traceparent: &str) {
        let partition = self.partition_of(message.order_id);
        self.publish_bytes(partition, &message.to_bytes(), Some(traceparent))
            .await;
    }

    /// Publishes any bytes to the command exchange with `partition` as the routing key (as a
    /// producer may, right or wrong) and waits for the broker's confirm.
    pub async fn publish_raw(&self, partition: u16, body: &[u8]) {
        self.publish_bytes(partition, body, None).await;
    }

    async fn publish_bytes(&self, partition: u16, body: &[u8], traceparent: Option<&str>) {
        self.publish_as(
            partition,
            body,
            traceparent,
            Some(&crate::servers::amqp_user()),
        )
        .await;
    }

    /// Publishes `body` with the `user_id` property `user_id` (or none), as a direct producer
    /// that names itself so, or does not; the broker refuses a `user_id` that is not the
    /// connection's user, so any other value fails the publish.
    pub async fn publish_as(
        &self,
        partition: u16,
        body: &[u8],
        traceparent: Option<&str>,
        user_id: Option<&str>,
    ) {
        let mut properties = json_properties().with_delivery_mode(2);
        if let Some(user) = user_id {
            properties = properties.with_user_id(user.into());
        }
        let properties = with_traceparent(properties, traceparent);
        let confirm = self
            .publisher
            .basic_publish(
                self.topology.command_exchange().as_str().into(),
                partition.to_string().as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            matches!(confirm, lapin::Confirmation::Ack(None)),
            "{confirm:?}"
        );
    }

    /// Records a command as the API does between its commit and its publish (the relay's to
    /// send from then on): its own stream for a create, the next seq otherwise. Returns the seq.
    pub async fn record(&self, message: &CommandMessage, traceparent: Option<&str>) -> i64 {
        self.record_as(message, traceparent, false).await
    }

    /// Records a command as the API does once the broker confirmed it (marked published, so no
    /// relay sends it): the test decides when, or whether, its message arrives. Returns the seq.
    pub async fn record_published(&self, message: &CommandMessage) -> i64 {
        self.record_as(message, None, true).await
    }

    async fn record_as(
        &self,
        message: &CommandMessage,
        traceparent: Option<&str>,
        published: bool,
    ) -> i64 {
        let mut tx = self.db.begin().await.unwrap();
        let seq = if commands::open_stream(&mut *tx, message.order_id, message.client_id)
            .await
            .unwrap()
        {
            1
        } else {
            commands::next_seq(&mut *tx, message.order_id, message.client_id)
                .await
                .unwrap()
                .expect("the order's stream exists")
        };
        let body = serde_json::to_value(&message.command).unwrap();
        let new = NewCommand {
            id: message.command_id,
            client_id: message.client_id,
            order_id: message.order_id,
            kind: message.command.kind(),
            body: &body,
            expected_version: message.expected_version,
            source: Source::Http,
            partition: self.partition_of(message.order_id),
            received_at: Some(chrono::Utc::now()),
            traceparent,
            actor: None,
        };
        commands::insert(&mut *tx, &new, seq).await.unwrap();
        if published {
            commands::mark_published(&mut *tx, &[message.command_id.0], &[chrono::Utc::now()])
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        seq
    }

    /// Waits until the command is recorded with a final status, read from the database;
    /// returns the status.
    pub async fn wait_final_status(&self, command_id: CommandId) -> String {
        self.wait_final_status_within(command_id, crate::wait::DEFAULT_LIMIT)
            .await
    }

    /// [`Self::wait_final_status`], waiting up to `limit`.
    pub async fn wait_final_status_within(
        &self,
        command_id: CommandId,
        limit: std::time::Duration,
    ) -> String {
        wait_for(format!("command {command_id} to finish"))
            .within(limit)
            .until(|| async {
                sqlx::query_scalar::<_, String>(
                    "select status from commands where id = $1 and status <> 'accepted'",
                )
                .bind(command_id.0)
                .fetch_optional(&self.db)
                .await
                .unwrap()
            })
            .await
    }

    /// Waits until the namespace's dead-letter queue has given `count` messages; returns them.
    pub async fn dead_letters(&self, count: usize) -> Vec<DeadLetter> {
        broker::dead_letters(&self.topology, count).await
    }
}
