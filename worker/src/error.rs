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

use orderflow_domain::CommandId;
use orderflow_storage::{MAX_STORED_TEXT_BYTES, is_transient, storable_text};

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
#[error("{reason}")]
pub struct Failure {
    /// Short, stable, from a small set: safe as a metric label.
    pub code: &'static str,
    /// The sentence for people: the command's `reason`, the dead-letter header and record.
    pub reason: String,
}

impl Failure {
    /// The reason is made storable (see `storable_text`): it often quotes the message it is
    /// about, and a NUL or an endless text from a message must not make its own record fail.
    pub fn new(code: &'static str, reason: impl AsRef<str>) -> Self {
        Self {
            code,
            reason: storable_text(reason.as_ref(), MAX_STORED_TEXT_BYTES),
        }
    }
}

impl ApplyError {
    pub fn broken(command_id: CommandId, code: &'static str, reason: impl AsRef<str>) -> Self {
        ApplyError::Broken {
            command_id,
            failure: Failure::new(code, reason),
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Db(e) => is_transient(e) || is_unique_violation(e),
            ApplyError::Broken { .. } => false,
        }
    }

    /// What kind of transient failure this is, for `orderflow_tx_retries_total{cause}`:
    /// deadlock, serialization, lock_timeout, connection or other.
    pub fn retry_cause(&self) -> &'static str {
        let ApplyError::Db(e) = self else {
            return "other";
        };
        match e {
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some("40P01") => "deadlock",
                Some("40001") => "serialization",
                // lock_not_available (lock_timeout), query_canceled (statement_timeout)
                Some("55P03" | "57014") => "lock_timeout",
                // connection exceptions, insufficient resources, server shutting down, a
                // failover in progress, a commit whose outcome was lost with the connection
                Some(code)
                    if code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                        || code == "25006"
                        || code == "40003" =>
                {
                    "connection"
                }
                _ => "other",
            },
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => "connection",
            _ => "other",
        }
    }

    /// Attributes a permanent failure to the command being applied.
    pub fn blame(self, command_id: CommandId) -> Self {
        match self {
            ApplyError::Db(e) if !is_transient(&e) && !is_unique_violation(&e) => {
                ApplyError::broken(command_id, "database_error", format!("database error: {e}"))
            }
            other => other,
        }
    }
}

/// Another transaction inserted the same row first (e.g. a zombie worker recording the same
/// direct-producer command): retrying finds its row.
fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
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
        let broken = ApplyError::broken(CommandId::new(), "x", "y");
        assert_eq!(broken.retry_cause(), "other");
        assert!(!broken.is_transient());
    }
}
