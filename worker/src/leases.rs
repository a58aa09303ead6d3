//! Partition leases from the worker's side: which partitions this process holds and at which
//! epoch ([`Holdings`], read by every transaction's fence), and the keeper that takes, renews,
//! drains and releases them ([`Keeper::run`]).
//!
//! Twice a second (a tenth of the TTL), and at once when a lease moves, a worker joins or leaves
//! (the `orderflow_leases` notification) or one of its consumers finished draining, the keeper
//! renews this worker's membership (a lease lasts
//! as long as its holder's membership: no lease row is written to renew it, so the applies'
//! fences never wait for a renewal), reads the leases it holds and the live workers, and
//! computes the shared assignment ([`crate::assignment`]): each live worker holds ⌊P/W⌋ or
//! ⌈P/W⌉ partitions. A partition it holds but should not is drained (its consumer is
//! cancelled at the broker, the messages in hand are finished and acked) and then released; a
//! partition it should hold is taken (epoch + 1) once it is free or its holder's lease expired,
//! and only then consumed. A graceful move therefore starts no work twice (what the broker
//! still had in flight to the cancelled consumer comes back unopened, marked redelivered).
//!
//! Leases whose membership is not renewed in time are given up by this worker before anyone
//! else can take them: its consumers are cancelled once the last successful renewal is older
//! than the TTL less a margin, so a worker cut off from PostgreSQL but still connected to
//! RabbitMQ stops being fed. A worker that cannot do even that (stopped, frozen) is fenced
//! instead: its next transaction for the partition fails `orderflow_fence`, rolls back, and acks
//! nothing.

use crate::assignment;
use crate::consumer::{self, Context, Ended, Stops};
use crate::metrics;
use orderflow_runtime::shutdown::CancellationToken;
use orderflow_storage::LEASES_CHANNEL;
use orderflow_storage::leases::{self, Holder, Lease};
use orderflow_storage::listen::Listener;
use sqlx::{PgConnection, PgPool};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Lease timing.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTiming {
    /// A membership not renewed for this long has expired, and its leases may be taken over.
    pub ttl: Duration,
    /// How often the keeper renews, reads the live workers and rebalances.
    pub renew_every: Duration,
    /// Most time a drained partition may take to finish what it holds; then its messages are
    /// left to the broker (redelivered to the next owner) and the lease released anyway.
    pub drain_limit: Duration,
}

impl LeaseTiming {
    /// A worker whose liveness lock is free (its process died) and which has not renewed for
    /// this long is dead: its partitions are taken over without waiting for the TTL. One and a
    /// half renewal intervals: a live worker renews (and takes a lost lock back) every interval,
    /// so both conditions hold of a live one only when its round is late as well.
    pub fn dead_after(&self) -> Duration {
        self.renew_every * 3 / 2
    }

    /// 5 s TTL, renewed every half second: a worker that stops renewing loses its partitions
    /// after 5 s, one that died (see [`LeaseTiming::dead_after`]) within about 2 s.
    pub const DEFAULT: LeaseTiming = LeaseTiming {
        ttl: Duration::from_secs(5),
        renew_every: Duration::from_millis(500),
        drain_limit: Duration::from_secs(10),
    };

    /// The consumers stop when the last successful renewal is this old: a second before anyone
    /// else may take the leases.
    fn give_up_after(&self) -> Duration {
        self.ttl
            .saturating_sub(self.renew_every.max(Duration::from_millis(500)))
    }
}

/// This process's leases: its holder identity and, per partition, the epoch it holds the
/// lease at (0: not held). Shared by the keeper, which writes it, and the fences, which read it.
pub struct Holdings {
    holder: Holder,
    epochs: Vec<AtomicI64>,
}

