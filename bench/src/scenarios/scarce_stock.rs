//! scarce-stock: many multi-SKU orders reserving the same few SKUs at once, each listing its
//! SKUs in its own order (deadlock bait: the worker must lock them in one global order), then
//! cancelling (stock back), paying and shipping (stock out), or holding. An oversell would show
//! as negative or unconserved stock.

use super::{Ctx, item};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

const NAME: &str = "scarce-stock";
/// Orders racing in one round.
const RACERS: usize = 4;

pub async fn run(ctx: Ctx, mut rng: ChaCha8Rng) {
    while ctx.running() {
        let mut orders = Vec::new();
        for _ in 0..RACERS {
            let count = rng.gen_range(2..=3.min(ctx.scarce.len()));
            let mut skus: Vec<&String> = ctx.scarce.choose_multiple(&mut rng, count).collect();
            skus.shuffle(&mut rng);
            let items: Vec<Value> = skus
                .iter()
                .map(|sku| item(sku, rng.gen_range(1..=3)))
                .collect();
            let answer = ctx.api.create_order(NAME, Value::Array(items)).await;
            if let (Some(order), Some(_)) = (answer.order_id(), answer.command_id()) {
                orders.push(order);
            }
        }
        // All reserves at the same moment.
        let reserves = futures_util::future::join_all(orders.iter().map(|&order| {
            ctx.api
                .command(NAME, order, json!({"type": "reserve"}), None)
        }))
        .await;
        for (order, reserve) in orders.iter().zip(reserves) {
            let Some(command_id) = reserve.command_id() else {
                continue;
            };
            let done = ctx
                .api
                .command_status(NAME, command_id, Duration::from_secs(5))
                .await;
            if done.body.as_ref().and_then(|b| b["status"].as_str()) != Some("applied") {
                continue;
            }
            follow_up(&ctx, *order, rng.gen_range(0..10)).await;
        }
    }
}

/// Gives stock back, moves it out, or holds it.
async fn follow_up(ctx: &Ctx, order: Uuid, dice: u32) {
    match dice {
        0..=4 => {
            ctx.api
                .command(NAME, order, json!({"type": "cancel"}), None)
                .await;
        }
        5..=7 => {
            ctx.api
                .command(NAME, order, json!({"type": "pay"}), None)
                .await;
            ctx.api
                .command(NAME, order, json!({"type": "ship"}), None)
                .await;
        }
        _ => {}
    }
}
