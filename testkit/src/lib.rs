//! Support for the integration tests of every crate (a dev-dependency only; the binaries never
//! link it): a fresh database per test on the server `DATABASE_URL` names (empty, or cloned from
//! a template that already has the migrations), the broker of `AMQP_URL`, and the removal of both
//! when a test ends.

use orderflow_messaging::Topology;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use std::hash::{DefaultHasher, Hash, Hasher};

/// The server tests create their databases on (its database part is only used to connect).
pub fn base_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Creates an empty database `orderflow_test_<id>`; returns its URL and name.
pub async fn create_database(id: &str) -> (String, String) {
    create(id, None).await
}

/// Creates `orderflow_test_<id>` with `migrations` already applied: a copy of a template
/// database migrated once per set of migrations (and reused by every later test run), which is
/// cheaper than migrating every test's database. Returns its URL and name.
pub async fn create_migrated_database(id: &str, migrations: &Migrator) -> (String, String) {
    let template = ensure_template(migrations).await;
    create(id, Some(&template)).await
}

async fn create(id: &str, template: Option<&str>) -> (String, String) {
    let name = format!("orderflow_test_{id}");
    let admin = admin().await;
    let template = template.map_or(String::new(), |t| format!(r#" template "{t}""#));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"create database "{name}"{template}"#
    )))
    .execute(&admin)
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
        let statements = [
            format!(r#"drop database if exists "{name}" with (force)"#),
            format!(r#"create database "{name}""#),
        ];
        for statement in statements {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&admin)
                .await
                .expect("creating the template database");
        }
        let template = PgPool::connect(&database_url(&name))
            .await
            .expect("connecting to the template database");
        migrations
            .run(&template)
            .await
            .expect("migrating the template database");
        template.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            r#"alter database "{name}" is_template true"#
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

/// Deletes a test's queues and exchanges (if `topology` is given) and drops its database.
/// Blocking, on a thread of its own, so that it can run from `Drop` inside a test's runtime.
pub fn remove(topology: Option<Topology>, database_name: String) {
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        runtime.block_on(async move {
            if let Some(topology) = topology
                && let Ok(connection) =
                    lapin::Connection::connect(&amqp_url(), Default::default()).await
            {
                if let Ok(channel) = connection.create_channel().await {
                    let _ = topology.delete(&channel).await;
                }
                let _ = connection.close(200, "test done".into()).await;
            }
            if let Ok(admin) = PgPool::connect(&base_database_url()).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    r#"drop database if exists "{database_name}" with (force)"#
                )))
                .execute(&admin)
                .await;
            }
        });
    });
    let _ = cleanup.join();
}

/// A subscriber of `topology`'s status events: an exclusive, server-named queue bound with
/// `binding` (e.g. `#`) on a connection of its own. Returns the connection (close it at the end),
/// the channel and the queue's name.
pub async fn subscribe_events(
    topology: &Topology,
    binding: &str,
) -> (lapin::Connection, lapin::Channel, String) {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .expect("the broker of AMQP_URL is up");
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.name().clone(),
            topology.events_exchange().as_str().into(),
            binding.into(),
            QueueBindOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    (connection, channel, queue.name().to_string())
}
