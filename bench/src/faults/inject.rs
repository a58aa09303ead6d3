//! Doing the damage and healing it. The scheduler ([`run`]) takes the plan's faults in turn
//! while the workload runs: pause, inject, heal, measure the recovery, respawn whatever died
//! that was not meant to. Processes are signalled with `nix`; failpoints are armed in the
//! running process (its failpoints file, then SIGUSR2), because the worker to kill is the one
//! active right now and a fresh process would only be a standby. The broker and PostgreSQL are
//! driven with their own tools (`rabbitmqctl`, `pg_ctlcluster`), as an operator would.

use super::recovery;
use super::{Fault, FaultsReport, GROW_UP_TO, Injection, Plan};
use crate::perf::stack::Stack;
use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use orderflow_storage::audit;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// Longest wait for an armed failpoint to be hit (the workload keeps the process busy).
const FAILPOINT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for a worker to finish its in-flight message and exit after SIGTERM.
const TERM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a woken zombie worker is watched for transactions its fence refuses.
const ZOMBIE_WAKE: Duration = Duration::from_secs(2);
/// Longest wait for PostgreSQL to accept connections after its restart.
const PG_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two reads of the refusals while a partition fills, or of the leases while they
/// rebalance.
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for the leases to be balanced after a worker joined or left.
const BALANCE_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the faults land: the spawned stack, and the auditor's own pool on its database
/// (its sessions are spared by `pg-terminate`).
pub struct Target<'a> {
    pub stack: &'a mut Stack,
    pub db: PgPool,
    /// The stack's database (its sessions are the ones `pg-terminate` ends).
    pub database: String,
    /// `application_name` of the auditor's sessions.
    pub auditor: String,
    /// The partitions whose leases the current fault's target held (set by faults aimed at one
    /// worker).
    pub affected: Vec<i32>,
    /// The target's transactions its fence refused after the fault (stop-worker).
    pub fenced: Option<u64>,
    /// When a fault aimed at one worker actually struck (the signal sent, the sessions or
    /// connections ended): its partitions' resumption is timed from here.
    pub struck: Option<(Instant, chrono::DateTime<chrono::Utc>)>,
    /// The affected partitions' resumption, when the fault measured it itself (scale-out-in:
    /// each move timed until its next holder applied).
    pub resumed: Option<Option<f64>>,
    /// Seconds until the leases were balanced again (scale-out-in).
    pub balanced: Option<f64>,
    /// Seconds from a new worker's spawn until it joined the live workers (scale-out-in).
    pub joined_after: Option<f64>,
}

/// Injects the plan's faults in turn until the workload is too close to its end for another.
pub async fn run(target: &mut Target<'_>, plan: &Plan) -> FaultsReport {
    let started = Instant::now();
    let end = started + plan.duration;
    let mut injections = Vec::new();
    let mut turn = 0;
    while plan.may_start(turn, end.saturating_duration_since(Instant::now())) {
        let fault = plan.fault(turn);
        turn += 1;
        if fault == Fault::GrowPartitions && target.stack.partitions() >= GROW_UP_TO {
            continue;
        }
        tokio::time::sleep(plan.interval).await;
        let at = started.elapsed().as_secs_f64();
        let (injected, injected_at) = (Instant::now(), chrono::Utc::now());
        tracing::info!(fault = fault.name(), "injecting");
        target.affected.clear();
        target.fenced = None;
        target.struck = None;
        target.resumed = None;
        target.balanced = None;
        target.joined_after = None;
        let starts_before = audit::redelivered_starts(&target.db).await.ok();
        let outcome = inject(target, plan, fault).await;
        let mut unexpected_exits = revive(target.stack).await;
        let (healed, healed_at) = (Instant::now(), chrono::Utc::now());
        let recovery = recovery::measure(&target.db, healed, healed_at).await;
        let affected = std::mem::take(&mut target.affected);
        let (struck, struck_at) = target.struck.take().unwrap_or((injected, injected_at));
        let resumed = match target.resumed.take() {
            Some(measured) => measured,
            None => recovery::partitions_resumed(&target.db, &affected, struck, struck_at).await,
        };
        // Read once the affected partitions resumed: what the fault handed back was started.
        let redelivered = match (starts_before, audit::redelivered_starts(&target.db).await) {
            (Some(before), Ok(after)) => u64::try_from(after - before).ok(),
            _ => None,
        };
        let repeated = audit::repeated_starts_since(&target.db, injected_at)
            .await
            .ok()
            .and_then(|n| u64::try_from(n).ok());
        unexpected_exits.extend(revive(target.stack).await);
        let (triggered, error) = match outcome {
            Ok(triggered) => (triggered, None),
            Err(e) => (false, Some(format!("{e:#}"))),
        };
        tracing::info!(
            fault = fault.name(),
            triggered,
            ?recovery,
            ?resumed,
            ?error,
            "healed"
        );
        injections.push(Injection {
            fault,
            at,
            triggered,
            down: (healed - injected).as_secs_f64(),
            recovery,
            resumed: (!affected.is_empty()).then_some(resumed).flatten(),
            affected,
            fenced: target.fenced.take(),
            redelivered,
            repeated,
            balanced: target.balanced.take(),
            joined_after: target.joined_after.take(),
            error,
            unexpected_exits,
        });
    }
    FaultsReport::new(plan, target.stack.worker_count(), injections)
}

