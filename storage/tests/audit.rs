//! The race audit's reading of repeated work against the real PostgreSQL: a redelivered start
//! under a fault's moves is held against that fault only when the work it repeated was done
//! since the fault began, not when the message came back from work finished before it (a worker
//! killed earlier, whose redelivered messages the next holders were still working through).

use chrono::{Duration, Utc};
use orderflow_storage::audit;
use orderflow_testkit::create_migrated_database;
use sqlx::PgPool;

async fn fresh_database() -> PgPool {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (url, _name) = create_migrated_database(&id, &orderflow_storage::MIGRATOR).await;
    orderflow_storage::pool(&url, 2).unwrap()
}

/// A move of partition 0 to `epoch`, `ago_ms` milliseconds ago.
async fn moved(db: &PgPool, epoch: i64, ago_ms: i64) {
    sqlx::query(
        "insert into partition_moves (partition, epoch, to_owner, kind, at)
         values (0, $1, 'w', 'handover', now() - make_interval(secs => $2::float8 / 1000))",
    )
    .bind(epoch)
    .bind(ago_ms)
    .execute(db)
    .await
    .unwrap();
}

/// A command of partition 0 applied under `finished_under`, `finished_ago_ms` ago, whose
/// redelivered message was started `attempts` times, the last under `started_under`.
async fn started(
    db: &PgPool,
    order: uuid::Uuid,
    seq: i64,
    (finished_under, finished_ago_ms): (i64, i64),
    attempts: i32,
    started_under: i64,
) {
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "insert into commands (id, client_id, order_id, seq, kind, body, source, status,
                               partition, finished_at, epoch)
         select $1, client_id, order_id, $3, 'add_item', '{}', 'http', 'applied', 0,
                now() - make_interval(secs => $5::float8 / 1000), $4
           from order_streams where order_id = $2",
    )
    .bind(id)
    .bind(order)
    .bind(seq)
    .bind(finished_under)
    .bind(finished_ago_ms)
    .execute(db)
    .await
    .unwrap();
    sqlx::query("insert into delivery_attempts (command_id, attempts, epoch) values ($1, $2, $3)")
        .bind(id)
        .bind(attempts)
        .bind(started_under)
        .execute(db)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_repeat_counts_against_the_fault_whose_moves_it_repeated_work_of() {
    let db = fresh_database().await;
    let (client, order) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    sqlx::query("insert into clients (id, name, key_hash) values ($1, 'c', $2)")
        .bind(client)
        .bind(client.as_bytes().to_vec())
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("insert into order_streams (order_id, client_id, last_seq) values ($1, $2, 100)")
        .bind(order)
        .bind(client)
        .execute(&db)
        .await
        .unwrap();
    // Partition 0: first held at epoch 1, taken over at 2 after its holder was killed; then the
    // fault: moved to 3 and back at 4.
    moved(&db, 1, 60_000).await;
    moved(&db, 2, 5_000).await;
    let since = Utc::now() - Duration::seconds(2);
    moved(&db, 3, 1_000).await;
    moved(&db, 4, 500).await;

    // Not this fault's: finished by the killed holder before the fault, its message back under
    // the fault's first move (the holder at 2 never got to it), or under its second; and one
    // back under the takeover, before the fault.
    started(&db, order, 1, (1, 6_000), 1, 3).await;
    started(&db, order, 2, (2, 3_000), 1, 4).await;
    started(&db, order, 3, (1, 6_000), 1, 2).await;
    // Handed back unopened: started once, under the epoch that applied it.
    started(&db, order, 4, (3, 0), 1, 3).await;
    assert_eq!(audit::repeated_starts_since(&db, since).await.unwrap(), 0);

    // This fault's: finished since it began and started again under a later epoch; started
    // twice.
    started(&db, order, 5, (2, 1_500), 1, 3).await;
    started(&db, order, 6, (3, 800), 1, 4).await;
    started(&db, order, 7, (4, 0), 2, 4).await;
    assert_eq!(audit::repeated_starts_since(&db, since).await.unwrap(), 3);
}
