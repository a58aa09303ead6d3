//! A `DATABASE_URL` naming several hosts, as libpq writes them
//! (`postgres://u:p@db1:5432,db2:5432/orderflow`): the servers of a highly available
//! PostgreSQL, one primary and its standbys, any of which may be promoted. sqlx takes one host
//! (its URL parser reads a single host and port), so the pool follows the primary itself:
//!
//! - every new connection is refused unless its server is writable (`pg_is_in_recovery()` is
//!   false), so nothing is written to, or waits on, a standby or a demoted primary;
//! - a task checks once a second, through the pool, that it still reaches a writable server;
//!   when it does not, it asks each host in turn and points the pool at the first writable one
//!   (`Pool::set_connect_options`). Connections to a server that went away fail their ping and
//!   are replaced on the next acquire.
//!
//! One URL with one host is used as it is, with no task.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};
use std::time::Duration;

/// How often the pool checks that it still reaches the primary.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for one host's answer while looking for the primary.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The single-host URLs of `url`: itself when it names one host, else one per host of its
/// comma-separated host list, each with the rest of the URL (user, password, database, options).
pub fn split_hosts(url: &str) -> Vec<String> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return vec![url.to_owned()];
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    if !hosts.contains(',') {
        return vec![url.to_owned()];
    }
    hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|host| {
            format!(
                "{}{userinfo}{host}{}",
                &url[..scheme_end],
                &rest[authority_end..]
            )
        })
        .collect()
}

/// A lazily connecting pool over `hosts` (each already made into connect options), following
/// the primary as described above. `hosts` has at least two entries.
pub(crate) fn following_pool(options: PgPoolOptions, hosts: Vec<PgConnectOptions>) -> PgPool {
    let pool = options
        .after_connect(|conn, _| {
            Box::pin(async move {
                if is_writable(conn).await? {
                    Ok(())
                } else {
                    Err(sqlx::Error::Protocol(
                        "this server is a standby (read-only); looking for the primary".into(),
                    ))
                }
            })
        })
        .connect_lazy_with(hosts[0].clone());
    tokio::spawn(follow(pool.clone(), hosts));
    pool
}

async fn is_writable(conn: &mut PgConnection) -> sqlx::Result<bool> {
    sqlx::query_scalar!(r#"select not pg_is_in_recovery() as "writable!""#)
        .fetch_one(&mut *conn)
        .await
}

/// Until the pool is closed: once a second, whether the pool still reaches a writable server;
/// if not, the first host that is one becomes the pool's.
async fn follow(pool: PgPool, hosts: Vec<PgConnectOptions>) {
    let mut current = 0usize;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !pool.is_closed() {
        tick.tick().await;
        let healthy = tokio::time::timeout(ASK_TIMEOUT, async {
            let mut conn = pool.acquire().await?;
            is_writable(&mut conn).await
        })
        .await;
        if matches!(healthy, Ok(Ok(true))) {
            continue;
        }
        for k in 0..hosts.len() {
            let i = (current + k) % hosts.len();
            let asked = tokio::time::timeout(ASK_TIMEOUT, async {
                let mut conn = PgConnection::connect_with(&hosts[i]).await?;
                let writable = is_writable(&mut conn).await;
                let _ = conn.close().await;
                writable
            })
            .await;
            if matches!(asked, Ok(Ok(true))) {
                if i != current {
                    tracing::warn!(
                        from = %describe(&hosts[current]),
                        to = %describe(&hosts[i]),
                        "PostgreSQL's primary moved; following it"
                    );
                    pool.set_connect_options(hosts[i].clone());
                    current = i;
                }
                break;
            }
        }
    }
}

fn describe(options: &PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}

#[cfg(test)]
mod tests {
    use super::split_hosts;

    #[test]
    fn one_host_is_left_alone_and_several_become_one_url_each() {
        let one = "postgres://u:p@db1:5432/orderflow?sslmode=disable";
        assert_eq!(split_hosts(one), [one]);
        assert_eq!(
            split_hosts("postgres://u:p@db1:5432,db2:5433/orderflow?application_name=x"),
            [
                "postgres://u:p@db1:5432/orderflow?application_name=x",
                "postgres://u:p@db2:5433/orderflow?application_name=x"
            ]
        );
        assert_eq!(
            split_hosts("postgresql://[::1]:5440,127.0.0.1:5441/db"),
            [
                "postgresql://[::1]:5440/db",
                "postgresql://127.0.0.1:5441/db"
            ]
        );
        // A comma in the password (percent-encoded or not) is not a host separator.
        assert_eq!(
            split_hosts("postgres://u:a,b@db1/db"),
            ["postgres://u:a,b@db1/db"]
        );
    }
}
