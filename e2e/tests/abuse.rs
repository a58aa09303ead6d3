//! Holding the line under abuse, where the worker takes part: an order's allowance of unfinished
//! commands comes back as the worker finishes them (the API alone: `api/tests/abuse.rs`).

mod common;

use orderflow_testkit::wait_for;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn an_order_with_its_maximum_of_unfinished_commands_answers_429_until_the_worker_catches_up()
{
    let mut app = common::stack()
        .api_config(|c| c.max_pending_per_order = 3)
        .start()
        .await;
    // The create is the first unfinished command; two more fill the order's allowance.
    let order = app.create_order(json!([])).await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let add =
        |sku: &str| json!({"type": "add_item", "sku": sku, "quantity": 1, "unit_price_cents": 100});
    assert_eq!(
        app.post_command(&order, &Uuid::new_v4().to_string(), &add("A"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let key = Uuid::new_v4().to_string();
    let first = app.post_command(&order, &key, &add("B")).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let busy = app
        .post_command(&order, &Uuid::new_v4().to_string(), &add("C"))
        .await;
    assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(busy.headers()["retry-after"], "1");
    assert!(!busy.headers().contains_key("ratelimit-limit"));
    let problem: Value = busy.json().await.unwrap();
    assert_eq!(problem["type"], "https://orderflow.dev/problems/order-busy");
    let recorded: i64 = sqlx::query_scalar("select count(*) from commands")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(recorded, 3, "the refused command was not recorded");
    // A retry of an accepted command is still answered from its key while the order is full.
    let retry = app.post_command(&order, &key, &add("B")).await;
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["command_id"], first["command_id"]);
    let recorded: i64 = sqlx::query_scalar("select count(*) from commands")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(recorded, 3, "the replay recorded nothing");
    // Another order is not held back by this one.
    app.create_order(json!([])).await;

    // Once the worker has finished them, the order takes commands again.
    app.start_worker().await;
    let accepted = wait_for("the order to take a command again")
        .until(|| async {
            let response = app
                .post_command(&order, &Uuid::new_v4().to_string(), &add("C"))
                .await;
            if response.status() == StatusCode::ACCEPTED {
                return Some(response.json::<Value>().await.unwrap());
            }
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            None
        })
        .await;
    let outcome = app
        .wait_final(accepted["command_id"].as_str().unwrap())
        .await;
    assert_eq!(outcome["status"], "applied");
    assert_eq!(
        app.order(&order).await["version"],
        4,
        "create and three items"
    );
}
