use super::*;
use crate::details::DetailField;
use proptest::prelude::*;
use serde_json::json;

fn cmd(value: serde_json::Value) -> Command {
    serde_json::from_value(value).unwrap()
}

fn create() -> Command {
    cmd(
        json!({"type": "create", "customer_id": "c-1", "currency": "EUR",
               "items": [{"sku": "B", "quantity": 2, "unit_price_cents": 150},
                         {"sku": "A", "quantity": 1, "unit_price_cents": 1000}]}),
    )
}

/// Runs commands through decide + evolve like the worker does, minus IO.
fn run(commands: &[Command]) -> (Option<Order>, Vec<Result<Decided, Rejection>>) {
    let (id, client) = (OrderId::new(), ClientId::new());
    let mut order = None;
    let mut outcomes = Vec::new();
    for command in commands {
        let outcome = decide(order.as_ref(), command, None);
        if let Ok(Decided::Event(event)) = &outcome {
            order = Some(evolve(order, id, client, event, Utc::now()));
        }
        outcomes.push(outcome);
    }
    (order, outcomes)
}

#[test]
fn the_happy_path_walks_every_state_and_counts_versions() {
    let (order, outcomes) = run(&[
        create(),
        cmd(json!({"type": "add_item", "sku": "A", "quantity": 2, "unit_price_cents": 1000})),
        cmd(json!({"type": "remove_item", "sku": "B", "quantity": 1})),
        cmd(json!({"type": "reserve"})),
        cmd(json!({"type": "pay"})),
        cmd(json!({"type": "ship"})),
        cmd(json!({"type": "deliver"})),
    ]);
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let order = order.unwrap();
    assert_eq!(order.status, OrderStatus::Delivered);
    assert_eq!(order.version, 7);
    assert_eq!(order.total_cents, 3 * 1000 + 150);
    match &outcomes[3] {
        Ok(Decided::Event(Event::StockReserved { items })) => {
            let skus: Vec<_> = items.iter().map(|l| l.sku.as_str()).collect();
            assert_eq!(skus, ["A", "B"], "stock lines are sorted by sku");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        outcomes[4],
        Ok(Decided::Event(Event::PaymentCaptured {
            amount_cents: 3150,
            currency: serde_json::from_value(json!("EUR")).unwrap()
        }))
    );
}

#[test]
fn a_paid_order_ships_with_its_tracking_number_and_keeps_it() {
    let (order, outcomes) = run(&[
        create(),
        cmd(json!({"type": "reserve"})),
        cmd(json!({"type": "pay"})),
        cmd(json!({"type": "ship", "tracking_number": "1Z999AA10123456784"})),
        cmd(json!({"type": "ship", "tracking_number": "OTHER-1"})),
        cmd(json!({"type": "deliver"})),
    ]);
    match &outcomes[3] {
        Ok(Decided::Event(Event::OrderShipped {
            tracking_number: Some(number),
            ..
        })) => assert_eq!(number.as_str(), "1Z999AA10123456784"),
        other => panic!("{other:?}"),
    }
    assert_eq!(outcomes[4], Err(Rejection::InvalidTransition), "ships once");
    let order = order.unwrap();
    assert_eq!(order.status, OrderStatus::Delivered);
    assert_eq!(
        order.tracking_number.as_ref().map(|t| t.as_str()),
        Some("1Z999AA10123456784"),
        "delivery keeps the number"
    );
    // Without one it still ships (carriers without tracking, older producers).
    let (order, outcomes) = run(&[
        create(),
        cmd(json!({"type": "reserve"})),
        cmd(json!({"type": "pay"})),
        cmd(json!({"type": "ship"})),
    ]);
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(order.unwrap().tracking_number, None);
}

#[test]
fn a_tracking_number_is_bounded_and_printable() {
    for bad in [
        json!(""),
        json!("has space"),
        json!("x".repeat(65)),
        json!("nul\0"),
        json!(7),
    ] {
        let parsed =
            serde_json::from_value::<Command>(json!({"type": "ship", "tracking_number": bad}));
        assert!(parsed.is_err(), "{bad} must not parse");
    }
    assert!(
        serde_json::from_value::<Command>(
            json!({"type": "ship", "tracking_number": "x".repeat(64)})
        )
        .is_ok()
    );
}

#[test]
fn illegal_transitions_are_typed_rejections() {
    let reserve = cmd(json!({"type": "reserve"}));
    let pay = cmd(json!({"type": "pay"}));
    let ship = cmd(json!({"type": "ship"}));
    let cancel = cmd(json!({"type": "cancel"}));
    let (_, outcomes) = run(&[
        create(),
        pay.clone(),
        ship.clone(),
        reserve.clone(),
        reserve,
    ]);
    assert_eq!(outcomes[1], Err(Rejection::InvalidTransition));
    assert_eq!(outcomes[2], Err(Rejection::InvalidTransition));
    assert_eq!(outcomes[4], Err(Rejection::InvalidTransition));
    let (_, outcomes) = run(&[create(), cancel.clone(), cancel, pay, create()]);
    assert!(outcomes[1].is_ok());
    assert_eq!(outcomes[2], Err(Rejection::InvalidTransition));
    assert_eq!(outcomes[3], Err(Rejection::InvalidTransition));
    assert_eq!(outcomes[4], Err(Rejection::OrderExists));
    let (_, outcomes) = run(&[cmd(json!({"type": "pay"}))]);
    assert_eq!(outcomes[0], Err(Rejection::OrderNotFound));
}

#[test]
fn cancel_releases_what_was_reserved_and_refunds_what_was_paid() {
    let (_, outcomes) = run(&[
        create(),
        cmd(json!({"type": "reserve"})),
        cmd(json!({"type": "pay"})),
        cmd(json!({"type": "cancel", "reason": "changed my mind"})),
    ]);
    match &outcomes[3] {
        Ok(Decided::Event(Event::OrderCancelled {
            released,
            refunded_cents,
            ..
        })) => {
            assert_eq!(released.len(), 2);
            assert_eq!(*refunded_cents, 1300);
        }
        other => panic!("{other:?}"),
    }
    let (_, outcomes) = run(&[create(), cmd(json!({"type": "cancel"}))]);
    assert!(matches!(
        &outcomes[1],
        Ok(Decided::Event(Event::OrderCancelled { released, refunded_cents: 0, .. })) if released.is_empty()
    ));
}

#[test]
fn stale_expected_version_is_a_version_conflict() {
    let (order, _) = run(&[create()]);
    let order = order.unwrap();
    let reserve = cmd(json!({"type": "reserve"}));
    assert_eq!(
        decide(Some(&order), &reserve, Some(0)),
        Err(Rejection::VersionConflict)
    );
    assert!(decide(Some(&order), &reserve, Some(1)).is_ok());
    assert_eq!(
        decide(None, &create(), Some(0)).map(|d| d.event().map(|e| e.name())),
        Ok(Some("order_created"))
    );
}

#[test]
fn item_edits_check_lines_prices_and_limits() {
    let empty = cmd(json!({"type": "create", "customer_id": "c", "currency": "EUR", "items": []}));
    let (_, outcomes) = run(&[
        empty,
        cmd(json!({"type": "reserve"})),
        cmd(json!({"type": "remove_item", "sku": "A"})),
        cmd(json!({"type": "add_item", "sku": "A", "quantity": 10000, "unit_price_cents": 5})),
        cmd(json!({"type": "add_item", "sku": "A", "quantity": 1, "unit_price_cents": 5})),
        cmd(json!({"type": "add_item", "sku": "A", "quantity": 1, "unit_price_cents": 6})),
        cmd(json!({"type": "add_item", "sku": "B", "quantity": 1, "unit_price_cents": 5})),
        cmd(json!({"type": "remove_item", "sku": "B", "quantity": 2})),
        cmd(json!({"type": "remove_item", "sku": "A"})),
    ]);
    assert_eq!(outcomes[1], Err(Rejection::EmptyOrder));
    assert_eq!(outcomes[2], Err(Rejection::ItemNotFound));
    assert!(outcomes[3].is_ok());
    assert_eq!(outcomes[4], Err(Rejection::LimitExceeded));
    assert_eq!(outcomes[5], Err(Rejection::PriceMismatch));
    assert!(outcomes[6].is_ok());
    assert_eq!(outcomes[7], Err(Rejection::LimitExceeded));
    assert!(outcomes[8].is_ok());
}

#[test]
fn details_change_until_shipping_the_address_and_until_delivery_the_rest() {
    let address = json!({"shipping_address": {"name": "Ada", "lines": ["1 Main St"], "city": "Oslo",
                                              "postal_code": "0150", "country": "NO"}});
    let update =
        |patch: serde_json::Value| cmd(json!({"type": "update_details", "details": patch}));
    let (order, outcomes) = run(&[
        create(),
        update(json!({"shipping_address": {"city": "Bergen"}})),
        update(address.clone()),
        update(json!({"shipping_address": {"city": "Bergen"}, "contact_email": "ada@example.org"})),
        cmd(json!({"type": "add_item", "sku": "A", "quantity": 1, "unit_price_cents": 100})),
        cmd(json!({"type": "reserve"})),
        cmd(json!({"type": "pay"})),
        cmd(json!({"type": "ship"})),
        update(json!({"shipping_address": {"city": "Oslo"}})),
        update(json!({"note": "rang twice"})),
        cmd(json!({"type": "deliver"})),
        update(json!({"note": "too late"})),
    ]);
    assert_eq!(
        outcomes[1],
        Err(Rejection::IncompleteAddress),
        "no address to merge into"
    );
    assert!(outcomes[2].is_ok());
    assert_eq!(
        outcomes[3],
        Ok(Decided::Event(Event::DetailsChanged {
            details: serde_json::from_value(json!({
                "shipping_address": {"name": "Ada", "lines": ["1 Main St"], "city": "Bergen",
                                     "postal_code": "0150", "country": "NO"},
                "contact_email": "ada@example.org"
            }))
            .unwrap(),
            changed: vec![DetailField::ShippingAddress, DetailField::ContactEmail],
        }))
    );
    assert_eq!(
        outcomes[8],
        Err(Rejection::InvalidTransition),
        "shipped: no new address"
    );
    assert!(outcomes[9].is_ok(), "shipped: the note may still change");
    assert_eq!(outcomes[11], Err(Rejection::InvalidTransition), "delivered");
    let order = order.unwrap();
    assert_eq!(order.version, 8);
    assert_eq!(order.details.note.unwrap().as_str(), "rang twice");
    assert_eq!(
        order.details.shipping_address.unwrap().city.as_str(),
        "Bergen"
    );
}

fn set_address(city: &str) -> Command {
    cmd(json!({"type": "set_shipping_address",
               "address": {"name": "Ada", "lines": ["1 Main St"], "city": city,
                           "postal_code": "0150", "country": "NO"}}))
}

#[test]
fn the_same_address_again_is_applied_unchanged_in_any_state() {
    let (order, outcomes) = run(&[
        create(),
        cmd(json!({"type": "update_details", "details": {"note": "ring twice"}})),
        set_address("Oslo"),
        set_address("Oslo"),
        set_address("Bergen"),
        cmd(json!({"type": "reserve"})),
        cmd(json!({"type": "pay"})),
        cmd(json!({"type": "ship"})),
        set_address("Bergen"),
        set_address("Oslo"),
    ]);
    let Ok(Decided::Event(Event::DetailsChanged { details, changed })) = &outcomes[2] else {
        panic!("{:?}", outcomes[2]);
    };
    assert_eq!(changed, &[DetailField::ShippingAddress]);
    assert_eq!(
        details.note.as_ref().map(|n| n.as_str()),
        Some("ring twice"),
        "the rest of the details stay"
    );
    assert_eq!(
        outcomes[3],
        Ok(Decided::Unchanged),
        "the same address again"
    );
    assert!(matches!(outcomes[4], Ok(Decided::Event(_))), "another one");
    assert_eq!(
        outcomes[8],
        Ok(Decided::Unchanged),
        "shipped, but already so"
    );
    assert_eq!(
        outcomes[9],
        Err(Rejection::InvalidTransition),
        "shipped: no new address"
    );
    let order = order.unwrap();
    assert_eq!(order.version, 7, "unchanged commands append nothing");
    assert_eq!(
        order
            .details
            .shipping_address
            .map(|a| a.city.as_str().to_owned()),
        Some("Bergen".to_owned())
    );
    let (_, outcomes) = run(&[set_address("Oslo")]);
    assert_eq!(outcomes[0], Err(Rejection::OrderNotFound));
}

#[test]
fn an_unchanged_address_still_checks_the_version() {
    let (order, _) = run(&[create(), set_address("Oslo")]);
    let order = order.unwrap();
    assert_eq!(
        decide(Some(&order), &set_address("Oslo"), Some(1)),
        Err(Rejection::VersionConflict)
    );
    assert_eq!(
        decide(Some(&order), &set_address("Oslo"), Some(2)),
        Ok(Decided::Unchanged)
    );
}

#[test]
fn rejection_and_status_spellings_are_their_serde_names() {
    for r in Rejection::ALL {
        assert_eq!(serde_json::to_value(r).unwrap(), json!(r.as_str()));
    }
    for s in OrderStatus::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        assert_eq!(s.as_str().parse::<OrderStatus>().unwrap(), s);
    }
}

