//! What a PostgreSQL error means for the caller, in one place: every decision to retry a
//! transaction, to dead-letter a message, or to count a cause reads [`classify`].

/// The kinds of failure callers act on differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// deadlock_detected: two transactions locked in opposite orders; retry.
    Deadlock,
    /// serialization_failure; retry.
    Serialization,
    /// lock_not_available (lock_timeout) or query_canceled (statement_timeout); retry.
    LockTimeout,
    /// The connection, the server or the pool: connection exceptions, insufficient resources
    /// (too many connections), shutdown, cannot_connect_now, read_only_sql_transaction (a
    /// failover in progress), a commit whose outcome was lost with the connection; an I/O or
    /// protocol error, an exhausted or closed pool. Retry.
    Connection,
    /// unique_violation: a concurrent transaction inserted the same row first (a redelivery
    /// racing its own first delivery); retrying finds that row.
    Duplicate,
    /// A data exception or another integrity constraint: the data itself is refused and will be
    /// every time (a message's text, a value out of range). Never retried.
    DataRefused,
    /// The transaction's fence found that this worker no longer holds the partition's lease
    /// (SQLSTATE OF001, raised by `orderflow_fence`): another worker took the partition over.
    /// Never retried: the worker stops consuming the partition and acks nothing more of it.
    LeaseLost,
    /// A bug or anything else: never retried.
    Other,
}

impl ErrorClass {
    /// Is the whole transaction worth running again? (A duplicate is retried by the callers
    /// that can meet one; see [`ErrorClass::Duplicate`].)
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorClass::Deadlock
                | ErrorClass::Serialization
                | ErrorClass::LockTimeout
                | ErrorClass::Connection
        )
    }

    /// A metric label (a closed set).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Deadlock => "deadlock",
            ErrorClass::Serialization => "serialization",
            ErrorClass::LockTimeout => "lock_timeout",
            ErrorClass::Connection => "connection",
            ErrorClass::Duplicate => "duplicate",
            ErrorClass::DataRefused => "data_refused",
            ErrorClass::LeaseLost => "lease_lost",
            ErrorClass::Other => "other",
        }
    }
}

/// Classifies an error by its SQLSTATE (or, without one, by what sqlx says went wrong).
pub fn classify(error: &sqlx::Error) -> ErrorClass {
    match error {
        sqlx::Error::Database(db) => db.code().map_or(ErrorClass::Other, |c| of_sqlstate(&c)),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => ErrorClass::Connection,
        _ => ErrorClass::Other,
    }
}

fn of_sqlstate(code: &str) -> ErrorClass {
    match code {
        "40P01" => ErrorClass::Deadlock,
        "40001" => ErrorClass::Serialization,
        "55P03" | "57014" => ErrorClass::LockTimeout,
        "40003" | "25006" | "57P01" | "57P02" | "57P03" => ErrorClass::Connection,
        "23505" => ErrorClass::Duplicate,
        crate::leases::LEASE_LOST => ErrorClass::LeaseLost,
        c if c.starts_with("08") || c.starts_with("53") => ErrorClass::Connection,
        c if c.starts_with("22") || c.starts_with("23") => ErrorClass::DataRefused,
        _ => ErrorClass::Other,
    }
}

/// Is this error worth retrying the whole transaction for? Serialization failures, deadlocks,
/// lost connections and an exhausted pool are; constraint violations and bugs are not.
pub fn is_transient(error: &sqlx::Error) -> bool {
    classify(error).is_transient()
}

/// Did the transaction's fence find the partition's lease lost (see [`ErrorClass::LeaseLost`])?
pub fn is_lease_lost(error: &sqlx::Error) -> bool {
    classify(error) == ErrorClass::LeaseLost
}

/// Did PostgreSQL refuse the data itself (a data exception or an integrity constraint, but not a
/// duplicate key, which a concurrent insert of the same row causes and a retry resolves)? Such an
/// error comes back every time the same message is applied: the message, not the system, is at
/// fault, so it is dead-lettered rather than retried.
pub fn is_data_refused(error: &sqlx::Error) -> bool {
    classify(error) == ErrorClass::DataRefused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_fall_into_the_classes_callers_act_on() {
        let cases = [
            ("40P01", ErrorClass::Deadlock),
            ("40001", ErrorClass::Serialization),
            ("55P03", ErrorClass::LockTimeout),
            ("57014", ErrorClass::LockTimeout),
            ("08006", ErrorClass::Connection),
            ("53300", ErrorClass::Connection),
            ("57P01", ErrorClass::Connection),
            ("OF001", ErrorClass::LeaseLost),
            ("25006", ErrorClass::Connection),
            ("40003", ErrorClass::Connection),
            ("23505", ErrorClass::Duplicate),
            ("23503", ErrorClass::DataRefused),
            ("22021", ErrorClass::DataRefused),
            ("42P01", ErrorClass::Other),
        ];
        for (code, class) in cases {
            assert_eq!(of_sqlstate(code), class, "{code}");
        }
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorClass::Connection);
        assert_eq!(classify(&sqlx::Error::RowNotFound), ErrorClass::Other);
        assert!(!ErrorClass::Duplicate.is_transient());
        assert!(!ErrorClass::DataRefused.is_transient());
    }
}
