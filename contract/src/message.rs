//! The wire contract of the command exchange, version 1. orderflow's API publishes exactly this;
//! other services may publish it too (`contract/command.schema.json` is its JSON Schema).
//!
//! A message is JSON, `content_type: application/json`, persistent, published to the exchange
//! `<namespace>.commands` with the routing key `partition_of(order_id)` in decimal. Its
//! `command_id` is the idempotency key: a second message with the same id is a no-op.

use orderflow_domain::{ClientId, Command, CommandId, OrderId};
use serde::{Deserialize, Serialize};

/// The only contract version this build reads and writes.
pub const CONTRACT_VERSION: u32 = 1;

/// Messages larger than this are poison, whatever they contain.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// One command on the command exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandMessage {
    /// Always 1.
    pub version: u32,
    pub command_id: CommandId,
    /// The client the command acts for; it must own the order (or be creating it).
    pub client_id: ClientId,
    pub order_id: OrderId,
    /// Optimistic concurrency: the order version the producer saw; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<i64>,
    pub command: Command,
}

/// Why a message cannot be read as a command. Such a message is dead-lettered with this text.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("message is {0} bytes; the limit is {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("message is not a valid command: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unsupported contract version {0}; this build reads version {CONTRACT_VERSION}")]
    Version(u32),
    #[error("expected_version must not be negative")]
    NegativeVersion,
}

impl CommandMessage {
    /// Parses and checks a message body.
    pub fn parse(body: &[u8]) -> Result<Self, ContractError> {
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(ContractError::TooLarge(body.len()));
        }
        let message: CommandMessage = serde_json::from_slice(body)?;
        if message.version != CONTRACT_VERSION {
            return Err(ContractError::Version(message.version));
        }
        if message.expected_version.is_some_and(|v| v < 0) {
            return Err(ContractError::NegativeVersion);
        }
        Ok(message)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a command message always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Fixture {
        name: String,
        valid: bool,
        message: serde_json::Value,
    }

    #[test]
    fn the_contract_fixtures_parse_as_documented() {
        let fixtures: Vec<Fixture> =
            serde_json::from_str(include_str!("../fixtures.json")).unwrap();
        assert!(fixtures.iter().any(|f| f.valid) && fixtures.iter().any(|f| !f.valid));
        for f in fixtures {
            let bytes = serde_json::to_vec(&f.message).unwrap();
            let parsed = CommandMessage::parse(&bytes);
            assert_eq!(parsed.is_ok(), f.valid, "{}: {parsed:?}", f.name);
            if let Ok(message) = parsed {
                let again = CommandMessage::parse(&message.to_bytes()).unwrap();
                assert_eq!(again, message, "{} round-trips", f.name);
            }
        }
    }

    #[test]
    fn oversized_messages_are_refused_before_parsing() {
        let body = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            CommandMessage::parse(&body),
            Err(ContractError::TooLarge(_))
        ));
    }
}
