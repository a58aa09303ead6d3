//! One order's timeline: every command's journey (received by the API, recorded, published to
//! its partition, delivered to a worker — which attempt — and applied or rejected), the event
//! history with versions, and each conflict marked with the command that won it:
//!
//! - `version_conflict`: the command whose event moved the order past the expected version;
//! - `invalid_transition`: the command whose event put the order in the state it was found in;
//! - `insufficient_stock`: the latest applied reserve of another order sharing a SKU, before it;
//! - an Idempotency-Key mismatch (HTTP 422, nothing recorded): the command holding the key.

use super::hub::{HttpEvent, Hub};
use orderflow_shared::db::dashboard::{self, CommandJourney, OrderSummary};
use orderflow_shared::db::orders::{self, EventRecord};
use orderflow_shared::domain::OrderId;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Serialize)]
pub struct Timeline {
    /// The projection (None while the create command has not been applied).
    pub order: Option<OrderSummary>,
    pub commands: Vec<Step>,
    pub events: Vec<EventRecord>,
    /// Idempotency replays and mismatches on this order seen by the API instances (kept in
    /// memory, recent ones only).
    pub http_events: Vec<HttpEvent>,
}

#[derive(Debug, Serialize)]
pub struct Step {
    #[serde(flatten)]
    pub journey: CommandJourney,
    pub conflict: Option<Conflict>,
}

#[derive(Debug, Serialize)]
pub struct Conflict {
    pub reason: String,
    pub detail: String,
    pub winner: Option<Winner>,
}

#[derive(Debug, Serialize)]
pub struct Winner {
    pub command_id: Uuid,
    pub order_id: Uuid,
    pub kind: Option<String>,
    pub seq: Option<i64>,
}

/// The timeline, or None if no command was ever accepted for this order id.
pub async fn build(db: &PgPool, hub: &Hub, order_id: OrderId) -> sqlx::Result<Option<Timeline>> {
    if !dashboard::stream_exists(db, order_id).await? {
        return Ok(None);
    }
    let order = dashboard::order(db, order_id).await?;
    let journeys = dashboard::journeys(db, order_id).await?;
    let events = orders::events(db, order_id).await?;
    let mut commands = Vec::with_capacity(journeys.len());
    for journey in journeys {
        let conflict = conflict_of(db, &journey, order_id, &events, &commands).await?;
        commands.push(Step { journey, conflict });
    }
    Ok(Some(Timeline {
        order,
        commands,
        events,
        http_events: hub.http_events_of(order_id.0),
    }))
}

async fn conflict_of(
    db: &PgPool,
    c: &CommandJourney,
    order_id: OrderId,
    events: &[EventRecord],
    earlier: &[Step],
) -> sqlx::Result<Option<Conflict>> {
    let Some(reason) = c.reason.as_deref().filter(|_| c.status == "rejected") else {
        return Ok(None);
    };
    // The command of the event with this seq (version), as a winner.
    let by_event = |version: i64| {
        events.iter().find(|e| e.seq == version).map(|e| {
            let step = earlier.iter().find(|s| s.journey.id == e.command_id.0);
            Winner {
                command_id: e.command_id.0,
                order_id: order_id.0,
                kind: step.map(|s| s.journey.kind.clone()),
                seq: step.map(|s| s.journey.seq),
            }
        })
    };
    let conflict = match reason {
        "version_conflict" => {
            let expected = c.expected_version.unwrap_or_default();
            Conflict {
                reason: reason.into(),
                detail: format!(
                    "expected version {expected}, found {}",
                    c.result_version
                        .map_or_else(|| "none".to_owned(), |v| v.to_string())
                ),
                winner: by_event(expected + 1),
            }
        }
        "invalid_transition" => Conflict {
            reason: reason.into(),
            detail: format!(
                "the order was at version {} when this {} arrived",
                c.result_version
                    .map_or_else(|| "?".to_owned(), |v| v.to_string()),
                c.kind
            ),
            winner: c.result_version.and_then(by_event),
        },
        "insufficient_stock" => {
            let winner = match c.finished_at {
                Some(at) => dashboard::stock_winner(db, order_id, at).await?,
                None => None,
            };
            Conflict {
                reason: reason.into(),
                detail: winner.as_ref().map_or_else(
                    || "not enough stock for every item".to_owned(),
                    |w| format!("the last units of {} went to order {}", w.sku, w.order_id),
                ),
                winner: winner.map(|w| Winner {
                    command_id: w.command_id,
                    order_id: w.order_id,
                    kind: Some("reserve".into()),
                    seq: None,
                }),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(conflict))
}
