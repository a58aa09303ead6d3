//! The partitions: backlog per partition and the workers heartbeating them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;

/// Per partition: accepted commands not finished yet, and the oldest one's age in seconds.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionBacklog {
    pub partition: i32,
    pub pending: i64,
    pub oldest_age_secs: f64,
}

pub async fn partition_backlog(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<PartitionBacklog>> {
    sqlx::query_as!(
        PartitionBacklog,
        r#"select partition, count(*) as "pending!",
                  extract(epoch from now() - min(accepted_at))::float8 as "oldest_age_secs!"
           from commands where status = 'accepted'
           group by partition"#
    )
    .fetch_all(db)
    .await
}

/// A worker's latest heartbeat for one partition.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerPartition {
    pub worker: String,
    pub partition: i32,
    pub consuming: bool,
    pub last_delivery_at: Option<DateTime<Utc>>,
    pub delivered: i64,
    pub redelivered: i64,
    pub finished: i64,
    pub heartbeat_at: DateTime<Utc>,
    /// Seconds since the heartbeat (stale rows are workers that stopped).
    pub heartbeat_age_secs: f64,
}

/// Heartbeats no older than `max_age_secs`.
pub async fn worker_partitions(
    db: impl PgExecutor<'_>,
    max_age_secs: f64,
) -> sqlx::Result<Vec<WorkerPartition>> {
    sqlx::query_as!(
        WorkerPartition,
        r#"select worker, partition, consuming, last_delivery_at, delivered, redelivered, finished,
                  heartbeat_at, extract(epoch from now() - heartbeat_at)::float8 as "heartbeat_age_secs!"
           from worker_partitions
           where heartbeat_at > now() - make_interval(secs => $1)
           order by partition, worker"#,
        max_age_secs
    )
    .fetch_all(db)
    .await
}
