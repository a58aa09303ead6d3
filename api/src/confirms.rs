//! Records the broker's confirms in PostgreSQL, later and many per statement. A request whose
//! publish was confirmed hands its command id here and is answered at once: its 202 waits for
//! the broker's confirm, not for this write.
//!
//! Each confirm is written [`Confirms::start`]'s `delay` after it arrived, together with every
//! other confirm due by then (one statement, one commit). By then a worker has usually applied
//! the command, and its commit recorded the message's arrival as the publish
//! (`commands::finish`): the write then finds nothing to mark and costs no row, no WAL and no
//! flush. What it does mark is a command still waiting in its queue, so that the worker's relay
//! does not publish it again (it republishes what stays unconfirmed for
//! `ORDERFLOW_REPUBLISH_AFTER_MS`, 5 s by default). The time written is the confirm's own.
//!
//! Measured (docs/DESIGN-NOTES.md, "Confirm marks after the answer"): waiting for the mark cost
//! every 202 a second WAL flush, and a quarter of PostgreSQL's commits were marks.
//!
//! A command that a worker is applying at that moment is skipped rather than waited for (its
//! row is locked): the worker's commit records the publish. A replay of the command's key that
//! finds it neither marked nor taken up yet asks this API whether it holds the confirm
//! ([`Confirms::holds`]); a replay that reaches another API instance waits for the mark
//! (`intake/replay.rs`). Marks still waiting when the API stops are written at once; marks lost
//! with the process (kill -9) leave those commands to the relay, whose republish the inbox makes
//! harmless.

use chrono::{DateTime, Utc};
use orderflow_domain::CommandId;
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_runtime::tasks::Tasks;
use orderflow_storage::commands;
use sqlx::PgPool;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Ids written by one statement at most.
const MAX_BATCH: usize = 512;
/// Confirms held before requests wait for the writer (a database slower than the confirms
/// arrive): at most this many marks are lost with the process.
const MAX_HELD: usize = 16 * MAX_BATCH;

/// The handle requests use; cloning is cheap. The writer task ends once every handle is gone.
#[derive(Clone)]
pub struct Confirms {
    queue: mpsc::Sender<Confirmed>,
    delay: Duration,
    /// The ids handed over and not yet written, for replays ([`Confirms::holds`]). A plain
    /// mutex: each lock inserts, removes or looks up one id (or removes one batch's).
    held: HeldIds,
}

/// The ids of the confirms handed over and not yet written (the writer's queue, as a set).
type HeldIds = Arc<Mutex<HashSet<uuid::Uuid>>>;

struct Confirmed {
    id: uuid::Uuid,
    at: DateTime<Utc>,
    arrived: Instant,
}

impl Confirms {
    /// Starts the writer task on `db` among `tasks`: each confirm is written `delay` after it
    /// arrived (at once from `shutdown` on); the task ends once every handle is dropped and
    /// what it held is written.
    pub fn start(
        tasks: &mut Tasks,
        db: PgPool,
        delay: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let (queue, arriving) = mpsc::channel(4 * MAX_BATCH);
        let held = Arc::new(Mutex::new(HashSet::new()));
        tasks.spawn(
            "confirm writer",
            write(db, arriving, delay, held.clone(), shutdown.clone()),
        );
        Self { queue, delay, held }
    }

    /// How long after its arrival a confirm is written (a replay waits about this long for it).
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Whether this API holds the broker's confirm of `id`, not yet written: the command is
    /// published though its row does not say so yet.
    pub fn holds(&self, id: CommandId) -> bool {
        lock(&self.held).contains(&id.0)
    }

    /// Hands over the broker's confirm of `id`, received `at`. Returns at once unless the
    /// writer is [`MAX_HELD`] behind.
    pub async fn record(&self, id: CommandId, at: DateTime<Utc>) {
        lock(&self.held).insert(id.0);
        let confirmed = Confirmed {
            id: id.0,
            at,
            arrived: Instant::now(),
        };
        if self.queue.send(confirmed).await.is_err() {
            // Only while the process stops: the relay republishes the command if it stays
            // unapplied, and the inbox makes that harmless.
            tracing::warn!(command_id = %id, "the confirm writer has stopped; not recording the confirm");
            lock(&self.held).remove(&id.0);
        }
    }
}

/// The held ids; a panic while they were locked left them whole (one insert or remove).
fn lock(held: &Mutex<HashSet<uuid::Uuid>>) -> std::sync::MutexGuard<'_, HashSet<uuid::Uuid>> {
    held.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn write(
    db: PgPool,
    mut arriving: mpsc::Receiver<Confirmed>,
    delay: Duration,
    held_ids: HeldIds,
    shutdown: CancellationToken,
) {
    let mut held: VecDeque<Confirmed> = VecDeque::new();
    let mut received = Vec::with_capacity(MAX_BATCH);
    let mut open = true;
    loop {
        let hurry = !open || shutdown.is_cancelled();
        let now = Instant::now();
        let due = |c: &Confirmed| hurry || c.arrived + delay <= now;
        if held.front().is_some_and(due) {
            let mut ids = Vec::with_capacity(MAX_BATCH);
            let mut times = Vec::with_capacity(MAX_BATCH);
            while ids.len() < MAX_BATCH && held.front().is_some_and(due) {
                let c = held.pop_front().expect("a front was just seen");
                ids.push(c.id);
                times.push(c.at);
            }
            mark(&db, &ids, &times).await;
            // Written (or left to the relay, if the write failed): no longer held here.
            let mut held_ids = lock(&held_ids);
            for id in &ids {
                held_ids.remove(id);
            }
            continue;
        }
        if !open && held.is_empty() {
            return;
        }
        let next_due = held.front().map(|c| c.arrived + delay);
        tokio::select! {
            n = arriving.recv_many(&mut received, MAX_BATCH), if open && held.len() < MAX_HELD => {
                if n == 0 {
                    open = false;
                }
                held.extend(received.drain(..));
            }
            _ = sleep_until(next_due) => {}
            _ = shutdown.cancelled(), if !hurry => {}
        }
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn mark(db: &PgPool, ids: &[uuid::Uuid], times: &[DateTime<Utc>]) {
    match commands::mark_published(db, ids, times).await {
        // The rest were applied by then (their worker recorded the publish), held by a worker,
        // or marked already.
        Ok(marked) => tracing::debug!(
            confirmed = ids.len(),
            marked = marked.len(),
            "confirms recorded"
        ),
        // The broker has them; the relay republishes those that stay unapplied, and the inbox
        // makes that harmless.
        Err(e) => tracing::warn!(
            confirmed = ids.len(),
            error = %e,
            "could not record the broker's confirms"
        ),
    }
}
