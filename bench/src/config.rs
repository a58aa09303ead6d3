//! What one audit run is asked to do: the stack to audit, the workload's shape and the seed.
//! Built by the CLI (`cli.rs`) or directly by tests, so the library never parses arguments.

use std::path::PathBuf;
use std::time::Duration;

/// One adversarial scenario, each switched on by name.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Many clients on a few hot orders: add/remove/reserve/pay/cancel, with and without If-Match.
    HotOrders,
    /// Many multi-SKU orders racing for scarce shared stock, SKUs listed in varying order.
    ScarceStock,
    /// One Idempotency-Key sent concurrently with equal and with different bodies; retries after
    /// a client-side timeout.
    Idempotency,
    /// Double pay, pay vs cancel, ship vs cancel at the same moment.
    DoublePay,
    /// Duplicate and stale commands published straight to the command exchange.
    DirectProducer,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::HotOrders,
        Scenario::ScarceStock,
        Scenario::Idempotency,
        Scenario::DoublePay,
        Scenario::DirectProducer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::HotOrders => "hot-orders",
            Scenario::ScarceStock => "scarce-stock",
            Scenario::Idempotency => "idempotency",
            Scenario::DoublePay => "double-pay",
            Scenario::DirectProducer => "direct-producer",
        }
    }
}

/// Everything an audit run needs.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// API base URL, without a trailing slash.
    pub url: String,
    /// An admin key: it sets the run's stock and owns every order of the run.
    pub api_key: String,
    pub database_url: String,
    pub amqp_url: String,
    pub namespace: String,
    pub partitions: u16,
    /// How long the workload runs (the heal-and-drain phase comes after).
    pub duration: Duration,
    /// Concurrent client tasks, shared among the scenarios.
    pub concurrency: usize,
    /// Orders of the hot-orders scenario (the other scenarios create their own as they go).
    pub orders: usize,
    /// SKUs created for this run (named after the run, so no other traffic touches them).
    pub skus: usize,
    /// Stock set per SKU.
    pub stock: i64,
    /// Fraction (0–1) of hot-orders traffic that goes to the few hot orders.
    pub hot_skew: f64,
    pub scenarios: Vec<Scenario>,
    pub seed: u64,
    /// Longest wait for every accepted command to be final and the outbox to drain.
    pub drain_timeout: Duration,
    /// Where the JSON report is written (`None`: not written).
    pub report: Option<PathBuf>,
    /// Draw a progress bar (off in tests).
    pub progress: bool,
}

impl AuditConfig {
    /// A short run with every scenario, for tests and smoke checks.
    pub fn short(url: String, api_key: String, database_url: String, namespace: String) -> Self {
        Self {
            url,
            api_key,
            database_url,
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            namespace,
            partitions: 16,
            duration: Duration::from_secs(3),
            concurrency: 10,
            orders: 8,
            skus: 6,
            stock: 15,
            hot_skew: 0.8,
            scenarios: Scenario::ALL.to_vec(),
            seed: 1,
            drain_timeout: Duration::from_secs(60),
            report: None,
            progress: false,
        }
    }
}
