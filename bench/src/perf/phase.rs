//! One measured phase, the same for every system and workload: run the load (with a progress
//! bar and the processes watched), wait until every accepted command has ended (the drain,
//! timed), then read from PostgreSQL how each accepted command ended and compute the figures.

use super::config::{PerfConfig, System, Workload};
use super::dbstats;
use super::drive::Load;
use super::observe::Observer;
use super::report::PhaseResult;
use super::stats::{self, Finished, Latency};
use super::system::Sut;
use super::target::{Answer, Commands, Sample};
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Slices of the latency-over-time series.
const BINS: usize = 40;
/// Ids per query when reading the commands back.
const CHUNK: usize = 20_000;

/// What a phase is.
pub struct Spec {
    pub workload: Workload,
    pub phase: String,
    pub offered_per_s: Option<f64>,
    pub clients: usize,
    pub duration: Duration,
    /// The storm's hot order (its commands are reported apart from the cold ones).
    pub hot: Option<Uuid>,
}

/// Runs `load` as the phase `spec` of `sut` and measures it.
pub async fn measure<F, Fut>(
    config: &PerfConfig,
    sut: &mut Sut,
    spec: Spec,
    load: F,
) -> anyhow::Result<PhaseResult>
where
    F: FnOnce(Load) -> Fut,
    Fut: Future<Output = Vec<Sample>>,
{
    let answered = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(config, sut.system, &spec);
    dbstats::settle().await;
    let counters_before = dbstats::counters(&sut.db).await;
    let tables_before = dbstats::table_writes(&sut.db).await;
    let waits = dbstats::Waits::start(sut.db.clone());
    let observer = Observer::start(sut.watched());
    let start_wall = Utc::now();
    let start = Instant::now();
    let generator = Load {
        target: sut.target.clone(),
        commands: Arc::new(Commands::new()),
        start,
        until: start + spec.duration,
        answered: answered.clone(),
        seed: config.seed,
        back_off_jitter: config.back_off_jitter,
    };
    let ticker = {
        let (bar, answered, total) = (bar.clone(), answered.clone(), spec.duration);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let elapsed = start.elapsed().min(total);
                bar.set_position(elapsed.as_millis() as u64);
                bar.set_message(format!("{} answers", answered.load(Ordering::Relaxed)));
            }
        })
    };
    let samples = load(generator).await;
    // Rates are per second of the phase's window; the last answers may come later (an open
    // loop waits for what it sent), which `last_answer_seconds` shows.
    let elapsed = start.elapsed().as_secs_f64();
    let end_wall = start_wall + spec.duration;
    ticker.abort();
    let cost = observer.finish();
    let db_waits = waits.finish();
    if let Some(stack) = &mut sut.stack {
        stack.check_alive()?;
    }

    let drain_started = Instant::now();
    let unfinished_left = drain(sut, config.drain_timeout, &bar).await?;
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    dbstats::settle().await;
    let db_counters = dbstats::delta(&counters_before, &dbstats::counters(&sut.db).await);
    let table_writes = dbstats::table_delta(&tables_before, &dbstats::table_writes(&sut.db).await);
    bar.finish_and_clear();

    let window = Window {
        start_wall,
        end_wall,
        seconds: spec.duration.as_secs_f64(),
        elapsed,
    };
    let mut ended = ended(sut, &samples, &window, spec.hot).await?;
    if unfinished_left > 0 {
        ended.notes.push(format!(
            "{unfinished_left} commands were still accepted when the drain gave up after {:?}",
            config.drain_timeout
        ));
    }
    let mut phase = result(
        sut.system,
        spec,
        &samples,
        ended,
        drain_seconds,
        cost,
        window,
    );
    phase.db_counters = db_counters;
    phase.table_writes = table_writes;
    phase.db_waits = db_waits;
    Ok(phase)
}

struct Window {
    start_wall: DateTime<Utc>,
    end_wall: DateTime<Utc>,
    /// The planned length of the phase.
    seconds: f64,
    /// Until the last answer came.
    elapsed: f64,
}

