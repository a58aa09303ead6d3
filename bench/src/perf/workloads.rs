//! The five workloads, each one or two measured phases (see [`Workload`] for what each asks).
//! The half-rate, burst and long-poll rates are scaled from what the same system sustained in
//! the uniform workload, so each is driven relative to its own capacity; the storm's cold load is
//! the same absolute rate for every system, so their cold-order latencies compare.

use super::config::{PerfConfig, System, Workload};
use super::database;
use super::drive::{self, Picker};
use super::observe;
use super::phase::{Spec, measure};
use super::report::{LongPollFigures, PhaseResult};
use super::stats::Latency;
use super::system::Sut;
use super::target::Sample;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The long-polls' background load, as a share of the sustainable rate: light, but every
/// command it finishes is broadcast to every open poll.
const BACKGROUND_SHARE: f64 = 0.25;
/// Long-polls are opened at this pace (an accept backlog of thousands at once overflows).
const POLLS_PER_SECOND: f64 = 2_000.0;
/// The longest `?wait=` the API allows.
const MAX_WAIT_SECS: u64 = 30;

pub async fn run(
    config: &PerfConfig,
    sut: &mut Sut,
    workload: Workload,
) -> anyhow::Result<Vec<PhaseResult>> {
    match workload {
        Workload::Uniform => uniform(config, sut).await,
        Workload::Storm => storm(config, sut).await,
        Workload::Burst => Ok(vec![burst(config, sut).await?]),
        Workload::LongPolls => Ok(vec![long_polls(config, sut).await?]),
        Workload::Growth => growth(config, sut).await,
    }
}

pub(super) fn spec(workload: Workload, phase: &str, duration: Duration) -> Spec {
    Spec {
        workload,
        phase: phase.to_owned(),
        offered_per_s: None,
        clients: 0,
        duration,
        hot: None,
    }
}

/// The maximum rate with `clients` closed-loop clients on `orders`.
async fn max_rate(
    config: &PerfConfig,
    sut: &mut Sut,
    workload: Workload,
    phase: &str,
    orders: Arc<Vec<uuid::Uuid>>,
) -> anyhow::Result<PhaseResult> {
    let clients = config.concurrency;
    let spec = Spec {
        clients,
        ..spec(workload, phase, config.duration)
    };
    measure(config, sut, spec, move |load| async move {
        drive::closed(&load, Picker::Uniform(orders), clients, 1).await
    })
    .await
}

/// At `rate` per second, open loop, on `orders`.
async fn at_rate(
    config: &PerfConfig,
    sut: &mut Sut,
    mut spec: Spec,
    rate: f64,
    orders: Arc<Vec<uuid::Uuid>>,
) -> anyhow::Result<PhaseResult> {
    spec.offered_per_s = Some(rate);
    measure(config, sut, spec, move |load| async move {
        drive::open(
            &load,
            Picker::Uniform(orders),
            rate,
            drive::in_flight_cap(),
            2,
        )
        .await
    })
    .await
}

async fn uniform(config: &PerfConfig, sut: &mut Sut) -> anyhow::Result<Vec<PhaseResult>> {
    let orders = sut.orders.clone();
    let max = max_rate(config, sut, Workload::Uniform, "max", orders.clone()).await?;
    // What the system keeps up with: it cannot apply more than it accepts, nor the reverse
    // for long.
    let sustained = max.applied_per_s.min(max.accepted_per_s);
    if sustained > 0.0 {
        sut.sustainable = Some(sustained);
    }
    let rate = sut.sustainable(config) / 2.0;
    let half = at_rate(
        config,
        sut,
        spec(Workload::Uniform, "half-rate", config.duration),
        rate,
        orders,
    )
    .await?;
    let mut phases = vec![max, half];
    if sut.system == System::Raw {
        phases.push(super::pgbench::ceiling(config, sut).await?);
    }
    Ok(phases)
}

