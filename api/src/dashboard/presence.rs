//! Presence on the desk, and edit leases: who else has an order open, and who is editing it.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /dashboard/api/orders/{id}/presence` | viewers | who has the order open, and who holds its edit lease |
//! | `PUT /dashboard/api/orders/{id}/presence` | people signed in | "I have it open", renewed by the page every [`RENEW_EVERY`]; answers the presence |
//! | `DELETE /dashboard/api/orders/{id}/presence` | people signed in | "I left it" |
//! | `POST /dashboard/api/orders/{id}/edit-lease` | operators, admins | take the edit lease (or renew one's own): 200, or 409 naming who holds it |
//! | `PUT /dashboard/api/orders/{id}/edit-lease` | operators, admins | renew one's own: 200, or 409 when it is no longer one's own |
//! | `DELETE /dashboard/api/orders/{id}/edit-lease` | operators, admins | let go of one's own |
//! | `POST /dashboard/api/orders/{id}/edit-lease/break` | admins | break whoever's lease (recorded in `admin_actions`) |
//!
//! Presence lasts [`PRESENCE_TTL`] past its last renewal and a lease [`LEASE_TTL`]: a page that
//! closes without a word (a crash, a cut cable) drops out within that, when the sweep here
//! deletes its rows. A session that ends leaves every order at once (a trigger). Every change is
//! announced to every API process (`orderflow_presence`), whose live feed sends the order's new
//! presence as a `presence` frame ([`super::hub`]).
//!
//! Presence and leases are a person's: an admin API key (a script) may read them, not hold them.
//! The lease warns others before they start; it decides nothing. Whoever edits without it still
//! sends their change with the version they saw, and the version decides.

use super::auth::{Admin, Operator, Principal, Viewer};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use orderflow_domain::OrderId;
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_storage::operators::Session;
use orderflow_storage::presence::{self, Claim, Editor, Presence};
use orderflow_storage::{commands, dashboard};
use serde::Serialize;
use std::time::Duration;
use uuid::Uuid;

/// How often the page renews its presence and its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How long presence outlives its last renewal: three renewals may be lost.
pub const PRESENCE_TTL: Duration = Duration::from_secs(15);
/// How long a lease outlives its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(20);
/// How often lapsed presence and leases are deleted (and announced).
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// The signed-in person's session: presence and leases are people's.
fn person(principal: &Principal) -> Result<&Session, ApiError> {
    match principal {
        Principal::Operator(session) => Ok(session),
        Principal::AdminKey(_) => Err(ApiError::PeopleOnly),
    }
}

/// 404 for an order that does not exist (nobody can have it open).
async fn existing(state: &AppState, order_id: Uuid) -> Result<(), ApiError> {
    commands::stream_owner(&state.db, OrderId(order_id))
        .await?
        .map(|_| ())
        .ok_or(ApiError::NotFound("order"))
}

async fn presence_of(state: &AppState, order_id: Uuid) -> Result<Presence, ApiError> {
    Ok(presence::of_orders(&state.db, &[order_id])
        .await?
        .pop()
        .expect("one presence per order asked"))
}

pub async fn get(
    State(state): State<AppState>,
    Viewer(_): Viewer,
    ApiPath(order_id): ApiPath<Uuid>,
) -> Result<Json<Presence>, ApiError> {
    existing(&state, order_id).await?;
    Ok(Json(presence_of(&state, order_id).await?))
}

pub async fn arrive(
    State(state): State<AppState>,
    Viewer(principal): Viewer,
    ApiPath(order_id): ApiPath<Uuid>,
) -> Result<Json<Presence>, ApiError> {
    let session = person(&principal)?;
    existing(&state, order_id).await?;
    presence::arrive(
        &state.db,
        order_id,
        &session.token_hash,
        session.operator_id,
        PRESENCE_TTL,
    )
    .await?;
    Ok(Json(presence_of(&state, order_id).await?))
}

