//! What an admin can do with a dead letter: redrive it or acknowledge it. Both close it (it no
//! longer counts as open, so its banner clears), and both are written to the audit log in the
//! transaction that records them.
//!
//! Redriving re-submits its command through the normal intake, as a new command at the end of its
//! order's stream, under the client that sent it (so ownership and ordering hold), with the
//! Idempotency-Key [`redrive_key`] so that a repeated or concurrent redrive of the same letter
//! yields the same command; that key has spaces in it, which no `Idempotency-Key` header may
//! carry, so no tenant can claim it first. The dead letter records what it became. Only a letter that is
//! a readable command of a live client, and not acknowledged, can be redriven
//! ([`not_redrivable_because`]); the page offers Redrive only there.
//!
//! Acknowledging says "seen, not to be redriven" (a message that is no command, a client that is
//! gone, a command nobody wants any more).

use super::auth::Admin;
use crate::error::ApiError;
use crate::extract::{ApiPath, Received, StrictJson};
use crate::intake::{self, Submission, Target};
use crate::openapi::Problem;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use orderflow_contract::CommandMessage;
use orderflow_domain::Command;
use orderflow_storage::{clients, dashboard};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The Idempotency-Key of a dead letter's redrive: outside what a client can send (see
/// `extract::IdempotencyKey`: visible ASCII only), so a tenant cannot take it first.
pub fn redrive_key(dead_letter: i64) -> String {
    format!("orderflow redrive {dead_letter}")
}

/// The body of a redrive or an acknowledgement: an empty object (a JSON body keeps cross-site
/// forms out).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {}

#[derive(Serialize)]
pub struct Redriven {
    pub dead_letter_id: i64,
    pub command_id: Uuid,
    pub order_id: Uuid,
    /// False when this dead letter had been redriven before (the same command is answered).
    pub new: bool,
}

#[derive(Serialize)]
pub struct Acknowledged {
    pub dead_letter_id: i64,
    pub acknowledged_at: DateTime<Utc>,
    /// False when it had been acknowledged before.
    pub new: bool,
}

/// A dead letter as the dashboard lists it: with whether it can be redriven, and if not why.
#[derive(Serialize)]
pub struct DeadLetterView {
    #[serde(flatten)]
    pub letter: dashboard::DeadLetter,
    pub redrivable: bool,
    pub not_redrivable_because: Option<String>,
}

impl From<dashboard::DeadLetter> for DeadLetterView {
    fn from(letter: dashboard::DeadLetter) -> Self {
        let why = not_redrivable_because(&letter);
        Self {
            letter,
            redrivable: why.is_none(),
            not_redrivable_because: why,
        }
    }
}

/// Why a redrive of this letter cannot work, if it cannot. (A letter already redriven answers
/// its command again, so it is not "redrivable" either: there is nothing left to do.)
pub fn not_redrivable_because(letter: &dashboard::DeadLetter) -> Option<String> {
    if let Some(command) = letter.redriven_as {
        return Some(format!("already redriven as command {command}"));
    }
    if letter.acknowledged_at.is_some() {
        return Some(format!(
            "acknowledged by {}",
            letter.acknowledged_by.as_deref().unwrap_or("an admin")
        ));
    }
    if let Err(e) = CommandMessage::parse(letter.body.as_bytes()) {
        return Some(format!("the message is not a readable command ({e})"));
    }
    if !letter.client_live {
        return Some("the client that sent it no longer exists or was revoked".into());
    }
    None
}

/// 409 with a problem body: the letter is closed in a way that excludes what was asked.
fn closed(detail: String) -> Response {
    let status = StatusCode::CONFLICT;
    let mut response = (
        status,
        Json(Problem {
            kind: "https://orderflow.dev/problems/dead-letter-closed".into(),
            title: status.canonical_reason().unwrap_or("Conflict").into(),
            status: status.as_u16(),
            detail,
        }),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

pub async fn redrive(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Received(received_at): Received,
    ApiPath(id): ApiPath<i64>,
    _: StrictJson<EmptyRequest>,
) -> Result<Response, ApiError> {
    let letter = dashboard::dead_letter(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("dead letter"))?;
    if let (Some(command_id), Some(order_id)) = (letter.redriven_as, letter.order_id) {
        return Ok(Json(Redriven {
            dead_letter_id: id,
            command_id,
            order_id,
            new: false,
        })
        .into_response());
    }
    if letter.acknowledged_at.is_some() {
        return Ok(closed(format!(
            "dead letter {id} was acknowledged ({}); it is not redriven",
            not_redrivable_because(&letter).unwrap_or_default()
        )));
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
                "dead letter {id} belongs to a client that no longer exists or was revoked"
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
            // The admin who redrove it made this command.
            on_behalf: Some(admin.actor()),
        },
    )
    .await?;
    let mut tx = state.db.begin().await?;
    dashboard::mark_redriven(&mut tx, id, accepted.command_id, admin.audited_as()).await?;
    tx.commit().await?;
    tracing::info!(dead_letter = id, command_id = %accepted.command_id, admin = %admin.actor(),
        "dead letter redriven");
    Ok(Json(Redriven {
        dead_letter_id: id,
        command_id: accepted.command_id.0,
        order_id: accepted.order_id.0,
        new: !accepted.replayed,
    })
    .into_response())
}

pub async fn acknowledge(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(id): ApiPath<i64>,
    _: StrictJson<EmptyRequest>,
) -> Result<Response, ApiError> {
    let mut tx = state.db.begin().await?;
    let acknowledged = dashboard::acknowledge(&mut tx, id, admin.audited_as()).await?;
    tx.commit().await?;
    if let Some(at) = acknowledged {
        tracing::info!(dead_letter = id, admin = %admin.actor(), "dead letter acknowledged");
        return Ok(Json(Acknowledged {
            dead_letter_id: id,
            acknowledged_at: at,
            new: true,
        })
        .into_response());
    }
    // Not open: say why.
    let letter = dashboard::dead_letter(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("dead letter"))?;
    match (letter.acknowledged_at, letter.redriven_as) {
        (Some(at), None) => Ok(Json(Acknowledged {
            dead_letter_id: id,
            acknowledged_at: at,
            new: false,
        })
        .into_response()),
        (_, Some(command)) => Ok(closed(format!(
            "dead letter {id} was redriven as command {command}; there is nothing to acknowledge"
        ))),
        // The update found it closed, so one of the two is set.
        (None, None) => Err(ApiError::Internal(anyhow::anyhow!(
            "dead letter {id} is open, yet could not be acknowledged"
        ))),
    }
}
