//! What every handler shares.

use crate::admission::Admission;
use crate::confirms::Confirms;
use crate::dashboard::hub::Hub;
use crate::gates::OrderGates;
use crate::keys::Keys;
use crate::limits::Limits;
use crate::operators::Sessions;
use crate::records::Records;
use crate::waiters::Waiters;
use orderflow_messaging::{Publisher, Topology};
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_storage::layout::LayoutCell;
use sqlx::PgPool;
use std::sync::Arc;

/// The handlers' state: one allocation shared by every request, so that each request's copy (axum
/// hands every handler and middleware its own) is one reference count, not one per field
/// (a field-by-field clone and drop, several moka caches and a cancellation token among them,
/// were about 5 % of the API's CPU samples under the benchmark's uniform load).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    pub db: PgPool,
    pub publisher: Arc<Publisher>,
    /// The broker's confirms, recorded in batches.
    pub confirms: Confirms,
    /// Commands for existing orders, recorded in batches.
    pub records: Records,
    /// Names and arguments on the broker; its `partitions` is the count at start.
    pub topology: Topology,
    /// The partition count commands are routed by now (follows `partitions grow`).
    pub layout: LayoutCell,
    pub waiters: Waiters,
    /// Wake-ups of the clients' event feeds, by client id.
    pub feeds: Waiters,
    /// One intake statement per order at a time in this process.
    pub gates: OrderGates,
    pub limits: Limits,
    /// The in-flight budgets: clients' and anonymous requests'.
    pub admission: Admission,
    /// API-key checks (cached).
    pub keys: Keys,
    /// Operators' sign-ins and the changes to their sessions.
    pub sessions: Sessions,
    /// The dashboard's live feed.
    pub hub: Hub,
    /// Whether webhook endpoints may be private or loopback addresses, or plain `http`
    /// (`ORDERFLOW_WEBHOOK_ALLOW_PRIVATE`).
    pub webhook_allow_private: bool,
    /// Fires when the server stops: long-lived responses (SSE) end on it.
    pub shutdown: CancellationToken,
}
