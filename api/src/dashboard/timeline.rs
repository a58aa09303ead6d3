//! One order's timeline: every command's journey (received by the API, recorded, published to
//! its partition, delivered to a worker — which attempt — and applied or rejected), the event
//! history with versions, and each conflict marked with the command that won it:
//!
//! - `version_conflict`: the command whose event moved the order past the expected version;
//! - `invalid_transition`: the command whose event put the order in the state it was found in;
//! - `insufficient_stock`: the latest applied reserve of another order sharing a SKU, before it;
//! - an Idempotency-Key mismatch (HTTP 422, nothing recorded): the command holding the key.

use super::hub::{Hub, IdempotencyEvent};
use chrono::{DateTime, Utc};
use orderflow_domain::OrderId;
use orderflow_storage::dashboard::{self, CommandJourney, OrderSummary};
use orderflow_storage::orders::{self, EventRecord};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Serialize)]
pub struct Timeline {
    /// The projection (None while the create command has not been applied).
    pub order: Option<OrderSummary>,
    /// The order's lines (empty until it is created).
    pub lines: Vec<orderflow_domain::Item>,
    pub commands: Vec<Step>,
    pub events: Vec<EventRecord>,
    /// Idempotency replays and mismatches on this order seen by the API instances (kept in
    /// memory, recent ones only). `http_events` on the wire: the dashboard's script reads it.
    #[serde(rename = "http_events")]
    pub idempotency_events: Vec<IdempotencyEvent>,
}

#[derive(Debug, Serialize)]
pub struct Step {
    #[serde(flatten)]
    pub journey: CommandJourney,
    pub conflict: Option<Conflict>,
    /// The stages of its journey, in the order they happened ([`stages`]).
    pub stages: Vec<Stage>,
    /// When its journey began: the first of its timestamps.
    pub started_at: DateTime<Utc>,
    /// From [`Step::started_at`] to its final status (None while in flight); never negative.
    pub total_ms: Option<f64>,
    /// The dead letter this command redrives, if it is a redrive.
    pub redrive_of: Option<i64>,
}

/// One stage of a command's journey; `ms` is never negative.
#[derive(Debug, PartialEq, Serialize)]
pub struct Stage {
    /// `record`, `publish`, `queue` or `apply`.
    pub name: &'static str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub ms: f64,
    /// Set when the timestamps were not in the order of the stages (a different clock, or a
    /// confirm recorded after the delivery); the stage is then shown as taking no time.
    pub note: Option<&'static str>,
}

/// A timestamp a journey may lack.
type Moment = Option<DateTime<Utc>>;

