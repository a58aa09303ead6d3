//! Records the broker's confirms in PostgreSQL, many per statement (group commit). A request
//! whose publish was confirmed hands its command id here and waits for the write; one task
//! writes every id that arrived while its previous write ran. Under light load a write holds one
//! command, under heavy load hundreds: one statement instead of one transaction per command.
//! A command that a worker is applying at that moment is skipped rather than waited for (its row
//! is locked): the worker's commit records the message's arrival as its publish, and a replay of
//! the command's key waits for that commit before it reads the command
//! ([`commands::get_for_client_settled`]), so it never finds unpublished a command whose request
//! was answered 202.

use orderflow_domain::CommandId;
use orderflow_runtime::tasks::Tasks;
use orderflow_storage::commands;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Ids written by one statement at most.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<(), Arc<sqlx::Error>>>;

/// The handle requests use; cloning is cheap. The writer task ends once every handle is gone.
#[derive(Clone)]
pub struct Confirms {
    queue: mpsc::Sender<(CommandId, Reply)>,
}

impl Confirms {
    /// Starts the writer task on `db` among `tasks`; it ends once every handle is dropped.
    pub fn start(tasks: &mut Tasks, db: PgPool) -> Self {
        let (queue, pending) = mpsc::channel(4 * MAX_BATCH);
        tasks.spawn("confirm writer", write(db, pending));
        Self { queue }
    }

    /// Records that the broker confirmed `id`'s message; returns once it is written.
    pub async fn record(&self, id: CommandId) -> Result<(), Arc<sqlx::Error>> {
        let (reply, written) = oneshot::channel();
        if self.queue.send((id, reply)).await.is_err() {
            return Err(Arc::new(sqlx::Error::PoolClosed));
        }
        written
            .await
            .unwrap_or_else(|_| Err(Arc::new(sqlx::Error::PoolClosed)))
    }
}

async fn write(db: PgPool, mut pending: mpsc::Receiver<(CommandId, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let ids: Vec<uuid::Uuid> = batch.iter().map(|(id, _)| id.0).collect();
        let result = commands::mark_published(&db, &ids)
            .await
            .map(|marked| {
                // The rest were held by a worker (or marked already).
                tracing::debug!(
                    confirmed = ids.len(),
                    marked = marked.len(),
                    "confirms recorded"
                );
            })
            .map_err(Arc::new);
        for (_, reply) in batch.drain(..) {
            // The request may have gone (its client hung up); nothing to tell then.
            let _ = reply.send(result.clone());
        }
    }
}
