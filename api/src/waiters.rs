//! Long-poll wake-ups. One LISTEN connection per API process receives the id of every command
//! that reaches a final status (`pg_notify`, sent by the worker right after the transaction that
//! finished it committed: `commands::announce_finished`);
//! each `?wait=` request registers under its command's id and is woken only by that id (or by a
//! "re-check everything" signal when notifications may have been missed), then re-reads its
//! command. No polling loop, and a finish costs one map lookup however many polls are open.
//! The clients' event feeds (`GET /v1/events`) are woken the same way, by client id, on a channel
//! of their own ([`Waiters::follow`]).
//!
//! The re-reads after a wake-up take turns: no more run at once than the pool has connections.
//! Woken together (a batch of commands finished, or a re-check signal), thousands of polls would
//! otherwise each hold a query of their own (about 9 KB in sqlx) while they wait for a
//! connection; queued here each waits with a few bytes, and still ends at its deadline or on
//! shutdown.

use crate::notifications;
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_runtime::tasks::Tasks;
use orderflow_storage::listen::Notice;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};
use uuid::Uuid;

/// The open waits by command id.
type Registry = Mutex<HashMap<Uuid, Vec<Arc<Notify>>>>;

#[derive(Clone)]
pub struct Waiters {
    registry: Arc<Registry>,
    /// Bumped when notifications may have been missed: every waiter re-checks.
    recheck: watch::Sender<u64>,
    /// One permit per read running at once.
    reads: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Waiters {
    /// Starts the listener task of `channel`, whose payloads are the ids waited for; it stops on
    /// `shutdown`, which also ends every wait.
    pub fn start(
        tasks: &mut Tasks,
        db: PgPool,
        channel: &'static [&'static str],
        shutdown: CancellationToken,
    ) -> Self {
        let waiters = Self {
            registry: Arc::default(),
            recheck: watch::Sender::new(0),
            reads: Arc::new(Semaphore::new(db.options().get_max_connections() as usize)),
            shutdown: shutdown.clone(),
        };
        let (registry, recheck) = (waiters.registry.clone(), waiters.recheck.clone());
        notifications::spawn(tasks, db, channel, shutdown, move |notice| match notice {
            Notice::Notification { payload, .. } => {
                let Ok(id) = payload.parse::<Uuid>() else {
                    return;
                };
                let registry = registry
                    .lock()
                    .expect("the registry lock is never poisoned");
                for waiter in registry.get(&id).into_iter().flatten() {
                    // A stored permit: a finish between a waiter's read and its wait is kept.
                    waiter.notify_one();
                }
            }
            // Anything finished while nobody listened: every waiter re-checks.
            Notice::Listening | Notice::Lost => recheck.send_modify(|n| *n += 1),
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
        // Registered before the first read, so a finish between the read and the wait is seen.
        let registration = Registration::new(self.registry.clone(), command_id);
        let mut recheck = self.recheck.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        // The request's own first read is like any status read; only re-reads take turns.
        let (mut value, done) = check().await?;
        if done {
            return Ok(value);
        }
        loop {
            tokio::select! {
                _ = registration.notify.notified() => {}
                changed = recheck.changed() => if changed.is_err() {
                    return Ok(value);
                },
                _ = tokio::time::sleep_until(deadline) => return Ok(value),
                _ = self.shutdown.cancelled() => return Ok(value),
            }
            let _turn = tokio::select! {
                turn = self.reads.acquire() => turn.expect("the semaphore is never closed"),
                // Still the status as last read: the client polls again.
                _ = tokio::time::sleep_until(deadline) => return Ok(value),
                _ = self.shutdown.cancelled() => return Ok(value),
            };
            let (next, done) = check().await?;
            if done {
                return Ok(next);
            }
            value = next;
        }
    }

    /// Follows `id` for as long as the returned value lives: for what waits on one id again and
    /// again (a client's event feed), where [`Waiters::wait_until`] serves one wait.
    pub fn follow(&self, id: Uuid) -> Following {
        Following {
            registration: Registration::new(self.registry.clone(), id),
            recheck: self.recheck.subscribe(),
            reads: self.reads.clone(),
        }
    }
}

/// An id followed ([`Waiters::follow`]).
pub struct Following {
    registration: Registration,
    recheck: watch::Receiver<u64>,
    reads: Arc<Semaphore>,
}

impl Following {
    /// Resolves when the id was notified since the last call (or since it was followed), or
    /// when notifications may have been missed; pending forever once the server shuts down.
    pub async fn woken(&mut self) {
        tokio::select! {
            _ = self.registration.notify.notified() => {}
            changed = self.recheck.changed() => if changed.is_err() {
                std::future::pending::<()>().await;
            },
        }
    }

    /// A turn to read after a wake-up: no more re-reads run at once than the pool has
    /// connections.
    pub async fn turn(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.reads
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }
}

/// One wait's entry in the registry; removed when the wait ends, however it ends.
struct Registration {
    registry: Arc<Registry>,
    command_id: Uuid,
    notify: Arc<Notify>,
}

impl Registration {
    fn new(registry: Arc<Registry>, command_id: Uuid) -> Self {
        let notify = Arc::new(Notify::new());
        registry
            .lock()
            .expect("the registry lock is never poisoned")
            .entry(command_id)
            .or_default()
            .push(notify.clone());
        Self {
            registry,
            command_id,
            notify,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = self
            .registry
            .lock()
            .expect("the registry lock is never poisoned");
        if let Some(waiting) = registry.get_mut(&self.command_id) {
            waiting.retain(|n| !Arc::ptr_eq(n, &self.notify));
            if waiting.is_empty() {
                registry.remove(&self.command_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_is_removed_when_its_wait_ends() {
        let registry = Arc::new(Registry::default());
        let id = Uuid::new_v4();
        let first = Registration::new(registry.clone(), id);
        let second = Registration::new(registry.clone(), id);
        assert_eq!(registry.lock().unwrap()[&id].len(), 2);
        drop(first);
        assert_eq!(registry.lock().unwrap()[&id].len(), 1);
        assert!(Arc::ptr_eq(
            &registry.lock().unwrap()[&id][0],
            &second.notify
        ));
        drop(second);
        assert!(registry.lock().unwrap().is_empty());
    }
}