pub async fn leave(
    State(state): State<AppState>,
    Viewer(principal): Viewer,
    ApiPath(order_id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let session = person(&principal)?;
    presence::leave(&state.db, order_id, &session.token_hash).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The lease the caller holds.
#[derive(Serialize)]
pub struct Lease {
    pub order_id: Uuid,
    pub editor: Editor,
    /// Renew it (`PUT`) this often while the form is open.
    pub renew_every_ms: u64,
}

impl Lease {
    fn of(order_id: Uuid, editor: Editor) -> Json<Lease> {
        Json(Lease {
            order_id,
            editor,
            renew_every_ms: RENEW_EVERY.as_millis() as u64,
        })
    }
}

fn someone_else(editor: &Editor) -> ApiError {
    ApiError::Conflict(format!(
        "{} is editing this order since {}: you may still edit, and the order's version decides",
        editor.name,
        editor.since.format("%H:%M:%S UTC")
    ))
}

pub async fn claim(
    State(state): State<AppState>,
    Operator(principal): Operator,
    ApiPath(order_id): ApiPath<Uuid>,
) -> Result<Json<Lease>, ApiError> {
    let session = person(&principal)?;
    existing(&state, order_id).await?;
    match presence::claim(
        &state.db,
        order_id,
        &session.token_hash,
        session.operator_id,
        LEASE_TTL,
    )
    .await?
    {
        Claim::Yours(editor) => Ok(Lease::of(order_id, editor)),
        Claim::Held(editor) => Err(someone_else(&editor)),
        Claim::Contended => Err(ApiError::Conflict(
            "the edit lease changed hands while you took it; try again".into(),
        )),
    }
}

pub async fn renew(
    State(state): State<AppState>,
    Operator(principal): Operator,
    ApiPath(order_id): ApiPath<Uuid>,
) -> Result<Json<Lease>, ApiError> {
    let session = person(&principal)?;
    if let Some(editor) =
        presence::renew(&state.db, order_id, &session.token_hash, LEASE_TTL).await?
    {
        return Ok(Lease::of(order_id, editor));
    }
    Err(ApiError::Conflict(
        match presence_of(&state, order_id).await?.editor {
            Some(editor) => format!(
                "your edit lease ended: {} is editing since {}",
                editor.name,
                editor.since.format("%H:%M:%S UTC")
            ),
            None => "your edit lease ended (an admin broke it, or it lapsed)".into(),
        },
    ))
}

pub async fn release(
    State(state): State<AppState>,
    Operator(principal): Operator,
    ApiPath(order_id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let session = person(&principal)?;
    presence::release(&state.db, order_id, &session.token_hash).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What an admin broke.
#[derive(Serialize)]
pub struct Broken {
    pub order_id: Uuid,
    /// Whose lease it was and since when (none: nobody held a live one).
    pub editor: Option<BrokenLease>,
}

#[derive(Serialize)]
pub struct BrokenLease {
    pub name: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

pub async fn break_lease(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(order_id): ApiPath<Uuid>,
) -> Result<Json<Broken>, ApiError> {
    existing(&state, order_id).await?;
    let mut tx = state.db.begin().await?;
    let broken = presence::break_lease(&mut *tx, order_id).await?;
    if let Some((name, since)) = &broken {
        dashboard::record_action(
            &mut *tx,
            admin.audited_as(),
            "break_edit_lease",
            &order_id.to_string(),
            &serde_json::json!({"editor": name, "since": since}),
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(order_id = %order_id, by = %admin.actor(), broke = ?broken.as_ref().map(|b| &b.0),
        "edit lease broken");
    Ok(Json(Broken {
        order_id,
        editor: broken.map(|(name, since)| BrokenLease { name, since }),
    }))
}

/// Deletes lapsed presence and leases every [`SWEEP_EVERY`] (each deletion announces its order),
/// until `shutdown`. Every API process sweeps; a row is deleted once whoever gets it.
pub async fn sweep(state: AppState, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = every.tick() => {
                if let Err(e) = presence::sweep(&state.db).await {
                    tracing::warn!(error = %e, "could not sweep lapsed presence");
                }
            }
            _ = shutdown.cancelled() => return,
        }
    }
}
