//! A dead worker is found out by its liveness lock, against the real PostgreSQL: while the session
//! holding it lasts the worker is live and its leases hold; once that session ends (what a
//! process's death does) and it has not renewed for the grace, it leaves the live set and its
//! leases may be taken over at once, long before their TTL. Either condition alone (a live worker
//! whose liveness session was terminated, or one whose renewal is late) changes nothing.

use orderflow_storage::leases::{self, Holder};
use orderflow_testkit::create_migrated_database;
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;

const TTL: Duration = Duration::from_secs(60);
const GRACE: Duration = Duration::from_millis(200);

fn holder(name: &str) -> Holder {
    Holder {
        name: name.to_owned(),
        incarnation: uuid::Uuid::new_v4(),
    }
}

/// A migrated database of the test's own: its URL and a pool on it.
async fn fresh_database() -> (String, PgPool) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (url, _name) = create_migrated_database(&id, &orderflow_storage::MIGRATOR).await;
    let db = orderflow_storage::pool(&url, 4).unwrap();
    (url, db)
}

/// Moves `who`'s last renewal `ago` into the past.
async fn renewed_ago(db: &PgPool, who: &Holder, ago: Duration) {
    sqlx::query(
        "update worker_members set heartbeat_at = now() - make_interval(secs => $2)
          where incarnation = $1",
    )
    .bind(who.incarnation)
    .bind(ago.as_secs_f64())
    .execute(db)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_worker_whose_liveness_session_ended_and_which_stopped_renewing_is_taken_over_at_once() {
    let (url, db) = fresh_database().await;
    leases::ensure_partitions(&db, 1).await.unwrap();
    let (dying, survivor) = (holder("dying"), holder("survivor"));
    for who in [&dying, &survivor] {
        leases::join(&db, who, TTL).await.unwrap();
    }
    let mut liveness = PgConnection::connect(&url).await.unwrap();
    assert!(leases::hold_liveness(&mut liveness, &dying).await.unwrap());
    // The survivor is alive as a worker is, by its own liveness session: the test may take
    // longer than the grace between its renewals (it failed that way under a loaded CI).
    let mut survivor_liveness = PgConnection::connect(&url).await.unwrap();
    assert!(
        leases::hold_liveness(&mut survivor_liveness, &survivor)
            .await
            .unwrap()
    );
    let mut conn = db.acquire().await.unwrap();
    let free = leases::leases(&db, GRACE).await.unwrap().remove(0);
    assert_eq!(
        leases::take(&mut conn, &free, &dying, GRACE, GRACE)
            .await
            .unwrap(),
        Some(1)
    );

    // Alive: a late renewal alone, or a lost liveness session alone, is not death.
    renewed_ago(&db, &dying, Duration::from_secs(5)).await;
    let lease = leases::leases(&db, GRACE).await.unwrap().remove(0);
    assert!(!lease.expired, "its liveness session still holds the lock");
    assert_eq!(
        leases::live_members(&db, GRACE).await.unwrap(),
        ["dying", "survivor"]
    );
    liveness.close().await.unwrap();
    renewed_ago(&db, &dying, Duration::ZERO).await;
    let lease = leases::leases(&db, GRACE).await.unwrap().remove(0);
    assert!(!lease.expired, "it renewed within the grace");
    assert!(!lease.takeable_by(&survivor));
    assert_eq!(
        leases::take(&mut conn, &lease, &survivor, GRACE, GRACE)
            .await
            .unwrap(),
        None,
        "a live holder's lease cannot be taken"
    );

    // Dead: no lock and no renewal for the grace. Its TTL (a minute) has not passed.
    renewed_ago(&db, &dying, GRACE * 2).await;
    assert_eq!(
        leases::live_members(&db, GRACE).await.unwrap(),
        ["survivor"]
    );
    let lease = leases::leases(&db, GRACE).await.unwrap().remove(0);
    assert!(lease.expired && lease.takeable_by(&survivor));
    assert_eq!(
        leases::take(&mut conn, &lease, &survivor, GRACE, GRACE)
            .await
            .unwrap(),
        Some(2),
        "taken over with epoch + 1"
    );
    let kind: String =
        sqlx::query_scalar("select kind from partition_moves order by id desc limit 1")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(kind, "takeover");
}

#[tokio::test]
async fn a_member_without_a_liveness_lock_is_judged_by_its_ttl_alone() {
    let (_, db) = fresh_database().await;
    let older = holder("older-worker");
    leases::join(&db, &older, TTL).await.unwrap();
    // A worker of a release before liveness locks, during a rolling update: it never holds one.
    sqlx::query("update worker_members set liveness_lock = false")
        .execute(&db)
        .await
        .unwrap();
    renewed_ago(&db, &older, Duration::from_secs(5)).await;
    assert_eq!(
        leases::live_members(&db, GRACE).await.unwrap(),
        ["older-worker"]
    );
}

/// After a restart of PostgreSQL every liveness lock is gone at once: a member that has not
/// renewed since the server started is judged by its TTL, not by its lock, so the first worker
/// back does not take over everybody else's partitions.
#[tokio::test]
async fn a_member_that_has_not_renewed_since_postgresql_started_is_judged_by_its_ttl_alone() {
    let (_, db) = fresh_database().await;
    let before = holder("renewed-before-the-start");
    leases::join(&db, &before, TTL).await.unwrap();
    sqlx::query(
        "update worker_members set heartbeat_at = pg_postmaster_start_time() - interval '1 s'",
    )
    .execute(&db)
    .await
    .unwrap();
    assert_eq!(
        leases::live_members(&db, GRACE).await.unwrap(),
        ["renewed-before-the-start"]
    );
}
