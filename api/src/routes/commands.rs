//! A command's status: where it is and, when it is done, how it ended and why.

use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, Caller};
use crate::openapi;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use orderflow_contract::{CommandStatus, Reason};
#[allow(unused_imports)] // `Command` names the schema of `CommandView::command`
use orderflow_domain::{Command, CommandId, CommandKind, OrderId};
use orderflow_storage::commands::{self, CommandRow};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

/// Longest `?wait=` in seconds.
pub const MAX_WAIT_SECS: u64 = 30;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_command))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WaitQuery {
    /// Seconds to wait for a final status (long-poll); 0 or absent answers at once. Each open
    /// long-poll holds one of the client's slots.
    #[param(minimum = 0, maximum = 30)]
    wait: Option<u64>,
}

/// The `{command_id}` of the route.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only its parameter schema is used
struct CommandIdPath {
    /// The command's id (from the 202 that accepted it, or its `Location`).
    command_id: Uuid,
}

/// Read a command's status; `?wait=` long-polls until it is final.
#[utoipa::path(
    get,
    path = "/v1/commands/{command_id}",
    tag = "commands",
    security(("bearer" = [])),
    params(CommandIdPath, WaitQuery),
    responses(
        (status = 200, description = "The command's status (final or not, when `wait` ran out).", body = CommandView),
        (status = 400, response = inline(openapi::BadRequest)),
        (status = 401, response = inline(openapi::Unauthorized)),
        (status = 404, response = inline(openapi::NotFound)),
        (status = 429, response = inline(openapi::RateLimitedOrTooManyWaits)),
        (status = 503, response = inline(openapi::Unavailable)),
    )
)]
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
        Some((
            state.limits.begin_wait(client.id)?,
            crate::metrics::OpenStream::new("long_poll"),
        ))
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
#[derive(Serialize, ToSchema)]
pub struct CommandView {
    pub command_id: CommandId,
    pub order_id: OrderId,
    #[serde(rename = "type")]
    pub kind: CommandKind,
    /// The command's place in its order's sequence.
    pub seq: i64,
    /// `accepted`, then one of `applied`, `rejected`, `failed`.
    pub status: CommandStatus,
    /// Why it was rejected or failed: a code (see the README's list of reasons).
    #[schema(value_type = Option<String>, pattern = "^[a-z][a-z_]*$")]
    pub reason: Option<Reason>,
    /// What went wrong, for people, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The order version it produced (applied) or found (rejected).
    pub version: Option<i64>,
    pub expected_version: Option<i64>,
    pub partition: i32,
    /// The command as recorded.
    #[schema(value_type = Command)]
    pub command: serde_json::Value,
    pub accepted_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    /// Set while a worker holds the command back until an earlier command of its order arrives
    /// (a direct producer's follow-up that reached the worker before its create).
    pub parked_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Who made it: `client:<name>` (an API client), `operator:<name>` (a person on the
    /// dashboard) or `producer:<broker user>` (a direct producer); null for commands recorded
    /// before actors were kept.
    #[schema(pattern = "^(client|operator|producer):")]
    pub actor: Option<String>,
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
            detail: row.detail,
            version: row.result_version,
            expected_version: row.expected_version,
            partition: row.partition,
            command: row.body,
            accepted_at: row.accepted_at,
            published_at: row.published_at,
            parked_at: row.parked_at,
            finished_at: row.finished_at,
            actor: row.actor,
        }
    }
}