fn progress_bar(config: &PerfConfig, system: System, spec: &Spec) -> ProgressBar {
    if !config.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(spec.duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>36} [{bar:30}] {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!(
        "{} {} {}",
        system.name(),
        spec.workload.name(),
        spec.phase
    ));
    bar
}

/// Waits until no command of the system is `accepted`; returns how many still were at the
/// deadline. (Each system's database holds only the bench's commands.)
async fn drain(sut: &Sut, timeout: Duration, bar: &ProgressBar) -> anyhow::Result<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = orderflow_storage::perf::accepted_count(&sut.db).await?;
        if left == 0 || Instant::now() >= deadline {
            return Ok(left);
        }
        bar.set_message(format!("draining: {left} commands not yet applied"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How the phase's commands ended: their accept→applied figures, counts by final status, how
/// many were lost, orderflow's stage breakdown, and notes.
struct Ended {
    finished: Vec<Finished>,
    by_status: BTreeMap<String, u64>,
    lost: u64,
    stages: BTreeMap<String, Latency>,
    notes: Vec<String>,
}

/// How every accepted command of the phase ended: the accept→applied figures, the commands by
/// final status, and how many are lost (accepted, but not final or not there).
async fn ended(
    sut: &Sut,
    samples: &[Sample],
    window: &Window,
    hot: Option<Uuid>,
) -> anyhow::Result<Ended> {
    let mut finished = Vec::new();
    let mut by_status = BTreeMap::new();
    let mut notes = Vec::new();
    if sut.system == System::Raw {
        // The call is the transaction: it ended when it returned.
        for s in samples.iter().filter(|s| s.answer.accepted()) {
            let end = s.due + s.latency_us as f64 / 1e6;
            finished.push(Finished {
                accepted: s.due,
                us: s.latency_us,
                hot: s.hot,
                in_window: end <= window.seconds,
            });
            let status = if s.answer == Answer::Applied {
                "applied"
            } else {
                "rejected"
            };
            *by_status.entry(status.to_owned()).or_default() += 1;
        }
        return Ok(Ended {
            finished,
            by_status,
            lost: 0,
            stages: BTreeMap::new(),
            notes,
        });
    }
    let ids: Vec<Uuid> = samples.iter().filter_map(|s| s.command).collect();
    let commits: HashMap<Uuid, DateTime<Utc>> =
        sut.commits.as_ref().map(|c| c.take()).unwrap_or_default();
    let mut unseen = 0u64;
    let mut found = 0u64;
    // Cold commands' accept→applied by partition, and the hot order's partition (the storm).
    let mut cold_by_partition: Vec<(i32, u64)> = Vec::new();
    let mut hot_partition = None;
    for chunk in ids.chunks(CHUNK) {
        let rows = orderflow_storage::perf::outcomes(&sut.db, chunk).await?;
        found += rows.len() as u64;
        for row in rows {
            *by_status.entry(row.status.clone()).or_default() += 1;
            let Some(finished_at) = row.finished_at else {
                continue;
            };
            let end = match (sut.system, commits.get(&row.id)) {
                (System::Orderflow, Some(&seen)) => seen,
                (System::Orderflow, None) => {
                    unseen += 1;
                    finished_at
                }
                _ => finished_at,
            };
            let us = (end - row.accepted_at)
                .num_microseconds()
                .unwrap_or(i64::MAX);
            let is_hot = Some(row.order_id) == hot;
            if is_hot {
                hot_partition = Some(row.partition);
            } else if hot.is_some() {
                cold_by_partition.push((row.partition, us.max(0) as u64));
            }
            finished.push(Finished {
                accepted: seconds_between(window.start_wall, row.accepted_at),
                us: us.max(0) as u64,
                hot: is_hot,
                in_window: end <= window.end_wall,
            });
        }
    }
    // Only orderflow has partitions (naive's rows carry a placeholder).
    if let Some(shared) = hot_partition.filter(|_| sut.system == System::Orderflow) {
        let cold = |same: bool| {
            Latency::from_values(
                cold_by_partition
                    .iter()
                    .filter(|(p, _)| (*p == shared) == same)
                    .map(|(_, us)| *us),
            )
            .0
        };
        let (with_hot, elsewhere) = (cold(true), cold(false));
        notes.push(format!(
            "cold orders in the hot order's partition: accept→applied p50/p99 {:.1}/{:.1} ms ({} commands); in the other partitions {:.1}/{:.1} ms ({})",
            with_hot.p50_ms, with_hot.p99_ms, with_hot.count,
            elsewhere.p50_ms, elsewhere.p99_ms, elsewhere.count,
        ));
    }
    let lost = (ids.len() as u64 - found) + by_status.get("accepted").copied().unwrap_or(0);
    if unseen > 0 {
        notes.push(format!(
            "{unseen} commits were not seen on the NOTIFY channel; their finished_at (the apply transaction's start) was used"
        ));
    }
    let stages = if sut.system == System::Orderflow {
        super::stages::breakdown(&sut.db, &ids, &commits).await
    } else {
        BTreeMap::new()
    };
    Ok(Ended {
        finished,
        by_status,
        lost,
        stages,
        notes,
    })
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(0) as f64 / 1e6
}

fn result(
    system: System,
    spec: Spec,
    samples: &[Sample],
    ended: Ended,
    drain_seconds: f64,
    cost: super::observe::Cost,
    window: Window,
) -> PhaseResult {
    let finished = &ended.finished;
    let seconds = window.seconds.max(1e-3);
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for s in samples {
        *statuses.entry(s.answer.label()).or_default() += 1;
    }
    let refusal = |s: &Sample| matches!(s.answer, Answer::Status(429 | 503));
    let with_retry_after = samples
        .iter()
        .filter(|s| refusal(s) && s.retry_after)
        .count() as u64;
    let unexpected_answers = samples
        .iter()
        .filter(|s| {
            s.answer != Answer::NotSent && !s.answer.accepted() && !(refusal(s) && s.retry_after)
        })
        .count() as u64;
    let accepted = samples.iter().filter(|s| s.answer.accepted()).count() as f64;
    let (answer_latency, answer_histogram) = Latency::from_values(
        samples
            .iter()
            .filter(|s| s.answer.accepted())
            .map(|s| s.latency_us),
    );
    let (accept_to_applied, applied_histogram) =
        Latency::from_values(finished.iter().map(|f| f.us));
    let split = |hot: bool| {
        spec.hot
            .map(|_| Latency::from_values(finished.iter().filter(|f| f.hot == hot).map(|f| f.us)).0)
    };
    let round = |v: f64| (v * 10.0).round() / 10.0;
    PhaseResult {
        system,
        workload: spec.workload,
        phase: spec.phase.clone(),
        seconds: (seconds * 1000.0).round() / 1000.0,
        last_answer_seconds: (window.elapsed * 1000.0).round() / 1000.0,
        offered_per_s: spec.offered_per_s.map(round),
        clients: spec.clients,
        requests: samples.len() as u64,
        statuses,
        with_retry_after,
        unexpected_answers,
        accepted_per_s: round(accepted / seconds),
        applied_per_s: round(finished.iter().filter(|f| f.in_window).count() as f64 / seconds),
        answer_latency,
        accept_to_applied,
        cold: split(false),
        hot: split(true),
        finished: ended.by_status,
        unfinished: ended.lost,
        stages: ended.stages,
        drain_seconds: (drain_seconds * 100.0).round() / 100.0,
        cost,
        series: stats::bins(samples, finished, seconds, BINS),
        answer_curve: stats::curve(&answer_histogram),
        applied_curve: stats::curve(&applied_histogram),
        long_polls: None,
        db_counters: BTreeMap::new(),
        table_writes: BTreeMap::new(),
        db_waits: BTreeMap::new(),
        notes: ended.notes,
    }
}
