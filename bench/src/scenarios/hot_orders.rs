//! hot-orders: many clients on a few hot orders, issuing add/remove/reserve/pay/ship/cancel and
//! shipping addresses (often the one the order has: applied unchanged) at once, half of them
//! conditional (`If-Match` from a fresh read's ETag). Lost updates would show as a projection
//! that no replay of the events rebuilds, or a version out of step.

use super::{Ctx, add_item};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

const NAME: &str = "hot-orders";
/// How many of the scenario's orders are hot.
const HOT: usize = 3;

/// The cities of the shipping addresses the scenario sets: two, so that an address is often set
/// again (applied unchanged).
const CITIES: [&str; 2] = ["Oslo", "Bergen"];

/// The scenario's orders; a finished (cancelled/delivered) one is replaced by a fresh one.
#[derive(Clone)]
pub struct Orders(Arc<Mutex<Vec<Uuid>>>);

/// Creates the scenario's orders.
pub async fn setup(ctx: &Ctx, orders: usize, rng: &mut ChaCha8Rng) -> Orders {
    let mut ids = Vec::new();
    for _ in 0..orders {
        if let Some(id) = create(ctx, rng).await {
            ids.push(id);
        }
    }
    Orders(Arc::new(Mutex::new(ids)))
}

async fn create(ctx: &Ctx, rng: &mut ChaCha8Rng) -> Option<Uuid> {
    let sku = ctx.scarce.choose(rng).expect("at least one sku");
    let answer = ctx
        .api
        .create_order(NAME, json!([super::item(sku, rng.gen_range(1..=2))]))
        .await;
    answer.order_id().filter(|_| answer.command_id().is_some())
}

pub async fn run(ctx: Ctx, orders: Orders, hot_skew: f64, mut rng: ChaCha8Rng) {
    while ctx.running() {
        let (slot, order) = {
            let ids = orders.0.lock().expect("no panics holding it");
            if ids.is_empty() {
                return;
            }
            let hot = ids.len().min(HOT);
            let slot = if rng.gen_bool(hot_skew) {
                rng.gen_range(0..hot)
            } else {
                rng.gen_range(0..ids.len())
            };
            (slot, ids[slot])
        };
        let sku = ctx
            .scarce
            .choose(&mut rng)
            .expect("at least one sku")
            .clone();
        let command = match rng.gen_range(0..22) {
            0..=5 => add_item(&sku, rng.gen_range(1..=2)),
            6..=8 => json!({"type": "remove_item", "sku": sku, "quantity": 1}),
            9..=12 => json!({"type": "reserve"}),
            13..=15 => json!({"type": "pay"}),
            16..=17 => json!({"type": "ship"}),
            18 => json!({"type": "deliver"}),
            19 => json!({"type": "cancel", "reason": "audit"}),
            // One of two addresses: often the one the order already has (applied, unchanged).
            _ => json!({"type": "set_shipping_address", "address": {
                "name": "Audit", "lines": ["1 Race Street"], "city": CITIES[rng.gen_range(0..2)],
                "postal_code": "0150", "country": "NO"}}),
        };
        let if_match = if rng.gen_bool(0.5) {
            let read = ctx.api.order(NAME, order).await;
            let status = read
                .body
                .as_ref()
                .and_then(|b| b["status"].as_str())
                .unwrap_or_default()
                .to_owned();
            if status == "cancelled" || status == "delivered" {
                // Keep the heat on live orders: replace a finished one.
                if let Some(fresh) = create(&ctx, &mut rng).await {
                    let mut ids = orders.0.lock().expect("no panics holding it");
                    if ids[slot] == order {
                        ids[slot] = fresh;
                    }
                }
                continue;
            }
            read.etag
        } else {
            None
        };
        ctx.api.command(NAME, order, command, if_match).await;
    }
}
