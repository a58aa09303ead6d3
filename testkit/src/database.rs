//! A fresh database per test on the server of `DATABASE_URL`: empty, or a copy of a template that
//! already has the migrations (migrated once per set of migrations, and reused by every later
//! test run).

use crate::servers::base_database_url;
use orderflow_storage::admin as databases;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Creates an empty database `orderflow_test_<id>`; returns its URL and name.
pub async fn create_database(id: &str) -> (String, String) {
    create(id, None).await
}

/// Creates `orderflow_test_<id>` with `migrations` already applied: a copy of a template
/// database migrated once per set of migrations, which is cheaper than migrating every test's
/// database. Returns its URL and name.
pub async fn create_migrated_database(id: &str, migrations: &Migrator) -> (String, String) {
    let template = ensure_template(migrations).await;
    create(id, Some(&template)).await
}

/// Drops database `name` (and ends its sessions); nothing if it does not exist or the server is
/// unreachable (cleanup is best effort).
pub async fn drop_database(name: &str) {
    if let Ok(admin) = PgPool::connect(&base_database_url()).await {
        let _ = databases::drop_database(&admin, name).await;
        admin.close().await;
    }
}

async fn create(id: &str, template: Option<&str>) -> (String, String) {
    let name = format!("orderflow_test_{id}");
    let admin = admin().await;
    databases::create_database(&admin, &name, template)
        .await
        .expect("creating the test database");
    admin.close().await;
    (database_url(&name), name)
}

/// The template for `migrations`, made if it does not exist yet. Its name carries a hash of the
/// migrations' versions and checksums, so a changed migration makes a new template. Test
/// processes run in parallel: the first makes it under an advisory lock, and a template only
/// counts once it is marked one (`datistemplate`), which happens after its last migration.
async fn ensure_template(migrations: &Migrator) -> String {
    let mut hasher = DefaultHasher::new();
    for migration in migrations.iter() {
        (migration.version, &*migration.checksum).hash(&mut hasher);
    }
    let name = format!("orderflow_template_{:016x}", hasher.finish());
    let admin = admin().await;
    if is_template(&admin, &name).await {
        admin.close().await;
        return name;
    }
    let mut lock = admin
        .acquire()
        .await
        .expect("a connection for the template lock");
    // Any fixed number: "someone is making a test template".
    sqlx::query("select pg_advisory_lock(7243901)")
        .execute(&mut *lock)
        .await
        .expect("taking the template lock");
    if !is_template(&admin, &name).await {
        // A half-made one (a process that died making it) is made again.
        databases::drop_database(&admin, &name)
            .await
            .expect("dropping a half-made template database");
        databases::create_database(&admin, &name, None)
            .await
            .expect("creating the template database");
        let template = PgPool::connect(&database_url(&name))
            .await
            .expect("connecting to the template database");
        migrations
            .run(&template)
            .await
            .expect("migrating the template database");
        template.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "alter database {} is_template true",
            databases::quote_identifier(&name)
        )))
        .execute(&admin)
        .await
        .expect("marking the template database");
    }
    sqlx::query("select pg_advisory_unlock(7243901)")
        .execute(&mut *lock)
        .await
        .expect("releasing the template lock");
    drop(lock);
    admin.close().await;
    name
}

/// Is `name` a finished template (marked one after its last migration)?
async fn is_template(admin: &PgPool, name: &str) -> bool {
    sqlx::query_scalar(
        "select exists (select 1 from pg_database where datname = $1 and datistemplate)",
    )
    .bind(name)
    .fetch_one(admin)
    .await
    .expect("reading pg_database")
}

async fn admin() -> PgPool {
    PgPool::connect(&base_database_url())
        .await
        .expect("the test PostgreSQL is reachable (see README)")
}

/// The URL of database `name` on the tests' server.
fn database_url(name: &str) -> String {
    let (server, _) = base_database_url()
        .rsplit_once('/')
        .map(|(s, d)| (s.to_owned(), d.to_owned()))
        .expect("DATABASE_URL has a database part");
    format!("{server}/{name}")
}