async fn storm(config: &PerfConfig, sut: &mut Sut) -> anyhow::Result<Vec<PhaseResult>> {
    let hot = sut.orders[0];
    let cold = Arc::new(sut.orders[1..].to_vec());
    let rate = config.storm_cold_rate;
    let calm = Spec {
        hot: Some(hot),
        ..spec(Workload::Storm, "no-storm", config.duration)
    };
    let without = at_rate(config, sut, calm, rate, cold.clone()).await?;
    let clients = config.storm_clients;
    let stormy = Spec {
        hot: Some(hot),
        clients,
        offered_per_s: Some(rate),
        ..spec(Workload::Storm, "storm", config.duration)
    };
    let mut with = measure(config, sut, stormy, move |load| async move {
        let cold_load = drive::open(
            &load,
            Picker::Uniform(cold),
            rate,
            drive::in_flight_cap(),
            4,
        );
        let hot_load = drive::closed(&load, Picker::Hot(hot), clients, 5);
        let (mut cold_samples, hot_samples) = tokio::join!(cold_load, hot_load);
        cold_samples.extend(hot_samples);
        cold_samples
    })
    .await?;
    let back_off = match config.back_off_jitter {
        jitter if jitter.is_zero() => "1 s after a refusal, in step".to_string(),
        jitter => format!("1 s plus up to {jitter:?} at random after a refusal"),
    };
    with.notes.push(format!(
        "{clients} closed-loop clients on one hot order (back off {back_off}), cold orders open loop at {rate:.0}/s"
    ));
    Ok(vec![without, with])
}

async fn burst(config: &PerfConfig, sut: &mut Sut) -> anyhow::Result<PhaseResult> {
    let rate = sut.sustainable(config) * config.burst_factor;
    let orders = sut.orders.clone();
    let mut result = at_rate(
        config,
        sut,
        spec(Workload::Burst, "burst", config.burst_duration),
        rate,
        orders,
    )
    .await?;
    result.notes.push(format!(
        "{}× the sustainable rate for {:?}; drained in {:.1} s",
        config.burst_factor, config.burst_duration, result.drain_seconds
    ));
    Ok(result)
}

async fn growth(config: &PerfConfig, sut: &mut Sut) -> anyhow::Result<Vec<PhaseResult>> {
    let have = sut.orders.len();
    let mut small = max_rate(
        config,
        sut,
        Workload::Growth,
        &format!("{} orders", count(have)),
        sut.orders.clone(),
    )
    .await?;
    small.notes.extend(list_figures(sut, have).await);
    let (active, seeding) = database::grow(&sut.db, sut.client, config.growth_to, have).await?;
    let tables = orderflow_storage::perf::order_count(&sut.db).await?;
    let mut large = max_rate(
        config,
        sut,
        Workload::Growth,
        &format!("{} orders", count(tables as usize)),
        Arc::new(active),
    )
    .await?;
    large.notes.push(format!(
        "grown to {tables} orders in {seeding:.1} s (set-based), then ANALYZE; the load draws from {have} orders spread over the whole table"
    ));
    large.notes.extend(list_figures(sut, tables as usize).await);
    Ok(vec![small, large])
}

/// Sequential requests per list case: the figures are each page's own cost, not a load.
const LIST_REQUESTS: usize = 20;

