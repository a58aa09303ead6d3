//! Webhook deliveries: the clients' events, sent to their endpoints, signed the Standard Webhooks
//! way, at least once, per order in order (the scheme is in the migration `webhooks` and in
//! [`orderflow_storage::webhooks`]).
//!
//! A loop fans the feed out into each endpoint's backlog, claims what is due and sends each
//! claimed delivery in a task of its own: at most [`WebhookConfig::concurrency`] at once in this
//! process and [`WebhookConfig::per_endpoint`] per endpoint across every worker. It runs when
//! this worker's outbox relay relayed events, when a send ended, and every [`TICK`] (no LISTEN:
//! that would hold a pool connection for good, and the relay already knows when the feed grew).
//! It runs beside the pipeline, never in it: an endpoint that is slow or down holds only its own
//! deliveries.
//!
//! No request forgery: a request goes only to a public address ([`is_public`], checked on every
//! address the name resolves to, at connection time, so that a name cannot be re-pointed after
//! the check) unless the operator allows private ones, follows no redirect and uses no proxy.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use orderflow_contract::webhooks::{check_url, is_public, wants};
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_storage::webhooks::{self as store, Claimed, Outcome};
use rand::Rng;
use sqlx::PgPool;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How webhooks are delivered (the worker's `--webhook-*` options).
#[derive(clap::Args, Clone, Debug)]
pub struct WebhookConfig {
    /// Most time one delivery may take (connecting, sending, and the endpoint's answer); past it
    /// the attempt failed and is retried.
    #[arg(long = "webhook-timeout-ms", env = "ORDERFLOW_WEBHOOK_TIMEOUT_MS",
          default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub timeout_ms: u64,

    /// Most deliveries this worker sends at once, over every endpoint.
    #[arg(long = "webhook-concurrency", env = "ORDERFLOW_WEBHOOK_CONCURRENCY",
          default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Most deliveries in flight to one endpoint, over every worker: a slow endpoint holds no
    /// more than this of the senders.
    #[arg(long = "webhook-per-endpoint", env = "ORDERFLOW_WEBHOOK_PER_ENDPOINT",
          default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub per_endpoint: u16,

    /// Most deliveries in flight for one client's endpoints together, over every worker: a
    /// client with many slow endpoints holds no more than this of the senders, and clients'
    /// due deliveries are taken in turn.
    #[arg(long = "webhook-per-client", env = "ORDERFLOW_WEBHOOK_PER_CLIENT",
          default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub per_client: u16,

    /// Most deliveries an endpoint may have waiting; beyond it its events wait in the feed (and
    /// are lost to it if they outlive the feed's retention while it is down).
    #[arg(long = "webhook-backlog", env = "ORDERFLOW_WEBHOOK_BACKLOG",
          default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub backlog: i64,

    /// Wait before the first retry; each retry waits twice the one before (up to
    /// `--webhook-max-retry-ms`), less a random part of up to a half.
    #[arg(long = "webhook-first-retry-ms", env = "ORDERFLOW_WEBHOOK_FIRST_RETRY_MS",
          default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub first_retry_ms: u64,

    /// Longest wait between two retries.
    #[arg(long = "webhook-max-retry-ms", env = "ORDERFLOW_WEBHOOK_MAX_RETRY_MS",
          default_value_t = 3_600_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub max_retry_ms: u64,

    /// A delivery still failing this long after its first attempt is given up, and its endpoint
    /// marked failing (until the client retries a delivery). Three days by default.
    #[arg(long = "webhook-give-up-after-secs", env = "ORDERFLOW_WEBHOOK_GIVE_UP_AFTER_SECS",
          default_value_t = 259_200, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub give_up_after_secs: u64,
}

/// How often the loop looks for due deliveries when nothing woke it.
const TICK: Duration = Duration::from_millis(500);
/// How often deliveries whose turn came while they were being fanned out are made ready (see
/// `orderflow_storage::webhooks::make_ready`; normally the delivery before does it at once).
const HEAL_EVERY: Duration = Duration::from_secs(30);
/// Events fanned out to one endpoint per pass.
const FAN_OUT_BATCH: i64 = 500;
/// What the worker calls itself in its requests (`User-Agent`).
const USER_AGENT: &str = concat!("orderflow-webhooks/", env!("CARGO_PKG_VERSION"));

/// The wait before the next attempt, after `attempts` failed ones: `first` doubled per attempt
/// before, at most `max`, less a random part of up to a half of it (so that endpoints that
/// failed together do not come back together). `unit` in [0, 1) is that random part.
pub fn retry_delay(attempts: i32, first: Duration, max: Duration, unit: f64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(40);
    let full = first.saturating_mul(1u32 << doublings.min(31)).min(max);
    full.mul_f64(1.0 - unit.clamp(0.0, 1.0) / 2.0)
}

/// Resolves names for the requests, keeping only the addresses a request may go to (an IP
/// literal is not resolved: [`check_url`] judges it before every attempt).
#[derive(Clone)]
pub struct Guard {
    allow_private: bool,
}

type Resolved = std::vec::IntoIter<SocketAddr>;

impl tower::Service<Name> for Guard {
    type Response = Resolved;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Resolved>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            // A name that does not resolve and one that resolves only inside say the same to the
            // client (the delivery log is theirs): what a name inside resolves to is the
            // operator's to know, in the worker's log.
            let refused = || {
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{host} does not resolve to a public address (private endpoints only \
                         when the operator allows them)"
                    ),
                )
            };
            let found: Vec<_> = match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(found) => found.collect(),
                Err(e) => {
                    tracing::debug!(host, error = %e, "a webhook endpoint's name does not resolve");
                    return Err(refused());
                }
            };
            let allowed: Vec<_> = found
                .iter()
                .copied()
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if allowed.is_empty() {
                tracing::info!(host, addresses = ?found,
                               "a webhook endpoint's name resolves only to non-public addresses");
                return Err(refused());
            }
            Ok(allowed.into_iter())
        })
    }
}

