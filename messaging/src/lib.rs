//! RabbitMQ: the topology orderflow declares, the connection pool, and a publisher with confirms.
//!
//! ```text
//! <ns>.commands (direct) ──"0".."N-1"──▶ <ns>.commands.<p>   quorum, single active consumer
//!                                              │ delivery limit exceeded / refused
//! <ns>.dead-letter (fanout) ◀──────────────────┘──▶ <ns>.dead-letter (quorum)
//! <ns>.events (topic): status events from the outbox, routing key `command.<status>.<type>`
//! ```

pub mod brokers;

pub use brokers::Brokers;
/// A pool of broker connections (see [`pool`]).
pub type Pool = deadpool::managed::Pool<brokers::Manager>;
pub use Pool as ConnectionPool;
use futures_util::future::maybe_done;
use lapin::{
    BasicProperties, Channel, Confirmation, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Mutex;

/// Deliveries of one message after which the broker dead-letters it by itself. The worker never
/// requeues on purpose, so this counts crashes and lost connections while the message sat in a
/// prefetch window; orderflow's own limit (attempts actually started, see the worker) is lower
/// and records a reason. This is only the broker's backstop.
pub const DELIVERY_LIMIT: i64 = 50;

/// Longest wait for the broker's confirms of one publish or batch.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Header naming why a message was dead-lettered by orderflow (not by the broker).
pub const REASON_HEADER: &str = "x-orderflow-reason";

/// Names and arguments of everything orderflow declares under one namespace.
#[derive(Clone, Debug)]
pub struct Topology {
    pub namespace: String,
    pub partitions: u16,
    pub queue_max_length: i64,
}

impl Topology {
    pub fn command_exchange(&self) -> String {
        format!("{}.commands", self.namespace)
    }
    pub fn partition_queue(&self, partition: u16) -> String {
        format!("{}.commands.{partition}", self.namespace)
    }
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead-letter", self.namespace)
    }
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letter", self.namespace)
    }
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// Declares everything; idempotent, so every process does it at start.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.command_exchange().as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange().as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.events_exchange().as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;

        let mut dead_letter_args = FieldTable::default();
        dead_letter_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        declare_bound(
            channel,
            &self.dead_letter_queue(),
            &self.dead_letter_exchange(),
            "",
            dead_letter_args,
        )
        .await?;

        for partition in 0..self.partitions {
            declare_bound(
                channel,
                &self.partition_queue(partition),
                &self.command_exchange(),
                &partition.to_string(),
                self.partition_arguments(),
            )
            .await?;
        }
        Ok(())
    }

    /// Deletes every queue and exchange of the namespace (messages included): for tearing down
    /// a test's or a demo's namespace, never a live one.
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        let mut queues: Vec<String> = (0..self.partitions)
            .map(|p| self.partition_queue(p))
            .collect();
        queues.push(self.dead_letter_queue());
        for queue in queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [
            self.command_exchange(),
            self.dead_letter_exchange(),
            self.events_exchange(),
        ] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    fn partition_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        // Quorum: replicated and durable, and it counts deliveries (x-delivery-limit needs it).
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        // One consumer at a time per partition: the others are standbys that take over on failure.
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        // A message that keeps killing its consumer ends in the dead-letter queue, not in a loop.
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().as_str().into()),
        );
        // Bounded: beyond the limit the broker nacks the publish, and the API answers 503
        // instead of letting the backlog (and everyone's latency) grow without end.
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(self.queue_max_length),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        args
    }
}

/// Declares a durable queue with `args` and binds it to `exchange` with `routing_key`.
pub async fn declare_bound(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
    args: FieldTable,
) -> lapin::Result<()> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// What the broker holds of a queue right now: its ready messages and its consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueDepth {
    pub ready: u32,
    pub consumers: u32,
}