/// orderflow only: what the list endpoints cost with `orders` orders, all of them the bench
/// client's (every seeded order is `pending`, customer `perf`): the first page, the page after
/// a cursor, filters that match every order and filters that match none (the index range holds
/// every one of the client's orders, so a filter matching none reads them all), and an order's
/// commands. One note line with p50/p99 of each; nothing for the other systems.
async fn list_figures(sut: &Sut, orders: usize) -> Vec<String> {
    let (System::Orderflow, Some(http)) = (sut.system, sut.target.as_http()) else {
        return Vec::new();
    };
    let get = |path: String| async move {
        let started = Instant::now();
        let answer = http
            .http
            .get(format!("{}{path}", http.base))
            .bearer_auth(&http.key)
            .timeout(super::target::REQUEST_TIMEOUT)
            .send()
            .await;
        let us = started.elapsed().as_micros() as u64;
        let body = match answer {
            Ok(response) if response.status().is_success() => {
                response.json::<serde_json::Value>().await.ok()
            }
            _ => None,
        };
        (us, body)
    };
    let first = get("/v1/orders?limit=100".to_owned()).await.1;
    let cursor = first
        .as_ref()
        .and_then(|page| page["next_cursor"].as_str())
        .map(str::to_owned);
    let order = sut.orders.first().copied();
    let mut cases: Vec<(&str, Option<String>)> = vec![
        ("first page of 100", Some("/v1/orders?limit=100".to_owned())),
        (
            "the page after a cursor",
            cursor.map(|c| format!("/v1/orders?limit=100&starting_after={c}")),
        ),
        (
            "status=pending (matches all)",
            Some("/v1/orders?limit=100&status=pending".to_owned()),
        ),
        (
            "status=shipped (matches none)",
            Some("/v1/orders?limit=10&status=shipped".to_owned()),
        ),
        (
            "customer_id=nobody (matches none)",
            Some("/v1/orders?limit=10&customer_id=nobody".to_owned()),
        ),
    ];
    cases.push((
        "an order's commands",
        order.map(|o| format!("/v1/orders/{o}/commands?limit=100")),
    ));
    // The client's event feed: every seeded order's create is in it.
    let feed = get("/v1/events?limit=100".to_owned()).await.1;
    let after = feed
        .as_ref()
        .and_then(|page| page["next_after"].as_str())
        .map(str::to_owned);
    cases.push((
        "the feed's first page of 100",
        Some("/v1/events?limit=100".to_owned()),
    ));
    cases.push((
        "the feed's page after it",
        after.map(|a| format!("/v1/events?limit=100&after={a}")),
    ));
    let mut figures = Vec::new();
    for (name, path) in cases {
        let Some(path) = path else {
            figures.push(format!("{name}: not measured"));
            continue;
        };
        let mut times = Vec::with_capacity(LIST_REQUESTS);
        let mut failed = 0;
        for _ in 0..LIST_REQUESTS {
            let (us, body) = get(path.clone()).await;
            if body.is_some() {
                times.push(us);
            } else {
                failed += 1;
            }
        }
        let (latency, _) = Latency::from_values(times);
        figures.push(format!(
            "{name} {:.1}/{:.1}{}",
            latency.p50_ms,
            latency.p99_ms,
            if failed > 0 {
                format!(" ({failed} of {LIST_REQUESTS} failed)")
            } else {
                String::new()
            }
        ));
    }
    // A stream of the feed opened from now: until its headers (the bounds and the first read).
    let mut times = Vec::with_capacity(LIST_REQUESTS);
    for _ in 0..LIST_REQUESTS {
        let started = Instant::now();
        let opened = http
            .http
            .get(format!("{}/v1/events", http.base))
            .bearer_auth(&http.key)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .timeout(super::target::REQUEST_TIMEOUT)
            .send()
            .await;
        if opened.is_ok_and(|r| r.status().is_success()) {
            times.push(started.elapsed().as_micros() as u64);
        }
    }
    let opened = times.len();
    let (latency, _) = Latency::from_values(times);
    figures.push(format!(
        "a feed stream opened (to its headers) {:.1}/{:.1}{}",
        latency.p50_ms,
        latency.p99_ms,
        if opened < LIST_REQUESTS {
            format!(" ({} of {LIST_REQUESTS} failed)", LIST_REQUESTS - opened)
        } else {
            String::new()
        }
    ));
    vec![format!(
        "lists with {} orders ({LIST_REQUESTS} requests each, one at a time), p50/p99 ms: {}",
        count(orders),
        figures.join("; ")
    )]
}

