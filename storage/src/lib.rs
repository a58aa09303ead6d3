//! PostgreSQL access: the only place SQL lives. One file per aggregate; every function takes an
//! executor (a pool or a transaction) so callers compose transactions.

pub mod admin;
pub mod audit;
pub mod client_events;
pub mod clients;
pub mod commands;
pub mod dashboard;
mod errors;
pub mod idempotency;
pub mod inventory;
pub mod layout;
pub mod leases;
pub mod listen;
pub mod observability;
pub mod operators;
pub mod orders;
pub mod outbox;
pub mod pages;
pub mod payments;
pub mod perf;
pub mod presence;
pub mod primary;
pub mod producers;
pub mod webhooks;

pub use errors::{ErrorClass, classify, is_data_refused, is_lease_lost, is_transient};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{PgPool, migrate::Migrator};
use std::time::Duration;

/// The embedded migrations (`migrations/` at the repository root).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// LISTEN/NOTIFY channel woken when a lease moves or a worker joins or leaves (payload empty;
/// triggers of the migration `lease_change_notify`).
pub const LEASES_CHANNEL: &str = "orderflow_leases";
/// LISTEN/NOTIFY channel woken when outbox rows are committed (payload empty).
pub const OUTBOX_CHANNEL: &str = "orderflow_outbox";
/// LISTEN/NOTIFY channel carrying the id of each command that reached a final status.
pub const COMMAND_DONE_CHANNEL: &str = "orderflow_command_done";
/// LISTEN/NOTIFY channel carrying the id of each client whose row changed (a trigger notifies:
/// revocations, rate-limit overrides); API processes drop their cached keys on it.
pub const CLIENTS_CHANNEL: &str = "orderflow_clients";
/// LISTEN/NOTIFY channel carrying the id of each client whose event feed got something new (the
/// outbox relay notifies after each batch it passed on: [`outbox::announce_client_events`]).
pub const CLIENT_EVENTS_CHANNEL: &str = "orderflow_client_events";

/// Opens a pool. Connections are made lazily, so a process starts while PostgreSQL restarts and
/// a request fails fast (acquire timeout) instead of hanging. See [`connect_options`] for TLS,
/// and [`primary`] for a URL that names several hosts (a primary and its standbys).
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    open(url, max_connections, |options| options)
}

/// [`pool`] whose sessions carry `application_name` (in `pg_stat_activity`, so that an operator
/// can tell whose they are), unless the URL names one itself.
pub fn named_pool(
    url: &str,
    max_connections: u32,
    application_name: &str,
) -> Result<PgPool, sqlx::Error> {
    let name = application_name_of(application_name);
    open(url, max_connections, |options| named(options, &name))
}

/// `options` with `application_name` `name`, unless they carry one (from the URL) already.
fn named(options: PgConnectOptions, name: &str) -> PgConnectOptions {
    if options.get_application_name().is_some() {
        options
    } else {
        options.application_name(name)
    }
}

/// The session settings of the pools with generic plans ([`pool_with_generic_plans`],
/// [`pool_releasing_idle_with_generic_plans`]).
const GENERIC_PLANS: [(&str, &str); 2] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
];

/// [`named_pool`], whose sessions plan every prepared statement once, for any parameters
/// (`plan_cache_mode = force_generic_plan`). For statements over arrays (`unnest($1::uuid[])`),
/// which PostgreSQL otherwise plans again at every execution: a custom plan knows the arrays'
/// lengths and looks cheaper than the generic one, so it is never given up. Measured on the
/// intake's batch ([`commands::record_batch`], 20,000 orders, one entry): 0.65–0.7 ms of planning
/// each time against 0.35–0.45 ms of execution.
///
/// A plan made once is made when the session first runs the statement, perhaps over tables that
/// are still nearly empty (a new deployment, a fresh benchmark database), and PostgreSQL keeps it
/// until the tables' statistics change, which without autovacuum is never. Over an empty
/// table a full scan is the cheapest plan, and it then stays while the table grows: the
/// intake's batch scanned `idempotency_keys` and `order_streams` whole, twice each, for every
/// batch (`storage/tests/intake_costs.rs`). So these sessions also take full scans only where
/// no index serves (`enable_seqscan = off`): the statements run here look rows up by their keys.
pub fn pool_with_generic_plans(
    url: &str,
    max_connections: u32,
    application_name: &str,
) -> Result<PgPool, sqlx::Error> {
    let name = application_name_of(application_name);
    open(url, max_connections, |options| {
        named(options.options(GENERIC_PLANS), &name)
    })
}

