//! Invariants 5 and 6: per order, the event history is gapless from 1, ends at the projection's
//! version and, folded with the domain's own `evolve`, rebuilds the projection exactly; and the
//! order's commands took effect in the order they were accepted (their `seq`).

use super::{Input, Verdict};
use orderflow_domain::order::evolve;
use orderflow_domain::{ClientId, Event, Order, OrderId};
use orderflow_storage::audit::{EventRow, OrderRow};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// Groups rows by order id, keeping their (seq) order.
pub fn by_order<T>(rows: &[T], order_id: impl Fn(&T) -> Uuid) -> BTreeMap<Uuid, Vec<&T>> {
    let mut map: BTreeMap<Uuid, Vec<&T>> = BTreeMap::new();
    for row in rows {
        map.entry(order_id(row)).or_default().push(row);
    }
    map
}

/// Parses an order's events and folds them; each step's event with the state after it.
/// `Err` says why the history cannot be replayed (unreadable event, impossible transition).
pub fn replay(
    order_id: Uuid,
    client_id: Uuid,
    events: &[&EventRow],
) -> Result<Vec<(Event, Order)>, String> {
    let mut state: Option<Order> = None;
    let mut steps = Vec::new();
    for row in events {
        let event: Event = serde_json::from_value(row.data.clone())
            .map_err(|e| format!("event {} does not parse: {e}", row.seq))?;
        // `evolve` panics on a history `decide` could never have written: that is a finding.
        let next = std::panic::catch_unwind(|| {
            evolve(
                state.clone(),
                OrderId(order_id),
                ClientId(client_id),
                &event,
                row.recorded_at,
            )
        })
        .map_err(|_| {
            format!(
                "event {} ({}) cannot follow its history",
                row.seq,
                event.name()
            )
        })?;
        state = Some(next.clone());
        steps.push((event, next));
    }
    Ok(steps)
}

