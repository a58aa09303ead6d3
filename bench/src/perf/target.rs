//! One way to send a command to a system, whatever the system: in-process to the worker's
//! applier (the raw ceiling) or over HTTP (naive sync and orderflow share the route and body).
//! Every call ends in a [`Sample`]; nothing is retried behind the load generator's back.

use orderflow_contract::CommandStatus;
use orderflow_contract::partition::partition_of;
use orderflow_contract::{CONTRACT_VERSION, CommandMessage};
use orderflow_domain::{ClientId, Command, CommandId, OrderId};
use orderflow_worker::apply::{Applier, Outcome};
use reqwest::header;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Longest wait for one command's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// SKUs the workload adds to orders (one line each, so an order's lines stay few and a line's
/// quantity stays far below its limit for any run length here).
pub const SKUS: usize = 16;

/// How one call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Answer {
    /// An HTTP status.
    Status(u16),
    /// The raw ceiling's outcomes.
    Applied,
    Rejected,
    /// A database error (raw) or a response that was not what the route promises.
    Error,
    /// No answer before [`REQUEST_TIMEOUT`].
    Timeout,
    /// The connection failed.
    Transport,
    /// The open-loop generator had too many requests in flight to send this one.
    NotSent,
}

impl Answer {
    /// Did the system take the command (to apply it now or later)?
    pub fn accepted(self) -> bool {
        matches!(
            self,
            Answer::Status(200 | 202 | 409) | Answer::Applied | Answer::Rejected
        )
    }

    pub fn label(self) -> String {
        match self {
            Answer::Status(code) => code.to_string(),
            Answer::Applied => "applied".into(),
            Answer::Rejected => "rejected".into(),
            Answer::Error => "error".into(),
            Answer::Timeout => "timeout".into(),
            Answer::Transport => "connection error".into(),
            Answer::NotSent => "not sent (client cap)".into(),
        }
    }
}

/// One call, as the load generator saw it.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// When it was due, in seconds from the phase's start (open loop: the scheduled time, so a
    /// slow system cannot hide its queueing by slowing the generator down).
    pub due: f64,
    /// From due to answered.
    pub latency_us: u64,
    pub answer: Answer,
    /// A 429 or 503 said when to come back.
    pub retry_after: bool,
    /// The command's id, when the system accepted it.
    pub command: Option<Uuid>,
    /// Sent to the storm's hot order.
    pub hot: bool,
}

/// The commands the workload sends: `add_item` of one unit of one of [`SKUS`] SKUs, without
/// If-Match (so every one of them applies, whoever else works on the order).
pub struct Commands {
    commands: Vec<Command>,
    bodies: Vec<Vec<u8>>,
}

impl Commands {
    pub fn new() -> Self {
        let json: Vec<serde_json::Value> = (0..SKUS)
            .map(|k| serde_json::json!({"type": "add_item", "sku": format!("perf-{k}"), "quantity": 1, "unit_price_cents": 100}))
            .collect();
        Self {
            commands: json
                .iter()
                .map(|v| serde_json::from_value(v.clone()).expect("a valid command"))
                .collect(),
            bodies: json.iter().map(|v| v.to_string().into_bytes()).collect(),
        }
    }
}

impl Default for Commands {
    fn default() -> Self {
        Self::new()
    }
}

/// The system end of the load generator.
#[derive(Clone)]
pub enum Target {
    Raw(Arc<RawTarget>),
    Http(Arc<HttpTarget>),
}

/// The broker user the raw ceiling's messages come from (granted its client at set-up).
pub const RAW_PRODUCER: &str = "orderflow-bench";

pub struct RawTarget {
    pub applier: Applier,
    pub client: ClientId,
    pub partitions: u16,
}

pub struct HttpTarget {
    pub http: reqwest::Client,
    /// Base URL, without a trailing slash.
    pub base: String,
    pub key: String,
}