/// The stages of a journey, from the timestamps that bound each one, in the order things
/// happen for its source:
///
/// - through the API: received → recorded (`record`) → published, i.e. the broker's confirm
///   (`publish`) → delivered to the worker (`queue`) → finished (`apply`). The API records the
///   confirm a moment after its 202, and only for a command not finished by then
///   (`api/src/confirms.rs`): a command applied sooner has its delivery as its publish, so
///   `publish` ends at the delivery and `queue` takes no time.
/// - from a direct producer: the worker receives the message first and records the command
///   then: delivered → recorded (`record`, by the worker) → finished (`apply`). Its
///   `published_at` is only the moment of recording, and it was never received by the API.
///
/// Timestamps come from three clocks (the API's, the worker's, PostgreSQL's): a stage whose end
/// reads before its start lasts 0 ms and says so, rather than a negative time.
pub fn stages(c: &CommandJourney) -> Vec<Stage> {
    let mut bounds: Vec<(&'static str, Moment, Moment)> = Vec::with_capacity(4);
    if c.source == "amqp" {
        bounds.push(("record", c.delivered_at, Some(c.accepted_at)));
        bounds.push(("apply", Some(c.accepted_at), c.finished_at));
    } else {
        // The broker's confirm, unless the delivery came first.
        let published = match (c.published_at, c.delivered_at) {
            (Some(p), Some(d)) => Some(p.min(d)),
            (p, d) => p.or(d),
        };
        bounds.push(("record", c.received_at, Some(c.accepted_at)));
        bounds.push(("publish", Some(c.accepted_at), published));
        bounds.push(("queue", published, c.delivered_at));
        bounds.push(("apply", c.delivered_at, c.finished_at));
    }
    bounds
        .into_iter()
        .filter_map(|(name, from, to)| {
            let (from, to) = (from?, to?);
            let micros = (to - from).num_microseconds().unwrap_or(i64::MAX);
            Some(Stage {
                name,
                from,
                to: to.max(from),
                ms: micros.max(0) as f64 / 1000.0,
                note: (micros < 0).then_some("its timestamps are out of order (clocks differ)"),
            })
        })
        .collect()
}

/// The first timestamp of a journey, and the time from it to the final status.
fn span(c: &CommandJourney) -> (DateTime<Utc>, Option<f64>) {
    let started = [c.received_at, c.delivered_at, c.published_at]
        .into_iter()
        .flatten()
        .fold(c.accepted_at, DateTime::min);
    let total = c
        .finished_at
        .map(|f| (f - started).num_microseconds().unwrap_or(i64::MAX).max(0) as f64 / 1000.0);
    (started, total)
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
    let lines = dashboard::order_lines(db, order_id).await?;
    let journeys = dashboard::journeys(db, order_id).await?;
    let events = orders::events(db, order_id).await?;
    let redrives = dashboard::redrives_of_order(db, order_id).await?;
    let mut commands = Vec::with_capacity(journeys.len());
    for journey in journeys {
        let conflict = conflict_of(db, &journey, order_id, &events, &commands).await?;
        let (started_at, total_ms) = span(&journey);
        commands.push(Step {
            stages: stages(&journey),
            started_at,
            total_ms,
            redrive_of: redrives
                .iter()
                .find(|(command, _)| *command == journey.id)
                .map(|(_, letter)| *letter),
            journey,
            conflict,
        });
    }
    Ok(Some(Timeline {
        order,
        lines,
        commands,
        events,
        idempotency_events: hub.idempotency_events_of(order_id.0),
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn journey(source: &str) -> CommandJourney {
        CommandJourney {
            id: Uuid::nil(),
            seq: 1,
            kind: "create".into(),
            source: source.into(),
            status: "applied".into(),
            reason: None,
            expected_version: None,
            result_version: Some(1),
            partition: 0,
            received_at: None,
            accepted_at: DateTime::UNIX_EPOCH,
            published_at: None,
            delivered_at: None,
            attempt: Some(1),
            finished_at: None,
            traceparent: None,
            body: serde_json::Value::Null,
            actor: None,
        }
    }

    fn at(ms: i64) -> Option<DateTime<Utc>> {
        Some(DateTime::UNIX_EPOCH + TimeDelta::milliseconds(ms))
    }

    fn named(stages: &[Stage]) -> Vec<(&'static str, f64)> {
        stages.iter().map(|s| (s.name, s.ms)).collect()
    }

    #[test]
    fn a_direct_producers_command_is_received_before_it_is_recorded() {
        // The worker got the message at -3 ms, recorded it at 0 (also its "published_at").
        let c = CommandJourney {
            delivered_at: at(-3),
            published_at: at(0),
            finished_at: at(5),
            ..journey("amqp")
        };
        assert_eq!(named(&stages(&c)), [("record", 3.0), ("apply", 5.0)]);
        assert_eq!(span(&c), (at(-3).unwrap(), Some(8.0)));
    }

    #[test]
    fn a_delivery_before_the_recorded_confirm_ends_the_publish_stage() {
        let c = CommandJourney {
            received_at: at(-1),
            published_at: at(9),
            delivered_at: at(4),
            finished_at: at(6),
            ..journey("http")
        };
        assert_eq!(
            named(&stages(&c)),
            [
                ("record", 1.0),
                ("publish", 4.0),
                ("queue", 0.0),
                ("apply", 2.0)
            ]
        );
    }

    #[test]
    fn timestamps_of_clocks_that_disagree_give_no_negative_stage() {
        // The API's clock ahead of PostgreSQL's: received after recorded.
        let c = CommandJourney {
            received_at: at(2),
            published_at: at(1),
            delivered_at: at(3),
            finished_at: at(2),
            ..journey("http")
        };
        let stages = stages(&c);
        assert!(
            stages.iter().all(|s| s.ms >= 0.0 && s.to >= s.from),
            "{stages:?}"
        );
        assert!(stages[0].note.is_some() && stages[3].note.is_some());
        assert_eq!(span(&c).1, Some(2.0));
    }
}