/// What deliveries go out with: HTTP/1.1 over TLS (rustls with ring, as sqlx's, and the Web PKI
/// roots) or, where the operator allows it, plain HTTP; the resolver above; no proxy and no
/// redirects (a hyper client follows none and uses none).
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector<Guard>>, Full<Bytes>>;

pub fn http_client(config: &WebhookConfig, allow_private: bool) -> anyhow::Result<HttpClient> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(Guard { allow_private });
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_millis(config.timeout_ms)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

pub struct Deliverer {
    pub db: PgPool,
    pub config: WebhookConfig,
    pub allow_private: bool,
    pub client: HttpClient,
    /// Told by this worker's outbox relay when it relayed events (the feed grew); the loop
    /// also looks every [`TICK`] (another worker's relay tells only its own deliverer).
    pub feed_grew: Arc<tokio::sync::Notify>,
}

impl Deliverer {
    /// Fans out, claims and sends until `shutdown`; then waits for the requests in flight (at
    /// most one timeout): one cut short is sent again when its claim lapses.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(usize::from(this.config.concurrency)));
        let mut sending = JoinSet::new();
        let mut heal = tokio::time::interval(HEAL_EVERY);
        heal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Err(e) = this.pass(&slots, &mut sending).await {
                tracing::warn!(error = %e, "webhook deliveries: a pass failed; trying again");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = this.feed_grew.notified() => {}
                Some(_) = sending.join_next(), if !sending.is_empty() => {}
                () = tokio::time::sleep(TICK) => {}
                _ = heal.tick() => {
                    match store::make_ready(&this.db).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deliveries = n, "webhook deliveries made ready late"),
                        Err(e) => tracing::warn!(error = %e, "making webhook deliveries ready failed"),
                    }
                }
            }
        }
        let limit = Duration::from_millis(this.config.timeout_ms) + Duration::from_secs(1);
        let drained = tokio::time::timeout(limit, async {
            while sending.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("webhook deliveries still in flight at shutdown; they go out again");
        }
    }

    /// One pass: fan out every endpoint behind, then claim as many due deliveries as there are
    /// free slots and start sending them.
    async fn pass(
        self: &Arc<Self>,
        slots: &Arc<Semaphore>,
        sending: &mut JoinSet<()>,
    ) -> anyhow::Result<()> {
        for endpoint in store::endpoints_behind(&self.db).await? {
            store::fan_out(
                &self.db,
                endpoint,
                self.config.backlog,
                FAN_OUT_BATCH,
                wants,
            )
            .await?;
        }
        let free = slots.available_permits();
        if free == 0 {
            return Ok(());
        }
        // The claim outlives the request's timeout, so that only a sender that died lets go.
        let hold = Duration::from_millis(self.config.timeout_ms) * 2 + Duration::from_secs(5);
        let shares = store::Shares {
            limit: free as i64,
            per_endpoint: i64::from(self.config.per_endpoint),
            per_client: i64::from(self.config.per_client),
        };
        let claimed = store::claim(&self.db, shares, hold).await?;
        for delivery in claimed {
            let permit = slots
                .clone()
                .try_acquire_owned()
                .expect("no more claimed than free slots");
            let this = self.clone();
            sending.spawn(async move {
                this.send(delivery).await;
                drop(permit);
            });
        }
        Ok(())
    }

    /// Sends one delivery and records what came of it.
    async fn send(&self, delivery: Claimed) {
        let (status, error) = match self.attempt(&delivery).await {
            Ok(status) if (200..300).contains(&status) => (Some(status), None),
            Ok(status) => (
                Some(status),
                Some(format!("the endpoint answered HTTP {status}")),
            ),
            Err(Attempt::Cannot(error)) => {
                // Nothing to send, or nowhere it may go: retrying cannot help.
                return self
                    .write(
                        &delivery,
                        Outcome::GivenUp {
                            status: None,
                            error: &error,
                        },
                    )
                    .await;
            }
            Err(Attempt::Failed(error)) => (None, Some(error)),
        };
        let outcome = match (&error, status) {
            (None, Some(status)) => Outcome::Delivered { status },
            (Some(error), status) => {
                let age = Utc::now() - delivery.first_attempt_at;
                let give_up = chrono::Duration::seconds(
                    i64::try_from(self.config.give_up_after_secs).unwrap_or(i64::MAX),
                );
                if age >= give_up {
                    Outcome::GivenUp { status, error }
                } else {
                    let delay = retry_delay(
                        delivery.attempts + 1,
                        Duration::from_millis(self.config.first_retry_ms),
                        Duration::from_millis(self.config.max_retry_ms),
                        rand::thread_rng().r#gen(),
                    );
                    let retry_at: DateTime<Utc> =
                        Utc::now() + chrono::Duration::from_std(delay).unwrap_or(give_up);
                    Outcome::Failed {
                        status,
                        error,
                        retry_at,
                    }
                }
            }
            (None, None) => unreachable!("an attempt either answered or failed"),
        };
        self.write(&delivery, outcome).await;
    }

    /// One HTTP request: the endpoint's answer, or why there was none.
    async fn attempt(&self, delivery: &Claimed) -> Result<u16, Attempt> {
        let (payload, recorded_at) = (&delivery.payload, &delivery.recorded_at);
        // Checked again at every attempt: the operator may have stopped allowing private
        // endpoints since this one was registered (a name is checked by the resolver).
        let url = check_url(&delivery.url, self.allow_private).map_err(Attempt::Cannot)?;
        let id = delivery.position.to_string();
        let body = serde_json::to_vec(&serde_json::json!({
            "id": id,
            "type": delivery.event_type,
            "created_at": recorded_at,
            "data": payload,
        }))
        .expect("JSON values serialise");
        let timestamp = Utc::now().timestamp();
        let signature = standardwebhooks::Webhook::new(&delivery.secret)
            .and_then(|w| w.sign(&id, timestamp, &body))
            .map_err(|e| Attempt::Cannot(format!("the endpoint's secret cannot sign: {e}")))?;
        let request = hyper::Request::post(url.as_str())
            .header("content-type", "application/json")
            .header("user-agent", USER_AGENT)
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Attempt::Cannot(format!("url: {e}")))?;
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let response = tokio::time::timeout(timeout, self.client.request(request))
            .await
            .map_err(|_| {
                Attempt::Failed(format!("no answer within {} ms", self.config.timeout_ms))
            })?
            .map_err(|e| Attempt::Failed(describe(&e)))?;
        // The body is not read: only the status counts, and an endpoint may answer anything.
        Ok(response.status().as_u16())
    }

    async fn write(&self, delivery: &Claimed, outcome: Outcome<'_>) {
        let counted = match &outcome {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Failed { .. } => "failed",
            Outcome::GivenUp { .. } => "given_up",
        };
        crate::metrics::webhook_attempt(counted);
        let result = store::record(&self.db, delivery, outcome).await;
        match result {
            Ok(true) => {}
            Ok(false) => tracing::info!(
                delivery = delivery.id,
                "a webhook delivery's claim lapsed before its outcome was written; the new \
                 holder records its own"
            ),
            // Its claim lapses and it is sent again: at least once.
            Err(e) => tracing::warn!(delivery = delivery.id, error = %e,
                                     "could not record a webhook delivery's outcome"),
        }
    }
}

