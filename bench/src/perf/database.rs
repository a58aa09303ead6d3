//! Each system's data: a fresh database on the given server (dropped at the end), orderflow's
//! schema, a client, and orders seeded set-based (`generate_series`, one statement per chunk, in
//! `orderflow_storage::perf`) in exactly the shape orderflow leaves a created order: its stream, its applied create
//! command, the projection and the first event. Growth adds more of the same.

use anyhow::Context as _;
use orderflow_storage::{admin, perf};
use sqlx::PgPool;
use std::time::Instant;
use uuid::Uuid;

/// Rows written per seeding transaction: big enough to be set-based, small enough not to hold a
/// huge transaction open.
const SEED_CHUNK: usize = 100_000;

/// A database created for one system.
pub struct Database {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl Database {
    /// Creates `name` on the server of `server_url` (any database there; used only to connect).
    pub async fn create(server_url: &str, name: &str) -> anyhow::Result<Self> {
        let (base, query) = match server_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (server_url, String::new()),
        };
        let (server, _) = base
            .rsplit_once('/')
            .context("the database URL has no database part")?;
        // storage's pool: the server may be several hosts (a primary and its standbys).
        let admin = orderflow_storage::pool(server_url, 1).context("the database URL")?;
        admin::create_database(&admin, name, None)
            .await
            .with_context(|| {
                format!("creating database {name} (may the role create databases?)")
            })?;
        admin.close().await;
        Ok(Self {
            name: name.to_owned(),
            url: format!("{server}/{name}{query}"),
            admin_url: server_url.to_owned(),
        })
    }

    /// Drops the database, closing whatever is still connected to it.
    pub async fn drop_now(&self) {
        if let Ok(admin) = orderflow_storage::pool(&self.admin_url, 1) {
            if let Err(e) = admin::drop_database(&admin, &self.name).await {
                tracing::warn!(database = self.name, error = %e, "could not drop the database");
            }
            admin.close().await;
        }
    }
}

/// Applies orderflow's migrations.
pub async fn migrate(db: &PgPool) -> anyhow::Result<()> {
    orderflow_storage::MIGRATOR
        .run(db)
        .await
        .context("applying the migrations")?;
    Ok(())
}

/// Seeds `count` pending, empty orders of `client`; returns their ids.
pub async fn seed_orders(db: &PgPool, client: Uuid, count: usize) -> anyhow::Result<Vec<Uuid>> {
    let create = serde_json::json!({"type": "create", "customer_id": "perf", "currency": "EUR", "items": []});
    let created = serde_json::json!({"type": "order_created", "customer_id": "perf", "currency": "EUR", "items": []});
    let mut ids = Vec::with_capacity(count);
    let mut left = count;
    while left > 0 {
        let chunk = left.min(SEED_CHUNK);
        left -= chunk;
        let mut conn = db.acquire().await?;
        ids.extend(perf::seed_orders(&mut conn, client, chunk, &create, &created).await?);
    }
    Ok(ids)
}

/// Grows the tables to `total` orders, refreshes the planner's statistics, and draws a new
/// active set of `active` orders from the whole table (so the working set has the same size as
/// before, spread over the grown tables). Returns the set and the seconds spent seeding.
pub async fn grow(
    db: &PgPool,
    client: Uuid,
    total: usize,
    active: usize,
) -> anyhow::Result<(Vec<Uuid>, f64)> {
    let started = Instant::now();
    let have = perf::order_count(db).await?;
    let missing = total.saturating_sub(have as usize);
    seed_orders(db, client, missing).await?;
    perf::analyze_seeded_tables(db).await?;
    let ids = perf::random_orders(db, active).await?;
    Ok((ids, started.elapsed().as_secs_f64()))
}

/// Records `count` accepted commands that nothing will ever deliver (they are marked published,
/// so no relay republishes them): long-poll targets that stay open until [`finish_probes`].
pub async fn probe_commands(db: &PgPool, client: Uuid, count: usize) -> anyhow::Result<Vec<Uuid>> {
    let body = serde_json::json!({"type": "add_item", "sku": "probe", "quantity": 1, "unit_price_cents": 1});
    let mut conn = db.acquire().await?;
    Ok(perf::probe_commands(&mut conn, client, count, &body).await?)
}

/// Rejects the probes still open and notifies their ids on the commands-done channel (delivered
/// at commit), which wakes their long-polls.
pub async fn finish_probes(db: &PgPool, ids: &[Uuid]) -> anyhow::Result<i64> {
    Ok(perf::finish_probes(db, ids).await?)
}
