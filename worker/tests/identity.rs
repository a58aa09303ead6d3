//! Each worker can be told apart from the others by what it connects with: its PostgreSQL
//! sessions carry `application_name` "orderflow-worker <name>" (operators read it in
//! `pg_stat_activity`; fault tests end one worker's sessions by it).

mod common;

use orderflow_testkit::wait_for;

async fn sessions_named(stack: &orderflow_testkit::Stack, name: &str) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity
         where datname = current_database() and application_name = $1",
    )
    .bind(name)
    .fetch_one(&stack.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn two_workers_sessions_carry_each_workers_own_name() {
    let mut stack = common::stack().start().await;
    stack
        .start_worker_with(|c| c.worker_name = Some("identity-a".into()))
        .await;
    stack
        .start_worker_with(|c| c.worker_name = Some("identity-b".into()))
        .await;
    for name in ["orderflow-worker identity-a", "orderflow-worker identity-b"] {
        wait_for(format!("a session named {name:?}"))
            .until(|| async { sessions_named(&stack, name).await > 0 })
            .await;
    }
    // And nobody else's: the test's own pool has no such name.
    assert_eq!(
        sessions_named(&stack, "orderflow-worker identity-c").await,
        0
    );
}
