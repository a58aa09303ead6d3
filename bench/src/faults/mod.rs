//! Scheduled faults for `orderflow-bench audit --spawn`: while the workload runs, each chosen
//! fault is injected in turn into the stack the audit spawned (processes killed at a failpoint,
//! signalled, the broker or PostgreSQL restarted, a partition filled), healed, and the time the
//! stack takes to apply commands again is measured. This module owns the pure parts (the fault
//! kinds, the schedule, the summary); `inject` does the damage and heals it, `recovery` measures.

pub mod inject;
pub mod recovery;

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One kind of fault, chosen by name on the command line.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// The active worker aborts inside its apply transaction (failpoint `apply.before_commit`).
    KillWorkerInTx,
    /// The active worker aborts between its commit and its ack (failpoint
    /// `consume.after_commit_before_ack`).
    KillWorkerBeforeAck,
    /// SIGTERM to the active worker with messages in flight; respawned once it exited.
    TermWorker,
    /// SIGSTOP to the active worker, SIGCONT after a pause longer than the AMQP heartbeat's
    /// timeout: a zombie that wakes after its partitions moved on.
    StopWorker,
    /// The API aborts between recording a command and publishing it (failpoint
    /// `intake.after_record_before_publish`); the worker's relay must publish it.
    KillApiBeforePublish,
    /// `rabbitmqctl close_all_connections`.
    BrokerClose,
    /// `rabbitmqctl stop_app`, then `start_app`.
    BrokerRestart,
    /// `pg_ctlcluster ... restart -m immediate`.
    PgRestart,
    /// `pg_terminate_backend` of every session of the stack's database but the auditor's.
    PgTerminate,
    /// Every worker paused until a partition queue is full and the API refuses (503).
    QueueFull,
    /// kill -9 of the worker holding the most partition leases (respawned at once): its
    /// partitions wait for their leases to expire, then the others take them.
    KillOwner,
    /// `pg_terminate_backend` of one lease-holding worker's sessions only.
    PgTerminateWorker,
    /// `rabbitmqctl close_connection` of one lease-holding worker's AMQP connections only.
    BrokerCloseWorker,
    /// One more worker joins mid-run (its share of the partitions moves to it, each drained
    /// first), then leaves with SIGTERM (they move back): graceful moves, no work started twice.
    ScaleOutIn,
    /// The partition count doubles under load (`orderflow-api partitions grow`, up to
    /// [`GROW_UP_TO`]): the APIs route to the new partitions, the workers rebalance over them,
    /// and per-order order holds across the switch (the checker's invariants).
    GrowPartitions,
    /// Every fault above (not the cluster faults below: they need the rigs).
    All,
    /// kill -9 of RabbitMQ node 1 of the three-node test cluster (`deploy/lib/rabbit-cluster.sh
    /// kill 1`); once every partition applied again without it, the node is started and rejoins.
    /// The stack must run on that cluster (`--amqp-url` naming its nodes).
    BrokerNodeKill,
    /// RabbitMQ node 1 of the test cluster cut off (`deploy/lib/rabbit-cluster.sh cut 1`: with the
    /// cluster up in `RC_MODE=netns`, its link goes down, a real network partition; in the plain
    /// mode the node is frozen with SIGSTOP); once every partition applied again without it, the
    /// link comes back (`heal 1`) and the node rejoins.
    BrokerNodeCut,
    /// The PostgreSQL primary of the test pair is killed (-9) and its synchronous standby promoted
    /// (`deploy/lib/pg-ha.sh failover`); once every partition applied again on the new primary,
    /// the old one rejoins as its standby (`rejoin`). The stack must run on that pair
    /// (`--database-url` naming both hosts).
    PgPromote,
}

