//! Combined transactions: the fresh messages that several partitions have in hand at one moment
//! are applied in one transaction, the way the API's intake records the requests that arrive
//! together with one statement (group commit). Each partition's consumer hands its run of
//! ready messages over ([`Combiner::apply`]) and waits; a writer takes every run handed over
//! while its previous transaction ran (at most [`MAX_RUNS`]) and applies them with
//! [`Applier::apply_combined`]: one begin, one fence over every partition's lease, one commit
//! and one announcement for all of them, where each partition's run took its own. Under light
//! load a transaction holds one run, under heavy load one per busy partition: the commits,
//! round trips and fences per command fall as the load rises.
//!
//! One writer at a time, as long as it keeps up: the bigger a transaction, the less each command
//! costs (below, and docs/DESIGN-NOTES.md). A writer with runs in hand waits while another is in
//! a transaction, until that one commits, for at most `spill_after`; then it starts its own. So
//! a transaction that waits on a lock (or a slow statement) holds up the other partitions for
//! that long, not for as long as it waits, and up to `writers` transactions wait at once.
//!
//! Runs that may move stock or money are not combined (see [`write`]): they take the
//! message-by-message path, which locks every SKU they may move until the commit, and several
//! partitions' runs together held the hot SKUs for all of them.
//!
//! What stays per partition: a partition has at most one run handed over (its consumer waits
//! for the answer before it takes more), so its messages are still applied in order, one
//! transaction after the other, and acked by its own consumer after the commit. A combined
//! transaction that cannot commit (a message needs more than an apply, a lease is gone, a
//! deadlock) commits nothing, and every run in it goes back to its partition, which applies it
//! on its own as it did before (`ready.rs`): one partition's trouble costs the others one
//! rolled-back attempt, never their messages.

use crate::apply::{Applier, BatchItem, DeliveryInfo, Run};
use crate::metrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};

/// Most runs (partitions) in one combined transaction: a transaction's locks are held until it
/// commits, so it holds no more than a worker's share of partitions usually brings at once.
pub const MAX_RUNS: usize = 32;

/// A message handed to a writer, owned (the writer is another task).
pub(super) struct OwnedItem {
    pub(super) body: Vec<u8>,
    pub(super) delivery: DeliveryInfo,
    pub(super) span: tracing::Span,
}

struct Handed {
    partition: u16,
    items: Vec<OwnedItem>,
    /// `Some(n)`: committed, `n` commands finished; `None`: nothing committed.
    answer: oneshot::Sender<Option<usize>>,
}

/// The handle the partition consumers share; the writers end once every handle is gone.
#[derive(Clone)]
pub struct Combiner {
    queue: mpsc::Sender<Handed>,
}

impl Combiner {
    /// Starts `writers` writers (each applies one combined transaction at a time) on `applier`;
    /// runs in hand wait for the transaction in flight at most `spill_after`, then another
    /// writer starts one beside it.
    pub fn start(applier: Applier, writers: usize, spill_after: Duration) -> Self {
        let (queue, handed) = mpsc::channel(MAX_RUNS * writers.max(1));
        let shared = Arc::new(Writers {
            handed: Mutex::new(handed),
            in_flight: AtomicUsize::new(0),
            committed: Notify::new(),
            spill_after,
        });
        for _ in 0..writers.max(1) {
            tokio::spawn(write(applier.clone(), shared.clone()));
        }
        Self { queue }
    }

    /// Applies a partition's run of fresh messages in a combined transaction. `Some(n)`:
    /// committed, `n` commands finished, the messages are to be acked. `None`: nothing of them
    /// was committed; the caller applies them on its own.
    pub(super) async fn apply(&self, partition: u16, items: Vec<OwnedItem>) -> Option<usize> {
        let (answer, answered) = oneshot::channel();
        let handed = Handed {
            partition,
            items,
            answer,
        };
        metrics::runs_waiting(1.0);
        if self.queue.send(handed).await.is_err() {
            metrics::runs_waiting(-1.0);
            return None;
        }
        answered.await.ok().flatten()
    }
}

