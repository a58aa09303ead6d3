//! What every handler shares.

use crate::limits::Limits;
use crate::waiters::Waiters;
use orderflow_shared::amqp::{Publisher, Topology};
use sqlx::PgPool;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub publisher: Arc<Publisher>,
    pub topology: Topology,
    pub waiters: Waiters,
    pub limits: Limits,
}
