//! Where a command is in its life, as the API answers it and the status events carry it.

use serde::{Deserialize, Serialize};

/// Where a command is in its life. `accepted` is the only non-final status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    Accepted,
    Applied,
    Rejected,
    Failed,
}

impl CommandStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Accepted => "accepted",
            CommandStatus::Applied => "applied",
            CommandStatus::Rejected => "rejected",
            CommandStatus::Failed => "failed",
        }
    }
    pub fn is_final(self) -> bool {
        self != CommandStatus::Accepted
    }
    /// Reads a stored status (the table's check constraint allows only these).
    pub fn parse(s: &str) -> Self {
        match s {
            "accepted" => CommandStatus::Accepted,
            "applied" => CommandStatus::Applied,
            "rejected" => CommandStatus::Rejected,
            "failed" => CommandStatus::Failed,
            other => unreachable!("the status check constraint allows no {other:?}"),
        }
    }
}

/// Why the intake refused a command after recording it: it was never enqueued and will never
/// run. Stored as the rejected command's reason, beside the worker's
/// [`orderflow_domain::Rejection`]s (whose codes these never share).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum IntakeRefusal {
    #[error("the partition queue was full; the command was never enqueued and will not run")]
    QueueFull,
    #[error("the broker did not confirm the command; it was not accepted and will not run")]
    BrokerUnavailable,
}

impl IntakeRefusal {
    pub const ALL: [IntakeRefusal; 2] =
        [IntakeRefusal::QueueFull, IntakeRefusal::BrokerUnavailable];

    pub fn as_str(self) -> &'static str {
        match self {
            IntakeRefusal::QueueFull => "queue_full",
            IntakeRefusal::BrokerUnavailable => "broker_unavailable",
        }
    }
}