impl Holdings {
    pub fn new(name: String, partitions: u16) -> Self {
        Self {
            holder: Holder {
                name,
                incarnation: uuid::Uuid::new_v4(),
            },
            epochs: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// The epoch this process holds `partition` at; 0 when it holds it not.
    pub fn epoch(&self, partition: u16) -> i64 {
        self.epochs
            .get(usize::from(partition))
            .map_or(0, |e| e.load(Ordering::Acquire))
    }

    fn set(&self, partition: u16, epoch: i64) {
        if let Some(e) = self.epochs.get(usize::from(partition)) {
            e.store(epoch, Ordering::Release);
        }
    }

    /// The partitions held now, with their epochs.
    pub fn held(&self) -> Vec<(i32, i64)> {
        self.epochs
            .iter()
            .enumerate()
            .map(|(p, e)| (p as i32, e.load(Ordering::Acquire)))
            .filter(|&(_, e)| e > 0)
            .collect()
    }

    /// The fence of a transaction that writes for `partition`: its first statement. Fails with
    /// the lease-lost error (see `orderflow_storage::is_lease_lost`) unless this process still
    /// holds the partition at the epoch it took it with.
    pub async fn fence(&self, tx: &mut PgConnection, partition: u16) -> sqlx::Result<()> {
        let epoch = self.epoch(partition);
        leases::fence(tx, &[i32::from(partition)], &[epoch], &self.holder).await
    }

    /// The fence of a transaction that writes for several partitions.
    pub async fn fence_all(&self, tx: &mut PgConnection, held: &[(i32, i64)]) -> sqlx::Result<()> {
        let (partitions, epochs): (Vec<i32>, Vec<i64>) = held.iter().copied().unzip();
        leases::fence(tx, &partitions, &epochs, &self.holder).await
    }
}

/// A partition this process consumes.
struct Running {
    epoch: i64,
    stops: Stops,
    task: JoinHandle<Ended>,
    /// Since when it is being drained for a hand-over.
    draining_since: Option<Instant>,
    /// Whether its lease row says `draining` yet.
    marked_draining: bool,
}

/// Takes, renews, drains and releases this process's leases, and runs a consumer for each
/// partition it holds.
pub struct Keeper {
    ctx: Arc<Context>,
    holdings: Arc<Holdings>,
    /// Its own connections, so that renewals never queue behind applies.
    db: PgPool,
    timing: LeaseTiming,
    running: BTreeMap<u16, Running>,
    /// When the last renewal that succeeded was sent: the leases run at least `ttl` from then.
    renewed: Instant,
    /// The session holding this process's liveness lock (taken out of `db`'s pool), while it
    /// holds it.
    liveness: Option<PgConnection>,
    /// Taking the liveness lock failed on the last try (logged once, when it starts failing).
    liveness_failing: bool,
    /// Changes of the leases and the live workers (`LEASES_CHANNEL`): each starts a round at
    /// once. The rounds on the timer go on regardless (a missed notification only waits).
    changes: Listener,
    /// Told when a partition's consumer ended (drained): a round releases its lease at once.
    consumer_ended: Arc<Notify>,
    /// The highest epoch this process started a consumer at, per partition.
    consumed: BTreeMap<u16, i64>,
}

impl Keeper {
    pub fn new(
        ctx: Arc<Context>,
        holdings: Arc<Holdings>,
        db: PgPool,
        timing: LeaseTiming,
    ) -> Self {
        Self {
            changes: Listener::new(db.clone(), &[LEASES_CHANNEL]),
            ctx,
            holdings,
            db,
            timing,
            running: BTreeMap::new(),
            renewed: Instant::now(),
            liveness: None,
            liveness_failing: false,
            consumer_ended: Arc::new(Notify::new()),
            consumed: BTreeMap::new(),
        }
    }

    /// Joins the live workers and keeps the leases until `shutdown`; then drains every partition
    /// it holds, releases the leases and leaves, so that the others take them at once.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let me = self.holdings.holder().clone();
        self.renewed = loop {
            let started = Instant::now();
            let joined = async {
                let partitions = self.ctx.applier.layout.get().partitions();
                leases::ensure_partitions(&self.db, partitions).await?;
                leases::join(&self.db, &me, self.timing.ttl).await
            };
            match joined.await {
                Ok(()) => break started,
                Err(e) => tracing::warn!(error = %e, "joining the workers failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timing.renew_every) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        };
        tracing::info!(worker = me.name, incarnation = %me.incarnation, "joined the workers");
        let mut tick = tokio::time::interval(self.timing.renew_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let result = loop {
            // A round on the timer, or at once when a lease moved, a worker joined or left, or one
            // of this worker's consumers finished draining.
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.changes.next() => {}
                _ = self.consumer_ended.notified() => {}
                _ = shutdown.cancelled() => break Ok(()),
            }
            self.reap().await;
            // A round never runs past the moment the consumers must be given up: a renewal that
            // hangs (PostgreSQL unreachable) must not delay that.
            let mut limit = Instant::now() + self.timing.ttl / 2;
            if !self.running.is_empty() {
                limit = limit.min(self.renewed + self.timing.give_up_after());
            }
            let round = tokio::time::timeout_at(limit, self.round(&me, &shutdown));
            match round.await {
                Ok(Ok(true)) => {
                    if failing {
                        tracing::info!("lease renewals recovered");
                    }
                    failing = false;
                }
                Ok(Ok(false)) => {
                    break Err(anyhow::anyhow!(
                        "another process joined under this worker's name ({}); stopping",
                        me.name
                    ));
                }
                Ok(Err(e)) => {
                    if !failing {
                        tracing::warn!(error = %e, "lease renewal failed; retrying");
                    }
                    failing = true;
                }
                Err(_) => {
                    if !failing {
                        tracing::warn!("a lease round timed out; retrying");
                    }
                    failing = true;
                }
            }
            if self.renewed.elapsed() >= self.timing.give_up_after() && !self.running.is_empty() {
                tracing::error!(
                    since = ?self.renewed.elapsed(),
                    "leases not renewed in time: giving up every partition before another worker may take them"
                );
                self.give_up_all();
            }
        };
        self.stop(&me).await;
        result
    }

    /// One renewal and rebalancing; `Ok(false)` when this process was replaced by another under
    /// its name.
    async fn round(&mut self, me: &Holder, shutdown: &CancellationToken) -> anyhow::Result<bool> {
        let sent = Instant::now();
        if !leases::renew_member(&self.db, me, self.timing.ttl).await? {
            return Ok(false);
        }
        // Renewed, and with it every lease held: whatever the rest of the round waits for (a
        // take behind a fenced transaction) does not count against them.
        self.renewed = sent;
        self.keep_liveness(me).await;
        // Who holds what, and with it what this process holds: one read, so that what follows
        // sees a take committed by another round's lost answer either in both or in neither
        // (read apart, a take committed between them was missing from what this process held
        // and present in who holds what, and was taken again at the next epoch).
        let all = leases::leases(&self.db, self.timing.dead_after()).await?;
        let held: BTreeMap<u16, i64> = all
            .iter()
            .filter(|l| {
                l.owner.as_deref() == Some(me.name.as_str())
                    && l.incarnation == Some(me.incarnation)
            })
            .filter_map(|l| u16::try_from(l.partition).ok().map(|p| (p, l.epoch)))
            .collect();
        // Taken over while this worker was away: stop at once (its fence already refuses).
        let lost: Vec<u16> = self
            .running
            .iter()
            .filter(|(p, r)| held.get(p) != Some(&r.epoch))
            .map(|(p, _)| *p)
            .collect();
        for partition in lost {
            tracing::warn!(
                partition,
                "lease lost to another worker; stopping its consumer"
            );
            self.lose(partition);
        }
        // The count may have grown (`orderflow-api partitions grow`): the new partitions are
        // assigned like the others from this round on.
        let layout = &self.ctx.applier.layout;
        if layout.refresh(&self.db).await? {
            self.ctx.monitor.grow(layout.get().partitions());
        }
        let partitions = layout.get().partitions();
        let live = leases::live_members(&self.db, self.timing.dead_after()).await?;
        let names: Vec<&str> = live.iter().map(String::as_str).collect();
        // Held without a consumer, at an epoch this process never consumed: a take that
        // committed while its answer was lost (a round that timed out, a connection cut as
        // PostgreSQL's primary moved). The row names this process and is active, so no one else
        // takes it while this process lives: consume it (the hand-over below drains it if it is
        // not ours to keep). A lease it gave up or lost at an epoch it consumed is not picked
        // up again here: a consumer it abandoned may still be in a transaction at that epoch,
        // so it is taken over (epoch + 1) like anyone's.
        let orphaned: Vec<(u16, i64)> = held
            .iter()
            .filter(|(p, e)| {
                !self.running.contains_key(p) && **e > self.consumed.get(p).copied().unwrap_or(0)
            })
            .filter(|(p, _)| {
                all.iter()
                    .any(|l| l.partition == i32::from(**p) && l.state == "active")
            })
            .map(|(p, e)| (*p, *e))
            .collect();
        for (partition, epoch) in orphaned {
            tracing::warn!(
                partition,
                epoch,
                "holding a partition's lease without consuming it (a take whose answer was lost); consuming it"
            );
            metrics::rebalanced("taken");
            self.consume(partition, epoch);
        }
        // Who holds what: a partition stays with a live holder within its share (sticky), so a
        // join moves only the newcomer's share. One being handed over is nobody's.
        let mut holders: Vec<Option<&str>> = vec![None; usize::from(partitions)];
        for lease in &all {
            if let Some(slot) = usize::try_from(lease.partition)
                .ok()
                .and_then(|p| holders.get_mut(p))
                && lease.state == "active"
            {
                *slot = lease.owner.as_deref();
            }
        }
        let mine = assignment::partitions_of(partitions, &names, &holders, &me.name);
        // Hand over what is no longer ours.
        let now = Instant::now();
        for (partition, running) in &mut self.running {
            if mine.contains(partition) {
                continue;
            }
            match running.draining_since {
                None => {
                    tracing::info!(
                        partition = *partition,
                        "handing the partition over: draining"
                    );
                    running.stops.drain.cancel();
                    running.draining_since = Some(now);
                }
                Some(since) if now - since > self.timing.drain_limit * 2 => {
                    tracing::warn!(
                        partition = *partition,
                        "the partition did not give back in time; abandoning its consumer"
                    );
                    running.stops.abandon.cancel();
                }
                Some(since)
                    if now - since > self.timing.drain_limit
                        && !running.stops.give_back.is_cancelled() =>
                {
                    give_back(*partition, &running.stops);
                }
                Some(_) => {}
            }
            // The consumer is told first; the lease row says so as soon as no transaction of
            // this worker holds it (`mark_draining` does not wait), retried each round.
            if !running.marked_draining {
                running.marked_draining =
                    leases::mark_draining(&self.db, i32::from(*partition), running.epoch, me)
                        .await?;
            }
        }
        // Take what is ours and free (or expired).
        let wanted: Vec<u16> = mine
            .into_iter()
            .filter(|p| !self.running.contains_key(p))
            .collect();
        if wanted.is_empty() || shutdown.is_cancelled() {
            return Ok(true);
        }
        for partition in wanted {
            let Some(seen) = all.iter().find(|l| l.partition == i32::from(partition)) else {
                continue;
            };
            if seen.takeable_by(me) {
                self.take(partition, seen, me).await?;
            }
        }
        Ok(true)
    }

    /// Holds this process's liveness lock on a session of its own: checks that the session
    /// still answers, and takes a new one (and the lock) when it does not. Failures only mean
    /// that this process may be found dead sooner (once it is also late renewing): they are
    /// logged when they start and when they end, and retried every round.
    async fn keep_liveness(&mut self, me: &Holder) {
        if let Some(conn) = self.liveness.as_mut() {
            if leases::liveness_alive(conn).await.is_ok() {
                return;
            }
            self.liveness = None;
            tracing::info!("the liveness session ended; taking the lock again");
        }
        let held = async {
            let mut conn = self.db.acquire().await?.detach();
            let held = leases::hold_liveness(&mut conn, me).await?;
            Ok::<_, sqlx::Error>(held.then_some(conn))
        };
        let failed = match held.await {
            Ok(Some(conn)) => {
                self.liveness = Some(conn);
                if self.liveness_failing {
                    tracing::info!("holding the liveness lock again");
                }
                self.liveness_failing = false;
                return;
            }
            Ok(None) => "the liveness lock is still held by an ended session".to_owned(),
            Err(e) => e.to_string(),
        };
        if !self.liveness_failing {
            tracing::warn!(
                error = failed,
                "taking the liveness lock failed; retrying every round"
            );
        }
        self.liveness_failing = true;
    }

    async fn take(&mut self, partition: u16, seen: &Lease, me: &Holder) -> anyhow::Result<()> {
        let mut conn = self.db.acquire().await?;
        // A previous holder's transaction still in flight (it is fenced, but holds its lease
        // row FOR SHARE until it ends) makes the take wait; the next round tries again.
        let taken = match leases::take(
            &mut conn,
            seen,
            me,
            self.timing.renew_every,
            self.timing.dead_after(),
        )
        .await
        {
            Ok(taken) => taken,
            Err(e) if orderflow_storage::classify(&e).is_transient() => {
                tracing::info!(partition, error = %e, "taking the lease must wait; next round");
                // A holder that is gone but whose transaction PostgreSQL left open would make
                // this wait until it wakes: end that transaction (see `end_transactions_of`).
                if let (true, Some(owner)) = (seen.expired, seen.owner.as_deref()) {
                    match leases::end_transactions_of(&mut *conn, owner, self.timing.ttl / 2).await
                    {
                        Ok(0) => {}
                        Ok(ended) => tracing::warn!(
                            partition,
                            owner,
                            ended,
                            "ended the open transactions of a gone lease holder that held its lease"
                        ),
                        Err(e) => tracing::warn!(
                            partition,
                            error = %e,
                            "could not end a gone lease holder's open transactions"
                        ),
                    }
                }
                None
            }
            Err(e) => return Err(e.into()),
        };
        let Some(epoch) = taken else {
            return Ok(());
        };
        tracing::info!(
            partition,
            epoch,
            from = seen.owner.as_deref().unwrap_or("-"),
            "took the partition's lease"
        );
        metrics::rebalanced("taken");
        self.consume(partition, epoch);
        Ok(())
    }

    /// Starts consuming a partition this process holds the lease of, at `epoch`.
    fn consume(&mut self, partition: u16, epoch: i64) {
        let consumed = self.consumed.entry(partition).or_insert(0);
        *consumed = (*consumed).max(epoch);
        self.holdings.set(partition, epoch);
        self.ctx.monitor.lease(partition, epoch);
        let stops = Stops::new();
        let (ctx, ended) = (self.ctx.clone(), self.consumer_ended.clone());
        let consuming = stops.clone();
        let task = tokio::spawn(async move {
            let end = consumer::run(ctx, partition, consuming).await;
            ended.notify_one();
            end
        });
        self.running.insert(
            partition,
            Running {
                epoch,
                stops,
                task,
                draining_since: None,
                marked_draining: false,
            },
        );
    }

    /// Stops consuming a partition whose lease is gone: whatever it holds stays unacked.
    fn lose(&mut self, partition: u16) {
        if let Some(running) = self.running.remove(&partition) {
            running.stops.abandon.cancel();
            self.forget(partition);
            metrics::rebalanced("lost");
        }
    }

    fn give_up_all(&mut self) {
        let partitions: Vec<u16> = self.running.keys().copied().collect();
        for partition in partitions {
            self.lose(partition);
        }
    }

    fn forget(&self, partition: u16) {
        self.holdings.set(partition, 0);
        self.ctx.monitor.lease(partition, 0);
    }

    /// Releases the leases of partitions whose consumers ended: drained ones are handed over,
    /// ones whose fence failed are forgotten.
    async fn reap(&mut self) {
        let ended: Vec<u16> = self
            .running
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for partition in ended {
            let running = self.running.remove(&partition).expect("listed above");
            let end = running.task.await.unwrap_or(Ended::LeaseLost);
            self.end(partition, running.epoch, end).await;
        }
    }

    async fn end(&self, partition: u16, epoch: i64, end: Ended) {
        self.forget(partition);
        match end {
            Ended::Drained => {
                let me = self.holdings.holder();
                match leases::release(&self.db, i32::from(partition), epoch, me).await {
                    Ok(_) => {
                        metrics::rebalanced("released");
                        tracing::info!(partition, epoch, "released the partition's lease");
                    }
                    // It expires by itself; the next owner takes it then.
                    Err(e) => tracing::warn!(partition, error = %e, "releasing the lease failed"),
                }
            }
            Ended::LeaseLost => {
                metrics::rebalanced("lost");
                tracing::warn!(partition, epoch, "the partition's lease was lost");
            }
        }
    }

    /// On shutdown: every consumer drains (the shutdown token already told them), then the
    /// leases are released and this worker leaves the live set.
    async fn stop(&mut self, me: &Holder) {
        for running in self.running.values() {
            running.stops.drain.cancel();
        }
        let deadline = Instant::now() + self.timing.drain_limit;
        let running = std::mem::take(&mut self.running);
        for (partition, mut running) in running {
            let end = match tokio::time::timeout_at(deadline, &mut running.task).await {
                Ok(end) => end,
                Err(_) => {
                    give_back(partition, &running.stops);
                    let given_back = Instant::now() + self.timing.drain_limit;
                    match tokio::time::timeout_at(given_back, &mut running.task).await {
                        Ok(end) => end,
                        Err(_) => {
                            tracing::warn!(
                                partition,
                                "the partition did not give back in time; abandoning its consumer"
                            );
                            running.stops.abandon.cancel();
                            running.task.await
                        }
                    }
                }
            };
            self.end(partition, running.epoch, end.unwrap_or(Ended::LeaseLost))
                .await;
        }
        if let Err(e) = leases::leave(&self.db, me).await {
            tracing::warn!(error = %e, "leaving the live workers failed; the others wait for its expiry");
        }
        if let Some(conn) = self.liveness.take() {
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}

/// A drain that outlasted its limit: the consumer finishes the transaction in flight and hands
/// the rest back to the broker unopened.
fn give_back(partition: u16, stops: &Stops) {
    tracing::warn!(
        partition,
        "the partition did not drain in time; finishing the transaction in flight and handing the rest back unopened"
    );
    metrics::drain_overran();
    stops.give_back.cancel();
}
