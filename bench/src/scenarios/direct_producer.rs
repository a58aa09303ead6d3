//! direct-producer: another service publishing the JSON contract straight to `<ns>.commands`
//! with its own command ids — each create twice, a command re-sent after it applied, and a
//! command carrying a stale `expected_version`. Duplicates must apply once; the stale one must be
//! rejected `version_conflict`, never applied. The producer connects again after the broker
//! closed its connection (the audit's broker faults), as a real producer would.

use super::{Ctx, price_of};
use crate::record::DirectCommand;
use anyhow::Context as _;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation};
use orderflow_contract::partition::partition_of;
use orderflow_contract::{CONTRACT_VERSION, CommandMessage};
use orderflow_domain::{ClientId, Command, CommandId, OrderId};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// Pause before connecting again after the broker dropped the producer.
const RECONNECT_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);
/// Longest wait for the broker's confirm of one publish.
const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// An open connection (kept for the channel's life) and its confirming channel.
type Link = (lapin::Connection, lapin::Channel);

/// The producer's connection and identity.
pub struct Producer {
    amqp_url: String,
    /// `None` after the broker dropped it: made again at the next publish.
    link: tokio::sync::Mutex<Option<Link>>,
    exchange: String,
    partitions: u16,
    client_id: ClientId,
    /// The broker user the producer connects as: its messages' `user_id`.
    broker_user: String,
}

impl Producer {
    /// Connects and looks up the client the audit's key belongs to (direct commands name it),
    /// and grants the broker user it connects as that client (`producer grant`), as an operator
    /// would for a real producer: the worker records a direct command only for a granted client.
    pub async fn connect(
        amqp_url: &str,
        namespace: &str,
        partitions: u16,
        db: &sqlx::PgPool,
        api_key: &str,
    ) -> anyhow::Result<Self> {
        let client = orderflow_storage::clients::find_by_key(db, api_key)
            .await
            .context("looking up the audit key's client")?
            .context("the audit key belongs to no live client")?;
        let link = open(amqp_url).await?;
        let broker_user =
            orderflow_messaging::brokers::user_of(amqp_url).map_err(anyhow::Error::msg)?;
        orderflow_storage::producers::grant(db, &broker_user, client.id)
            .await
            .context("granting the audit's broker user its client")?;
        Ok(Self {
            amqp_url: amqp_url.to_owned(),
            link: tokio::sync::Mutex::new(Some(link)),
            exchange: format!("{namespace}.commands"),
            partitions,
            client_id: client.id,
            broker_user,
        })
    }

    /// Publishes one message; true if the broker confirmed it (routed, not refused).
    async fn publish(&self, message: &CommandMessage) -> bool {
        let routing_key = partition_of(message.order_id, self.partitions).to_string();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            // who publishes: the broker checks it is the connection's user, the worker that it
            // is granted the command's client
            .with_user_id(self.broker_user.as_str().into())
            // persistent: the quorum queue keeps it across a broker restart
            .with_delivery_mode(2);
        let mut link = self.link.lock().await;
        if link.is_none() {
            match tokio::time::timeout(CONFIRM_TIMEOUT, open(&self.amqp_url)).await {
                Ok(Ok(opened)) => *link = Some(opened),
                Ok(Err(_)) | Err(_) => {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    return false;
                }
            }
        }
        let (_, channel) = link.as_ref().expect("opened above");
        let confirm = async {
            channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    routing_key.as_str().into(),
                    // mandatory: an unroutable message comes back instead of vanishing
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &message.to_bytes(),
                    properties,
                )
                .await?
                .await
        };
        // Bounded: a confirm lost with a connection the broker closed mid-publish never comes
        // (seen once: the whole audit waited on it). Its outcome is then unknown, as after an
        // error: the message may or may not have been taken.
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Ok(Ok(confirmation)) => matches!(confirmation, Confirmation::Ack(None)),
            Ok(Err(_)) | Err(_) => {
                // The connection or channel is gone: open a new one next time.
                *link = None;
                false
            }
        }
    }

    /// Publishes `copies` copies and records the command if at least one was confirmed; says
    /// whether one was.
    async fn send(&self, ctx: &Ctx, message: &CommandMessage, copies: u32) -> bool {
        let mut confirmed = 0;
        for _ in 0..copies {
            if self.publish(message).await {
                confirmed += 1;
            }
        }
        if confirmed > 0 {
            ctx.api.log().direct(
                DirectCommand {
                    command_id: message.command_id.0,
                    order_id: message.order_id.0,
                    copies: confirmed,
                },
                matches!(message.command, Command::Create { .. }),
            );
        }
        confirmed > 0
    }

    fn message(
        &self,
        order_id: OrderId,
        expected_version: Option<i64>,
        command: serde_json::Value,
    ) -> CommandMessage {
        CommandMessage {
            version: CONTRACT_VERSION,
            command_id: CommandId::new(),
            client_id: self.client_id,
            order_id,
            expected_version,
            command: serde_json::from_value(command).expect("the scenario's commands are valid"),
        }
    }
}

pub async fn run(ctx: Ctx, producer: Producer, mut rng: ChaCha8Rng) {
    while ctx.running() {
        let order = OrderId::new();
        let sku = &ctx.scarce[rng.gen_range(0..ctx.scarce.len())];
        let quantity = rng.gen_range(1..=2);
        let create = producer.message(
            order,
            None,
            json!({"type": "create", "customer_id": "direct", "currency": "EUR",
                   "items": [{"sku": sku, "quantity": quantity, "unit_price_cents": price_of(sku)}]}),
        );
        if !producer.send(&ctx, &create, 2).await {
            // Refused (partition full) or unconfirmed: a producer does not follow up on an
            // order it could not create (the worker would dead-letter those as unknown).
            continue;
        }
        let add = producer.message(
            order,
            Some(1),
            json!({"type": "add_item", "sku": ctx.plenty, "quantity": 1,
                   "unit_price_cents": price_of(&ctx.plenty)}),
        );
        producer.send(&ctx, &add, 1).await;
        // Version 1 is stale once the add applied: must be rejected, not applied.
        let stale = producer.message(order, Some(1), json!({"type": "reserve"}));
        producer.send(&ctx, &stale, 1).await;
        // The add again, after the fact: an inbox duplicate.
        producer.send(&ctx, &add, 1).await;
        let next = if rng.gen_bool(0.5) {
            json!({"type": "reserve"})
        } else {
            json!({"type": "cancel"})
        };
        let last = producer.message(order, None, next);
        producer.send(&ctx, &last, 2).await;
    }
}

/// Connects and opens a confirming channel.
async fn open(amqp_url: &str) -> anyhow::Result<Link> {
    let connection = crate::broker::connect(amqp_url)
        .await
        .context("connecting to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    // Confirms: a command counts as accepted only once the broker took responsibility for it.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}
