//! The status event: what the events exchange (`<ns>.events`, a topic exchange) carries each
//! time a command reaches a final status, with the routing key
//! `command.<status>.<type>` (e.g. `command.rejected.reserve`). Written to the outbox in the
//! transaction that finishes the command, and relayed in order per order.

use crate::{CommandStatus, Reason};
use chrono::{DateTime, Utc};
use orderflow_domain::{ClientId, CommandId, CommandKind, Event, OrderId};
use serde::{Deserialize, Serialize};

/// The only status event version this build writes (and the one it assumes when a stored event
/// carries none).
pub const STATUS_EVENT_VERSION: u32 = 1;

fn current_version() -> u32 {
    STATUS_EVENT_VERSION
}

/// One command's final status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    /// Always [`STATUS_EVENT_VERSION`].
    #[serde(default = "current_version")]
    pub schema_version: u32,
    pub command_id: CommandId,
    pub order_id: OrderId,
    pub client_id: ClientId,
    /// The command's place in its order's sequence.
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: CommandKind,
    pub status: CommandStatus,
    /// Why it was rejected or failed (a code); `None` when applied.
    pub reason: Option<Reason>,
    /// For people: what went wrong, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The order version it produced (applied) or found (rejected).
    pub version: Option<i64>,
    /// The event it appended, when applied.
    pub event: Option<Event>,
    /// When it was finished.
    pub at: DateTime<Utc>,
}

impl StatusEvent {
    /// The routing key on the events exchange: `command.<status>.<type>`.
    pub fn routing_key(&self) -> String {
        format!("command.{}.{}", self.status.as_str(), self.kind.as_str())
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a status event always serializes")
    }

    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderflow_domain::Rejection;

    #[test]
    fn a_status_event_round_trips_and_routes_by_status_and_type() {
        let event = StatusEvent {
            schema_version: STATUS_EVENT_VERSION,
            command_id: CommandId::new(),
            order_id: OrderId::new(),
            client_id: ClientId::new(),
            seq: 3,
            kind: CommandKind::Reserve,
            status: CommandStatus::Rejected,
            reason: Some(Reason::Rejected(Rejection::InsufficientStock)),
            detail: None,
            version: Some(2),
            event: None,
            at: Utc::now(),
        };
        assert_eq!(event.routing_key(), "command.rejected.reserve");
        let json = event.to_json();
        assert_eq!(json["reason"], "insufficient_stock");
        assert_eq!(json["type"], "reserve");
        assert_eq!(json["schema_version"], 1);
        let back = StatusEvent::parse(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(back, event);
    }
}