impl Fault {
    pub const ALL: [Fault; 15] = [
        Fault::KillWorkerInTx,
        Fault::KillWorkerBeforeAck,
        Fault::TermWorker,
        Fault::StopWorker,
        Fault::KillApiBeforePublish,
        Fault::BrokerClose,
        Fault::BrokerRestart,
        Fault::PgRestart,
        Fault::PgTerminate,
        Fault::QueueFull,
        Fault::KillOwner,
        Fault::PgTerminateWorker,
        Fault::BrokerCloseWorker,
        Fault::ScaleOutIn,
        Fault::GrowPartitions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillWorkerInTx => "kill-worker-in-tx",
            Fault::KillWorkerBeforeAck => "kill-worker-before-ack",
            Fault::TermWorker => "term-worker",
            Fault::StopWorker => "stop-worker",
            Fault::KillApiBeforePublish => "kill-api-before-publish",
            Fault::BrokerClose => "broker-close",
            Fault::BrokerRestart => "broker-restart",
            Fault::PgRestart => "pg-restart",
            Fault::PgTerminate => "pg-terminate",
            Fault::QueueFull => "queue-full",
            Fault::KillOwner => "kill-owner",
            Fault::PgTerminateWorker => "pg-terminate-worker",
            Fault::BrokerCloseWorker => "broker-close-worker",
            Fault::ScaleOutIn => "scale-out-in",
            Fault::GrowPartitions => "grow-partitions",
            Fault::All => "all",
            Fault::BrokerNodeKill => "broker-node-kill",
            Fault::BrokerNodeCut => "broker-node-cut",
            Fault::PgPromote => "pg-promote",
        }
    }

    /// The command line's list as run: `all` expanded, each fault once, in schedule order.
    pub fn expand(list: &[Fault]) -> Vec<Fault> {
        let mut faults: Vec<Fault> = list.iter().copied().filter(|f| *f != Fault::All).collect();
        if list.contains(&Fault::All) {
            faults.extend(Fault::ALL);
        }
        faults.sort();
        faults.dedup();
        faults
    }

    /// A fault that only moves partitions gracefully (each drained before its next holder takes
    /// it): it must start no work twice.
    pub fn graceful(self) -> bool {
        matches!(
            self,
            Fault::TermWorker | Fault::ScaleOutIn | Fault::GrowPartitions
        )
    }

    /// The longest one injection may take, heal and recovery included: the scheduler starts a
    /// fault only if the workload still runs that long (recovery is measured on live traffic).
    pub fn budget(self, plan: &Plan) -> Duration {
        let base = Duration::from_secs(10);
        match self {
            Fault::StopWorker => plan.stop_pause + base,
            // Its leases expire (5 s) before anyone takes its partitions.
            Fault::KillOwner => base + Duration::from_secs(5),
            Fault::QueueFull => plan.fill_timeout + base,
            Fault::BrokerRestart | Fault::PgRestart => base + Duration::from_secs(10),
            // A join and a leave, each balanced and resumed.
            Fault::ScaleOutIn => base + Duration::from_secs(20),
            // The new partitions balanced over the workers and flowing.
            Fault::GrowPartitions => base + Duration::from_secs(20),
            // The node's restart (its boot and rejoin), or the old primary's rejoin.
            Fault::BrokerNodeKill => base + Duration::from_secs(40),
            // Detecting the partition (net_ticktime 10 s), then the heal and rejoin.
            Fault::BrokerNodeCut => base + Duration::from_secs(70),
            Fault::PgPromote => base + Duration::from_secs(30),
            _ => base,
        }
    }
}

/// `grow-partitions` doubles the count until it reaches this; later turns of it are skipped.
pub const GROW_UP_TO: u16 = 64;

/// What the scheduler is asked to do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The faults, in turn (expanded: no `all`).
    pub faults: Vec<Fault>,
    /// Pause before each injection (the stack runs clean meanwhile).
    pub interval: Duration,
    /// How long a stopped worker stays stopped.
    pub stop_pause: Duration,
    /// Longest wait for a paused stack's partition to fill (queue-full).
    pub fill_timeout: Duration,
    /// How long the workload runs.
    pub duration: Duration,
    /// Where the cluster faults find `rabbit-cluster.sh` and `pg-ha.sh` (`deploy/lib`).
    pub rigs: std::path::PathBuf,
}

impl Plan {
    /// The fault injected `turn`th (from 0): the list in turn, over and over.
    pub fn fault(&self, turn: usize) -> Fault {
        self.faults[turn % self.faults.len()]
    }

    /// May the `turn`th fault start with `left` of the workload to go?
    pub fn may_start(&self, turn: usize, left: Duration) -> bool {
        !self.faults.is_empty() && self.interval + self.fault(turn).budget(self) <= left
    }
}

