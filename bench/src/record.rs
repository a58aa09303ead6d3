//! What the workload observed: one record per HTTP request (its outcome as the client saw it)
//! and every command accepted by the broker from the direct producer. The checker compares these
//! observations with what the database says happened.

use serde::Serialize;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// How a request ended, from the client's side (Jepsen's ok / fail / info).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx answer.
    Ok,
    /// A definite non-2xx answer.
    Failed,
    /// No answer (timeout, connection error): it may or may not have taken effect.
    Unknown,
}

/// Which Idempotency-Key probe a request belongs to (for invariant 7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IdempotencyProbe {
    pub key: String,
    /// Which of the probe's bodies this request sent (0, 1, …).
    pub variant: u8,
}

/// One HTTP request and what came of it.
#[derive(Clone, Debug, Serialize)]
pub struct RequestRecord {
    pub scenario: &'static str,
    /// Method and route, e.g. `POST /v1/orders/{id}/commands pay`.
    pub op: String,
    pub outcome: Outcome,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// A 503 carried `Retry-After`.
    pub retry_after: bool,
    /// The 202's `command_id`.
    pub command_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    /// The answer carried `Idempotent-Replayed: true`.
    pub replayed: bool,
    pub probe: Option<IdempotencyProbe>,
}

/// A command the direct producer published and the broker confirmed.
#[derive(Clone, Debug, Serialize)]
pub struct DirectCommand {
    pub command_id: Uuid,
    pub order_id: Uuid,
    /// How many times it was published (duplicates on purpose).
    pub copies: u32,
}

/// The whole run's observations, shared by the workload's tasks.
#[derive(Clone, Default)]
pub struct Log {
    inner: Arc<Mutex<Observations>>,
}

/// A snapshot of the observations, for the checker.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Observations {
    pub requests: Vec<RequestRecord>,
    pub direct: Vec<DirectCommand>,
    /// Orders the run created (over HTTP or directly): the checker's scope.
    pub orders: Vec<Uuid>,
    /// SKUs the run created, with the stock it set.
    pub stock: Vec<(String, i64)>,
}

impl Log {
    pub fn request(&self, record: RequestRecord) {
        let mut inner = self.inner.lock().expect("no task panics holding the log");
        if let (Some(order), Some(200..=299)) = (record.order_id, record.status)
            && record.op.starts_with("POST /v1/orders ")
            && !record.replayed
        {
            inner.orders.push(order);
        }
        inner.requests.push(record);
    }

    pub fn direct(&self, command: DirectCommand, creates_order: bool) {
        let mut inner = self.inner.lock().expect("no task panics holding the log");
        if creates_order {
            inner.orders.push(command.order_id);
        }
        inner.direct.push(command);
    }

    pub fn stock(&self, sku: &str, available: i64) {
        let mut inner = self.inner.lock().expect("no task panics holding the log");
        inner.stock.push((sku.to_owned(), available));
    }

    /// How many requests were made so far (for the progress bar).
    pub fn request_count(&self) -> usize {
        self.inner.lock().expect("no task panics").requests.len()
    }

    pub fn snapshot(&self) -> Observations {
        self.inner.lock().expect("no task panics").clone()
    }

    /// Every command id the stack accepted: 202s and broker-confirmed direct commands.
    pub fn accepted_ids(&self) -> Vec<Uuid> {
        self.snapshot().accepted_ids()
    }
}

impl Observations {
    pub fn accepted_ids(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self
            .requests
            .iter()
            .filter(|r| r.status == Some(202))
            .filter_map(|r| r.command_id)
            .chain(self.direct.iter().map(|d| d.command_id))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}
