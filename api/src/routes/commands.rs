//! A command's status: where it is and, when it is done, how it ended and why.

use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, Caller};
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use orderflow_shared::db::commands::{self, CommandRow, CommandStatus};
use orderflow_shared::domain::{CommandId, CommandKind, OrderId};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// Longest `?wait=` in seconds.
pub const MAX_WAIT_SECS: u64 = 30;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/commands/{command_id}", get(get_command))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    /// Seconds to wait for a final status (0–30).
    wait: Option<u64>,
}

async fn get_command(
    State(state): State<AppState>,
    Caller(client): Caller,
    ApiPath(command_id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<CommandView>, ApiError> {
    let wait = query.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::InvalidRequest(format!(
            "wait must be between 0 and {MAX_WAIT_SECS} seconds"
        )));
    }
    // Each open long-poll holds one of the client's slots until it answers.
    let _slot = if wait > 0 {
        Some(state.limits.begin_wait(client.id)?)
    } else {
        None
    };
    let id = CommandId(command_id);
    let read = || async {
        let row = commands::get_for_client(&state.db, client.id, id)
            .await?
            .ok_or(ApiError::NotFound("command"))?;
        let done = row.status.is_final();
        Ok((row, done))
    };
    let row = state
        .waiters
        .wait_until(command_id, Duration::from_secs(wait), read)
        .await?;
    Ok(Json(CommandView::from(row)))
}

/// The status resource of one command.
#[derive(Serialize)]
pub struct CommandView {
    pub command_id: CommandId,
    pub order_id: OrderId,
    #[serde(rename = "type")]
    pub kind: CommandKind,
    /// The command's place in its order's sequence.
    pub seq: i64,
    /// `accepted`, then one of `applied`, `rejected`, `failed`.
    pub status: CommandStatus,
    /// Why it was rejected or failed.
    pub reason: Option<String>,
    /// The order version it produced (applied) or found (rejected).
    pub version: Option<i64>,
    pub expected_version: Option<i64>,
    pub partition: i32,
    pub command: serde_json::Value,
    pub accepted_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<CommandRow> for CommandView {
    fn from(row: CommandRow) -> Self {
        Self {
            command_id: row.id,
            order_id: row.order_id,
            kind: row.kind,
            seq: row.seq,
            status: row.status,
            reason: row.reason,
            version: row.result_version,
            expected_version: row.expected_version,
            partition: row.partition,
            command: row.body,
            accepted_at: row.accepted_at,
            published_at: row.published_at,
            finished_at: row.finished_at,
        }
    }
}