/// Longest wait for the broker's answer to one request (opening a channel, a passive declare).
/// lapin can leave a request unanswered for good when the broker goes away under it
/// (amqp-rs/lapin#409, and what the race audit saw here: an ack that never completed across a
/// broker restart), so nothing of orderflow's waits on it unbounded.
pub const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `request`, or a timed-out error (an I/O error of kind `TimedOut`, see [`is_unanswered`]) once
/// [`ANSWER_TIMEOUT`] passes without the broker's answer.
pub async fn answered<T>(
    what: &str,
    request: impl std::future::Future<Output = lapin::Result<T>>,
) -> lapin::Result<T> {
    match tokio::time::timeout(ANSWER_TIMEOUT, request).await {
        Ok(answer) => answer,
        Err(_) => Err(lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the broker did not answer within {ANSWER_TIMEOUT:?} ({what})"),
        ))),
    }
}

/// Whether `error` is [`answered`]'s: the broker did not answer in time (its connection may look
/// connected and be dead).
pub fn is_unanswered(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::IOError(e) if e.kind() == std::io::ErrorKind::TimedOut)
}

/// How often a step under way on a delivery's channel looks whether that channel died.
const CHANNEL_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Acks a delivery with its `acker` (with `multiple`, every delivery up to it): bounded by
/// [`ANSWER_TIMEOUT`], and failed as soon as the channel is closed or errored while it is under
/// way (see [`while_channel_lives`]). An ack that did not land is harmless to orderflow: the
/// messages come back and the inbox finds their commands done.
pub async fn ack(acker: &lapin::Acker, options: BasicAckOptions) -> lapin::Result<()> {
    while_channel_lives(acker, "acking", acker.ack(options))
        .await
        .map(|_| ())
}

/// `step`, a request on `acker`'s channel, bounded by [`ANSWER_TIMEOUT`] (see [`answered`]), or
/// an error (an I/O error of kind `ConnectionAborted`) as soon as that channel is closed or
/// errored while it is under way. lapin can leave a request that was under way unresolved when
/// its connection goes: CI's cluster audit saw an ack wait out the whole answer timeout after a
/// broker node was killed under it, and its partition resume 10.7 s after the kill instead of
/// about one.
pub async fn while_channel_lives<T>(
    acker: &lapin::Acker,
    what: &str,
    step: impl Future<Output = lapin::Result<T>>,
) -> lapin::Result<T> {
    let died = async {
        while !acker.poisoned() {
            tokio::time::sleep(CHANNEL_POLL).await;
        }
    };
    tokio::select! {
        biased;
        done = answered(what, step) => done,
        () = died => Err(lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            format!("the channel closed while {what}"),
        ))),
    }
}

/// Opens a channel on `connection`, bounded by [`ANSWER_TIMEOUT`].
pub async fn open_channel(connection: &lapin::Connection) -> lapin::Result<Channel> {
    answered("opening a channel", connection.create_channel()).await
}

/// Reads a queue's depth by a passive declare, which creates nothing. A missing queue is an
/// error, and it closes the channel (the broker answers 404): open another one to go on.
pub async fn queue_depth(channel: &Channel, queue: &str) -> lapin::Result<QueueDepth> {
    let declare = channel.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    );
    let declared = answered("a passive queue declare", declare).await?;
    Ok(QueueDepth {
        ready: declared.message_count(),
        consumers: declared.consumer_count(),
    })
}

