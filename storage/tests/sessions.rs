//! What every pool's sessions are set to, read back from the real PostgreSQL: no JIT compilation
//! on any of them, generic plans (with full scans only where no index serves) on the pools that
//! ask for them, and the `application_name` a pool is given unless its URL names one.

use orderflow_testkit::base_database_url;
use sqlx::PgPool;
use std::time::Duration;

/// What `show` (a `show <setting>` statement) answers on one of `db`'s sessions.
async fn setting(db: &PgPool, show: &'static str) -> String {
    let shown: (String,) = sqlx::query_as(show).fetch_one(db).await.unwrap();
    shown.0
}

#[tokio::test]
async fn every_pools_sessions_run_without_jit_and_the_batch_pools_with_generic_plans() {
    let url = base_database_url();
    let plain = orderflow_storage::pool(&url, 1).unwrap();
    let generic =
        orderflow_storage::pool_with_generic_plans(&url, 1, "orderflow-test writers").unwrap();
    let named = orderflow_storage::named_pool(&url, 1, "orderflow-test api").unwrap();
    let releasing = orderflow_storage::pool_releasing_idle_with_generic_plans(
        &url,
        1,
        Duration::from_secs(6),
        Duration::from_secs(30),
        "orderflow-test sessions",
    )
    .unwrap();
    for db in [&plain, &generic, &releasing, &named] {
        assert_eq!(setting(db, "show jit").await, "off");
    }
    assert_eq!(
        setting(&named, "show application_name").await,
        "orderflow-test api"
    );
    assert_eq!(
        setting(&generic, "show application_name").await,
        "orderflow-test writers"
    );
    // A name in the URL is the operator's: it stays.
    let separator = if url.contains('?') { '&' } else { '?' };
    let own = format!("{url}{separator}application_name=operators-own");
    let kept = orderflow_storage::named_pool(&own, 1, "orderflow-test api").unwrap();
    assert_eq!(
        setting(&kept, "show application_name").await,
        "operators-own"
    );
    assert_eq!(setting(&plain, "show plan_cache_mode").await, "auto");
    for db in [&generic, &releasing] {
        assert_eq!(
            setting(db, "show plan_cache_mode").await,
            "force_generic_plan"
        );
        assert_eq!(setting(db, "show enable_seqscan").await, "off");
    }
    assert_eq!(setting(&releasing, "show statement_timeout").await, "30s");
}