/// A pool over `url`'s host, or following the primary among its hosts (see [`primary`]), each
/// host's options made by [`connect_options`] and then `customize`. Every session runs without
/// JIT compilation (`jit = off`): orderflow's statements are short lookups and writes, and
/// PostgreSQL compiled the ones its estimates called expensive (the worker's gauges, e.g. the
/// outbox backlog's count) again at every call: LLVM was 0.8 % of the machine's samples in a
/// `perf` profile of the benchmark's `max` phase (2026-12-05), all of it in one worker session.
fn open(
    url: &str,
    max_connections: u32,
    customize: impl Fn(PgConnectOptions) -> PgConnectOptions,
) -> Result<PgPool, sqlx::Error> {
    let options = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5));
    let mut hosts = primary::split_hosts(url)
        .iter()
        .map(|url| connect_options(url).map(|o| customize(o.options([("jit", "off")]))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if hosts.len() == 1 {
        options.connect_lazy_with(hosts.remove(0))
    } else {
        primary::following_pool(options, hosts)
    })
}

/// [`pool`], whose sessions PostgreSQL ends when they sit idle inside a transaction for longer
/// than `idle_in_transaction`: a process stopped mid-transaction (SIGSTOP, a debugger, a
/// frozen VM) then releases its row locks instead of blocking whoever took over its work. No
/// statement of theirs runs (or waits for a lock) longer than `statement`: it is cancelled
/// (`query_canceled`, a transient error: the caller retries and says so) rather than stall its
/// caller silently, and a statement whose caller gave up on it (a timed-out future) does not
/// go on waiting in PostgreSQL with its locks. Its sessions carry `application_name` (in
/// `pg_stat_activity`), so that an operator, or a fault test, can tell one process's sessions
/// from another's.
pub fn pool_releasing_idle(
    url: &str,
    max_connections: u32,
    idle_in_transaction: Duration,
    statement: Duration,
    application_name: &str,
) -> Result<PgPool, sqlx::Error> {
    releasing_idle(
        url,
        max_connections,
        idle_in_transaction,
        statement,
        application_name,
        &[],
    )
}

/// [`pool_releasing_idle`] whose sessions also plan every prepared statement once, as
/// [`pool_with_generic_plans`] does: for the worker's combined transactions, whose set-based
/// statements take arrays ([`commands::lock_many_for_apply`], [`commands::finish_many`]) and
/// would otherwise be planned again at every execution.
pub fn pool_releasing_idle_with_generic_plans(
    url: &str,
    max_connections: u32,
    idle_in_transaction: Duration,
    statement: Duration,
    application_name: &str,
) -> Result<PgPool, sqlx::Error> {
    releasing_idle(
        url,
        max_connections,
        idle_in_transaction,
        statement,
        application_name,
        &GENERIC_PLANS,
    )
}

fn releasing_idle(
    url: &str,
    max_connections: u32,
    idle_in_transaction: Duration,
    statement: Duration,
    application_name: &str,
    more: &[(&str, &str)],
) -> Result<PgPool, sqlx::Error> {
    let idle = format!("{}ms", idle_in_transaction.as_millis());
    let statement = format!("{}ms", statement.as_millis().max(1));
    let name = application_name_of(application_name);
    open(url, max_connections, |options| {
        options
            .options([
                ("idle_in_transaction_session_timeout", idle.as_str()),
                ("statement_timeout", statement.as_str()),
            ])
            .options(more.iter().copied())
            .application_name(&name)
    })
}

/// `name` cut to what PostgreSQL keeps of an `application_name` (63 bytes, at a character
/// boundary), so that what it shows is what was asked for, as far as it goes.
pub fn application_name_of(name: &str) -> String {
    const KEPT: usize = 63;
    let mut end = name.len().min(KEPT);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// The URL's connect options, with one default changed: TLS to a loopback host protects nothing
/// and costs a third of a small query's throughput on this machine (`pgbench -S`, 4 clients:
/// about 31k transactions/s with `sslmode=require`, 50k without), so a loopback connection whose
/// URL (or `PGSSLMODE`) names no `sslmode` is made without it. Any other host keeps sqlx's
/// default (`prefer`).
pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let pgsslmode = std::env::var_os("PGSSLMODE").is_some();
    Ok(if without_tls(url, options.get_host(), pgsslmode) {
        options.ssl_mode(PgSslMode::Disable)
    } else {
        options
    })
}

