//! The BASELINE, not orderflow: the classic synchronous design, for comparison. One HTTP request
//! is one transaction on the request path — `BEGIN; SELECT … FOR UPDATE; check version; UPDATE;
//! COMMIT` — over the same `orders` schema, plus the event row (and the command row the event
//! refers to). The answer is the outcome (200 applied, 409 rejected). It has none of orderflow's
//! guarantees or protections on purpose: no authentication, no Idempotency-Key, no rate limit,
//! no load shedding, no queue; it only knows the commands that touch nothing but the order.
//! It serves on port 0 inside the bench process.

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{SubsecRound, Utc};
use orderflow_domain::order::evolve;
use orderflow_domain::{ClientId, Command, CommandId, Decided, Event, Order, OrderId, decide};
use orderflow_runtime::shutdown::CancellationToken;
use serde_json::json;
use sqlx::PgPool;
use sqlx::types::Json as SqlJson;
use uuid::Uuid;

#[derive(Clone)]
struct Naive {
    db: PgPool,
    client: Uuid,
}

/// The baseline server, running until dropped or stopped.
pub struct NaiveServer {
    pub url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl NaiveServer {
    pub async fn start(db: PgPool, client: Uuid) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the naive server")?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = Router::new()
            .route("/v1/orders/{order_id}/commands", post(command))
            .with_state(Naive { db, client });
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app.into_make_service())
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
        });
        Ok(Self { url, stop, task })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// What one request became.
enum Naively {
    Applied { command: Uuid, version: i64 },
    Rejected(&'static str),
    NotFound,
    Unsupported,
}

async fn command(
    State(naive): State<Naive>,
    Path(order_id): Path<Uuid>,
    headers: HeaderMap,
    Json(command): Json<Command>,
) -> Response {
    // The moment the request arrived: the command's `accepted_at`, as orderflow's API records it.
    let received = Utc::now();
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_matches('"').parse::<i64>().ok());
    match apply(&naive, order_id, &command, if_match, received).await {
        Ok(Naively::Applied { command, version }) => (
            StatusCode::OK,
            Json(json!({"command_id": command, "status": "applied", "version": version})),
        )
            .into_response(),
        Ok(Naively::Rejected(reason)) => (
            StatusCode::CONFLICT,
            Json(json!({"status": "rejected", "reason": reason})),
        )
            .into_response(),
        Ok(Naively::NotFound) => StatusCode::NOT_FOUND.into_response(),
        Ok(Naively::Unsupported) => StatusCode::UNPROCESSABLE_ENTITY.into_response(),
        Err(e) => {
            tracing::debug!(error = %e, "naive request failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn apply(
    naive: &Naive,
    order_id: Uuid,
    command: &Command,
    if_match: Option<i64>,
    received: chrono::DateTime<Utc>,
) -> anyhow::Result<Naively> {
    let mut tx = naive.db.begin().await?;
    let row: Option<(SqlJson<Order>,)> =
        sqlx::query_as("select to_jsonb(o) from orders o where o.id = $1 for update")
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((SqlJson(order),)) = row else {
        return Ok(Naively::NotFound);
    };
    // The version check (If-Match) and the state machine: the same rules as the worker's.
    let event = match decide(Some(&order), command, if_match) {
        Ok(Decided::Event(event @ (Event::ItemAdded { .. } | Event::ItemRemoved { .. }))) => event,
        Ok(_) => return Ok(Naively::Unsupported),
        Err(rejection) => return Ok(Naively::Rejected(rejection.as_str())),
    };
    let at = Utc::now().trunc_subsecs(6);
    let order = evolve(
        Some(order),
        OrderId(order_id),
        ClientId(naive.client),
        &event,
        at,
    );
    sqlx::query(
        "update orders set status = $2, version = $3, items = $4, total_cents = $5, updated_at = $6
         where id = $1",
    )
    .bind(order_id)
    .bind(order.status.as_str())
    .bind(order.version)
    .bind(SqlJson(&order.items))
    .bind(order.total_cents)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    // The command row: the event refers to it, and it carries the timings the report reads
    // (`finished_at` is taken at the end of the transaction, just before the commit).
    let id = CommandId::new().0;
    sqlx::query(
        "insert into commands (id, client_id, order_id, seq, kind, body, source, status,
                               result_version, partition, accepted_at, published_at, finished_at)
         values ($1, $2, $3, $4, $5, $6, 'http', 'applied', $4, 0, $7, $7, clock_timestamp())",
    )
    .bind(id)
    .bind(naive.client)
    .bind(order_id)
    .bind(order.version)
    .bind(command.kind().as_str())
    .bind(serde_json::to_value(command)?)
    .bind(received)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "insert into order_events (order_id, seq, command_id, type, data, recorded_at)
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(order_id)
    .bind(order.version)
    .bind(id)
    .bind(event.name())
    .bind(SqlJson(&event))
    .bind(at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Naively::Applied {
        command: id,
        version: order.version,
    })
}
