//! Long-poll wake-ups. One LISTEN connection per API process receives the id of every command
//! that reaches a final status (`pg_notify` in the worker's transaction, delivered at commit) and
//! broadcasts it; each `?wait=` request re-reads its command when its id (or a "recheck
//! everything" signal after a reconnect) comes by. No polling loop.

use crate::notifications::{self, Notice};
use orderflow_shared::db::COMMAND_DONE_CHANNEL;
use orderflow_shared::shutdown::CancellationToken;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::broadcast;
use uuid::Uuid;

/// Broadcast of finished command ids; `Uuid::nil()` means "re-check, something may be missed".
#[derive(Clone)]
pub struct Waiters {
    sender: broadcast::Sender<Uuid>,
    shutdown: CancellationToken,
}

impl Waiters {
    /// Starts the listener task; it stops on `shutdown`, which also ends every wait.
    pub fn start(db: PgPool, shutdown: CancellationToken) -> Self {
        let (sender, _) = broadcast::channel(4096);
        let waiters = Self {
            sender: sender.clone(),
            shutdown: shutdown.clone(),
        };
        notifications::spawn(db, COMMAND_DONE_CHANNEL, shutdown, move |notice| {
            let id = match notice {
                Notice::Payload(payload) => match payload.parse::<Uuid>() {
                    Ok(id) => id,
                    Err(_) => return,
                },
                // Anything finished while nobody listened: every waiter re-checks.
                Notice::Listening | Notice::Lost => Uuid::nil(),
            };
            let _ = sender.send(id);
        });
        waiters
    }

    /// Waits until `is_done` holds, `timeout` passes or the server shuts down. `is_done` is
    /// called once before waiting and again after each relevant wake-up.
    pub async fn wait_until<F, Fut, T>(
        &self,
        command_id: Uuid,
        timeout: Duration,
        mut check: F,
    ) -> Result<T, crate::error::ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(T, bool), crate::error::ApiError>>,
    {
        // Subscribe before the first read, so a finish between the read and the wait is seen.
        let mut wakeups = self.sender.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (value, done) = check().await?;
            if done {
                return Ok(value);
            }
            loop {
                tokio::select! {
                    woken = wakeups.recv() => match woken {
                        Ok(id) if id == command_id || id.is_nil() => break,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return Ok(value),
                    },
                    _ = tokio::time::sleep_until(deadline) => return Ok(value),
                    _ = self.shutdown.cancelled() => return Ok(value),
                }
            }
        }
    }
}