/// Injects one fault and heals it. `Ok(false)`: it could not be made to happen (no traffic hit
/// the failpoint, no queue filled); `Err`: the injection or the heal failed.
async fn inject(target: &mut Target<'_>, plan: &Plan, fault: Fault) -> anyhow::Result<bool> {
    match fault {
        Fault::KillWorkerInTx => kill_worker_at(target, "apply.before_commit").await,
        Fault::KillWorkerBeforeAck => {
            kill_worker_at(target, "consume.after_commit_before_ack").await
        }
        Fault::TermWorker => {
            let n = active_worker(target).await;
            signal(target.stack.worker_pid(n), Signal::SIGTERM)?;
            let exited = target.stack.wait_worker_exit(n, TERM_TIMEOUT).await?;
            target.stack.respawn_worker(n).await?;
            anyhow::ensure!(
                exited.is_some(),
                "worker-{n} did not exit within {TERM_TIMEOUT:?} of SIGTERM"
            );
            Ok(true)
        }
        Fault::StopWorker => {
            let n = active_worker(target).await;
            let pid = target.stack.worker_pid(n);
            let log = target.stack.worker_log(n);
            let before = fenced_in(&log);
            let name = target.stack.worker_name(n);
            target.affected = audit::leases_now(&target.db)
                .await?
                .into_iter()
                .filter(|l| l.owner.as_deref() == Some(name.as_str()))
                .map(|l| l.partition)
                .collect();
            target.struck = Some(now());
            signal(pid, Signal::SIGSTOP)?;
            tokio::time::sleep(plan.stop_pause).await;
            signal(pid, Signal::SIGCONT)?;
            // The zombie's transactions in hand meet their fence as soon as it runs again, and
            // its keeper finds its leases gone within a renewal: a short wait sees both.
            tokio::time::sleep(ZOMBIE_WAKE).await;
            target.fenced = Some(fenced_in(&log).saturating_sub(before));
            Ok(true)
        }
        Fault::KillApiBeforePublish => {
            let file = target.stack.failpoints_file("api");
            let failpoint = "intake.after_record_before_publish";
            let pid = target.stack.api_pid();
            arm(&file, failpoint, "1*return", pid)?;
            let Some(status) = target.stack.wait_api_exit(FAILPOINT_TIMEOUT).await? else {
                arm(&file, failpoint, "off", pid)?;
                return Ok(false);
            };
            target.stack.respawn_api().await?;
            aborted(status, "the API")
        }
        Fault::BrokerClose => {
            run_tool("rabbitmqctl", &["close_all_connections", "audit fault"]).await?;
            Ok(true)
        }
        Fault::BrokerRestart => {
            let stopped = run_tool("rabbitmqctl", &["stop_app"]).await;
            // Started whatever happened: the broker is always left running.
            let started = match run_tool("rabbitmqctl", &["start_app"]).await {
                Ok(_) => Ok(()),
                Err(_) => run_tool("rabbitmqctl", &["start_app"]).await.map(|_| ()),
            };
            stopped?;
            started?;
            Ok(true)
        }
        Fault::PgRestart => {
            let version = postgres_version()?;
            run_tool(
                "pg_ctlcluster",
                &[
                    "--skip-systemctl-redirect",
                    &version,
                    "main",
                    "restart",
                    "-m",
                    "immediate",
                ],
            )
            .await?;
            anyhow::ensure!(
                recovery::postgres_back(&target.db, PG_START_TIMEOUT).await,
                "PostgreSQL did not accept connections within {PG_START_TIMEOUT:?} of its restart"
            );
            Ok(true)
        }
        Fault::PgTerminate => {
            let ended =
                audit::terminate_sessions(&target.db, &target.database, &target.auditor).await?;
            Ok(ended > 0)
        }
        Fault::QueueFull => fill_a_partition(target, plan).await,
        Fault::KillOwner => {
            let Some(n) = lease_owner(target).await? else {
                return Ok(false);
            };
            target.struck = Some(now());
            signal(target.stack.worker_pid(n), Signal::SIGKILL)?;
            let killed = target.stack.wait_worker_exit(n, TERM_TIMEOUT).await?;
            anyhow::ensure!(killed.is_some(), "worker-{n} survived SIGKILL");
            target.stack.respawn_worker(n).await?;
            Ok(true)
        }
        Fault::PgTerminateWorker => {
            let Some(n) = lease_owner(target).await? else {
                return Ok(false);
            };
            let name = format!("orderflow-worker {}", target.stack.worker_name(n));
            target.struck = Some(now());
            let ended = audit::terminate_worker_sessions(
                &target.db,
                &target.database,
                &orderflow_storage::application_name_of(&name),
            )
            .await?;
            Ok(ended > 0)
        }
        Fault::BrokerCloseWorker => {
            let Some(n) = lease_owner(target).await? else {
                return Ok(false);
            };
            let name = target.stack.worker_name(n);
            let listed = run_tool(
                "rabbitmqctl",
                &[
                    "list_connections",
                    "-q",
                    "--no-table-headers",
                    "pid",
                    "client_properties",
                ],
            )
            .await?;
            let mut closed = 0;
            for (pid, properties) in listed.lines().filter_map(|l| l.split_once('\t')) {
                // "orderflow-worker <namespace> <name>" and "... <name> consumers".
                let connection = connection_name(properties).unwrap_or_default();
                let words: Vec<&str> = connection.split(' ').collect();
                if words.first() == Some(&"orderflow-worker")
                    && words.get(2) == Some(&name.as_str())
                {
                    run_tool("rabbitmqctl", &["close_connection", pid, "audit fault"]).await?;
                    closed += 1;
                }
            }
            // Each rabbitmqctl call takes about a second: timed from when the last one closed.
            target.struck = Some(now());
            Ok(closed > 0)
        }
        Fault::ScaleOutIn => scale_out_and_in(target).await,
        Fault::GrowPartitions => grow_partitions(target).await,
        Fault::BrokerNodeKill => {
            let rig = plan.rigs.join("rabbit-cluster.sh");
            without_a_node(target, (&rig, &["kill", "1"]), (&rig, &["start", "1"])).await
        }
        Fault::BrokerNodeCut => {
            let rig = plan.rigs.join("rabbit-cluster.sh");
            // The node that leads the most partition queues: its cut moves the most.
            let leaders = run_script(
                &rig,
                &[
                    "ctl",
                    "1",
                    "rabbitmqctl",
                    "list_queues",
                    "name",
                    "leader",
                    "--quiet",
                ],
            )
            .await?;
            let node = busiest_node(&leaders, target.stack.namespace()).to_string();
            without_a_node(target, (&rig, &["cut", &node]), (&rig, &["heal", &node])).await
        }
        Fault::PgPromote => {
            let rig = plan.rigs.join("pg-ha.sh");
            without_a_node(target, (&rig, &["failover"]), (&rig, &["rejoin"])).await
        }
        Fault::All => unreachable!("`all` is expanded before the run"),
    }
}

