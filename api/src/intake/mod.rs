//! Accepting a command: claim the Idempotency-Key, give the command the next seq of its order,
//! record it, commit, publish it with a confirm, answer. Both POST routes go through here. For an
//! existing order the first four are one statement (`commands::record_next`): one round trip,
//! and no transaction held open while the API waits for its turn on a CPU; the requests that
//! arrive meanwhile share one such statement and its commit (`records`).
//! Requests for one order take turns at a gate in memory (`gates`) before that statement, so a
//! storm on one order queues there instead of on its stream row.
//!
//! A publish the broker did not confirm (queue full, broker down) marks the command rejected
//! before answering 503, so nothing runs later by surprise; the key is released for a retry. If
//! that transaction's outcome is unknown, the command is read back until it is known.
//! If the API dies between commit and publish, the worker's command relay publishes it later
//! and the key's replay answers the 202 the caller never saw.
//!
//! | module | what |
//! |---|---|
//! | `submit` | one submission from start to answer: record, publish, answer |
//! | `record` | claiming the key and recording the command with its order's next seq |
//! | `refusal` | a recorded command the broker would not take: refusing it for good |
//! | `replay` | a key seen before: answering what it names, and telling the dashboards |

mod record;
mod refusal;
mod replay;
mod submit;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orderflow_contract::CommandStatus;
use orderflow_domain::{Command, CommandId, OrderId};
use orderflow_storage::clients::Client;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use submit::submit;

/// Which order a command is for.
pub enum Target {
    /// A new order (create): the API has just assigned its id.
    New(OrderId),
    Existing(OrderId),
}

impl Target {
    fn order_id(&self) -> OrderId {
        match self {
            Target::New(id) | Target::Existing(id) => *id,
        }
    }
}

/// One request to accept.
pub struct Submission<'a> {
    pub client: &'a Client,
    pub idempotency_key: &'a str,
    /// Identifies the request for the key: method, route, If-Match and canonical body.
    pub fingerprint: Vec<u8>,
    pub target: Target,
    pub command: Command,
    pub expected_version: Option<i64>,
    /// When the API received the request.
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// Who makes the change, when it is not `client` itself: an operator on the desk
    /// (`operator:<name>`, see `orderflow_storage::commands::actor`).
    pub on_behalf: Option<String>,
}

/// The 202 answer (also what a replay answers).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub command_id: CommandId,
    pub order_id: OrderId,
    pub status: CommandStatus,
    #[serde(skip)]
    pub replayed: bool,
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let location = format!("/v1/commands/{}", self.command_id);
        let replayed = self.replayed;
        let mut response = (StatusCode::ACCEPTED, axum::Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(&location).expect("a uuid path is a valid header"),
        );
        if replayed {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

/// The fingerprint of a request: what must match for a key's replay.
pub fn fingerprint(route: &str, if_match: Option<i64>, body: &serde_json::Value) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(route.as_bytes());
    hash.update([0]);
    hash.update(
        if_match
            .map(|v| v.to_string())
            .unwrap_or_default()
            .as_bytes(),
    );
    hash.update([0]);
    // serde_json's maps are sorted, so equal JSON documents serialize identically.
    hash.update(body.to_string().as_bytes());
    hash.finalize().to_vec()
}
