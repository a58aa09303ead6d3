//! The targets, checked against the figures of a run: each with the figure, the goal and
//! whether it held (`None`: the run did not measure it). Nothing here fails a run; the summary
//! says what held.

use super::config::{System, Workload};
use super::report::{PerfReport, PhaseResult};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub figure: String,
    pub goal: String,
    pub held: Option<bool>,
}

fn check(target: &str, goal: &str, measured: Option<(String, bool)>) -> TargetCheck {
    let (figure, held) = match measured {
        Some((figure, held)) => (figure, Some(held)),
        None => ("not measured".to_owned(), None),
    };
    TargetCheck {
        target: target.to_owned(),
        figure,
        goal: goal.to_owned(),
        held,
    }
}

pub fn evaluate(report: &PerfReport) -> Vec<TargetCheck> {
    let of = System::Orderflow;
    let phase = |system, workload, name: &str| report.phase(system, workload, name);
    let mut checks = Vec::new();

    let orderflow_max = phase(of, Workload::Uniform, "max");
    for (target, baseline) in [
        (
            "orderflow applied/s ÷ naive sync's (uniform, max)",
            phase(System::Naive, Workload::Uniform, "max"),
        ),
        (
            "orderflow applied/s ÷ raw ceiling (uniform, max)",
            phase(System::Raw, Workload::Uniform, "max"),
        ),
        (
            "orderflow applied/s ÷ pgbench ceiling (one transaction per command)",
            phase(System::Raw, Workload::Uniform, super::pgbench::PHASE),
        ),
    ] {
        checks.push(check(
            target,
            "≥ 1.0",
            orderflow_max.zip(baseline).map(|(o, b)| {
                let ratio = o.applied_per_s / b.applied_per_s.max(1e-9);
                (
                    format!(
                        "{:.0} / {:.0} = {ratio:.2}",
                        o.applied_per_s, b.applied_per_s
                    ),
                    ratio >= 1.0,
                )
            }),
        ));
    }
    checks.push(check(
        "orderflow PostgreSQL write transactions per command (uniform, max)",
        "≤ 0.5",
        orderflow_max
            .and_then(|o| o.per_command("write_xacts"))
            .map(|commits| (format!("{commits:.2}"), commits <= 0.5)),
    ));

    let half = phase(of, Workload::Uniform, "half-rate");
    checks.push(check(
        "orderflow 202 p99 at half its max rate",
        "≤ 10 ms",
        half.map(|h| {
            let p99 = h.answer_latency.p99_ms;
            (
                format!("{p99:.1} ms at {:.0}/s", h.offered_per_s.unwrap_or(0.0)),
                p99 <= 10.0,
            )
        }),
    ));
    checks.push(check(
        "orderflow accept→applied p99 at half its max rate",
        "≤ 25 ms",
        half.map(|h| {
            let p99 = h.accept_to_applied.p99_ms;
            (format!("{p99:.1} ms"), p99 <= 25.0)
        }),
    ));

    let cold = |p: &PhaseResult| p.cold.map(|c| c.p99_ms).unwrap_or(f64::NAN);
    let storm = phase(of, Workload::Storm, "no-storm").zip(phase(of, Workload::Storm, "storm"));
    checks.push(check(
        "orderflow cold-order accept→applied p99, storm ÷ no storm",
        "≤ 2×",
        storm.map(|(calm, stormy)| {
            let ratio = cold(stormy) / cold(calm).max(1e-9);
            (
                format!(
                    "{:.1} ms / {:.1} ms = {ratio:.1}×",
                    cold(stormy),
                    cold(calm)
                ),
                ratio <= 2.0,
            )
        }),
    ));
    let naive_storm =
        phase(of, Workload::Storm, "storm").zip(phase(System::Naive, Workload::Storm, "storm"));
    checks.push(check(
        "orderflow cold p99 in the storm vs naive sync's",
        "≤ naive's",
        naive_storm.map(|(o, n)| {
            (
                format!("{:.1} ms vs {:.1} ms", cold(o), cold(n)),
                cold(o) <= cold(n),
            )
        }),
    ));

    let burst = phase(of, Workload::Burst, "burst");
    checks.push(check(
        "orderflow burst: only 202/429/503+Retry-After, nothing lost",
        "0 other answers, 0 lost",
        burst.map(|b| {
            (
                format!(
                    "{} other answers, {} lost, drained in {:.1} s",
                    b.unexpected_answers, b.unfinished, b.drain_seconds
                ),
                b.unexpected_answers == 0 && b.unfinished == 0,
            )
        }),
    ));

    let growth: Vec<&PhaseResult> = report.phases_of(of, Workload::Growth).collect();
    checks.push(check(
        "orderflow applied/s after growth ÷ before",
        "≥ 0.9 (within 10 %)",
        (growth.len() == 2).then(|| {
            let ratio = growth[1].applied_per_s / growth[0].applied_per_s.max(1e-9);
            (
                format!(
                    "{:.0} ({}) / {:.0} ({}) = {ratio:.2}",
                    growth[1].applied_per_s,
                    growth[1].phase,
                    growth[0].applied_per_s,
                    growth[0].phase
                ),
                ratio >= 0.9,
            )
        }),
    ));

    let polls = report
        .phases_of(of, Workload::LongPolls)
        .find_map(|p| p.long_polls.clone());
    checks.push(check(
        "orderflow API RSS with the long-polls open",
        "≤ 200 MB (5,000 polls)",
        polls.map(|l| {
            (
                format!(
                    "{:.0} MB with {} open (before: {:.0} MB)",
                    l.api_rss_max_mb, l.open_at_release, l.api_rss_before_mb
                ),
                l.api_rss_max_mb <= 200.0,
            )
        }),
    ));

    let worker_rss = report
        .phases
        .iter()
        .filter(|p| p.system == of)
        .flat_map(|p| {
            p.cost
                .rss_max_mb
                .iter()
                .filter(|(n, _)| n.starts_with("worker"))
        })
        .map(|(_, &mb)| mb)
        .fold(None, |max: Option<f64>, mb| {
            Some(max.map_or(mb, |m| m.max(mb)))
        });
    checks.push(check(
        "orderflow worker RSS, largest seen in the run",
        "≤ 100 MB",
        worker_rss.map(|mb| (format!("{mb:.0} MB"), mb <= 100.0)),
    ));
    checks
}