/// One worker joins, and once the leases are balanced and the partitions it took resumed, it
/// leaves with SIGTERM and its partitions move back. Each move is timed from the membership
/// change (the new worker's join, as PostgreSQL recorded it; the SIGTERM of the leave) until the
/// partition's next holder applied a command under its new epoch; the slower rebalance is
/// [`Target::balanced`]. The new process's own start, before it joins, is not part of a move:
/// it is [`Target::joined_after`].
async fn scale_out_and_in(target: &mut Target<'_>) -> anyhow::Result<bool> {
    let before = audit::leases_now(&target.db).await?;
    let (_, spawned_at) = now();
    let n = target.stack.add_worker().await?;
    let name = target.stack.worker_name(n);
    let (joined, joined_at) = wait_joined(target, &name, spawned_at).await?;
    target.joined_after = Some((joined_at - spawned_at).as_seconds_f64().max(0.0));
    let balanced_out = wait_balanced(target, joined).await?;
    // What the new worker holds now: each moved from its epoch before the join, and is held at
    // its epoch now.
    let held: Vec<(i32, i64)> = audit::leases_now(&target.db)
        .await?
        .into_iter()
        .filter(|l| l.owner.as_deref() == Some(name.as_str()))
        .map(|l| (l.partition, l.epoch))
        .collect();
    let taken: Vec<(i32, i64)> = held
        .iter()
        .filter_map(|&(p, _)| {
            before
                .iter()
                .find(|l| l.partition == p)
                .map(|l| (p, l.epoch))
        })
        .collect();
    let resumed_out = recovery::partitions_moved(&target.db, &taken, joined, joined_at).await;

    let (left, left_at) = now();
    signal(target.stack.worker_pid(n), Signal::SIGTERM)?;
    let exited = target.stack.wait_worker_exit(n, TERM_TIMEOUT).await?;
    anyhow::ensure!(
        exited.is_some(),
        "{name} did not exit within {TERM_TIMEOUT:?} of SIGTERM"
    );
    anyhow::ensure!(
        target.stack.remove_last_worker()?,
        "{name} exited but its slot is not the last"
    );
    let balanced_in = wait_balanced(target, left).await?;
    let resumed_in = recovery::partitions_moved(&target.db, &held, left, left_at).await;

    // The same partitions moved out and back, in partition order.
    target.affected = held.iter().map(|(p, _)| *p).collect();
    target.resumed = Some(resumed_out.zip(resumed_in).map(|(a, b)| a.max(b)));
    target.balanced = balanced_out.zip(balanced_in).map(|(a, b)| a.max(b));
    Ok(!taken.is_empty())
}