/// The projection row as the domain's `Order`.
pub fn projection(row: &OrderRow) -> Result<Order, String> {
    Ok(Order {
        id: OrderId(row.id),
        client_id: ClientId(row.client_id),
        customer_id: row.customer_id.clone().try_into()?,
        currency: row.currency.clone().try_into()?,
        status: row.status.parse()?,
        version: row.version,
        items: serde_json::from_value(row.items.clone()).map_err(|e| e.to_string())?,
        total_cents: row.total_cents,
        details: serde_json::from_value(row.details.clone()).map_err(|e| e.to_string())?,
        tracking_number: row
            .tracking_number
            .clone()
            .map(TryInto::try_into)
            .transpose()?,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// 5: gapless seq from 1, equal to the version; the replay equals the projection.
pub fn events_rebuild_projection(input: &Input<'_>) -> Verdict {
    let mut verdict = Verdict::new(5, "events gapless and rebuild the projection");
    let events = by_order(&input.snapshot.events, |e| e.order_id);
    let orders: HashMap<Uuid, &OrderRow> =
        input.snapshot.orders.iter().map(|o| (o.id, o)).collect();
    for (&order_id, history) in &events {
        for (i, row) in history.iter().enumerate() {
            if row.seq != i as i64 + 1 {
                verdict.violation(|| {
                    format!("order {order_id}: event #{} has seq {}", i + 1, row.seq)
                });
                break;
            }
        }
        let Some(row) = orders.get(&order_id) else {
            verdict.violation(|| format!("order {order_id} has events but no projection"));
            continue;
        };
        if row.version != history.len() as i64 {
            verdict.violation(|| {
                format!(
                    "order {order_id}: version {} but {} events",
                    row.version,
                    history.len()
                )
            });
        }
        let rebuilt = replay(order_id, row.client_id, history)
            .map(|steps| steps.last().map(|(_, order)| order.clone()));
        match (rebuilt, projection(row)) {
            (Err(why), _) | (_, Err(why)) => {
                verdict.violation(|| format!("order {order_id}: {why}"))
            }
            (Ok(Some(rebuilt)), Ok(stored)) if rebuilt != stored => verdict.violation(|| {
                format!("order {order_id}: replay gives {rebuilt:?}, projection is {stored:?}")
            }),
            _ => {}
        }
    }
    for row in &input.snapshot.orders {
        if !events.contains_key(&row.id) {
            verdict.violation(|| format!("order {} has a projection but no events", row.id));
        }
    }
    verdict
}

/// 6: per order, in `seq` order, each applied command made the next version (one applied
/// unchanged kept it) and each rejected one saw the version before it; finish times do not go backwards; events follow `seq`; status
/// events were published in `seq` order.
pub fn applied_in_order(input: &Input<'_>) -> Verdict {
    let mut verdict = Verdict::new(6, "commands applied in the order accepted");
    let seq_of: HashMap<Uuid, i64> = input
        .snapshot
        .commands
        .iter()
        .map(|c| (c.id, c.seq))
        .collect();
    for (order_id, commands) in by_order(&input.snapshot.commands, |c| c.order_id) {
        let mut sorted = commands;
        sorted.sort_by_key(|c| c.seq);
        let mut version = 0;
        let mut last_finished = None;
        for c in sorted
            .iter()
            .filter(|c| !c.refused() && c.status != "accepted")
        {
            if let Some(at) = c.finished_at {
                if last_finished.is_some_and(|last| at < last) {
                    verdict.violation(|| {
                        format!(
                            "order {order_id}: seq {} finished before an earlier seq",
                            c.seq
                        )
                    });
                }
                last_finished = Some(at);
            }
            let expected = match c.status.as_str() {
                // Applied without a change: the version it found (invariant 2 checks that it
                // asked for what the order then was).
                "applied" if c.unchanged() => Some(version),
                "applied" => Some(version + 1),
                "rejected" => (version > 0).then_some(version),
                _ => continue,
            };
            if c.result_version != expected {
                verdict.violation(|| {
                    format!(
                        "order {order_id}: seq {} ({} {}) has version {:?}, expected {expected:?}",
                        c.seq, c.kind, c.status, c.result_version
                    )
                });
            }
            if c.status == "applied" && !c.unchanged() {
                version += 1;
            }
        }
    }
    for (order_id, history) in by_order(&input.snapshot.events, |e| e.order_id) {
        let seqs: Vec<i64> = history
            .iter()
            .filter_map(|e| seq_of.get(&e.command_id).copied())
            .collect();
        if seqs.windows(2).any(|w| w[0] >= w[1]) {
            verdict.violation(|| format!("order {order_id}: events from command seqs {seqs:?}"));
        }
    }
    // First announcement of each command, per order, in arrival order. An event whose first
    // arrival here was a redelivery (the listener's connection died with it in flight) is left
    // out: the broker put it back behind what was published after it, so its place says nothing
    // of the order the stack published in. Every other event keeps its place.
    let mut announced: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for event in input.events {
        if seen.insert(event.command_id)
            && !event.redelivered
            && seq_of.contains_key(&event.command_id)
        {
            announced.entry(event.order_id).or_default().push(event.seq);
        }
    }
    for (order_id, seqs) in announced {
        if seqs.windows(2).any(|w| w[0] >= w[1]) {
            verdict
                .violation(|| format!("order {order_id}: status events arrived as seqs {seqs:?}"));
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::{Fixture, at};
    use serde_json::json;

    #[test]
    fn a_clean_history_passes() {
        let f = Fixture::clean();
        let v = events_rebuild_projection(&f.input());
        assert!(v.passed(), "{v:?}");
        let v = applied_in_order(&f.input());
        assert!(v.passed(), "{v:?}");
    }

    #[test]
    fn a_deleted_event_is_a_gap_and_a_version_mismatch() {
        let mut f = Fixture::clean();
        f.snapshot.events.remove(1);
        let v = events_rebuild_projection(&f.input());
        assert!(v.violations >= 2, "{v:?}");
    }

    #[test]
    fn a_projection_that_differs_from_the_replay_is_caught() {
        let mut f = Fixture::clean();
        f.snapshot.orders[0].total_cents = 251;
        assert_eq!(events_rebuild_projection(&f.input()).violations, 1);
        let mut f = Fixture::clean();
        f.snapshot.orders[0].updated_at = at(9);
        assert_eq!(events_rebuild_projection(&f.input()).violations, 1);
    }

    #[test]
    fn an_impossible_history_is_caught_not_a_panic() {
        let mut f = Fixture::clean();
        f.snapshot.events[1].data = json!({"type": "order_created", "customer_id": "c",
                                          "currency": "EUR", "items": []});
        assert!(!events_rebuild_projection(&f.input()).passed());
    }

    #[test]
    fn an_unchanged_command_keeps_the_version_and_no_other_does() {
        let f = Fixture::address_set_twice();
        let v = applied_in_order(&f.input());
        assert!(v.passed(), "{v:?}");
        // Claiming a version of its own would be a change nobody can see.
        let mut f = Fixture::address_set_twice();
        f.snapshot.commands[6].result_version = Some(6);
        assert_eq!(applied_in_order(&f.input()).violations, 1);
        // An applied command without the reason must move the version on.
        let mut f = Fixture::address_set_twice();
        f.snapshot.commands[6].reason = None;
        assert_eq!(applied_in_order(&f.input()).violations, 1);
    }

    #[test]
    fn commands_taking_effect_out_of_seq_order_are_caught() {
        let mut f = Fixture::clean();
        // seq 2 and 3 swapped their effects
        f.snapshot.commands[1].result_version = Some(3);
        f.snapshot.commands[2].result_version = Some(2);
        assert_eq!(applied_in_order(&f.input()).violations, 2);
        let mut f = Fixture::clean();
        f.snapshot.commands[3].finished_at = Some(at(0));
        assert_eq!(applied_in_order(&f.input()).violations, 1);
        let mut f = Fixture::clean();
        f.events.swap(0, 1);
        assert_eq!(applied_in_order(&f.input()).violations, 1);
    }

    #[test]
    fn an_event_that_first_arrived_redelivered_has_no_place_in_the_arrival_order() {
        // Announced as seqs 1, 3, 2, 4: 2 came back behind 3 after the listener lost it.
        let mut f = Fixture::clean();
        f.events.swap(1, 2);
        f.events[2].redelivered = true;
        assert!(applied_in_order(&f.input()).passed());
        // The same order with 2 delivered fresh is the stack's own: caught.
        f.events[2].redelivered = false;
        assert_eq!(applied_in_order(&f.input()).violations, 1);
    }
}
