//! A hand-made clean run for the checks' unit tests: one order created, added to, reserved and
//! paid, then a rejected `deliver`; tests break one thing each and expect exactly that caught.

use crate::check::Input;
use crate::events::StatusEvent;
use crate::load::Snapshot;
use crate::record::{Observations, Outcome, RequestRecord};
use chrono::{DateTime, TimeZone, Utc};
use orderflow_storage::audit::{CommandRow, EventRow, FeedRow, OrderRow, PaymentRow, StockRow};
use serde_json::json;
use uuid::Uuid;

pub struct Fixture {
    pub snapshot: Snapshot,
    pub observed: Observations,
    pub events: Vec<StatusEvent>,
}

pub fn at(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, second).unwrap()
}

pub const ORDER: Uuid = Uuid::from_u128(0x100);
pub const CLIENT: Uuid = Uuid::from_u128(0x200);

pub fn command_id(seq: i64) -> Uuid {
    Uuid::from_u128(0x1000 + seq as u128)
}

impl Fixture {
    pub fn clean() -> Self {
        let kinds = ["create", "add_item", "reserve", "pay", "deliver"];
        let commands: Vec<CommandRow> = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                let seq = i as i64 + 1;
                let rejected = *kind == "deliver";
                CommandRow {
                    id: command_id(seq),
                    order_id: ORDER,
                    seq,
                    kind: (*kind).into(),
                    source: "http".into(),
                    status: if rejected { "rejected" } else { "applied" }.into(),
                    reason: rejected.then(|| "invalid_transition".into()),
                    result_version: Some(if rejected { 4 } else { seq }),
                    finished_at: Some(at(seq as u32)),
                    partition: 0,
                    epoch: Some(1),
                    lease_partition: Some(0),
                    address: None,
                }
            })
            .collect();
        let datas = [
            json!({"type": "order_created", "customer_id": "c", "currency": "EUR",
                   "items": [{"sku": "A", "quantity": 2, "unit_price_cents": 100}]}),
            json!({"type": "item_added", "sku": "B", "quantity": 1, "unit_price_cents": 50}),
            json!({"type": "stock_reserved", "items": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}]}),
            json!({"type": "payment_captured", "amount_cents": 250, "currency": "EUR"}),
        ];
        let events = datas
            .into_iter()
            .enumerate()
            .map(|(i, data)| EventRow {
                order_id: ORDER,
                seq: i as i64 + 1,
                command_id: command_id(i as i64 + 1),
                data,
                recorded_at: at(i as u32 + 1),
            })
            .collect();
        let order = OrderRow {
            id: ORDER,
            client_id: CLIENT,
            customer_id: "c".into(),
            currency: "EUR".into(),
            status: "paid".into(),
            version: 4,
            items: json!([{"sku": "A", "quantity": 2, "unit_price_cents": 100},
                          {"sku": "B", "quantity": 1, "unit_price_cents": 50}]),
            total_cents: 250,
            details: json!({}),
            tracking_number: None,
            created_at: at(1),
            updated_at: at(4),
        };
        let snapshot = Snapshot {
            events,
            orders: vec![order],
            inventory: vec![
                StockRow {
                    sku: "A".into(),
                    available: 8,
                    reserved: 2,
                    shipped: 0,
                },
                StockRow {
                    sku: "B".into(),
                    available: 4,
                    reserved: 1,
                    shipped: 0,
                },
            ],
            payments: vec![PaymentRow {
                order_id: ORDER,
                command_id: command_id(4),
                kind: "capture".into(),
                amount_cents: 250,
            }],
            idempotency_keys: Vec::new(),
            outbox_rows: 0,
            feed: commands
                .iter()
                .enumerate()
                .map(|(i, c)| FeedRow {
                    position: i as i64 + 1,
                    order_id: c.order_id,
                    command_id: c.id,
                    seq: c.seq,
                    status: c.status.clone(),
                })
                .collect(),
            dead_letters: Some(0),
            commands: commands.clone(),
        };
        let requests = commands
            .iter()
            .map(|c| RequestRecord {
                scenario: "fixture",
                op: format!("POST /v1/orders/{{id}}/commands {}", c.kind),
                outcome: Outcome::Ok,
                status: Some(202),
                retry_after: false,
                command_id: Some(c.id),
                order_id: Some(ORDER),
                replayed: false,
                probe: None,
            })
            .collect();
        let events = commands
            .iter()
            .map(|c| StatusEvent {
                command_id: c.id,
                order_id: ORDER,
                seq: c.seq,
                status: c.status.clone(),
                redelivered: false,
            })
            .collect();
        Fixture {
            snapshot,
            observed: Observations {
                requests,
                direct: Vec::new(),
                orders: vec![ORDER],
                stock: vec![("A".into(), 10), ("B".into(), 5)],
            },
            events,
        }
    }

    /// [`Fixture::clean`] and then two `set_shipping_address` commands with one address: the
    /// first applied (event 5, `details_changed`), the second applied unchanged at version 5.
    /// (The projection is left as it was: for the checks of commands and events only.)
    pub fn address_set_twice() -> Self {
        let mut f = Self::clean();
        let address = json!({"name": "Ada", "lines": ["1 Main St"], "city": "Oslo",
                             "postal_code": "0150", "country": "NO"});
        for (seq, reason) in [(6, None), (7, Some("unchanged"))] {
            f.snapshot.commands.push(CommandRow {
                id: command_id(seq),
                order_id: ORDER,
                seq,
                kind: "set_shipping_address".into(),
                source: "http".into(),
                status: "applied".into(),
                reason: reason.map(Into::into),
                result_version: Some(5),
                finished_at: Some(at(seq as u32)),
                partition: 0,
                epoch: Some(1),
                lease_partition: Some(0),
                address: Some(address.clone()),
            });
        }
        f.snapshot.events.push(EventRow {
            order_id: ORDER,
            seq: 5,
            command_id: command_id(6),
            data: json!({"type": "details_changed", "details": {"shipping_address": address},
                         "changed": ["shipping_address"]}),
            recorded_at: at(6),
        });
        f
    }

    pub fn input(&self) -> Input<'_> {
        Input {
            snapshot: &self.snapshot,
            observed: &self.observed,
            events: &self.events,
        }
    }
}