/// A pool of broker connections to the node(s) `urls` lists (see [`Brokers`]); broken ones are
/// replaced on the next `get`, on whichever node answers. The name shows in the management UI
/// (and lets a test close exactly its own connections). `Err`: `urls` is not a list of AMQP URLs.
pub fn pool(urls: &str, connection_name: &str) -> Result<Pool, String> {
    let name = connection_name.to_owned();
    let manager = brokers::Manager {
        brokers: Brokers::parse(urls)?,
        properties: Box::new(move || {
            ConnectionProperties::default().with_connection_name(name.as_str().into())
        }),
    };
    Ok(Pool::builder(manager)
        .max_size(4)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a pool with a runtime always builds"))
}

/// One long-lived connection shared by many consumers (a channel each), re-opened when lost.
/// Consumers hold their channel for their whole life, so they must not each hold a pooled
/// connection: that would starve the pool the publishers need.
pub struct SharedConnection {
    brokers: Brokers,
    name: String,
    current: Mutex<Option<Arc<lapin::Connection>>>,
}

impl SharedConnection {
    /// `Err`: `urls` is not a list of AMQP URLs (see [`Brokers`]).
    pub fn new(urls: &str, connection_name: &str) -> Result<Self, String> {
        Ok(Self {
            brokers: Brokers::parse(urls)?,
            name: connection_name.to_owned(),
            current: Mutex::new(None),
        })
    }

    /// The open connection, or a new one if it was lost.
    pub async fn get(&self) -> lapin::Result<Arc<lapin::Connection>> {
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref().filter(|c| c.status().connected()) {
            return Ok(connection.clone());
        }
        let properties =
            ConnectionProperties::default().with_connection_name(self.name.as_str().into());
        let connection = Arc::new(self.brokers.connect(properties).await?);
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets `connection` if it is still the shared one, so that the next [`get`](Self::get)
    /// opens a new one: for a connection that looks connected but whose broker stopped
    /// answering (a step timed out on it). Its channels fail once it is closed.
    pub async fn discard(&self, connection: &Arc<lapin::Connection>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, connection)) {
            let stale = current.take().expect("checked above");
            drop(current);
            tracing::warn!(
                "the broker stopped answering on the shared connection; opening a new one"
            );
            let close = stale.close(320, "unresponsive; reconnecting".into());
            let _ = tokio::time::timeout(CONFIRM_TIMEOUT, close).await;
        }
    }

    /// Closes the connection (after the consumers closed their channels).
    pub async fn close(&self) {
        if let Some(connection) = self.current.lock().await.take() {
            let _ = connection.close(200, "closing".into()).await;
        }
    }
}

/// Why a publish did not end with the broker taking the message.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker refused the message (a full queue with `reject-publish`). It was not enqueued.
    #[error("the broker refused the message (queue full)")]
    Refused,
    /// No queue is bound for the routing key. It was not enqueued.
    #[error("the message was unroutable")]
    Unroutable,
    /// The connection failed: the message may or may not have been enqueued.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// One message of a batch.
pub struct Outgoing<'a> {
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
}

/// Publishes with publisher confirms on one cached channel. Concurrent publishes share the
/// channel, so their confirms are pipelined rather than awaited one after another.
pub struct Publisher {
    pool: Pool,
    channel: Mutex<Option<Channel>>,
}

