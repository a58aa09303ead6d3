//! The admin screen for operators: list them, create one, disable one. Admins only (a person
//! with the admin role, or an admin key); each change is recorded in `admin_actions` with who
//! made it. The same as `orderflow-api operator …`, for people who are signed in already.

use super::auth::{Admin, Principal};
use crate::error::ApiError;
use crate::extract::{ApiPath, StrictJson};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use orderflow_storage::dashboard::record_action;
use orderflow_storage::operators::{self, Role};
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
pub struct OperatorView {
    name: String,
    role: &'static str,
    created_at: DateTime<Utc>,
    disabled_at: Option<DateTime<Utc>>,
    live_sessions: i64,
}

pub async fn list(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<OperatorView>>, ApiError> {
    let operators = operators::list(&state.db).await?;
    Ok(Json(
        operators
            .into_iter()
            .map(|o| OperatorView {
                name: o.name,
                role: o.role.as_str(),
                created_at: o.created_at,
                disabled_at: o.disabled_at,
                live_sessions: o.live_sessions,
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    name: String,
    role: String,
    password: String,
}

pub async fn create(
    State(state): State<AppState>,
    Admin(admin): Admin,
    body: StrictJson<NewOperator>,
) -> Result<Response, ApiError> {
    let NewOperator {
        name,
        role,
        password,
    } = body.value;
    if !operators::valid_name(&name) {
        return Err(ApiError::InvalidBody(
            "name must be 1–64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
                .into(),
        ));
    }
    let role = Role::parse(&role).ok_or_else(|| {
        ApiError::InvalidBody("role must be one of viewer, operator, admin".into())
    })?;
    let hash = tokio::task::spawn_blocking(move || crate::operators::hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(ApiError::InvalidBody)?;
    let mut tx = state.db.begin().await?;
    let id = match operators::create(&mut *tx, &name, role, &hash).await? {
        operators::Created::Created(id) => id,
        operators::Created::NameTaken => {
            return Err(ApiError::Conflict(format!(
                "an operator named {name} exists already"
            )));
        }
    };
    record_action(
        &mut *tx,
        admin.audited_as(),
        "create_operator",
        &name,
        &serde_json::json!({ "role": role.as_str(), "operator_id": id }),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(operator = %name, %role, by = %admin.actor(), "operator created");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "name": name, "role": role.as_str() })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

pub async fn disable(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(name): ApiPath<String>,
    _: StrictJson<Empty>,
) -> Result<Response, ApiError> {
    if let Principal::Operator(session) = &admin
        && session.name == name
    {
        return Err(ApiError::Conflict(
            "you cannot disable yourself: ask another admin".into(),
        ));
    }
    let mut tx = state.db.begin().await?;
    if !operators::disable(&mut *tx, &name).await? {
        return Err(ApiError::NotFound("live operator"));
    }
    record_action(
        &mut *tx,
        admin.audited_as(),
        "disable_operator",
        &name,
        &serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(operator = %name, by = %admin.actor(), "operator disabled");
    Ok(StatusCode::NO_CONTENT.into_response())
}
