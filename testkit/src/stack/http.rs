//! The stack's API as a client uses it: requests with the test client's key, the common calls,
//! the command long-poll, and the API's own `/metrics`.

use super::Stack;
use crate::metrics::Scrape;
use crate::wait::wait_for;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::fmt::Display;
use std::time::Duration;
use uuid::Uuid;

impl Stack {
    /// `http://127.0.0.1:<port>` of the running API.
    pub fn address(&self) -> &str {
        &self.api.as_ref().expect("the stack runs an API").address
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address())
    }

    /// A request with the test client's key.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.key)
    }

    /// A request with the admin key.
    pub fn admin_request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.admin_key)
    }

    /// POST /v1/orders with this Idempotency-Key; the response, whatever it is.
    pub async fn post_order(&self, key: &str, body: &Value) -> reqwest::Response {
        self.request(Method::POST, "/v1/orders")
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POST /v1/orders/{order_id}/commands with this Idempotency-Key; the response, whatever it
    /// is.
    pub async fn post_command(
        &self,
        order_id: &str,
        key: &str,
        command: &Value,
    ) -> reqwest::Response {
        self.request(Method::POST, &format!("/v1/orders/{order_id}/commands"))
            .header("idempotency-key", key)
            .json(command)
            .send()
            .await
            .unwrap()
    }

    /// Sets a SKU's available stock (with the admin key).
    pub async fn set_stock(&self, sku: &str, available: i64) {
        let response = self
            .http
            .put(self.url(&format!("/v1/inventory/{sku}")))
            .bearer_auth(&self.admin_key)
            .json(&json!({ "available": available }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{:?}",
            response.text().await
        );
    }

    pub async fn stock(&self, sku: &str) -> Value {
        let response = self
            .request(Method::GET, &format!("/v1/inventory/{sku}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// POST /v1/orders with a fresh Idempotency-Key; returns the 202 body.
    pub async fn create_order(&self, items: Value) -> Value {
        let response = self
            .request(Method::POST, "/v1/orders")
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(&json!({"customer_id": "cust-1", "currency": "EUR", "items": items}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "{:?}",
            response.text().await
        );
        response.json().await.unwrap()
    }

    /// POST a command with a fresh Idempotency-Key (and If-Match when given); returns the 202 body.
    pub async fn send(&self, order_id: &str, command: Value, if_match: Option<i64>) -> Value {
        let mut request = self
            .request(Method::POST, &format!("/v1/orders/{order_id}/commands"))
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(&command);
        if let Some(version) = if_match {
            request = request.header("if-match", format!("\"{version}\""));
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "{:?}",
            response.text().await
        );
        response.json().await.unwrap()
    }

    /// Long-polls a command's status until it is final (waiting for it to exist, for commands
    /// sent straight to the exchange); returns it. Panics after 20 s.
    pub async fn wait_final(&self, command_id: impl Display) -> Value {
        self.wait_final_as(&self.key, command_id).await
    }

    /// [`Stack::wait_final`] as the client of API key `key` (another client's command is a 404).
    pub async fn wait_final_as(&self, key: &str, command_id: impl Display) -> Value {
        let path = format!("/v1/commands/{command_id}?wait=5");
        wait_for(format!("command {command_id} to be final"))
            .every(Duration::from_millis(20))
            .until(|| async {
                let response = self
                    .http
                    .request(Method::GET, self.url(&path))
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap();
                if response.status() == StatusCode::NOT_FOUND {
                    // A command published straight to the exchange exists once the worker took
                    // it (until then the long-poll answers at once).
                    return Err("not recorded yet".to_owned());
                }
                assert_eq!(response.status(), StatusCode::OK);
                let body: Value = response.json().await.unwrap();
                if body["status"] == "accepted" {
                    Err(format!("still accepted: {body}"))
                } else {
                    Ok(body)
                }
            })
            .await
    }

    /// Sends a command and waits for its outcome.
    pub async fn run(&self, order_id: &str, command: Value, if_match: Option<i64>) -> Value {
        let accepted = self.send(order_id, command, if_match).await;
        self.wait_final(accepted["command_id"].as_str().unwrap())
            .await
    }

    /// Creates an order, waits until it is applied, returns its id.
    pub async fn new_order(&self, items: Value) -> String {
        let accepted = self.create_order(items).await;
        let done = self
            .wait_final(accepted["command_id"].as_str().unwrap())
            .await;
        assert_eq!(done["status"], "applied", "{done}");
        accepted["order_id"].as_str().unwrap().to_owned()
    }

    /// Stocks `sku` with 5, creates an order of one line of it (`quantity` at `unit_price_cents`),
    /// reserves and pays it, each waited for and applied; returns its id (the order is paid, at
    /// version 3).
    pub async fn paid_order(&self, sku: &str, quantity: i64, unit_price_cents: i64) -> String {
        self.set_stock(sku, 5).await;
        let order = self
            .new_order(json!([
                {"sku": sku, "quantity": quantity, "unit_price_cents": unit_price_cents}
            ]))
            .await;
        for command in ["reserve", "pay"] {
            let done = self.run(&order, json!({"type": command}), None).await;
            assert_eq!(done["status"], "applied", "{done}");
        }
        order
    }

    pub async fn order(&self, order_id: &str) -> Value {
        let response = self
            .request(Method::GET, &format!("/v1/orders/{order_id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    pub async fn events(&self, order_id: &str) -> Vec<Value> {
        let response = self
            .request(Method::GET, &format!("/v1/orders/{order_id}/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["events"].as_array().unwrap().clone()
    }

    /// The API's own `/metrics` text (in-process, the worker's series are in it too: one
    /// recorder per process).
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// One scrape of the API's `/metrics`.
    pub async fn metrics(&self) -> Scrape {
        Scrape::parse(&self.metrics_text().await)
    }

    /// One series of the API's `/metrics`, as written (`name{a="b"}`); 0 when it does not exist
    /// yet.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics().await.series(series)
    }
}