impl Publisher {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            channel: Mutex::new(None),
        }
    }

    /// The cached confirm-mode channel, re-opened when the old one is gone.
    pub async fn channel(&self) -> Result<Channel, PublishError> {
        let mut cached = self.channel.lock().await;
        if let Some(channel) = cached.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let unavailable = |e: &dyn std::fmt::Display| PublishError::Unavailable(e.to_string());
        // Bounded like the publish itself: the lock above is held meanwhile, and a caller may
        // hold locks of its own (a transaction) while it waits.
        let open = async {
            let connection = self.pool.get().await.map_err(|e| unavailable(&e))?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| unavailable(&e))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| unavailable(&e))?;
            Ok::<_, PublishError>(channel)
        };
        let channel = tokio::time::timeout(CONFIRM_TIMEOUT, open)
            .await
            .map_err(|_| {
                PublishError::Unavailable(format!(
                    "no confirm-mode channel from the broker within {CONFIRM_TIMEOUT:?}"
                ))
            })??;
        *cached = Some(channel.clone());
        Ok(channel)
    }

    /// Publishes one persistent message and waits for the broker's confirm. `mandatory`: an
    /// unroutable message is an error rather than silently dropped (commands must reach a queue;
    /// events may have no subscriber).
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let message = Outgoing {
            routing_key,
            body,
            properties,
        };
        self.publish_batch(exchange, std::slice::from_ref(&message), mandatory)
            .await
            .pop()
            .expect("one result per message")
    }

    /// Publishes messages in order on one channel: every message is handed to the connection
    /// before any is awaited, then all their confirms are awaited together. Returns one result
    /// per message, in order.
    pub async fn publish_batch(
        &self,
        exchange: &str,
        messages: &[Outgoing<'_>],
        mandatory: bool,
    ) -> Vec<Result<(), PublishError>> {
        let unavailable = |e: lapin::Error| PublishError::Unavailable(e.to_string());
        // A broker under a memory or disk alarm blocks publishers without a word: bound the wait,
        // so callers answer 503 (or retry later) instead of hanging with locks held. One deadline
        // for the whole batch, the channel's opening included (`channel` is bounded by the same
        // timeout): a caller inside a transaction (the outbox relay) sits idle in it for at most
        // this long.
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(e) => {
                let reason = e.to_string();
                return messages
                    .iter()
                    .map(|_| Err(PublishError::Unavailable(reason.clone())))
                    .collect();
            }
        };
        // Every message's frames are handed to the connection's writer first, in order, and
        // only then is each send awaited: lapin completes a publish once its writer thread has
        // written it, so awaiting each before the next made every message a round trip to that
        // thread (two context switches) where a batch now makes one. Measured: docs/DESIGN-NOTES.md,
        // *Publishing a batch at once*.
        let mut sends = Vec::with_capacity(messages.len());
        for message in messages {
            let mut send = Box::pin(maybe_done(channel.basic_publish(
                exchange.into(),
                message.routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                message.body,
                // persistent
                message.properties.clone().with_delivery_mode(2),
            )));
            // Its first poll queues its frames (after the ones before it) and wakes the writer.
            std::future::poll_fn(|cx| {
                let _ = send.as_mut().poll(cx);
                std::task::Poll::Ready(())
            })
            .await;
            sends.push(send);
        }
        let mut pending = Vec::with_capacity(messages.len());
        for mut send in sends {
            pending.push(
                match tokio::time::timeout_at(deadline, send.as_mut()).await {
                    Ok(()) => send
                        .as_mut()
                        .take_output()
                        .expect("a finished send holds its outcome")
                        .map_err(unavailable),
                    Err(_) => Err(PublishError::Unavailable(format!(
                        "the broker blocked the publish for {CONFIRM_TIMEOUT:?}"
                    ))),
                },
            );
        }
        let mut results = Vec::with_capacity(messages.len());
        for confirm in pending {
            let result = match confirm {
                Err(e) => Err(e),
                Ok(confirm) => match tokio::time::timeout_at(deadline, confirm).await {
                    Err(_) => Err(PublishError::Unavailable(format!(
                        "no confirm from the broker within {CONFIRM_TIMEOUT:?}"
                    ))),
                    Ok(Err(e)) => Err(unavailable(e)),
                    Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                    Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable),
                    Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Refused),
                    Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Unavailable(
                        "channel is not in confirm mode".into(),
                    )),
                },
            };
            results.push(result);
        }
        results
    }

    /// The connection pool (for declaring, consuming or inspecting queues).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// JSON message properties shared by every publish.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

/// `properties` with a W3C `traceparent` header ([`orderflow_runtime::telemetry::TRACEPARENT`]) when there
/// is one, keeping any other headers: the trace travels with the message (API → worker,
/// relays → the next hop).
pub fn with_traceparent(properties: BasicProperties, traceparent: Option<&str>) -> BasicProperties {
    let Some(traceparent) = traceparent else {
        return properties;
    };
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        orderflow_runtime::telemetry::TRACEPARENT.into(),
        AMQPValue::LongString(traceparent.into()),
    );
    properties.with_headers(headers)
}

/// A text header of a received message (a long or short string; other types and invalid
/// UTF-8 read as absent).
pub fn header_str<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a str> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
        AMQPValue::ShortString(value) => Some(value.as_str()),
        _ => None,
    }
}
