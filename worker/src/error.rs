//! Every failure of the apply path, classified once:
//!
//! | failure | what the consumer does |
//! |---|---|
//! | transient database error (deadlock, serialization, connection lost, pool timeout) | retry the transaction with backoff, holding the message |
//! | anything else from the database, or a broken invariant | dead-letter with the reason, mark the command `failed` |
//! | a message that is not a valid command (see `Outcome::Poison`) | dead-letter with the reason |
//!
//! Nothing is ever nack-requeued: a requeued message goes behind later ones in a quorum queue.

use orderflow_shared::db::is_transient;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The data contradicts an invariant; retrying cannot help.
    #[error("{0}")]
    Broken(String),
}

impl ApplyError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ApplyError::Db(e) if is_transient(e))
    }
}
