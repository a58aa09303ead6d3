//! idempotency: one Idempotency-Key sent by several clients at once with the same body (all must
//! get the first response, or 409 while it is in flight), with different bodies (the losers must
//! get 422), and a request cut off by a client-side timeout then retried with its key (the retry
//! must answer the command the lost answer named, never a second command).

use super::{Ctx, add_item};
use crate::http::{Post, REQUEST_TIMEOUT};
use crate::record::IdempotencyProbe;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

const NAME: &str = "idempotency";
/// Concurrent senders of one key.
const SENDERS: u8 = 4;
/// Retries of the timed-out request before giving up (each after a 409 or no answer).
const RETRIES: u32 = 40;

pub async fn run(ctx: Ctx, mut rng: ChaCha8Rng) {
    while ctx.running() {
        // The same create, several times at once.
        let create = json!({"customer_id": "audit", "currency": "EUR",
                            "items": [super::item(&ctx.plenty, 1)]});
        let answers = burst(&ctx, "/v1/orders".into(), "create", |_| create.clone()).await;
        let Some(order) = answers.iter().find_map(|a| a.order_id()) else {
            continue;
        };
        let path = format!("/v1/orders/{order}/commands");

        // The same command, several times at once.
        let quantity = rng.gen_range(1..=5);
        burst(&ctx, path.clone(), "add_item", |_| {
            add_item(&ctx.plenty, quantity)
        })
        .await;
        // One key, two different bodies at once.
        burst(&ctx, path.clone(), "add_item", |variant| {
            add_item(&ctx.plenty, 1 + i64::from(variant % 2))
        })
        .await;
        // Cut off by the client, then retried with the same key.
        retry_after_timeout(&ctx, path, rng.gen_range(1..=5)).await;
    }
}

/// Sends `SENDERS` requests with one new key at once; `body(i)` gives sender i's body, and
/// senders with equal bodies share a variant number.
async fn burst(
    ctx: &Ctx,
    path: String,
    label: &str,
    body: impl Fn(u8) -> serde_json::Value,
) -> Vec<crate::http::Answer> {
    let key = Uuid::new_v4().to_string();
    let bodies: Vec<serde_json::Value> = (0..SENDERS).map(&body).collect();
    let sends = (0..SENDERS).map(|i| {
        let variant = bodies
            .iter()
            .position(|b| *b == bodies[usize::from(i)])
            .expect("its own body is there") as u8;
        ctx.api.post(Post {
            scenario: NAME,
            path: path.clone(),
            label,
            body: bodies[usize::from(i)].clone(),
            idempotency_key: key.clone(),
            if_match: None,
            timeout: REQUEST_TIMEOUT,
            probe: Some(IdempotencyProbe {
                key: key.clone(),
                variant,
            }),
        })
    });
    futures_util::future::join_all(sends).await
}

async fn retry_after_timeout(ctx: &Ctx, path: String, quantity: i64) {
    let key = Uuid::new_v4().to_string();
    let probe = IdempotencyProbe {
        key: key.clone(),
        variant: 0,
    };
    let post = |timeout| Post {
        scenario: NAME,
        path: path.clone(),
        label: "add_item",
        body: add_item(&ctx.plenty, quantity),
        idempotency_key: key.clone(),
        if_match: None,
        timeout,
        probe: Some(probe.clone()),
    };
    // Short enough that the answer is usually lost, long enough that the request often lands.
    ctx.api.post(post(Duration::from_millis(2))).await;
    for attempt in 0..RETRIES {
        let answer = ctx.api.post(post(REQUEST_TIMEOUT)).await;
        match answer.status {
            Some(StatusCode::CONFLICT) | None => {
                // In flight or no answer: back off a little (a client's retry, not a test wait).
                tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt + 1))).await;
            }
            Some(_) => return,
        }
    }
}
