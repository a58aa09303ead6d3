//! Every failure of the apply path, classified once:
//!
//! | failure | what the consumer does |
//! |---|---|
//! | transient database error (deadlock, serialization, connection lost, pool timeout, a concurrent insert of the same row) | retry the transaction with backoff, holding the message |
//! | a command that contradicts an invariant, or any other database error while applying it | mark that command `failed`; dead-letter its message with the reason |
//! | a message that is not a valid command (see `Outcome::Poison`) | dead-letter it with the reason |
//!
//! Nothing is ever nack-requeued: a requeued message goes behind later ones in a quorum queue.
//! Each permanent failure carries a short stable code (the `reason` label of the metrics) besides
//! the sentence people read.

use orderflow_contract::FailureCode;
use orderflow_domain::CommandId;
use orderflow_storage::{ErrorClass, MAX_STORED_TEXT_BYTES, classify, storable_text};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// This command can never be applied; retrying cannot help.
    #[error("command {command_id}: {failure}")]
    Broken {
        command_id: CommandId,
        failure: Failure,
    },
}

/// Why a command failed or a message is dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Failure {
    /// The code: the command's `reason`, the `reason` label of the metrics.
    pub code: FailureCode,
    /// The sentence for people: the command's `detail`, the dead-letter header and record.
    pub detail: String,
}

impl Failure {
    /// The detail is made storable (see `storable_text`): it often quotes the message it is
    /// about, and a NUL or an endless text from a message must not make its own record fail.
    pub fn new(code: FailureCode, detail: impl AsRef<str>) -> Self {
        Self {
            code,
            detail: storable_text(detail.as_ref(), MAX_STORED_TEXT_BYTES),
        }
    }
}

impl ApplyError {
    pub fn broken(command_id: CommandId, code: FailureCode, detail: impl AsRef<str>) -> Self {
        ApplyError::Broken {
            command_id,
            failure: Failure::new(code, detail),
        }
    }

    /// Worth retrying the transaction for: a transient database error, or a concurrent insert
    /// of the same row (e.g. a zombie worker recording the same direct-producer command), which
    /// a retry finds.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Db(e) => retried(classify(e)),
            ApplyError::Broken { .. } => false,
        }
    }

    /// What kind of transient failure this is, for `orderflow_tx_retries_total{cause}`:
    /// deadlock, serialization, lock_timeout, connection or other.
    pub fn retry_cause(&self) -> &'static str {
        match self {
            ApplyError::Db(e) => match classify(e) {
                class if class.is_transient() => class.as_str(),
                _ => "other",
            },
            ApplyError::Broken { .. } => "other",
        }
    }

    /// Attributes a permanent failure to the command being applied.
    pub fn blame(self, command_id: CommandId) -> Self {
        match self {
            ApplyError::Db(e) if blamable(classify(&e)) => ApplyError::broken(
                command_id,
                FailureCode::DatabaseError,
                format!("database error: {e}"),
            ),
            other => other,
        }
    }
}

fn retried(class: ErrorClass) -> bool {
    class.is_transient() || class == ErrorClass::Duplicate
}

/// Whether [`ApplyError::blame`] may turn the error into the command's failure: a lost lease is
/// not the command's fault (its new owner applies it), and a retried error is retried.
fn blamable(class: ErrorClass) -> bool {
    !retried(class) && class != ErrorClass::LeaseLost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_and_exhausted_pools_are_counted_as_connection_retries() {
        assert_eq!(
            ApplyError::Db(sqlx::Error::PoolTimedOut).retry_cause(),
            "connection"
        );
        let broken = ApplyError::broken(CommandId::new(), FailureCode::Malformed, "y");
        assert_eq!(broken.retry_cause(), "other");
        assert!(!broken.is_transient());
    }
}
