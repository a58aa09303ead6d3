//! Every failure of the apply path, classified once:
//!
//! | failure | what the consumer does |
//! |---|---|
//! | transient database error (deadlock, serialization, connection lost, pool timeout, a concurrent insert of the same row) | retry the transaction with backoff, holding the message |
//! | a command that contradicts an invariant, or any other database error while applying it | mark that command `failed`; dead-letter its message with the reason |
//! | a message that is not a valid command (see `Outcome::Poison`) | dead-letter it with the reason |
//!
//! Nothing is ever nack-requeued: a requeued message goes behind later ones in a quorum queue.

use orderflow_shared::db::is_transient;
use orderflow_shared::domain::CommandId;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// This command can never be applied; retrying cannot help.
    #[error("command {command_id}: {reason}")]
    Broken {
        command_id: CommandId,
        reason: String,
    },
}

impl ApplyError {
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Db(e) => is_transient(e) || is_unique_violation(e),
            ApplyError::Broken { .. } => false,
        }
    }

    /// Attributes a permanent failure to the command being applied.
    pub fn blame(self, command_id: CommandId) -> Self {
        match self {
            ApplyError::Db(e) if !is_transient(&e) && !is_unique_violation(&e) => {
                ApplyError::Broken {
                    command_id,
                    reason: format!("database error: {e}"),
                }
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