/// One injection as it happened. Times are seconds.
#[derive(Clone, Debug, Serialize)]
pub struct Injection {
    pub fault: Fault,
    /// Since the workload started.
    pub at: f64,
    /// Whether the fault happened as intended (a failpoint was hit, a queue filled).
    pub triggered: bool,
    /// From injection to heal.
    pub down: f64,
    /// From heal until a command was applied again; `None`: not within the deadline.
    pub recovery: Option<f64>,
    /// The partitions whose lease the fault's target held (faults aimed at one worker).
    pub affected: Vec<i32>,
    /// From the moment the fault struck until every affected partition had a command applied
    /// again; `None` with affected partitions: not within the deadline.
    pub resumed: Option<f64>,
    /// Transactions of a paused-then-woken worker that its fence refused (stop-worker): the
    /// zombie's commits that did not happen.
    pub fenced: Option<u64>,
    /// Starts of redelivered command messages from the injection until the affected partitions
    /// resumed (`None`: not read).
    pub redelivered: Option<u64>,
    /// Of those, the ones that repeated work (`storage::audit::repeated_starts_since`); a
    /// graceful fault must have none.
    pub repeated: Option<u64>,
    /// From the membership change until the leases were balanced again (scale-out-in: the
    /// slower of the join and the leave); `None` there: not within the deadline.
    pub balanced: Option<f64>,
    /// From a new worker's spawn until it joined the live workers (scale-out-in): its process
    /// starting, which the moves and the rebalance are not timed from.
    pub joined_after: Option<f64>,
    /// What went wrong with the injection or the heal itself.
    pub error: Option<String>,
    /// Processes found dead after the recovery that the fault did not mean to kill (respawned).
    pub unexpected_exits: Vec<String>,
}

/// Per fault kind.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub fault: Fault,
    pub injected: usize,
    pub not_triggered: usize,
    pub unrecovered: usize,
    pub recovery_max: Option<f64>,
    pub recovery_mean: Option<f64>,
    /// The slowest time from injection until every affected partition applied again.
    pub resumed_max: Option<f64>,
    /// Zombie transactions refused by the fence, over every injection of this fault.
    pub fenced: Option<u64>,
    /// Redelivered starts, and those of them that repeated work, over every injection.
    pub redelivered: Option<u64>,
    pub repeated: Option<u64>,
    /// The slowest rebalance (scale-out-in).
    pub balanced_max: Option<f64>,
}

/// The report's `faults` section.
#[derive(Clone, Debug, Serialize)]
pub struct FaultsReport {
    pub workers: usize,
    pub interval_seconds: f64,
    pub summary: Vec<Summary>,
    /// Chosen faults the run was too short to inject.
    pub never_injected: Vec<Fault>,
    /// Commands the API refused (queue full, broker down) that nevertheless produced an event.
    pub refused_then_applied: i64,
    pub injections: Vec<Injection>,
    /// Every chosen fault was injected and triggered, every injection healed and recovered, and
    /// no refused command ran.
    pub passed: bool,
}

impl FaultsReport {
    pub fn new(plan: &Plan, workers: usize, injections: Vec<Injection>) -> Self {
        let summary = summarize(&injections);
        let never_injected: Vec<Fault> = plan
            .faults
            .iter()
            .copied()
            .filter(|f| !summary.iter().any(|s| s.fault == *f))
            .collect();
        let mut report = Self {
            workers,
            interval_seconds: plan.interval.as_secs_f64(),
            summary,
            never_injected,
            refused_then_applied: 0,
            injections,
            passed: false,
        };
        report.judge();
        report
    }

    /// Sets `passed` from the rest.
    pub fn judge(&mut self) {
        self.passed = self.never_injected.is_empty()
            && self.refused_then_applied == 0
            && self.injections.iter().all(|i| {
                i.triggered
                    && i.recovery.is_some()
                    && (i.affected.is_empty() || i.resumed.is_some())
                    && (!i.fault.graceful() || i.repeated == Some(0))
                    && (!matches!(i.fault, Fault::ScaleOutIn | Fault::GrowPartitions)
                        || i.balanced.is_some())
                    && i.error.is_none()
            });
    }
}

