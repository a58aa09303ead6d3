//! double-pay: on a reserved order, two payments at the same moment, payment against
//! cancellation, and (once paid) shipping against cancellation. At most one capture may exist,
//! a refund only for a cancelled paid order, and shipped stock never comes back.

use super::Ctx;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

const NAME: &str = "double-pay";
const WAIT: Duration = Duration::from_secs(5);

pub async fn run(ctx: Ctx, mut rng: ChaCha8Rng) {
    while ctx.running() {
        let sku = if rng.gen_bool(0.5) {
            ctx.plenty.clone()
        } else {
            ctx.scarce[rng.gen_range(0..ctx.scarce.len())].clone()
        };
        let created = ctx
            .api
            .create_order(NAME, json!([super::item(&sku, 1)]))
            .await;
        let Some(order) = created
            .order_id()
            .filter(|_| created.command_id().is_some())
        else {
            continue;
        };
        if !applied(&ctx, order, json!({"type": "reserve"})).await {
            continue;
        }
        match rng.gen_range(0..3) {
            0 => race(&ctx, order, json!({"type": "pay"}), json!({"type": "pay"})).await,
            1 => {
                race(
                    &ctx,
                    order,
                    json!({"type": "pay"}),
                    json!({"type": "cancel"}),
                )
                .await
            }
            _ => {
                if applied(&ctx, order, json!({"type": "pay"})).await {
                    race(
                        &ctx,
                        order,
                        json!({"type": "ship"}),
                        json!({"type": "cancel"}),
                    )
                    .await;
                }
            }
        }
    }
}

/// Sends a command and waits for its outcome; true if it applied.
async fn applied(ctx: &Ctx, order: Uuid, command: Value) -> bool {
    let Some(id) = ctx
        .api
        .command(NAME, order, command, None)
        .await
        .command_id()
    else {
        return false;
    };
    let done = ctx.api.command_status(NAME, id, WAIT).await;
    done.body.as_ref().and_then(|b| b["status"].as_str()) == Some("applied")
}

/// Two commands at the same moment (each with its own key).
async fn race(ctx: &Ctx, order: Uuid, a: Value, b: Value) {
    futures_util::future::join(
        ctx.api.command(NAME, order, a, None),
        ctx.api.command(NAME, order, b, None),
    )
    .await;
}
