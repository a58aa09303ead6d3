//! Recovery, measured from the database: the stack is applying again once a worker finished a
//! command after the heal. Read from PostgreSQL (the only place a finished command is certain),
//! polled with a deadline; errors while PostgreSQL itself comes back count as "not yet".

use chrono::{DateTime, Utc};
use orderflow_storage::audit;
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// Longest wait for the stack to apply again after a heal.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two polls.
const POLL: Duration = Duration::from_millis(50);

/// Seconds from `healed` (the instant and the same moment on the wall clock) until a command
/// finished by a worker after it; `None` if none within [`RECOVERY_TIMEOUT`].
pub async fn measure(db: &PgPool, healed: Instant, healed_at: DateTime<Utc>) -> Option<f64> {
    let deadline = healed + RECOVERY_TIMEOUT;
    loop {
        // A refusal is finished by the API, not applied by a worker: it says nothing.
        let applied = audit::finished_by_a_worker_since(db, healed_at).await;
        if let Ok(true) = applied {
            return Some(healed.elapsed().as_secs_f64());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Seconds from `injected` (the instant and the same moment on the wall clock) until every one
/// of `partitions` had a command finished by a worker after it, by the commands' own finish
/// times (so a fault that lasts, like a pause, does not hide an earlier resumption); `None` if
/// not within [`RECOVERY_TIMEOUT`]. `Some(0.0)` for no partitions.
pub async fn partitions_resumed(
    db: &PgPool,
    partitions: &[i32],
    injected: Instant,
    injected_at: DateTime<Utc>,
) -> Option<f64> {
    let watched: Vec<(i32, Option<i64>)> = partitions.iter().map(|&p| (p, None)).collect();
    first_finishes(db, &watched, injected, injected_at).await
}

/// Like [`partitions_resumed`] for partitions that changed hands: until each (partition,
/// epoch) of `moved` had a command finished under a later epoch, by its next holder (what the
/// old holder finished while it drained does not count).
pub async fn partitions_moved(
    db: &PgPool,
    moved: &[(i32, i64)],
    from: Instant,
    from_at: DateTime<Utc>,
) -> Option<f64> {
    let watched: Vec<(i32, Option<i64>)> = moved.iter().map(|&(p, e)| (p, Some(e))).collect();
    first_finishes(db, &watched, from, from_at).await
}

/// Polls until every watched partition had its first finish since `from_at` (see
/// [`audit::partitions_finishing_since`]); the seconds from `from_at` to the last of them.
async fn first_finishes(
    db: &PgPool,
    watched: &[(i32, Option<i64>)],
    from: Instant,
    from_at: DateTime<Utc>,
) -> Option<f64> {
    if watched.is_empty() {
        return Some(0.0);
    }
    let deadline = from + RECOVERY_TIMEOUT;
    loop {
        let firsts = audit::partitions_finishing_since(db, watched, from_at).await;
        if let Ok(found) = firsts
            && found.len() == watched.len()
        {
            let last = found.iter().map(|(_, at)| *at).max()?;
            return Some((last - from_at).as_seconds_f64().max(0.0));
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (bounded) until PostgreSQL answers a query again.
pub async fn postgres_back(db: &PgPool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if orderflow_storage::ping(db).await.is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}
