//! The partition layout: the counts the deployment has had (migration `partition_layout`), the
//! last of which commands are routed by, and its growth by doubling.

use orderflow_contract::partition::Layout;
use sqlx::{PgExecutor, PgPool};

/// Notified with the new generation when the count grows.
pub const PARTITIONS_CHANNEL: &str = "orderflow_partitions";

fn layout_error(e: orderflow_contract::partition::LayoutError) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

/// The layout now.
pub async fn current(db: impl PgExecutor<'_>) -> sqlx::Result<Layout> {
    let counts = sqlx::query_scalar!("select partitions from partition_layout order by generation")
        .fetch_all(db)
        .await?;
    let counts = counts
        .into_iter()
        .map(|c| u16::try_from(c).unwrap_or(0))
        .collect();
    Layout::new(counts).map_err(layout_error)
}

/// The layout, after recording `configured` as the first count if the deployment has none yet
/// (its first process to start decides; later ones follow what is stored, and say so when it
/// differs from theirs).
pub async fn ensure(db: &PgPool, configured: u16) -> sqlx::Result<Layout> {
    Layout::single(configured).map_err(layout_error)?;
    sqlx::query!(
        "insert into partition_layout (generation, partitions) values (1, $1)
         on conflict (generation) do nothing",
        i32::from(configured)
    )
    .execute(db)
    .await?;
    let layout = current(db).await?;
    if layout.partitions() != configured {
        tracing::info!(
            configured,
            partitions = layout.partitions(),
            generation = layout.generation,
            "following the database's partition count, not ORDERFLOW_PARTITIONS"
        );
    }
    Ok(layout)
}

/// Records `next` (the doubled count of `seen`) as the next generation, with the lease rows of
/// its new partitions, and notifies every process; `false` when the layout is no longer `seen`
/// (another growth won). The new partitions' queues must exist before: from the commit on, the
/// API routes to them.
pub async fn grow(db: &PgPool, seen: &Layout, next: &Layout) -> sqlx::Result<bool> {
    debug_assert_eq!(next.generation, seen.generation + 1);
    let mut tx = db.begin().await?;
    let inserted = sqlx::query!(
        "insert into partition_layout (generation, partitions)
         select $1, $2
          where (select max(generation) from partition_layout) = $3
         on conflict (generation) do nothing",
        next.generation,
        i32::from(next.partitions()),
        seen.generation
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    crate::leases::ensure_partitions(&mut *tx, next.partitions()).await?;
    sqlx::query!(
        "select pg_notify($1, $2::integer::text)",
        PARTITIONS_CHANNEL,
        next.generation
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// The layout a process routes and checks by, shared by its tasks: it only moves forward (a
/// newer generation replaces an older one, never the reverse).
#[derive(Clone, Debug)]
pub struct LayoutCell(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Layout>>>);

impl LayoutCell {
    pub fn new(layout: Layout) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(
            std::sync::Arc::new(layout),
        )))
    }

    /// The layout now.
    pub fn get(&self) -> std::sync::Arc<Layout> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes `layout` if it is newer than the one held; says whether it did.
    pub fn advance(&self, layout: Layout) -> bool {
        let mut held = self.0.write().unwrap_or_else(|e| e.into_inner());
        if layout.generation <= held.generation {
            return false;
        }
        tracing::info!(
            generation = layout.generation,
            partitions = layout.partitions(),
            "the partition count grew"
        );
        *held = std::sync::Arc::new(layout);
        true
    }

    /// Reads the stored layout and takes it if it is newer.
    pub async fn refresh(&self, db: impl PgExecutor<'_>) -> sqlx::Result<bool> {
        Ok(self.advance(current(db).await?))
    }
}
