//! Heal and drain: after the workload, wait (with a deadline, long-polling the status resource)
//! until every accepted command is final, then until the run's outbox rows are relayed. What is
//! still pending at the deadline is reported, and the checker counts it as a violation.

use crate::http::Api;
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Status reads in flight during the drain.
const PARALLEL_POLLS: usize = 32;
/// Pause between polls of something that has no long-poll (a direct command not yet recorded,
/// the outbox): short, and bounded by the deadline.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Drained {
    /// Accepted commands still not final at the deadline.
    pub unfinished: usize,
    /// The run's outbox rows left at the deadline.
    pub outbox_left: i64,
    pub seconds: f64,
}

pub async fn drain(
    api: &Api,
    db: &sqlx::PgPool,
    accepted: &[Uuid],
    orders: &[Uuid],
    timeout: Duration,
) -> anyhow::Result<Drained> {
    let started = Instant::now();
    let deadline = started + timeout;
    let unfinished = futures_util::stream::iter(accepted.iter().copied())
        .map(|id| wait_final(api, id, deadline))
        .buffer_unordered(PARALLEL_POLLS)
        .filter(|done| futures_util::future::ready(!done))
        .count()
        .await;
    let mut outbox_left;
    loop {
        outbox_left =
            sqlx::query_scalar::<_, i64>("select count(*) from outbox where order_id = any($1)")
                .bind(orders)
                .fetch_one(db)
                .await?;
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

/// Long-polls one command until it is final; false if the deadline came first.
async fn wait_final(api: &Api, id: Uuid, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = left.min(Duration::from_secs(5)).max(Duration::from_secs(1));
        match api.poll_status(id, wait).await {
            Some(view) if view["status"] != "accepted" => return true,
            Some(_) => {}
            // Not recorded yet (a direct command the worker has not taken), or an error.
            None => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
    false
}
