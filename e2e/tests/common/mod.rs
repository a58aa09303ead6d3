//! What the end-to-end tests share beyond the test kit (`orderflow-testkit`, which runs the
//! stack, sends, publishes and waits): their stack's settings, and two reads and writes straight
//! on the database.

#![allow(dead_code)]

pub mod webhooks;

use orderflow_testkit::{Stack, StackBuilder};
use serde_json::Value;
use uuid::Uuid;

/// The end-to-end stack: the API, and workers whose command relay republishes what the broker
/// never confirmed after 1 s (5 s by default), so that tests of the relay wait less. `.worker()`
/// starts one with it; `Stack::start_worker` one later.
pub fn stack() -> StackBuilder {
    Stack::builder()
        .api()
        .worker_config(|c| c.republish_after_ms = 1000)
}

/// A dead letter as the worker records one (the message as received, with its reason; the
/// command and client ids when the body is a readable message); its id.
pub async fn insert_dead_letter(app: &Stack, order: Option<&str>, reason: &str, body: &str) -> i64 {
    let message: Option<Value> = serde_json::from_str(body).ok();
    let id_of = |field: &str| {
        message
            .as_ref()
            .and_then(|m| m[field].as_str())
            .and_then(|s| Uuid::parse_str(s).ok())
    };
    sqlx::query_scalar(
        "insert into dead_letters (command_id, order_id, client_id, partition, reason, body)
         values ($1, $2, $3, 0, $4, $5) returning id",
    )
    .bind(id_of("command_id"))
    .bind(order.map(|o| Uuid::parse_str(o).unwrap()))
    .bind(id_of("client_id"))
    .bind(reason)
    .bind(body)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// Counts rows of a table for an order (`sql` takes the order id as `$1`).
pub async fn count(app: &Stack, sql: &'static str, order_id: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(Uuid::parse_str(order_id).unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap()
}
