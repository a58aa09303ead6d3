//! Records the broker's confirms in PostgreSQL, later and many per statement. A request whose
//! publish was confirmed hands its command id here and is answered at once: its 202 waits for
//! the broker's confirm, not for this write.
//!
//! Each confirm is written [`Confirms::start`]'s `delay` after it arrived (up to a quarter of
//! it, at most 100 ms, later: writes are that far apart), together with every other confirm
//! due by then (one statement, one commit). By then a worker has usually applied the command,
//! and its commit recorded the message's arrival as the publish (`commands::finish`): the write
//! then finds nothing to mark and costs no row, no WAL and no flush. What it does mark is a
//! command still waiting in its queue, so that the worker's relay does not publish it again (it
//! republishes what stays unconfirmed for `ORDERFLOW_REPUBLISH_AFTER_MS`, 5 s by default). The
//! time written is the confirm's own.
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

    /// How long after its arrival a confirm is written at the latest (a replay waits about
    /// this long for it).
    pub fn written_within(&self) -> Duration {
        self.delay + spacing(self.delay)
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
    let mut schedule = Schedule::new(delay);
    loop {
        let hurry = !open || shutdown.is_cancelled();
        let now = Instant::now();
        let due = |c: &Confirmed| schedule.due(c.arrived, now, hurry);
        if held.front().is_some_and(due) {
            let mut ids = Vec::with_capacity(MAX_BATCH);
            let mut times = Vec::with_capacity(MAX_BATCH);
            while ids.len() < MAX_BATCH && held.front().is_some_and(due) {
                let c = held.pop_front().expect("a front was just seen");
                ids.push(c.id);
                times.push(c.at);
            }
            schedule.wrote(now, ids.len() == MAX_BATCH);
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
        let next_due = held.front().map(|c| schedule.wake_at(c.arrived));
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

/// Least time between two writes: a quarter of the delay, at most 100 ms.
fn spacing(delay: Duration) -> Duration {
    (delay / 4).min(Duration::from_millis(100))
}

/// When the writer writes: a confirm once it is `delay` old, and writes at least [`spacing`]
/// apart (unless the last one was full), so a confirm is written between `delay` and `delay`
/// plus the spacing after it arrived. Written as soon as the oldest was due, a steady stream of
/// confirms made a statement of a few ids every few milliseconds: 7,088 statements marking
/// 1,389 rows in one `orderflow-bench perf --workloads uniform` run (pg_stat_statements), 118 a
/// second at half the maximum rate.
struct Schedule {
    delay: Duration,
    spacing: Duration,
    /// When the last write started, and whether it took as many as one statement takes.
    written: Option<(Instant, bool)>,
}

impl Schedule {
    fn new(delay: Duration) -> Self {
        Self {
            delay,
            spacing: spacing(delay),
            written: None,
        }
    }

    /// Whether a confirm that arrived at `arrived` is written by a write at `now`.
    fn due(&self, arrived: Instant, now: Instant, hurry: bool) -> bool {
        hurry || (arrived + self.delay <= now && self.next_write().is_none_or(|at| at <= now))
    }

    /// The earliest the next write may start, if the spacing holds it back at all.
    fn next_write(&self) -> Option<Instant> {
        match self.written {
            Some((at, false)) => Some(at + self.spacing),
            _ => None,
        }
    }

    /// When a confirm that arrived at `arrived` (the oldest held) is due.
    fn wake_at(&self, arrived: Instant) -> Instant {
        let due = arrived + self.delay;
        self.next_write().map_or(due, |at| at.max(due))
    }

    fn wrote(&mut self, at: Instant, full: bool) {
        self.written = Some((at, full));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A confirm every millisecond for ten seconds, written as the writer loop writes them:
    /// each between `delay` and `delay` + the spacing after it arrived, by one write per
    /// spacing, not one per confirm.
    #[test]
    fn a_steady_stream_of_confirms_is_written_a_few_times_a_second_each_on_time() {
        let delay = Duration::from_millis(250);
        let start = Instant::now();
        let arrivals: Vec<Instant> = (0..10_000)
            .map(|ms| start + Duration::from_millis(ms))
            .collect();
        let mut schedule = Schedule::new(delay);
        let mut held: VecDeque<Instant> = VecDeque::new();
        let (mut next, mut writes, mut now) = (0, 0, start);
        while next < arrivals.len() || !held.is_empty() {
            while next < arrivals.len() && arrivals[next] <= now {
                held.push_back(arrivals[next]);
                next += 1;
            }
            if held.front().is_some_and(|&a| schedule.due(a, now, false)) {
                let mut taken = 0;
                while taken < MAX_BATCH
                    && held.front().is_some_and(|&a| schedule.due(a, now, false))
                {
                    let arrived = held.pop_front().expect("a front was just seen");
                    let age = now - arrived;
                    assert!(
                        age >= delay && age <= delay + spacing(delay),
                        "written {age:?} after it arrived"
                    );
                    taken += 1;
                }
                schedule.wrote(now, taken == MAX_BATCH);
                writes += 1;
                continue;
            }
            // Sleep until the next arrival or the oldest's due time, whichever is first.
            let wake = held.front().map(|&a| schedule.wake_at(a));
            now = match (arrivals.get(next), wake) {
                (Some(&a), Some(w)) => a.min(w),
                (Some(&a), None) => a,
                (None, Some(w)) => w,
                (None, None) => break,
            };
        }
        // 62.5 ms apart: 16 a second, 10.25 s of writes.
        assert!(writes <= 165, "{writes} writes for 10,000 confirms");
        assert!(writes >= 150, "{writes} writes: fewer than one per spacing");
    }

    #[test]
    fn a_full_write_is_followed_at_once_and_a_stop_writes_everything() {
        let delay = Duration::from_millis(250);
        let start = Instant::now();
        let mut schedule = Schedule::new(delay);
        let later = start + delay;
        schedule.wrote(later, true);
        assert!(
            schedule.due(start, later, false),
            "a backlog waits for the spacing"
        );
        schedule.wrote(later, false);
        assert!(!schedule.due(start, later, false));
        assert!(schedule.due(later, later, true), "a stop does not wait");
        assert_eq!(schedule.wake_at(start), later + spacing(delay));
        let zero = Schedule::new(Duration::ZERO);
        assert!(zero.due(start, start, false));
    }
}