/// What the writers share.
struct Writers {
    /// One writer at a time takes runs from here.
    handed: Mutex<mpsc::Receiver<Handed>>,
    /// Writers in a transaction.
    in_flight: AtomicUsize,
    /// A writer's transaction ended.
    committed: Notify,
    spill_after: Duration,
}

impl Writers {
    /// The runs to apply next: waits for one, then (while another writer's transaction is in
    /// flight) for that transaction to end or `spill_after`, and takes every run handed over
    /// by then. Empty once every handle is gone.
    async fn take(&self, taken: &mut Vec<Handed>) {
        let mut handed = self.handed.lock().await;
        if handed.recv_many(taken, MAX_RUNS).await == 0 {
            return;
        }
        let spill = tokio::time::sleep(self.spill_after);
        tokio::pin!(spill);
        loop {
            let ended = self.committed.notified();
            tokio::pin!(ended);
            // Registered before the check, so an end in between is not missed.
            ended.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::select! {
                _ = &mut ended => {}
                _ = &mut spill => break,
            }
        }
        while taken.len() < MAX_RUNS {
            match handed.try_recv() {
                Ok(run) => taken.push(run),
                Err(_) => break,
            }
        }
        // Counted before the next writer may look.
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.committed.notify_waiters();
    }
}

/// A writer: takes the runs handed over meanwhile, applies them together, answers each.
async fn write(applier: Applier, writers: Arc<Writers>) {
    let mut taken = Vec::with_capacity(MAX_RUNS);
    loop {
        writers.take(&mut taken).await;
        if taken.is_empty() {
            return;
        }
        let received = taken.len();
        metrics::runs_waiting(-(received as f64));
        // A run that moves stock or money is not combined with others: its transaction takes
        // the message-by-message path with every SKU its messages may move locked until the
        // commit, and combined with other partitions' runs it held the hot SKUs for all of them,
        // while every other worker's transaction on those SKUs (a draining partition's among
        // them) queued behind it. Such a run goes back to its partition at once, which applies
        // it in a transaction of its own. Measured: docs/DESIGN-NOTES.md, *Stock runs alone*.
        if taken.len() > 1 {
            let mut plain = Vec::with_capacity(taken.len());
            for run in taken.drain(..) {
                if run
                    .items
                    .iter()
                    .any(|item| crate::apply::moves_stock_or_money(&item.body))
                {
                    let _ = run.answer.send(None);
                } else {
                    plain.push(run);
                }
            }
            taken = plain;
            if taken.is_empty() {
                writers.ended();
                continue;
            }
        }
        let items: Vec<Vec<BatchItem>> = taken
            .iter()
            .map(|run| {
                run.items
                    .iter()
                    .map(|item| BatchItem {
                        body: &item.body,
                        delivery: item.delivery.clone(),
                        span: item.span.clone(),
                    })
                    .collect()
            })
            .collect();
        let runs: Vec<Run> = taken
            .iter()
            .zip(&items)
            .map(|(run, items)| Run {
                partition: run.partition,
                items,
            })
            .collect();
        let outcome = applier.apply_combined(&runs).await;
        writers.ended();
        let finished = match outcome {
            Ok(Some(finished)) => {
                metrics::combined_applied(runs.len());
                finished.into_iter().map(Some).collect()
            }
            outcome => {
                match outcome {
                    Err(e) => tracing::info!(
                        runs = runs.len(), error = %e,
                        "a combined transaction failed; each partition applies its run on its own"
                    ),
                    _ => tracing::debug!(
                        runs = runs.len(),
                        "a message of a combined transaction needs handling on its own; each partition applies its run on its own"
                    ),
                }
                metrics::combined_fallback();
                vec![None; runs.len()]
            }
        };
        drop(runs);
        drop(items);
        for (run, finished) in taken.drain(..).zip(finished) {
            // The consumer may have gone (its partition abandoned); nothing to tell then.
            let _ = run.answer.send(finished);
        }
    }
}
