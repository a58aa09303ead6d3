//! The adversarial scenarios. Each runs its share of the run's client tasks until the deadline;
//! every choice comes from a per-task RNG seeded from the run's seed, so a run is reproducible
//! up to timing. Scenarios only *do* things and record them; judging is the checker's job.

pub mod direct_producer;
pub mod double_pay;
pub mod hot_orders;
pub mod idempotency;
pub mod scarce_stock;

use crate::http::Api;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use std::time::Instant;

/// What every scenario task shares.
#[derive(Clone)]
pub struct Ctx {
    pub api: Api,
    /// The run's SKUs with scarce stock (the race is for these).
    pub scarce: Vec<String>,
    /// A SKU of the run with stock enough for everything (scenarios racing on payments, not stock).
    pub plenty: String,
    pub deadline: Instant,
}

impl Ctx {
    pub fn running(&self) -> bool {
        Instant::now() < self.deadline
    }
}

/// The RNG of one task: the run's seed, the scenario and the task number.
pub fn task_rng(seed: u64, scenario: u64, task: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Distinct, reproducible streams per (scenario, task).
    rng.set_stream(scenario << 32 | task);
    rng
}

/// Each SKU has one price, so adding it again never trips `price_mismatch` by accident.
pub fn price_of(sku: &str) -> i64 {
    100 + i64::from(orderflow_contract::partition::fnv1a32(sku.as_bytes()) % 900)
}

pub fn item(sku: &str, quantity: i64) -> Value {
    json!({"sku": sku, "quantity": quantity, "unit_price_cents": price_of(sku)})
}

pub fn add_item(sku: &str, quantity: i64) -> Value {
    json!({"type": "add_item", "sku": sku, "quantity": quantity, "unit_price_cents": price_of(sku)})
}
