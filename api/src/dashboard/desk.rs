//! The operators' desk: a person acting on an order from the dashboard.
//!
//! `POST /dashboard/api/orders/{id}/commands` takes a command (any but `create`) for the order,
//! the version the person saw in `If-Match` (required: 428 without; one older than the order's is
//! refused at once, 412 with the current `ETag`), and sends it through the normal intake as a
//! command of the order's own client, recorded as made by `operator:<name>` (or, for a script
//! with an admin key, `client:<name>`). From there it is a command like any other: 202, then
//! applied or rejected by the worker, whose version check decides (`version_conflict` when the
//! order moved after the check here). Operators and admins only; a viewer gets 403, and a change
//! without the session's CSRF token is refused ([`super::auth`]).
//!
//! The same action again (same person, order, `If-Match` and command: a double click, a retry
//! after a lost answer) is the same request and answers the first 202: its Idempotency-Key is
//! named by all of those ([`desk_key`]), with spaces in it, which no `Idempotency-Key` header may
//! carry, so no API client can claim it first.

use super::auth::Operator;
use crate::error::ApiError;
use crate::extract::{ApiPath, IfMatch, Received, StrictJson};
use crate::intake::{self, Accepted, Submission, Target};
use crate::routes::orders::refuse_stale;
use crate::state::AppState;
use axum::extract::State;
use orderflow_domain::{Command, OrderId};
use orderflow_storage::{clients, commands};
use uuid::Uuid;

/// The Idempotency-Key of a desk action: who, and a digest of what (the route, `If-Match` and
/// the command, as in [`intake::fingerprint`]).
fn desk_key(actor: &str, fingerprint: &[u8]) -> String {
    format!("desk action {actor} {}", hex::encode(fingerprint))
}

pub async fn send_command(
    State(state): State<AppState>,
    Operator(person): Operator,
    Received(received_at): Received,
    ApiPath(order_id): ApiPath<Uuid>,
    IfMatch(if_match): IfMatch,
    body: StrictJson<Command>,
) -> Result<Accepted, ApiError> {
    if matches!(body.value, Command::Create { .. }) {
        return Err(ApiError::InvalidBody(
            "orders are created by their clients (POST /v1/orders), not on the desk".into(),
        ));
    }
    let expected = if_match.ok_or(ApiError::PreconditionRequired)?;
    let order_id = OrderId(order_id);
    let owner = commands::stream_owner(&state.db, order_id)
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    let client = clients::get(&state.db, owner).await?.ok_or_else(|| {
        ApiError::InvalidBody(format!(
            "order {order_id} belongs to a client that was revoked; its orders take no more commands"
        ))
    })?;
    let actor = person.actor();
    let route = format!("desk POST /dashboard/api/orders/{order_id}/commands");
    let fingerprint = intake::fingerprint(&route, Some(expected), &body.raw);
    let key = desk_key(&actor, &fingerprint);
    refuse_stale(&state, &client, &key, order_id, expected).await?;
    tracing::info!(order_id = %order_id, actor = %actor, kind = body.value.kind().as_str(),
        expected_version = expected, "desk action");
    intake::submit(
        &state,
        Submission {
            client: &client,
            idempotency_key: &key,
            fingerprint,
            target: Target::Existing(order_id),
            command: body.value,
            expected_version: Some(expected),
            received_at,
            on_behalf: Some(actor),
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_desk_key_cannot_be_sent_as_a_header_and_names_who_and_what() {
        let key = desk_key("operator:alice", b"\x01\x02");
        assert_eq!(key, "desk action operator:alice 0102");
        assert!(
            key.bytes().any(|b| !b.is_ascii_graphic()),
            "a header key is visible ASCII only"
        );
        assert_ne!(key, desk_key("operator:bob", b"\x01\x02"));
    }
}
