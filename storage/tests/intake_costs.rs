//! What the intake's statements cost PostgreSQL, asserted where a plan or a schema change could
//! quietly make it grow.
//!
//! The intake's batch statement ([`commands::record_batch`]) runs on sessions that plan it once
//! (`plan_cache_mode = force_generic_plan`, [`orderflow_storage::pool_with_generic_plans`]):
//! when a writer session first runs it, on a new deployment over tables that are nearly empty.
//! That plan serves the session for its whole life, so it must read every table by its index
//! however much the tables hold later: a plan that scans a table whole costs every batch the
//! table's size (the benchmark's idempotency keys grow by a thousand a second).
//!
//! The broker's confirm is recorded on every command the API publishes
//! ([`commands::mark_published`]), so it must cost the command row as little as an update can:
//! a HOT update, which writes no index entry. That holds only while no index reads
//! `published_at` (in its columns or its predicate); the relay's sweeps read it through
//! `commands_pending` instead (migration `commands_hot_confirm`).

use orderflow_domain::{ClientId, CommandId, CommandKind, OrderId};
use orderflow_storage::commands::{self, BatchEntry, BatchIntake, Intake, NewCommand, Source};
use orderflow_storage::{clients, perf};
use orderflow_testkit::create_migrated_database;
use serde_json::json;
use sqlx::{Acquire, PgPool};
use uuid::Uuid;

/// Full scans of the intake's tables in the transaction so far.
async fn full_scans(conn: &mut sqlx::PgConnection) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select relname::text, seq_scan from pg_stat_xact_user_tables
          where relname in ('idempotency_keys', 'order_streams', 'commands') and seq_scan > 0
          order by relname",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

async fn seed(db: &PgPool, client: Uuid, orders: usize) -> Vec<Uuid> {
    let mut conn = db.acquire().await.unwrap();
    perf::seed_orders(
        &mut conn,
        client,
        orders,
        &json!({"type": "create", "customer_id": "c", "currency": "EUR", "items": []}),
        &json!({}),
    )
    .await
    .unwrap()
}

fn entry<'a>(
    client: Uuid,
    order: Uuid,
    body: &'a serde_json::Value,
    key: &'a str,
) -> BatchEntry<'a> {
    BatchEntry {
        command: NewCommand {
            id: CommandId(Uuid::now_v7()),
            client_id: ClientId(client),
            order_id: OrderId(order),
            kind: CommandKind::Cancel,
            body,
            expected_version: None,
            source: Source::Http,
            partition: 0,
            received_at: None,
            traceparent: None,
            actor: None,
        },
        key,
        fingerprint: b"f",
    }
}

#[tokio::test]
async fn the_batch_planned_over_empty_tables_reads_them_by_index_once_they_hold_many_rows() {
    let id = Uuid::new_v4().simple().to_string();
    let (url, _name) = create_migrated_database(&id, &orderflow_storage::MIGRATOR).await;
    let db = orderflow_storage::pool(&url, 2).unwrap();
    let (client, _key) = clients::create(&db, "plans", false).await.unwrap();
    let client = client.id.0;
    let body = json!({"type": "cancel"});

    // The writer session plans the statement on its first batch, over a deployment's first order.
    let writers =
        orderflow_storage::pool_with_generic_plans(&url, 1, "orderflow-test writers").unwrap();
    let mut writer = writers.acquire().await.unwrap();
    let first = seed(&db, client, 1).await;
    let outcome =
        commands::record_batch(&mut *writer, &[entry(client, first[0], &body, "k-0")], 16)
            .await
            .unwrap();
    assert_eq!(outcome, [BatchIntake::Done(Intake::Recorded(2))]);

    // Then the tables fill: 20,000 orders and as many keys.
    let orders = seed(&db, client, 20_000).await;
    sqlx::query(
        "insert into idempotency_keys (client_id, key, fingerprint, command_id)
         select client_id, 'old-' || seq || '-' || order_id, '\\x00', id from commands",
    )
    .execute(&db)
    .await
    .unwrap();

    let mut tx = writer.begin().await.unwrap();
    let keys: Vec<String> = (0..32).map(|i| format!("k-{}", i + 1)).collect();
    let entries: Vec<BatchEntry<'_>> = orders
        .iter()
        .zip(&keys)
        .map(|(&order, key)| entry(client, order, &body, key))
        .collect();
    let outcomes = commands::record_batch(&mut *tx, &entries, 16)
        .await
        .unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| *o == BatchIntake::Done(Intake::Recorded(2))),
        "{outcomes:?}"
    );
    assert_eq!(full_scans(&mut tx).await, []);
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn the_confirm_mark_is_a_hot_update() {
    let id = Uuid::new_v4().simple().to_string();
    let (url, _name) = create_migrated_database(&id, &orderflow_storage::MIGRATOR).await;
    let db = orderflow_storage::pool(&url, 2).unwrap();
    let (client, _key) = clients::create(&db, "marks", false).await.unwrap();
    let orders = seed(&db, client.id.0, 64).await;
    let body = json!({"type": "cancel"});
    let keys: Vec<String> = (0..4).map(|i| format!("k-{i}")).collect();
    let mut conn = db.acquire().await.unwrap();
    let mut recorded = Vec::new();
    // Marked together, as the API marks the confirms that arrive together: their page keeps room
    // for a few new versions (fill factor 80) until pruning frees the old ones.
    for (order, key) in orders.iter().zip(&keys) {
        let entry = entry(client.id.0, *order, &body, key);
        let intake = commands::record_next(&mut *conn, &entry.command, key, b"f", 16)
            .await
            .unwrap();
        assert_eq!(intake, Intake::Recorded(2));
        recorded.push(entry.command.id.0);
    }

    let mut tx = conn.begin().await.unwrap();
    let now = vec![chrono::Utc::now(); recorded.len()];
    let marked = commands::mark_published(&mut *tx, &recorded, &now)
        .await
        .unwrap();
    assert_eq!(marked.len(), recorded.len());
    let (updated, hot): (i64, i64) = sqlx::query_as(
        "select n_tup_upd, n_tup_hot_upd from pg_stat_xact_user_tables where relname = 'commands'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!((updated, hot), (4, 4), "every mark a HOT update");
}
