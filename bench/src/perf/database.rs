//! Each system's data: a fresh database on the given server (dropped at the end), orderflow's
//! schema, a client, and orders seeded set-based (`generate_series`, one statement per table per
//! chunk) in exactly the shape orderflow leaves a created order: its stream, its applied create
//! command, the projection and the first event. Growth adds more of the same.

use anyhow::Context as _;
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
        let admin = PgPool::connect(server_url)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::query(sqlx::AssertSqlSafe(format!(r#"create database "{name}""#)))
            .execute(&admin)
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
        if let Ok(admin) = PgPool::connect(&self.admin_url).await {
            let statement = format!(r#"drop database if exists "{}" with (force)"#, self.name);
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&admin)
                .await
            {
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
        let mut tx = db.begin().await?;
        // A temporary table fixes each order's ids once for the four inserts below.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "create temporary table perf_seed on commit drop as
             select gen_random_uuid() as order_id, gen_random_uuid() as command_id
             from generate_series(1, {chunk})"
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into order_streams (order_id, client_id, last_seq, processed_seq)
             select order_id, $1, 1, 1 from perf_seed",
        )
        .bind(client)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into commands (id, client_id, order_id, seq, kind, body, source, status,
                                   result_version, partition, published_at, finished_at)
             select command_id, $1, order_id, 1, 'create', $2, 'http', 'applied', 1, 0, now(), now()
             from perf_seed",
        )
        .bind(client)
        .bind(&create)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into orders (id, client_id, customer_id, currency, status, version, items,
                                 total_cents, created_at, updated_at)
             select order_id, $1, 'perf', 'EUR', 'pending', 1, '[]', 0, now(), now() from perf_seed",
        )
        .bind(client)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into order_events (order_id, seq, command_id, type, data, recorded_at)
             select order_id, 1, command_id, 'order_created', $1, now() from perf_seed",
        )
        .bind(&created)
        .execute(&mut *tx)
        .await?;
        let chunk_ids: Vec<Uuid> = sqlx::query_scalar("select order_id from perf_seed")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        ids.extend(chunk_ids);
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
    let have: i64 = sqlx::query_scalar("select count(*) from orders")
        .fetch_one(db)
        .await?;
    let missing = total.saturating_sub(have as usize);
    seed_orders(db, client, missing).await?;
    sqlx::query("analyze order_streams, commands, orders, order_events")
        .execute(db)
        .await?;
    let ids = sqlx::query_scalar("select id from orders order by random() limit $1")
        .bind(active as i64)
        .fetch_all(db)
        .await?;
    Ok((ids, started.elapsed().as_secs_f64()))
}

/// Records `count` accepted commands that nothing will ever deliver (they are marked published,
/// so no relay republishes them): long-poll targets that stay open until [`finish_probes`].
pub async fn probe_commands(db: &PgPool, client: Uuid, count: usize) -> anyhow::Result<Vec<Uuid>> {
    let order = Uuid::new_v4();
    let body = serde_json::json!({"type": "add_item", "sku": "probe", "quantity": 1, "unit_price_cents": 1});
    let mut tx = db.begin().await?;
    sqlx::query(
        "insert into order_streams (order_id, client_id, last_seq, processed_seq) values ($1, $2, 1, 1)",
    )
    .bind(order)
    .bind(client)
    .execute(&mut *tx)
    .await?;
    let ids = sqlx::query_scalar(
        "insert into commands (id, client_id, order_id, seq, kind, body, source, partition, published_at)
         select gen_random_uuid(), $1, $2, 1000000 + g, 'add_item', $3, 'http', 0, now()
         from generate_series(1, $4::int) g
         returning id",
    )
    .bind(client)
    .bind(order)
    .bind(&body)
    .bind(count as i32)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ids)
}

/// Ends the probes the way the worker ends a command (status, then `pg_notify` of each id, sent
/// at commit), which wakes their long-polls.
pub async fn finish_probes(db: &PgPool, ids: &[Uuid]) -> anyhow::Result<i64> {
    let woken = sqlx::query_scalar(
        "with done as (
             update commands set status = 'rejected', reason = 'perf_probe', finished_at = now()
             where id = any($1) and status = 'accepted'
             returning id
         )
         select count(pg_notify($2, id::text)) from done",
    )
    .bind(ids)
    .bind(orderflow_storage::COMMAND_DONE_CHANNEL)
    .fetch_one(db)
    .await?;
    Ok(woken)
}
