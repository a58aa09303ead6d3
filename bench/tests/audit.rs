//! The audit against the real stack, in-process: a short run of every scenario finds no
//! violation; and after the database is tampered with, the same checker reports exactly the
//! broken invariants (so the checker is known to be able to fail).

mod common;

use common::{audit_config, stack};
use orderflow_bench::drain::Drained;
use orderflow_bench::{audit, judge, snapshot};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_audit_of_every_scenario_finds_no_violation() {
    let stack = stack().await;
    let config = audit_config(&stack);
    let run = audit(&config).await.expect("the audit runs");
    println!("{}", run.report.table());
    assert!(run.report.passed, "{:#?}", run.report.invariants);
    assert!(
        run.report
            .requests_by_status
            .get("202")
            .copied()
            .unwrap_or(0)
            > 50,
        "the workload did something: {:?}",
        run.report.requests_by_status
    );
    assert!(run.report.direct_commands > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_reports_stock_from_nowhere_and_a_deleted_event() {
    let stack = stack().await;
    let mut config = audit_config(&stack);
    config.duration = std::time::Duration::from_secs(1);
    let run = audit(&config).await.expect("the audit runs");
    assert!(run.report.passed, "{:#?}", run.report.invariants);

    let sku = &run.observed.stock[0].0;
    sqlx::query("update inventory set available = available + 1 where sku = $1")
        .bind(sku)
        .execute(&stack.db)
        .await
        .unwrap();
    sqlx::query(
        "delete from order_events where (order_id, seq) =
             (select order_id, max(seq) from order_events group by order_id order by 2 desc limit 1)",
    )
    .execute(&stack.db)
    .await
    .unwrap();

    let tampered = snapshot(&config, &stack.db, &run.observed).await.unwrap();
    let report = judge(
        &config,
        &run.observed,
        &tampered,
        &run.events,
        Drained::default(),
        0.0,
    );
    println!("{}", report.table());
    assert!(!report.passed);
    let violations = |id: u8| report.invariants[usize::from(id - 1)].violations;
    assert!(
        violations(3) >= 1,
        "stock from nowhere: {:#?}",
        report.invariants
    );
    assert!(
        violations(5) >= 1,
        "a deleted event: {:#?}",
        report.invariants
    );
    assert!(violations(2) >= 1, "an applied command without its event");
}

/// The deliberately broken build: a worker that ignores its inbox applies the duplicates the
/// direct producer sends, and the audit must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_without_its_inbox_check_fails_the_audit() {
    // nextest runs each test in a process of its own, so the failpoint breaks only this stack.
    fail::cfg("apply.skip_inbox", "return").expect("the failpoint arms");
    let stack = stack().await;
    let mut config = audit_config(&stack);
    config.duration = std::time::Duration::from_secs(2);
    config.scenarios = vec![orderflow_bench::config::Scenario::DirectProducer];
    let run = audit(&config).await.expect("the audit runs");
    println!("{}", run.report.table());
    assert!(!run.report.passed, "a broken worker must fail the audit");
    let applied_twice = run
        .report
        .invariants
        .iter()
        .find(|v| v.id == 2)
        .expect("invariant 2 is checked");
    assert!(applied_twice.violations > 0, "{applied_twice:?}");
}
