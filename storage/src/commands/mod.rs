//! Commands and the per-order streams that sequence them. The `commands` table is also the
//! worker's inbox: a command whose status is final has been dealt with.

use chrono::{DateTime, Utc};
use orderflow_contract::{CONTRACT_VERSION, CommandMessage, CommandStatus, Reason};
use orderflow_domain::{ClientId, CommandId, CommandKind, OrderId};
use serde::{Deserialize, Serialize};

/// Who sent the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Http,
    Amqp,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Amqp => "amqp",
        }
    }
}

/// A command to record.
pub struct NewCommand<'a> {
    pub id: CommandId,
    pub client_id: ClientId,
    pub order_id: OrderId,
    pub kind: CommandKind,
    /// The command as in the contract (`type` + fields).
    pub body: &'a serde_json::Value,
    pub expected_version: Option<i64>,
    pub source: Source,
    pub partition: u16,
    /// When the API received the request (None: straight from the queue).
    pub received_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The W3C traceparent the command arrived with, carried on to the worker.
    pub traceparent: Option<&'a str>,
    /// Who made it: `client:<name>`, `operator:<name>` or `producer:<broker user>` (see
    /// [`actor`]); `None` when nobody can say (a direct producer's message without a user).
    pub actor: Option<&'a str>,
}

/// The spelling of who made a command, as `commands.actor` keeps it.
pub mod actor {
    /// An API client's own request.
    pub fn client(name: &str) -> String {
        format!("client:{name}")
    }
    /// A person on the dashboard's desk, acting on a client's order.
    pub fn operator(name: &str) -> String {
        format!("operator:{name}")
    }
    /// A direct producer's message, by the broker user that published it.
    pub fn producer(user: &str) -> String {
        format!("producer:{user}")
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CommandRow {
    pub id: CommandId,
    pub client_id: ClientId,
    pub order_id: OrderId,
    pub seq: i64,
    pub kind: CommandKind,
    pub body: serde_json::Value,
    pub expected_version: Option<i64>,
    pub status: CommandStatus,
    /// Why it was rejected or failed.
    pub reason: Option<Reason>,
    /// For people: what went wrong, when it failed.
    pub detail: Option<String>,
    pub result_version: Option<i64>,
    pub partition: i32,
    pub accepted_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Set while the command waits for an earlier command of its order that no worker has
    /// seen yet (a create overtaken by its follow-up).
    pub parked_at: Option<DateTime<Utc>>,
    /// Who made it (see [`actor`]); `None` for commands recorded before actors were kept.
    pub actor: Option<String>,
}

impl CommandRow {
    /// The message for this recorded command (the API's publish, the relay's republish).
    pub fn to_message(&self) -> Result<CommandMessage, serde_json::Error> {
        Ok(CommandMessage {
            version: CONTRACT_VERSION,
            command_id: self.id,
            client_id: self.client_id,
            order_id: self.order_id,
            expected_version: self.expected_version,
            command: serde_json::from_value(self.body.clone())?,
        })
    }
}

macro_rules! command_row {
    ($r:expr) => {
        CommandRow {
            id: CommandId($r.id),
            client_id: ClientId($r.client_id),
            order_id: OrderId($r.order_id),
            seq: $r.seq,
            kind: $r.kind.parse().expect("the kind check constraint"),
            body: $r.body,
            expected_version: $r.expected_version,
            status: CommandStatus::parse(&$r.status),
            reason: $r.reason.as_deref().map(Reason::parse),
            detail: $r.detail,
            result_version: $r.result_version,
            partition: $r.partition,
            accepted_at: $r.accepted_at,
            published_at: $r.published_at,
            finished_at: $r.finished_at,
            parked_at: $r.parked_at,
            actor: $r.actor,
        }
    };
}

// After the macro: textual scope makes `command_row!` visible in these modules.
mod apply;
mod intake;
mod relay;
mod streams;

pub use apply::*;
pub use intake::*;
pub use relay::*;
pub use streams::*;