/// Are the leases balanced over `live` (worker names)? Every partition held, active, by one
/// of them, each holding ⌊P/W⌋ or ⌈P/W⌉. `leases`: (owner, state) per partition.
pub fn balanced(leases: &[(Option<&str>, &str)], live: &[String]) -> bool {
    if live.is_empty() {
        return false;
    }
    let (low, high) = (leases.len() / live.len(), leases.len().div_ceil(live.len()));
    let mut held: BTreeMap<&str, usize> = live.iter().map(|n| (n.as_str(), 0)).collect();
    for (owner, state) in leases {
        match owner.and_then(|o| held.get_mut(o)) {
            Some(count) if *state == "active" => *count += 1,
            _ => return false,
        }
    }
    held.values().all(|&n| (low..=high).contains(&n))
}

/// Per fault kind, in fault order: counts and recovery times.
pub fn summarize(injections: &[Injection]) -> Vec<Summary> {
    let mut by_fault: BTreeMap<Fault, Vec<&Injection>> = BTreeMap::new();
    for i in injections {
        by_fault.entry(i.fault).or_default().push(i);
    }
    by_fault
        .into_iter()
        .map(|(fault, list)| {
            let recoveries: Vec<f64> = list.iter().filter_map(|i| i.recovery).collect();
            Summary {
                fault,
                injected: list.len(),
                not_triggered: list.iter().filter(|i| !i.triggered).count(),
                unrecovered: list.len() - recoveries.len(),
                recovery_max: recoveries.iter().copied().reduce(f64::max),
                recovery_mean: (!recoveries.is_empty())
                    .then(|| recoveries.iter().sum::<f64>() / recoveries.len() as f64),
                resumed_max: list.iter().filter_map(|i| i.resumed).reduce(f64::max),
                fenced: list.iter().filter_map(|i| i.fenced).reduce(|a, b| a + b),
                redelivered: list
                    .iter()
                    .filter_map(|i| i.redelivered)
                    .reduce(|a, b| a + b),
                repeated: list.iter().filter_map(|i| i.repeated).reduce(|a, b| a + b),
                balanced_max: list.iter().filter_map(|i| i.balanced).reduce(f64::max),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(faults: &[Fault]) -> Plan {
        Plan {
            faults: Fault::expand(faults),
            interval: Duration::from_secs(2),
            stop_pause: Duration::from_secs(12),
            fill_timeout: Duration::from_secs(8),
            duration: Duration::from_secs(60),
            rigs: "deploy/lib".into(),
        }
    }

    fn injection(fault: Fault, recovery: Option<f64>) -> Injection {
        Injection {
            fault,
            at: 1.0,
            triggered: true,
            down: 0.5,
            recovery,
            affected: Vec::new(),
            resumed: None,
            fenced: None,
            redelivered: Some(0),
            repeated: Some(0),
            balanced: None,
            joined_after: None,
            error: None,
            unexpected_exits: Vec::new(),
        }
    }

    #[test]
    fn all_expands_to_every_fault_once_in_schedule_order() {
        assert_eq!(Fault::expand(&[Fault::All, Fault::PgRestart]), Fault::ALL);
        // The cluster faults need their rigs: named, never implied by `all`.
        assert!(!Fault::ALL.contains(&Fault::BrokerNodeKill));
        assert_eq!(
            Fault::expand(&[Fault::All, Fault::PgPromote]),
            [Fault::ALL.as_slice(), &[Fault::PgPromote]].concat()
        );
        assert_eq!(
            Fault::expand(&[Fault::QueueFull, Fault::TermWorker, Fault::QueueFull]),
            vec![Fault::TermWorker, Fault::QueueFull]
        );
    }

    #[test]
    fn the_schedule_takes_the_faults_in_turn_while_they_fit() {
        let plan = plan_of(&[Fault::BrokerClose, Fault::StopWorker]);
        let turns: Vec<Fault> = (0..4).map(|t| plan.fault(t)).collect();
        assert_eq!(
            turns,
            vec![
                Fault::StopWorker,
                Fault::BrokerClose,
                Fault::StopWorker,
                Fault::BrokerClose
            ]
        );
        // stop-worker needs interval 2 + pause 12 + 10.
        assert!(plan.may_start(0, Duration::from_secs(24)));
        assert!(!plan.may_start(0, Duration::from_secs(23)));
        assert!(plan.may_start(1, Duration::from_secs(12)));
        assert!(!plan_of(&[]).may_start(0, Duration::from_secs(1000)));
    }

    #[test]
    fn the_summary_gives_max_and_mean_recovery_per_fault() {
        let summary = summarize(&[
            injection(Fault::PgRestart, Some(1.0)),
            injection(Fault::BrokerClose, Some(0.5)),
            injection(Fault::PgRestart, Some(3.0)),
            injection(Fault::PgRestart, None),
        ]);
        assert_eq!(summary.len(), 2);
        let pg = summary
            .iter()
            .find(|s| s.fault == Fault::PgRestart)
            .unwrap();
        assert_eq!(
            (
                pg.injected,
                pg.unrecovered,
                pg.recovery_max,
                pg.recovery_mean
            ),
            (3, 1, Some(3.0), Some(2.0))
        );
    }

    #[test]
    fn a_fault_never_injected_untriggered_or_unrecovered_fails_the_section() {
        let plan = plan_of(&[Fault::PgRestart, Fault::BrokerClose]);
        let ok = vec![
            injection(Fault::PgRestart, Some(1.0)),
            injection(Fault::BrokerClose, Some(1.0)),
        ];
        assert!(FaultsReport::new(&plan, 2, ok.clone()).passed);
        let missing = FaultsReport::new(&plan, 2, ok[..1].to_vec());
        assert_eq!(missing.never_injected, vec![Fault::BrokerClose]);
        assert!(!missing.passed);
        let mut untriggered = ok.clone();
        untriggered[0].triggered = false;
        assert!(!FaultsReport::new(&plan, 2, untriggered).passed);
        let mut unrecovered = ok.clone();
        unrecovered[1].recovery = None;
        assert!(!FaultsReport::new(&plan, 2, unrecovered).passed);
        let mut stalled = ok.clone();
        stalled[0].affected = vec![3, 5];
        assert!(
            !FaultsReport::new(&plan, 2, stalled.clone()).passed,
            "a partition of the fault's target that never resumed fails it"
        );
        stalled[0].resumed = Some(6.0);
        assert!(FaultsReport::new(&plan, 2, stalled).passed);
        let mut refused = FaultsReport::new(&plan, 2, ok);
        refused.refused_then_applied = 1;
        refused.judge();
        assert!(!refused.passed);
    }

    #[test]
    fn a_graceful_fault_that_repeated_work_or_never_balanced_fails_the_section() {
        let plan = plan_of(&[Fault::TermWorker, Fault::ScaleOutIn, Fault::KillOwner]);
        let mut scale = injection(Fault::ScaleOutIn, Some(1.0));
        scale.balanced = Some(1.5);
        let mut ok = vec![
            injection(Fault::TermWorker, Some(1.0)),
            scale,
            injection(Fault::KillOwner, Some(1.0)),
        ];
        // A kill redoes the work it interrupted: not held against it.
        ok[2].repeated = Some(3);
        assert!(FaultsReport::new(&plan, 3, ok.clone()).passed);
        let mut repeated = ok.clone();
        repeated[0].repeated = Some(1);
        assert!(!FaultsReport::new(&plan, 3, repeated).passed);
        let mut unread = ok.clone();
        unread[1].repeated = None;
        assert!(!FaultsReport::new(&plan, 3, unread).passed);
        let mut unbalanced = ok;
        unbalanced[1].balanced = None;
        assert!(!FaultsReport::new(&plan, 3, unbalanced).passed);
    }

    #[test]
    fn balanced_means_every_partition_active_with_a_live_worker_within_one_of_the_others() {
        let live = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let of = |owners: &[&'static str]| -> Vec<(Option<&'static str>, &'static str)> {
            owners.iter().map(|o| (Some(*o), "active")).collect()
        };
        // 7 over 3: 2, 2 or 3 each.
        assert!(balanced(&of(&["a", "b", "c", "a", "b", "c", "a"]), &live));
        assert!(!balanced(&of(&["a", "a", "a", "a", "b", "c", "b"]), &live));
        // A live worker holding nothing is not balanced; a holder that is not live neither.
        assert!(!balanced(&of(&["a", "b", "a", "b", "a", "b", "a"]), &live));
        assert!(!balanced(&of(&["a", "b", "c", "a", "b", "c", "d"]), &live));
        let mut draining = of(&["a", "b", "c", "a", "b", "c", "a"]);
        draining[6].1 = "draining";
        assert!(!balanced(&draining, &live));
        draining[6] = (None, "free");
        assert!(!balanced(&draining, &live));
        assert!(!balanced(&of(&["a"]), &[]));
    }
}
