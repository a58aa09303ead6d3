//! Heal and drain: after the workload, wait (with a deadline) until every accepted command is
//! final (and every other command of the run's orders), then until the run's outbox rows are
//! relayed. What is still pending at the deadline is
//! reported, and the checker counts it as a violation. Progress is read from PostgreSQL, not
//! through the API: the auditor's own status reads must not compete with the run's rate limit,
//! and one query covers thousands of commands.

use std::time::{Duration, Instant};
use uuid::Uuid;

/// Pause between two reads of the progress (bounded by the deadline).
const POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Drained {
    /// Accepted commands still not final at the deadline.
    pub unfinished: usize,
    /// The run's outbox rows left at the deadline.
    pub outbox_left: i64,
    pub seconds: f64,
}

pub async fn drain(
    db: &sqlx::PgPool,
    accepted: &[Uuid],
    orders: &[Uuid],
    timeout: Duration,
) -> anyhow::Result<Drained> {
    let started = Instant::now();
    let deadline = started + timeout;
    // A duplicated direct command is one command.
    let mut accepted = accepted.to_vec();
    accepted.sort();
    accepted.dedup();
    let mut unfinished;
    loop {
        // Direct commands exist once a worker recorded them: count finals, not non-finals.
        let finished = orderflow_storage::audit::finished_count(db, &accepted).await?;
        unfinished = accepted.len().saturating_sub(finished as usize);
        // Also the commands the run never saw accepted (their request timed out after the
        // command was recorded): each finishes with an outbox row of its own, which a snapshot
        // taken before it would count as never relayed.
        let unseen = orderflow_storage::audit::unfinished_of_orders(db, orders).await?;
        if (unfinished == 0 && unseen == 0) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let mut outbox_left;
    loop {
        outbox_left = orderflow_storage::audit::outbox_rows(db, orders).await?;
        if outbox_left == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(Drained {
        unfinished,
        outbox_left,
        seconds: started.elapsed().as_secs_f64(),
    })
}