#[derive(serde::Deserialize)]
struct Accepted {
    command_id: Uuid,
}

/// What `send` returns: the answer, whether it said when to retry, and the command's id.
type Sent = (Answer, bool, Option<Uuid>);

impl Target {
    /// A client sized for thousands of concurrent requests to one host.
    pub fn http(base: &str, key: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(usize::MAX)
            .tcp_nodelay(true)
            .build()?;
        Ok(Target::Http(Arc::new(HttpTarget {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
        })))
    }

    /// Sends command number `k` (of [`Commands`]) to `order`; `started` is when it was due.
    pub async fn send(&self, commands: &Commands, k: usize, order: Uuid) -> Sent {
        match self {
            Target::Raw(raw) => raw.send(commands.commands[k].clone(), order).await,
            Target::Http(http) => http.send(commands.bodies[k].clone(), order).await,
        }
    }

    /// The HTTP side, for the long-polls.
    pub fn as_http(&self) -> Option<&HttpTarget> {
        match self {
            Target::Http(http) => Some(http),
            Target::Raw(_) => None,
        }
    }
}

impl RawTarget {
    /// The message a direct producer would publish, handed straight to the applier (it records
    /// the command and applies it in one transaction).
    async fn send(&self, command: Command, order: Uuid) -> Sent {
        let id = CommandId::new();
        let message = CommandMessage {
            version: CONTRACT_VERSION,
            command_id: id,
            client_id: self.client,
            order_id: OrderId(order),
            expected_version: None,
            command,
        };
        let partition = partition_of(OrderId(order), self.partitions);
        let answer = match self
            .applier
            .handle(&message.to_bytes(), partition, RAW_PRODUCER)
            .await
        {
            Ok(Outcome::Finished(CommandStatus::Applied)) => Answer::Applied,
            Ok(Outcome::Finished(_)) => Answer::Rejected,
            Ok(_) | Err(_) => Answer::Error,
        };
        let accepted = answer.accepted().then_some(id.0);
        (answer, false, accepted)
    }
}

impl HttpTarget {
    async fn send(&self, body: Vec<u8>, order: Uuid) -> Sent {
        let request = self
            .http
            .post(format!("{}/v1/orders/{order}/commands", self.base))
            .bearer_auth(&self.key)
            .header("idempotency-key", Uuid::new_v4().to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .timeout(REQUEST_TIMEOUT)
            .body(body);
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return (Answer::Timeout, false, None),
            Err(_) => return (Answer::Transport, false, None),
        };
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key(header::RETRY_AFTER);
        // The body is read in every case, so the connection goes back to the pool.
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) if e.is_timeout() => return (Answer::Timeout, retry_after, None),
            Err(_) => return (Answer::Transport, retry_after, None),
        };
        let command = if matches!(status, 200 | 202) {
            match serde_json::from_slice::<Accepted>(&bytes) {
                Ok(accepted) => Some(accepted.command_id),
                Err(_) => return (Answer::Error, retry_after, None),
            }
        } else {
            None
        };
        (Answer::Status(status), retry_after, command)
    }

    /// Long-polls a command's status for up to `wait` seconds; returns the answer, the status
    /// the body named, and when it came.
    pub async fn wait(&self, command: Uuid, wait: u64) -> (Answer, Option<String>, Instant) {
        let request = self
            .http
            .get(format!("{}/v1/commands/{command}?wait={wait}", self.base))
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(wait) + REQUEST_TIMEOUT);
        let answer = match request.send().await {
            Ok(response) => {
                let code = response.status().as_u16();
                let body = response.json::<serde_json::Value>().await.ok();
                let status = body
                    .as_ref()
                    .and_then(|b| b.get("status")?.as_str().map(str::to_owned));
                (Answer::Status(code), status)
            }
            Err(e) if e.is_timeout() => (Answer::Timeout, None),
            Err(_) => (Answer::Transport, None),
        };
        (answer.0, answer.1, Instant::now())
    }
}