fn any_command() -> impl Strategy<Value = Command> {
    let sku = prop::sample::select(vec!["A", "B", "C"]);
    prop_oneof![
        (sku.clone(), 1i64..5, 1i64..3).prop_map(|(s, q, p)| cmd(
            json!({"type": "add_item", "sku": s, "quantity": q, "unit_price_cents": p * 100})
        )),
        (sku, prop::option::of(1i64..5)).prop_map(|(s, q)| match q {
            Some(q) => cmd(json!({"type": "remove_item", "sku": s, "quantity": q})),
            None => cmd(json!({"type": "remove_item", "sku": s})),
        }),
        Just(cmd(json!({"type": "reserve"}))),
        Just(cmd(json!({"type": "pay"}))),
        Just(cmd(json!({"type": "ship"}))),
        Just(cmd(
            json!({"type": "ship", "tracking_number": "1Z999AA10123456784"})
        )),
        Just(cmd(json!({"type": "deliver"}))),
        Just(cmd(json!({"type": "cancel"}))),
        prop::sample::select(vec![
            json!({"contact_email": "a@example.org"}),
            json!({"contact_email": null, "note": "leave at the door"}),
            json!({"shipping_address": {"city": "Paris"}}),
            json!({"shipping_address": {"name": "A", "lines": ["1 Rue X"], "city": "Lyon",
                                        "postal_code": "69001", "country": "FR"}}),
            json!({"shipping_address": null}),
        ])
        .prop_map(|patch| cmd(json!({"type": "update_details", "details": patch}))),
        prop::sample::select(vec!["Oslo", "Bergen"]).prop_map(set_address),
    ]
}

proptest! {
    /// Whatever the command sequence: the version counts applied events, the total is the sum of
    /// the lines, no line is empty, and replaying the events rebuilds the same order.
    #[test]
    fn any_command_sequence_keeps_the_projection_consistent(commands in prop::collection::vec(any_command(), 0..40)) {
        let mut all = vec![create()];
        all.extend(commands);
        let (order, outcomes) = run(&all);
        let order = order.unwrap();
        let events: Vec<Event> = outcomes.into_iter().filter_map(|o| o.ok()?.event()).collect();
        prop_assert_eq!(order.version, events.len() as i64);
        prop_assert_eq!(order.total_cents, order.items.iter().map(Item::line_total_cents).sum::<i64>());
        let mut replayed = None;
        for event in &events {
            replayed = Some(evolve(replayed, order.id, order.client_id, event, order.updated_at));
        }
        let mut replayed = replayed.unwrap();
        replayed.created_at = order.created_at;
        prop_assert_eq!(replayed, order);
    }
}
