//! Where the broker is: one address, or the nodes of a RabbitMQ cluster. `AMQP_URL` may list
//! several, comma-separated (`amqp://u:p@node1:5672/%2f,amqp://u:p@node2:5672/%2f`; a comma
//! inside a password is written `%2C`). Every new connection tries them in turn, starting with
//! the one that last answered, so a lost node costs one reconnect, not an outage: neither lapin
//! nor deadpool-lapin takes more than one address (lapin 4's `AMQPUri` has one host), hence this
//! small rotation of our own.

use lapin::{Connection, ConnectionProperties};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Longest wait for one node to accept a connection (TCP, TLS and the AMQP handshake): a node
/// whose link is cut answers nothing, and the next one should be tried instead.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The AMQP heartbeat (seconds) of a URL that names none. The broker proposes 60 s, and then
/// a process that stopped (SIGSTOP, a frozen VM) or a black-holed node keeps its connection, and
/// with it a partition's single active consumer, for up to two minutes. RabbitMQ drops a silent
/// client after about two and a half heartbeat intervals (measured here: 12.5 s with 5 s, 7.5 s
/// with 3 s), and only then does the partition's new lease owner become the active consumer: 3 s
/// keeps a stopped worker's partitions under 10 s. Below RabbitMQ's advice (5–20 s) for busy
/// hosts: a URL's own `heartbeat=` overrides it.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 3;

/// The broker's addresses, with the one to try first.
#[derive(Debug)]
pub struct Brokers {
    urls: Vec<String>,
    preferred: AtomicUsize,
}

impl Brokers {
    /// Parses a comma-separated list of AMQP URLs (`amqp://` or `amqps://`).
    pub fn parse(list: &str) -> Result<Self, String> {
        let urls: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| with_default(u, "heartbeat", &DEFAULT_HEARTBEAT_SECS.to_string()))
            .collect();
        if urls.is_empty() {
            return Err("no AMQP URL given".into());
        }
        if let Some(bad) = urls
            .iter()
            .find(|u| !(u.starts_with("amqp://") || u.starts_with("amqps://")))
        {
            return Err(format!(
                "not an AMQP URL (amqp:// or amqps://): {}",
                redacted(bad)
            ));
        }
        Ok(Self {
            urls,
            preferred: AtomicUsize::new(0),
        })
    }

    /// How many addresses there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Connects to the first node that accepts, starting with the one that accepted last; the
    /// last node's error when none does.
    pub async fn connect(&self, properties: ConnectionProperties) -> lapin::Result<Connection> {
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last_error = None;
        for k in 0..self.urls.len() {
            let i = (start + k) % self.urls.len();
            let url = &self.urls[i];
            let attempt = Connection::connect(url, properties.clone());
            let error = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok(connection)) => {
                    if i != start {
                        tracing::info!(broker = %redacted(url), "connected to another broker node");
                    }
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(connection);
                }
                Ok(Err(e)) => e,
                Err(_) => lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {CONNECT_TIMEOUT:?}"),
                )),
            };
            if self.urls.len() > 1 {
                tracing::warn!(broker = %redacted(url), error = %error,
                    "broker node unreachable; trying the next");
            }
            last_error = Some(error);
        }
        Err(last_error.expect("there is at least one address"))
    }
}

/// `url` with `name=value` in its query unless it already has `name`.
pub fn with_default(url: &str, name: &str, value: &str) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    if query.split('&').any(|p| p.split('=').next() == Some(name)) {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{name}={value}")
}

/// The user of the first of the (comma-separated) AMQP URLs: every node of a cluster knows the
/// same users, and a producer's messages carry it as their `user_id`, which RabbitMQ checks.
pub fn user_of(list: &str) -> Result<String, String> {
    let first = list.split(',').map(str::trim).find(|u| !u.is_empty());
    let first = first.ok_or_else(|| "no AMQP URL given".to_owned())?;
    let uri: lapin::uri::AMQPUri = first
        .parse()
        .map_err(|e| format!("not an AMQP URL ({e}): {}", redacted(first)))?;
    Ok(uri.authority.userinfo.username)
}

/// `url` without its password, for logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A deadpool manager whose connections come from [`Brokers::connect`].
pub struct Manager {
    pub(crate) brokers: Brokers,
    pub(crate) properties: Box<dyn Fn() -> ConnectionProperties + Send + Sync>,
}

impl deadpool::managed::Manager for Manager {
    type Type = Connection;
    type Error = lapin::Error;

    async fn create(&self) -> Result<Connection, lapin::Error> {
        self.brokers.connect((self.properties)()).await
    }

    async fn recycle(
        &self,
        connection: &mut Connection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<lapin::Error> {
        if connection.status().connected() {
            Ok(())
        } else {
            Err(deadpool::managed::RecycleError::message(format!(
                "the connection is not connected: {:?}",
                connection.status()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_on_commas_and_each_must_be_an_amqp_url() {
        let brokers = Brokers::parse(" amqp://a:5681/%2f , amqps://b:5682/%2f,").unwrap();
        assert_eq!(
            brokers.urls,
            [
                "amqp://a:5681/%2f?heartbeat=3",
                "amqps://b:5682/%2f?heartbeat=3"
            ]
        );
        assert_eq!(Brokers::parse("amqp://x/%2f").unwrap().len(), 1);
        assert!(Brokers::parse("").is_err());
        let error = Brokers::parse("amqp://a/%2f,http://u:secret@b/").unwrap_err();
        assert!(
            error.contains("http://u:***@b/") && !error.contains("secret"),
            "{error}"
        );
    }

    #[test]
    fn a_url_without_a_heartbeat_gets_the_short_default_and_one_with_keeps_its_own() {
        let brokers =
            Brokers::parse("amqp://a/%2f?heartbeat=30,amqp://b/%2f?frame_max=8192").unwrap();
        assert_eq!(
            brokers.urls,
            [
                "amqp://a/%2f?heartbeat=30",
                "amqp://b/%2f?frame_max=8192&heartbeat=3"
            ]
        );
    }

    #[test]
    fn a_password_never_reaches_a_log_line() {
        assert_eq!(
            redacted("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redacted("amqp://127.0.0.1/%2f"), "amqp://127.0.0.1/%2f");
    }

    #[test]
    fn the_user_is_the_first_urls_and_a_url_without_one_is_the_default_guest() {
        assert_eq!(
            user_of(" amqp://billing:pw@a:5672/%2f,amqp://other:pw@b/%2f").unwrap(),
            "billing"
        );
        assert_eq!(user_of("amqp://a:5672/%2f").unwrap(), "guest");
        assert!(user_of(" , ").is_err());
        let error = user_of("amqp://u:secret@a:notaport/%2f").unwrap_err();
        assert!(!error.contains("secret"), "{error}");
    }
}