/// When `name` joined the live workers (its membership row's start, at or after `since`), as
/// an `Instant` and as PostgreSQL's time; waits for it (bounded by [`BALANCE_TIMEOUT`]).
async fn wait_joined(
    target: &Target<'_>,
    name: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<(Instant, chrono::DateTime<chrono::Utc>)> {
    let deadline = Instant::now() + BALANCE_TIMEOUT;
    loop {
        if let Some(started) = audit::member_started_at(&target.db, name).await?
            // The clocks are one machine's; a row of an earlier process under the name is older.
            && started >= since - chrono::Duration::milliseconds(50)
        {
            let ago = (chrono::Utc::now() - started).to_std().unwrap_or_default();
            let at = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
            return Ok((at, started));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} did not join the live workers within {BALANCE_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Doubles the partition count under load; measures until every new partition applied a
/// command under its first holder's lease, and until the leases were balanced again.
async fn grow_partitions(target: &mut Target<'_>) -> anyhow::Result<bool> {
    let before = target.stack.partitions();
    let (grown, grown_at) = now();
    let after = target.stack.grow_partitions().await?;
    let new: Vec<i32> = (before..after).map(i32::from).collect();
    target.balanced = wait_balanced(target, grown).await?;
    target.resumed = Some(recovery::partitions_resumed(&target.db, &new, grown, grown_at).await);
    target.affected = new;
    Ok(after == 2 * before)
}

/// Takes a node of a cluster away with `strike` (a rig script and its arguments), waits until
/// every partition applied a command again without it (the service went on: that pause is the
/// fault's resumption), then brings the node back with `heal`.
async fn without_a_node(
    target: &mut Target<'_>,
    strike: (&std::path::Path, &[&str]),
    heal: (&std::path::Path, &[&str]),
) -> anyhow::Result<bool> {
    let partitions: Vec<i32> = (0..i32::from(target.stack.partitions())).collect();
    let (struck, struck_at) = now();
    let struck_out = run_script(strike.0, strike.1).await;
    let resumed = match &struck_out {
        Ok(_) => recovery::partitions_resumed(&target.db, &partitions, struck, struck_at).await,
        Err(_) => None,
    };
    // Healed whatever happened: the rig is always left whole.
    let healed = run_script(heal.0, heal.1).await;
    struck_out?;
    healed?;
    target.affected = partitions;
    target.resumed = Some(resumed);
    Ok(true)
}

/// The number of the rig's RabbitMQ node (`of<N>@host`) that leads the most of `namespace`'s
/// partition queues, from `rabbitmqctl list_queues name leader`; node 1 when none is named.
fn busiest_node(list_queues: &str, namespace: &str) -> u32 {
    let prefix = format!("{namespace}.commands.");
    let mut led: BTreeMap<u32, usize> = BTreeMap::new();
    for line in list_queues.lines() {
        let mut columns = line.split_whitespace();
        let (Some(queue), Some(leader)) = (columns.next(), columns.next()) else {
            continue;
        };
        let node = leader
            .strip_prefix("of")
            .and_then(|rest| rest.split('@').next())
            .and_then(|n| n.parse().ok());
        if let (true, Some(node)) = (queue.starts_with(&prefix), node) {
            *led.entry(node).or_default() += 1;
        }
    }
    led.into_iter()
        .max_by_key(|&(node, count)| (count, std::cmp::Reverse(node)))
        .map_or(1, |(node, _)| node)
}

/// Runs a rig script to its end (`Err` with its stderr if it failed).
async fn run_script(script: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let program = script.to_str().context("a rig path that is not UTF-8")?;
    anyhow::ensure!(
        script.is_file(),
        "{program} not found (--rig-dir names the directory of rabbit-cluster.sh and pg-ha.sh)"
    );
    run_tool(program, args).await
}

/// Seconds from `since` until the leases are balanced over the stack's workers
/// ([`super::balanced`]); `None` if not within [`BALANCE_TIMEOUT`].
async fn wait_balanced(target: &Target<'_>, since: Instant) -> anyhow::Result<Option<f64>> {
    let live: Vec<String> = (0..target.stack.worker_count())
        .map(|n| target.stack.worker_name(n))
        .collect();
    loop {
        let leases = audit::leases_now(&target.db).await?;
        let view: Vec<(Option<&str>, &str)> = leases
            .iter()
            .map(|l| (l.owner.as_deref(), l.state.as_str()))
            .collect();
        if super::balanced(&view, &live) {
            return Ok(Some(since.elapsed().as_secs_f64()));
        }
        if since.elapsed() >= BALANCE_TIMEOUT {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Arms `failpoint` in the active worker, waits for it to abort there, and respawns it.
async fn kill_worker_at(target: &mut Target<'_>, failpoint: &str) -> anyhow::Result<bool> {
    let n = active_worker(target).await;
    let file = target.stack.failpoints_file(&format!("worker-{n}"));
    let pid = target.stack.worker_pid(n);
    arm(&file, failpoint, "1*return", pid)?;
    let Some(status) = target.stack.wait_worker_exit(n, FAILPOINT_TIMEOUT).await? else {
        arm(&file, failpoint, "off", pid)?;
        return Ok(false);
    };
    target.stack.respawn_worker(n).await?;
    aborted(status, &format!("worker-{n}"))
}

/// Pauses every worker until the API refuses a command because a partition is full (or the
/// fill timeout passes), then wakes them.
async fn fill_a_partition(target: &mut Target<'_>, plan: &Plan) -> anyhow::Result<bool> {
    let before = audit::queue_full_refusals(&target.db).await?;
    let pids: Vec<Option<u32>> = (0..target.stack.worker_count())
        .map(|n| target.stack.worker_pid(n))
        .collect();
    let stopped: anyhow::Result<()> = pids
        .iter()
        .try_for_each(|pid| signal(*pid, Signal::SIGSTOP));
    let deadline = Instant::now() + plan.fill_timeout;
    let mut filled = false;
    while stopped.is_ok() && !filled && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        filled = audit::queue_full_refusals(&target.db)
            .await
            .is_ok_and(|now| now > before);
    }
    // Woken whatever happened above.
    for pid in &pids {
        signal(*pid, Signal::SIGCONT)?;
    }
    stopped?;
    Ok(filled)
}

/// The worker slot active right now: the one with the latest delivery in the heartbeat table
/// (one consumer per partition is active; the others are standbys). Slot 0 if none is known.
async fn active_worker(target: &Target<'_>) -> usize {
    let names = audit::consuming_workers(&target.db)
        .await
        .unwrap_or_default();
    names
        .iter()
        .find_map(|name| {
            (0..target.stack.worker_count()).find(|&n| target.stack.worker_name(n) == *name)
        })
        .unwrap_or(0)
}

/// This instant, and the same moment on the wall clock.
fn now() -> (Instant, chrono::DateTime<chrono::Utc>) {
    (Instant::now(), chrono::Utc::now())
}

/// How many transactions a worker's log says its fence refused (each stops a consumer, which
/// logs [`orderflow_worker::consumer::FENCED_MESSAGE`] once). 0 for a log not there.
fn fenced_in(log: &std::path::Path) -> u64 {
    std::fs::read_to_string(log).map_or(0, |text| {
        text.matches(orderflow_worker::consumer::FENCED_MESSAGE)
            .count() as u64
    })
}

/// The `connection_name` a client gave its connection, from `rabbitmqctl list_connections`'s
/// `client_properties` column (`[...,{"connection_name","..."},...]`; older brokers write the
/// value as `longstr,<<"...">>`).
fn connection_name(properties: &str) -> Option<&str> {
    const KEY: &str = "\"connection_name\"";
    let rest = &properties[properties.find(KEY)? + KEY.len()..];
    let start = rest.find('"')? + 1;
    let end = rest[start..].find('"')?;
    Some(&rest[start..start + end])
}

/// The worker slot holding the most partition leases now (`None`: nobody holds one); the
/// partitions it holds become the fault's affected ones.
async fn lease_owner(target: &mut Target<'_>) -> anyhow::Result<Option<usize>> {
    let leases = audit::leases_now(&target.db).await?;
    let held = |name: &str| {
        leases
            .iter()
            .filter(|l| l.owner.as_deref() == Some(name))
            .map(|l| l.partition)
            .collect::<Vec<i32>>()
    };
    let best = (0..target.stack.worker_count())
        .map(|n| (n, held(&target.stack.worker_name(n))))
        .max_by_key(|(_, partitions)| partitions.len())
        .filter(|(_, partitions)| !partitions.is_empty());
    Ok(best.map(|(n, partitions)| {
        target.affected = partitions;
        n
    }))
}

/// Writes `failpoint=actions` to the process's failpoints file and tells it to re-read it.
fn arm(
    file: &std::path::Path,
    failpoint: &str,
    actions: &str,
    pid: Option<u32>,
) -> anyhow::Result<()> {
    std::fs::write(file, format!("{failpoint}={actions}"))
        .with_context(|| format!("writing {}", file.display()))?;
    signal(pid, Signal::SIGUSR2)
}

/// Did the process abort at the failpoint (and not die of something else)?
fn aborted(status: ExitStatus, who: &str) -> anyhow::Result<bool> {
    match status.signal() {
        Some(s) if s == Signal::SIGABRT as i32 => Ok(true),
        Some(s) if s == Signal::SIGUSR2 as i32 => anyhow::bail!(
            "{who} died of SIGUSR2: it was built without failpoints (cargo build -p orderflow-api -p orderflow-worker --features failpoints --target-dir target/failpoints)"
        ),
        _ => anyhow::bail!("{who} exited ({status}) instead of aborting at the failpoint"),
    }
}

fn signal(pid: Option<u32>, signal: Signal) -> anyhow::Result<()> {
    let pid = pid.context("the process was already reaped")?;
    let pid = i32::try_from(pid).context("a process id out of range")?;
    kill(Pid::from_raw(pid), signal).with_context(|| format!("sending {signal} to {pid}"))
}

/// Respawns every process of the stack found dead; returns their names.
async fn revive(stack: &mut Stack) -> Vec<String> {
    let mut revived = Vec::new();
    for n in 0..stack.worker_count() {
        if let Ok(Some(status)) = stack.wait_worker_exit(n, Duration::ZERO).await {
            let name = stack.worker_name(n);
            match stack.respawn_worker(n).await {
                Ok(()) => revived.push(format!("{name} ({status})")),
                Err(e) => revived.push(format!("{name} ({status}), not respawned: {e:#}")),
            }
        }
    }
    if let Ok(Some(status)) = stack.wait_api_exit(Duration::ZERO).await {
        match stack.respawn_api().await {
            Ok(()) => revived.push(format!("api ({status})")),
            Err(e) => revived.push(format!("api ({status}), not respawned: {e:#}")),
        }
    }
    revived
}

/// The local PostgreSQL cluster's version (`/etc/postgresql/<version>/main`).
fn postgres_version() -> anyhow::Result<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .context("reading /etc/postgresql (pg-restart needs the local Debian cluster)")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    versions.pop().context("no cluster under /etc/postgresql")
}

/// Runs an operator's tool to its end; `Err` with its stderr if it failed.
async fn run_tool(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {program}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_name_is_read_from_the_client_properties() {
        // As rabbitmqctl 3.10 lists it.
        let listed = r#"[{"capabilities",[{"basic.nack",true}]},{"connection_name","orderflow-worker audit.1 worker-0.2 consumers"},{"platform","rust"}]"#;
        assert_eq!(
            connection_name(listed),
            Some("orderflow-worker audit.1 worker-0.2 consumers")
        );
        let older = r#"[{"connection_name",longstr,<<"orderflow-worker audit.1 worker-0.2">>}]"#;
        assert_eq!(
            connection_name(older),
            Some("orderflow-worker audit.1 worker-0.2")
        );
        assert_eq!(connection_name(r#"[{"product",longstr,<<"pika">>}]"#), None);
    }

    #[test]
    fn the_busiest_node_leads_the_most_of_the_namespaces_partition_queues() {
        let listed = "audit.1.commands.0\tof2@10.77.0.2\n\
                      audit.1.commands.1\tof3@10.77.0.3\n\
                      audit.1.commands.2\tof3@10.77.0.3\n\
                      audit.1.dead-letter\tof1@10.77.0.1\n\
                      other.commands.0\tof1@10.77.0.1\n\
                      other.commands.1\tof1@10.77.0.1\n\
                      other.commands.2\tof1@10.77.0.1\n";
        assert_eq!(busiest_node(listed, "audit.1"), 3);
        // A tie goes to the lower number; nothing led (or nothing listed): node 1.
        assert_eq!(
            busiest_node(
                "audit.1.commands.0 of2@localhost\naudit.1.commands.1 of3@localhost",
                "audit.1"
            ),
            2
        );
        assert_eq!(busiest_node("", "audit.1"), 1);
    }
}
