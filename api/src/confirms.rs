//! Records the broker's confirms in PostgreSQL, many per statement (group commit). A request
//! whose publish was confirmed hands its command id here and waits for the write; one task
//! writes every id that arrived while its previous write ran. Under light load a write holds one
//! command, under heavy load hundreds: one statement instead of one transaction per command.
//! A command that a worker is applying at that moment is skipped rather than waited for (its row
//! is locked): the batch goes on, and only that command's request waits for the worker's commit
//! (which records the message's arrival as its publish), so that no request answers 202 while
//! its command still looks unpublished to a replay of its key.

use orderflow_shared::db::commands;
use orderflow_shared::domain::CommandId;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Ids written by one statement at most.
const MAX_BATCH: usize = 512;

/// Whether the batch marked the command (`false`: skipped, a worker holds its row).
type Reply = oneshot::Sender<Result<bool, Arc<sqlx::Error>>>;

/// The handle requests use; cloning is cheap. The writer task ends once every handle is gone.
#[derive(Clone)]
pub struct Confirms {
    queue: mpsc::Sender<(CommandId, Reply)>,
    db: PgPool,
}

impl Confirms {
    /// Starts the writer task on `db`.
    pub fn start(db: PgPool) -> Self {
        let (queue, pending) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write(db.clone(), pending));
        Self { queue, db }
    }

    /// Records that the broker confirmed `id`'s message; returns once it is written.
    pub async fn record(&self, id: CommandId) -> Result<(), Arc<sqlx::Error>> {
        let (reply, written) = oneshot::channel();
        if self.queue.send((id, reply)).await.is_err() {
            return Err(Arc::new(sqlx::Error::PoolClosed));
        }
        let marked = written
            .await
            .unwrap_or_else(|_| Err(Arc::new(sqlx::Error::PoolClosed)))?;
        if !marked {
            // A worker holds it (or it was marked already): wait for that worker alone.
            commands::mark_published_after_lock(&self.db, id)
                .await
                .map_err(Arc::new)?;
        }
        Ok(())
    }
}

async fn write(db: PgPool, mut pending: mpsc::Receiver<(CommandId, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let ids: Vec<uuid::Uuid> = batch.iter().map(|(id, _)| id.0).collect();
        let result = commands::mark_published(&db, &ids).await.map_err(Arc::new);
        for (id, reply) in batch.drain(..) {
            let marked = result.as_ref().map(|marked| marked.contains(&id.0));
            // The request may have gone (its client hung up); nothing to tell then.
            let _ = reply.send(marked.map_err(Arc::clone));
        }
    }
}
