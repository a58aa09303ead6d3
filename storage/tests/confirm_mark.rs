//! The broker's confirm is recorded on every command the API publishes
//! ([`commands::mark_published`]), so it must cost the command row as little as an update can:
//! a HOT update, which writes no index entry. That holds only while no index reads
//! `published_at` (in its columns or its predicate); the relay's sweeps read it through
//! `commands_pending` instead (migration `commands_hot_confirm`).

use orderflow_domain::{ClientId, CommandId, CommandKind, OrderId};
use orderflow_storage::commands::{self, Intake, NewCommand, Source};
use orderflow_storage::{clients, perf};
use orderflow_testkit::create_migrated_database;
use serde_json::json;
use sqlx::Acquire;
use uuid::Uuid;

#[tokio::test]
async fn the_confirm_mark_is_a_hot_update() {
    let id = Uuid::new_v4().simple().to_string();
    let (url, _name) = create_migrated_database(&id, &orderflow_storage::MIGRATOR).await;
    let db = orderflow_storage::pool(&url, 2).unwrap();
    let (client, _key) = clients::create(&db, "marks", false).await.unwrap();
    let mut conn = db.acquire().await.unwrap();
    let orders = perf::seed_orders(
        &mut conn,
        client.id.0,
        64,
        &json!({"type": "create", "customer_id": "c", "currency": "EUR", "items": []}),
        &json!({}),
    )
    .await
    .unwrap();
    let body = json!({"type": "cancel"});
    let mut recorded = Vec::new();
    // Marked together, as the API marks the confirms that arrive together: their page keeps room
    // for a few new versions (fill factor 80) until pruning frees the old ones.
    for (i, order) in orders.iter().take(4).enumerate() {
        let command = NewCommand {
            id: CommandId(Uuid::now_v7()),
            client_id: ClientId(client.id.0),
            order_id: OrderId(*order),
            kind: CommandKind::Cancel,
            body: &body,
            expected_version: None,
            source: Source::Http,
            partition: 0,
            received_at: None,
            traceparent: None,
        };
        let key = format!("k-{i}");
        let intake = commands::record_next(&mut *conn, &command, &key, b"f", 16)
            .await
            .unwrap();
        assert_eq!(intake, Intake::Recorded(2));
        recorded.push(command.id.0);
    }

    let mut tx = conn.begin().await.unwrap();
    let marked = commands::mark_published(&mut *tx, &recorded).await.unwrap();
    assert_eq!(marked.len(), recorded.len());
    let (updated, hot): (i64, i64) = sqlx::query_as(
        "select n_tup_upd, n_tup_hot_upd from pg_stat_xact_user_tables where relname = 'commands'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!((updated, hot), (4, 4), "every mark a HOT update");
}
