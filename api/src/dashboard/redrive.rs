//! Redriving a dead letter: its command is re-submitted through the normal intake, as a new
//! command at the end of its order's stream, under the client that sent it (so ownership and
//! ordering hold), with the Idempotency-Key [`redrive_key`] so that a repeated or concurrent
//! redrive of the same letter yields the same command. That key has spaces in it, which no
//! `Idempotency-Key` header may carry, so no tenant can claim it first. The dead letter records what it
//! became, and the admin action is written to the audit log in the same transaction.

use super::auth::DashboardAdmin;
use crate::error::ApiError;
use crate::extract::{ApiPath, Received, StrictJson};
use crate::intake::{self, Submission, Target};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use orderflow_shared::contract::CommandMessage;
use orderflow_shared::db::{clients, dashboard};
use orderflow_shared::domain::Command;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The Idempotency-Key of a dead letter's redrive: outside what a client can send (see
/// `extract::IdempotencyKey`: visible ASCII only), so a tenant cannot take it first.
pub fn redrive_key(dead_letter: i64) -> String {
    format!("orderflow redrive {dead_letter}")
}

/// The body of a redrive: an empty object (a JSON body keeps cross-site forms out).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {}

#[derive(Serialize)]
pub struct Redriven {
    pub dead_letter_id: i64,
    pub command_id: Uuid,
    pub order_id: Uuid,
    /// False when this dead letter had been redriven before (the same command is answered).
    pub new: bool,
}

pub async fn redrive(
    State(state): State<AppState>,
    DashboardAdmin(admin): DashboardAdmin,
    Received(received_at): Received,
    ApiPath(id): ApiPath<i64>,
    _: StrictJson<RedriveRequest>,
) -> Result<Json<Redriven>, ApiError> {
    let letter = dashboard::dead_letter(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("dead letter"))?;
    if let (Some(command_id), Some(order_id)) = (letter.redriven_as, letter.order_id) {
        return Ok(Json(Redriven {
            dead_letter_id: id,
            command_id,
            order_id,
            new: false,
        }));
    }
    let message = CommandMessage::parse(letter.body.as_bytes()).map_err(|e| {
        ApiError::InvalidBody(format!(
            "dead letter {id} is not a readable command ({e}); it cannot be redriven"
        ))
    })?;
    let client = clients::get(&state.db, message.client_id)
        .await?
        .ok_or_else(|| {
            ApiError::InvalidBody(format!(
                "dead letter {id} belongs to a client that no longer exists"
            ))
        })?;
    let target = if matches!(message.command, Command::Create { .. })
        && !dashboard::stream_exists(&state.db, message.order_id).await?
    {
        Target::New(message.order_id)
    } else {
        Target::Existing(message.order_id)
    };
    let body = serde_json::to_value(&message.command).expect("commands serialize");
    let accepted = intake::submit(
        &state,
        Submission {
            client: &client,
            idempotency_key: &redrive_key(id),
            fingerprint: intake::fingerprint("redrive", message.expected_version, &body),
            target,
            command: message.command,
            expected_version: message.expected_version,
            received_at,
        },
    )
    .await?;
    let mut tx = state.db.begin().await?;
    dashboard::mark_redriven(&mut tx, id, accepted.command_id, admin.id).await?;
    tx.commit().await?;
    tracing::info!(dead_letter = id, command_id = %accepted.command_id, admin = %admin.name,
        "dead letter redriven");
    Ok(Json(Redriven {
        dead_letter_id: id,
        command_id: accepted.command_id.0,
        order_id: accepted.order_id.0,
        new: !accepted.replayed,
    }))
}
