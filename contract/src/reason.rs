//! Why a command ended without being applied: one closed set of codes, stored in
//! `commands.reason`, carried by the status events, answered by the API and counted by the
//! metrics. A code is for machines; the sentence people read is beside it (`commands.detail`).

use crate::IntakeRefusal;
use orderflow_domain::Rejection;
use serde::{Deserialize, Serialize};

/// Why a command failed (it can never be applied) or its message was dead-lettered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The message is larger than the contract allows.
    TooLarge,
    /// The message names a contract version this build does not read.
    UnsupportedVersion,
    /// The message is not a valid command.
    Malformed,
    /// The message arrived on a partition its order does not belong to.
    WrongPartition,
    /// The command id was already used for a different command.
    CommandIdReused,
    /// A direct producer's message carries no `user_id` property (the broker user that
    /// published it), so nobody can say for which clients it may act.
    ProducerUnidentified,
    /// A direct producer's command names no live client.
    UnknownClient,
    /// A direct producer's broker user is not granted the client its command names
    /// (`orderflow-api producer grant`).
    ProducerNotGranted,
    /// A direct producer's command acts on another client's order.
    ForeignOrder,
    /// A direct producer's follow-up names an order that does not exist.
    UnknownOrder,
    /// The command had already failed; its redelivery is dead-lettered again.
    AlreadyFailed,
    /// Workers started applying the message too often without finishing.
    DeliveryLimit,
    /// PostgreSQL refused to store what the message carries.
    StorageRefused,
    /// A parked command's earlier commands never arrived.
    ParkedTooLong,
    /// The recorded command could not be read back.
    UnreadableCommand,
    /// Any other permanent database error while applying it.
    DatabaseError,
    /// The payment gateway refused a refund.
    RefundRefused,
    /// Applying it would break an invariant (a bug, or data changed behind orderflow's back).
    InvariantViolated,
    /// Failed before codes were stored apart from their sentences (rows migrated from then).
    Unclassified,
}

impl FailureCode {
    pub const ALL: [FailureCode; 19] = [
        FailureCode::TooLarge,
        FailureCode::UnsupportedVersion,
        FailureCode::Malformed,
        FailureCode::WrongPartition,
        FailureCode::CommandIdReused,
        FailureCode::ProducerUnidentified,
        FailureCode::UnknownClient,
        FailureCode::ProducerNotGranted,
        FailureCode::ForeignOrder,
        FailureCode::UnknownOrder,
        FailureCode::AlreadyFailed,
        FailureCode::DeliveryLimit,
        FailureCode::StorageRefused,
        FailureCode::ParkedTooLong,
        FailureCode::UnreadableCommand,
        FailureCode::DatabaseError,
        FailureCode::RefundRefused,
        FailureCode::InvariantViolated,
        FailureCode::Unclassified,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::TooLarge => "too_large",
            FailureCode::UnsupportedVersion => "unsupported_version",
            FailureCode::Malformed => "malformed",
            FailureCode::WrongPartition => "wrong_partition",
            FailureCode::CommandIdReused => "command_id_reused",
            FailureCode::ProducerUnidentified => "producer_unidentified",
            FailureCode::UnknownClient => "unknown_client",
            FailureCode::ProducerNotGranted => "producer_not_granted",
            FailureCode::ForeignOrder => "foreign_order",
            FailureCode::UnknownOrder => "unknown_order",
            FailureCode::AlreadyFailed => "already_failed",
            FailureCode::DeliveryLimit => "delivery_limit",
            FailureCode::StorageRefused => "storage_refused",
            FailureCode::ParkedTooLong => "parked_too_long",
            FailureCode::UnreadableCommand => "unreadable_command",
            FailureCode::DatabaseError => "database_error",
            FailureCode::RefundRefused => "refund_refused",
            FailureCode::InvariantViolated => "invariant_violated",
            FailureCode::Unclassified => "unclassified",
        }
    }
}

/// The reason a final command carries: rejected by the domain, refused by the intake, or
/// failed; or, on an applied command, that it changed nothing. Every code is distinct across
/// them, so the code alone says which it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Rejected(Rejection),
    Refused(IntakeRefusal),
    Failed(FailureCode),
    /// Applied without a change: it asked for what the order already was (a shipping address
    /// it already had), so no event was appended and the version stayed.
    Unchanged,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected(r) => r.as_str(),
            Reason::Refused(r) => r.as_str(),
            Reason::Failed(f) => f.as_str(),
            Reason::Unchanged => "unchanged",
        }
    }

    /// Every reason there is (for metric labels registered at zero, documentation and tests).
    pub fn all() -> impl Iterator<Item = Reason> {
        Rejection::ALL
            .into_iter()
            .map(Reason::Rejected)
            .chain(IntakeRefusal::ALL.into_iter().map(Reason::Refused))
            .chain(FailureCode::ALL.into_iter().map(Reason::Failed))
            .chain([Reason::Unchanged])
    }

    /// The reason a stored code names. A code this build does not know reads as
    /// [`FailureCode::Unclassified`] (only a newer build could have written it).
    pub fn parse(code: &str) -> Reason {
        Self::all()
            .find(|r| r.as_str() == code)
            .unwrap_or(Reason::Failed(FailureCode::Unclassified))
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Ok(Reason::parse(&code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_code_is_distinct_and_reads_back_as_itself() {
        let codes: Vec<&str> = Reason::all().map(Reason::as_str).collect();
        let distinct: HashSet<&str> = codes.iter().copied().collect();
        assert_eq!(distinct.len(), codes.len(), "{codes:?}");
        for reason in Reason::all() {
            assert_eq!(Reason::parse(reason.as_str()), reason);
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), reason);
        }
        for failure in FailureCode::ALL {
            assert_eq!(
                serde_json::to_value(failure).unwrap(),
                serde_json::json!(failure.as_str())
            );
        }
    }

    #[test]
    fn an_unknown_code_reads_as_unclassified() {
        assert_eq!(
            Reason::parse("something a newer build wrote"),
            Reason::Failed(FailureCode::Unclassified)
        );
    }
}
