//! Invariant 3: no oversell. Per SKU of the run, `available >= 0` and
//! `available + reserved + shipped` equals the stock the audit set; `reserved` and `shipped` equal
//! what the orders' histories reserved, released and shipped; and no order reserved other than
//! its own lines, or released/shipped more than it held.

use super::history::{by_order, replay};
use super::{Input, Verdict};
use orderflow_domain::Event;
use orderflow_domain::event::StockLine;
use std::collections::{BTreeMap, HashMap};

/// 3: conservation per SKU and a per-order stock ledger from the events.
pub fn no_oversell(input: &Input<'_>) -> Verdict {
    let mut verdict = Verdict::new(3, "no oversell, stock conserved");
    // sku → (reserved, shipped) according to the histories
    let mut ledger: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let client: HashMap<_, _> = input
        .snapshot
        .orders
        .iter()
        .map(|o| (o.id, o.client_id))
        .collect();
    for (order_id, history) in by_order(&input.snapshot.events, |e| e.order_id) {
        let client_id = client.get(&order_id).copied().unwrap_or_default();
        // Unreplayable histories are invariant 5's finding.
        let Ok(steps) = replay(order_id, client_id, &history) else {
            continue;
        };
        let mut held: Vec<StockLine> = Vec::new();
        let mut before: Option<&orderflow_domain::Order> = None;
        for (event, after) in &steps {
            let moved = |lines: &[StockLine],
                         sign: i64,
                         ledger: &mut BTreeMap<String, (i64, i64)>,
                         ship: bool| {
                for l in lines {
                    let entry = ledger.entry(l.sku.to_string()).or_default();
                    entry.0 += sign * l.quantity.get();
                    if ship {
                        entry.1 += l.quantity.get();
                    }
                }
            };
            match event {
                Event::StockReserved { items } => {
                    let own = before.map(|o| o.stock_lines()).unwrap_or_default();
                    if *items != own || !held.is_empty() {
                        verdict.violation(|| {
                            format!("order {order_id} reserved {items:?} holding {held:?} with lines {own:?}")
                        });
                    }
                    moved(items, 1, &mut ledger, false);
                    held = items.clone();
                }
                Event::OrderShipped { items, .. }
                | Event::OrderCancelled {
                    released: items, ..
                } => {
                    if *items != held {
                        verdict.violation(|| {
                            format!("order {order_id} gave back {items:?} holding {held:?}")
                        });
                    }
                    moved(
                        items,
                        -1,
                        &mut ledger,
                        matches!(event, Event::OrderShipped { .. }),
                    );
                    held.clear();
                }
                _ => {}
            }
            before = Some(after);
        }
    }
    let rows: HashMap<&str, _> = input
        .snapshot
        .inventory
        .iter()
        .map(|r| (r.sku.as_str(), r))
        .collect();
    let mut set: BTreeMap<&str, i64> = BTreeMap::new();
    for (sku, available) in &input.observed.stock {
        set.insert(sku, *available);
    }
    for (sku, stock) in set {
        let Some(row) = rows.get(sku) else {
            verdict.violation(|| format!("sku {sku} has no inventory row"));
            continue;
        };
        if row.available < 0 || row.reserved < 0 || row.shipped < 0 {
            verdict.violation(|| format!("sku {sku} went negative: {row:?}"));
        }
        if row.available + row.reserved + row.shipped != stock {
            verdict.violation(|| format!("sku {sku}: {row:?} does not add up to the {stock} set"));
        }
        let (reserved, shipped) = ledger.get(sku).copied().unwrap_or_default();
        if (row.reserved, row.shipped) != (reserved, shipped) {
            verdict.violation(|| {
                format!("sku {sku}: {row:?} but the histories hold {reserved} reserved, {shipped} shipped")
            });
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::fixtures::Fixture;
    use serde_json::json;

    #[test]
    fn a_clean_run_passes() {
        let f = Fixture::clean();
        let v = no_oversell(&f.input());
        assert!(v.passed(), "{v:?}");
    }

    #[test]
    fn stock_appearing_from_nowhere_is_caught() {
        let mut f = Fixture::clean();
        f.snapshot.inventory[0].available += 1;
        assert_eq!(no_oversell(&f.input()).violations, 1);
    }

    #[test]
    fn negative_stock_and_an_unexplained_reservation_are_caught() {
        let mut f = Fixture::clean();
        f.snapshot.inventory[1].available = -1;
        f.snapshot.inventory[1].reserved = 6;
        // negative; reserved not what the histories hold
        assert_eq!(no_oversell(&f.input()).violations, 2);
    }

    #[test]
    fn an_order_reserving_more_than_its_lines_is_caught() {
        let mut f = Fixture::clean();
        f.snapshot.events[2].data = json!({"type": "stock_reserved",
            "items": [{"sku": "A", "quantity": 3}, {"sku": "B", "quantity": 1}]});
        // the order's own lines, and the ledger against the inventory row of A
        assert_eq!(no_oversell(&f.input()).violations, 2);
    }
}