/// `10k`, `1M`: how the growth phases are named.
fn count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// orderflow only: many long-polls held open while a light load runs (every finished command
/// is broadcast to every open poll), then all their commands ended at once.
async fn long_polls(config: &PerfConfig, sut: &mut Sut) -> anyhow::Result<PhaseResult> {
    let polls = config.long_polls;
    let limit = observe::open_files_limit() as usize;
    // The bench holds one socket per poll, and so does the API (same limit, inherited).
    let polls = polls.min(limit.saturating_sub(1_024).max(64));
    let stack = sut
        .stack
        .as_mut()
        .expect("long-polls run on orderflow only");
    // The API counts long-polls against its in-flight limit and a per-client cap: both are
    // raised for this workload only (the burst keeps the defaults).
    stack
        .restart_api(&[
            ("ORDERFLOW_MAX_IN_FLIGHT", (polls + 2_048).to_string()),
            ("ORDERFLOW_MAX_WAITS_PER_CLIENT", (polls + 100).to_string()),
        ])
        .await?;
    sut.retarget()?;
    let api_pid = stack_api_pid(sut);
    let before = observe::rss_mb(api_pid).unwrap_or(0.0);
    let probes = Arc::new(database::probe_commands(&sut.db, sut.client, polls).await?);
    let ramp = Duration::from_secs_f64(polls as f64 / POLLS_PER_SECOND);
    let hold = config.duration.min(Duration::from_secs(20));
    let rate = (sut.sustainable(config) * BACKGROUND_SHARE).max(5.0);
    let (db, orders) = (sut.db.clone(), sut.orders.clone());
    let figures = Arc::new(std::sync::Mutex::new(LongPollFigures::default()));
    let out = figures.clone();
    let spec = Spec {
        offered_per_s: Some(rate),
        ..spec(Workload::LongPolls, &format!("{polls} polls"), ramp + hold)
    };
    let mut result = measure(config, sut, spec, move |load| async move {
        let http = load.target.clone();
        let background = drive::open(
            &load,
            Picker::Uniform(orders),
            rate,
            drive::in_flight_cap(),
            6,
        );
        let waits = async {
            let mut tasks = tokio::task::JoinSet::new();
            let pace = Duration::from_secs_f64(1.0 / POLLS_PER_SECOND);
            for (n, &id) in probes.iter().enumerate() {
                tokio::time::sleep_until((load.start + pace.mul_f64(n as f64)).into()).await;
                let http = http.clone();
                tasks.spawn(async move {
                    http.as_http()
                        .expect("orderflow is HTTP")
                        .wait(id, MAX_WAIT_SECS)
                        .await
                });
            }
            tokio::time::sleep_until(load.until.into()).await;
            let released = Instant::now();
            let woken = database::finish_probes(&db, &probes).await.unwrap_or(0);
            let mut answers = BTreeMap::new();
            let mut wake = Vec::new();
            let (mut finals, mut open) = (0, 0);
            while let Some(Ok((answer, status, at))) = tasks.join_next().await {
                *answers.entry(answer.label()).or_insert(0u64) += 1;
                if at >= released {
                    open += 1;
                }
                if status.as_deref().is_some_and(|s| s != "accepted") {
                    finals += 1;
                    wake.push(at.saturating_duration_since(released).as_micros() as u64);
                }
            }
            let mut figures = out.lock().expect("not poisoned");
            figures.requested = probes.len() as u64;
            figures.open_at_release = open;
            figures.woken_final = finals;
            figures.answers = answers;
            figures.wake = Latency::from_values(wake).0;
            tracing::debug!(woken, "probes ended");
        };
        let (samples, ()): (Vec<Sample>, ()) = tokio::join!(background, waits);
        samples
    })
    .await?;
    let mut figures = std::mem::take(&mut *figures.lock().expect("not poisoned"));
    figures.api_rss_before_mb = (before * 10.0).round() / 10.0;
    figures.api_rss_max_mb = result.cost.rss_max_mb.get("api").copied().unwrap_or(0.0);
    result.notes.push(format!(
        "{polls} long-polls (?wait={MAX_WAIT_SECS}) opened over {ramp:.1?} and held {hold:?} with a light load at {rate:.0}/s, then all woken at once; API restarted with ORDERFLOW_MAX_IN_FLIGHT={} and ORDERFLOW_MAX_WAITS_PER_CLIENT={}",
        polls + 2_048,
        polls + 100
    ));
    if polls < config.long_polls {
        result.notes.push(format!(
            "only {polls} of {} long-polls: the open-files limit is {limit}",
            config.long_polls
        ));
    }
    result.long_polls = Some(figures);
    Ok(result)
}

fn stack_api_pid(sut: &Sut) -> u32 {
    sut.stack
        .as_ref()
        .and_then(|s| s.processes().into_iter().find(|(n, _)| n == "api"))
        .map_or(0, |(_, pid)| pid)
}