/// Whether [`connect_options`] makes connections to `url` without TLS (a tool that connects
/// with libpq instead, like the benchmark's pgbench, then asks for `sslmode=disable` to match).
pub fn goes_without_tls(url: &str) -> bool {
    url.parse::<PgConnectOptions>().is_ok_and(|options| {
        without_tls(
            url,
            options.get_host(),
            std::env::var_os("PGSSLMODE").is_some(),
        )
    })
}

/// Whether [`connect_options`] turns TLS off: a loopback host, and no `sslmode` asked for.
fn without_tls(url: &str, host: &str, pgsslmode_set: bool) -> bool {
    !url.contains("sslmode=") && !pgsslmode_set && is_loopback(host)
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A round trip to PostgreSQL (readiness).
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("select 1").execute(pool).await.map(|_| ())
}

/// Why the worker refuses to run on this database.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database schema is at migration {found:?} but this build needs {needed}; run `orderflow-api migrate` first"
    )]
    Behind { found: Option<i64>, needed: i64 },
    #[error("could not read the schema version: {0}")]
    Db(#[from] sqlx::Error),
}

/// Checks that every migration this build knows has been applied.
pub async fn check_schema(pool: &PgPool) -> Result<(), SchemaError> {
    let needed = MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .expect("at least one migration");
    let table_exists: bool =
        sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
            .fetch_one(pool)
            .await?;
    let found: Option<i64> = if table_exists {
        sqlx::query_scalar("select max(version) from _sqlx_migrations where success")
            .fetch_one(pool)
            .await?
    } else {
        None
    };
    if found.is_some_and(|v| v >= needed) {
        Ok(())
    } else {
        Err(SchemaError::Behind { found, needed })
    }
}

/// Most bytes of a sentence stored for people (a reason, a trace header).
pub const MAX_STORED_TEXT_BYTES: usize = 2048;

/// Text from outside (a message, a header, an error that quotes them) made storable: NUL, which
/// PostgreSQL's `text` and `jsonb` refuse, becomes U+FFFD, other control characters but newline
/// and tab become spaces, and it is cut at a character boundary to at most `max_bytes`.
pub fn storable_text(text: &str, max_bytes: usize) -> String {
    let mut clean: String = text
        .chars()
        .map(|c| match c {
            '\0' => '\u{FFFD}',
            '\n' | '\t' => c,
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if clean.len() > max_bytes {
        let mut end = max_bytes;
        while !clean.is_char_boundary(end) {
            end -= 1;
        }
        clean.truncate(end);
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_application_name_is_cut_where_postgresql_cuts_it_at_a_character_boundary() {
        assert_eq!(
            application_name_of("orderflow-worker w1"),
            "orderflow-worker w1"
        );
        let long = format!("orderflow-worker {}", "é".repeat(40));
        let kept = application_name_of(&long);
        assert!(kept.len() <= 63 && kept.len() >= 62, "{}", kept.len());
        assert!(long.starts_with(&kept));
    }

    #[test]
    fn stored_text_has_no_nul_no_control_characters_and_a_bound() {
        assert_eq!(storable_text("x\0y\u{7}z\n", 100), "x\u{FFFD}y z\n");
        assert_eq!(storable_text("ééé", 3), "é");
        assert_eq!(storable_text("plain", 100), "plain");
    }

    #[test]
    fn a_loopback_host_without_an_sslmode_goes_without_tls() {
        let url = "postgres://u:p@127.0.0.1:5432/db";
        assert!(without_tls(url, "127.0.0.1", false));
        assert!(without_tls("postgres://u@localhost/db", "localhost", false));
        assert!(without_tls("postgres://u@[::1]/db", "::1", false));
        // Asked for in the URL or in PGSSLMODE: left alone.
        let require = "postgres://u@127.0.0.1/db?sslmode=require";
        assert!(!without_tls(require, "127.0.0.1", false));
        assert!(!without_tls(url, "127.0.0.1", true));
        // Another host: left alone.
        assert!(!without_tls(
            "postgres://u@db.internal/db",
            "db.internal",
            false
        ));
        assert!(!without_tls("postgres://u@10.0.0.7/db", "10.0.0.7", false));
    }

    #[test]
    fn the_url_still_decides_the_mode_it_names() {
        let options = connect_options("postgres://u@127.0.0.1/db?sslmode=require").unwrap();
        assert!(matches!(options.get_ssl_mode(), PgSslMode::Require));
    }
}