/// Why an attempt got no answer.
enum Attempt {
    /// It may work next time (a timeout, a refused connection).
    Failed(String),
    /// It cannot work (nothing to send, or an address it may not go to).
    Cannot(String),
}

/// What went wrong with a request, for the delivery log: the error and its causes (which name
/// the resolver's refusal when that was it).
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{Guard, retry_delay};
    use std::time::Duration;
    use tower::Service;

    #[tokio::test]
    async fn a_name_that_resolves_to_a_private_address_is_refused_unless_allowed() {
        let name = || "localhost".parse().unwrap();
        let refused = Guard {
            allow_private: false,
        }
        .call(name())
        .await
        .expect_err("localhost is refused");
        assert!(
            refused
                .to_string()
                .contains("does not resolve to a public address"),
            "{refused}"
        );
        assert!(!refused.to_string().contains("127.0.0.1"), "{refused}");
        let allowed: Vec<_> = Guard {
            allow_private: true,
        }
        .call(name())
        .await
        .expect("allowed")
        .collect();
        assert!(allowed.iter().any(|a| a.ip().is_loopback()), "{allowed:?}");
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap_with_up_to_half_taken_off() {
        let (first, max) = (Duration::from_secs(5), Duration::from_secs(3600));
        assert_eq!(retry_delay(1, first, max, 0.0), Duration::from_secs(5));
        assert_eq!(retry_delay(2, first, max, 0.0), Duration::from_secs(10));
        assert_eq!(retry_delay(4, first, max, 0.0), Duration::from_secs(40));
        assert_eq!(retry_delay(20, first, max, 0.0), max);
        assert_eq!(retry_delay(i32::MAX, first, max, 0.0), max);
        let most_off = retry_delay(3, first, max, 0.999_999);
        assert!(most_off >= Duration::from_secs(10) && most_off < Duration::from_millis(10_001));
        let jittered = retry_delay(3, first, max, 0.5);
        assert_eq!(jittered, Duration::from_secs(15));
        assert_eq!(retry_delay(0, first, max, 0.0), first);
    }
}
