//! The HTML report: one self-contained page (inline CSS, inline SVG plots, no script, nothing
//! fetched), with the targets, then per workload a table of every system's phases and the plots
//! of latency over time and by percentile.

use super::plots::{self, Line};
use super::table::{latencies, memory, refusals, short};
use super::{PerfReport, PhaseResult};
use crate::perf::config::Workload;
use crate::perf::stats::Bin;

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child,td.l{text-align:left}
.no{color:#b00;font-weight:bold}.yes{color:#070}.plots{display:flex;flex-wrap:wrap;gap:8px}
.empty{color:#888}.note{color:#555;font-size:13px}code{background:#f6f6f6}";

pub fn render(report: &PerfReport) -> String {
    let mut page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>orderflow-bench perf {run}</title>\
         <style>{STYLE}</style></head><body><h1>orderflow-bench perf</h1>\
         <p>Run <code>{run}</code>, started {started}, {seconds:.0} s. <code>{command}</code></p>\
         <p>{cores} cores ({cpu}), {memory} GiB, Linux {kernel}, {postgres} ({settings}); {build} build.</p>\
         <p><b>naive sync</b> is the baseline built into the bench (one synchronous transaction \
         per request, no queue, no authentication, no idempotency); <b>raw ceiling</b> is the \
         worker's apply transaction called in-process, no HTTP, no broker.</p>",
        run = escape(&report.run_id),
        started = report.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        seconds = report.seconds,
        command = escape(&report.command_line),
        cores = report.machine.cores,
        cpu = escape(&report.machine.cpu),
        memory = report.machine.memory_gib,
        kernel = escape(&report.machine.kernel),
        postgres = escape(report.machine.postgres.split(" on ").next().unwrap_or("")),
        settings = escape(&report.machine.postgres_settings),
        build = report.machine.build,
    );
    page.push_str(
        "<h2>Targets</h2><table><tr><th>target</th><th>figure</th><th>goal</th><th>held</th></tr>",
    );
    for t in &report.targets {
        let held = match t.held {
            Some(true) => "<td class=\"yes\">yes</td>",
            Some(false) => "<td class=\"no\">no</td>",
            None => "<td>–</td>",
        };
        page.push_str(&format!(
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td>{held}</tr>",
            escape(&t.target),
            escape(&t.figure),
            escape(&t.goal)
        ));
    }
    page.push_str("</table>");
    for workload in Workload::ALL {
        let phases = report.workload_phases(workload);
        if phases.is_empty() {
            continue;
        }
        page.push_str(&format!("<h2>{}</h2>", workload.name()));
        page.push_str(&phase_table(&phases));
        let plots: Vec<String> = workload_plots(workload, &phases)
            .into_iter()
            .map(|(_, svg)| svg)
            .collect();
        page.push_str(&format!("<div class=\"plots\">{}</div>", plots.concat()));
    }
    if !report.skipped.is_empty() {
        page.push_str("<h2>Not run</h2><ul>");
        for s in &report.skipped {
            page.push_str(&format!(
                "<li>{} × {}: {}</li>",
                s.system.label(),
                s.workload.name(),
                escape(&s.reason)
            ));
        }
        page.push_str("</ul>");
    }
    page.push_str("</body></html>\n");
    page
}

fn phase_table(phases: &[&PhaseResult]) -> String {
    let mut table = String::from(
        "<table><tr><th>system</th><th>phase</th><th>offered/s</th><th>clients</th><th>requests</th>\
         <th>accepted/s</th><th>applied/s</th><th>answer ms p50/p99/max</th>\
         <th>accept→applied ms p50/p99/max</th><th>cold p99</th><th>hot p99</th>\
         <th>refused / errors</th><th>lost</th><th>drain s</th><th>RSS MB</th></tr>",
    );
    let mut notes = String::new();
    for p in phases {
        let optional = |l: Option<crate::perf::stats::Latency>| {
            l.filter(|l| l.count > 0)
                .map_or("–".into(), |l| short(l.p99_ms))
        };
        table.push_str(&format!(
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{:.0}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"l\">{}</td><td>{}</td><td>{:.1}</td><td class=\"l\">{}</td></tr>",
            p.system.label(),
            escape(&p.phase),
            p.offered_per_s.map_or("–".into(), |r| format!("{r:.0}")),
            if p.clients == 0 {
                "–".into()
            } else {
                p.clients.to_string()
            },
            p.requests,
            p.accepted_per_s,
            p.applied_per_s,
            latencies(&p.answer_latency),
            latencies(&p.accept_to_applied),
            optional(p.cold),
            optional(p.hot),
            escape(&refusals(p)),
            p.unfinished,
            p.drain_seconds,
            escape(&memory(p)),
        ));
        if let Some(l) = &p.long_polls {
            notes.push_str(&format!(
                "<p class=\"note\">{} {}: {} polls requested, {} open at release, {} woke with a final status; \
                 wake p50/p99/max {} ms; API RSS {:.0} MB before, {:.0} MB at most.</p>",
                p.system.label(),
                escape(&p.phase),
                l.requested,
                l.open_at_release,
                l.woken_final,
                latencies(&l.wake),
                l.api_rss_before_mb,
                l.api_rss_max_mb
            ));
        }
        if !p.stages.is_empty() {
            let stages: Vec<String> = p
                .stages
                .iter()
                .map(|(name, l)| format!("{} (p50/p99/max {} ms)", escape(name), latencies(l)))
                .collect();
            notes.push_str(&format!(
                "<p class=\"note\">{} {}: where accept→applied goes: {}.</p>",
                p.system.label(),
                escape(&p.phase),
                stages.join("; ")
            ));
        }
        notes.push_str(&database_note(p));
        let cpu: Vec<String> = p
            .cost
            .cpu_seconds
            .iter()
            .map(|(name, s)| format!("{} {s:.1} s", escape(name)))
            .collect();
        notes.push_str(&format!(
            "<p class=\"note\">{} {}: CPU {}.{}</p>",
            p.system.label(),
            escape(&p.phase),
            cpu.join(", "),
            p.notes
                .iter()
                .map(|n| format!(" {}.", escape(n)))
                .collect::<String>()
        ));
    }
    table.push_str("</table>");
    table + &notes
}

/// Per command: what PostgreSQL counted; and what its busy backends waited on, by share.
fn database_note(p: &PhaseResult) -> String {
    let mut parts = Vec::new();
    if p.commands_ended() > 0 && !p.db_counters.is_empty() {
        let per = |name: &str| p.per_command(name).unwrap_or(0.0);
        parts.push(format!(
            "per command {:.2} write transactions (exact), {:.1} KB of WAL, {:.2} commits, {:.1} rows inserted, {:.1} updated, {:.1} deleted, {:.1} fetched",
            per("write_xacts"),
            per("wal_bytes") / 1024.0,
            per("xact_commit"),
            per("tup_inserted"),
            per("tup_updated"),
            per("tup_deleted"),
            per("tup_fetched")
        ));
    }
    if !p.table_writes.is_empty() {
        parts.push(format!(
            "rows written per command by table (inserted/updated/deleted): {}",
            escape(&super::table::table_writes(p))
        ));
    }
    let cpu = super::table::cpu_per_thousand(p);
    if !cpu.is_empty() {
        parts.push(format!("CPU seconds per 1,000 applied: {}", escape(&cpu)));
    }
    let samples = p.db_waits.get("(samples)").copied().unwrap_or(0);
    if samples > 0 {
        let mut waits: Vec<(&String, &u64)> = p
            .db_waits
            .iter()
            .filter(|(k, _)| k.as_str() != "(samples)")
            .collect();
        waits.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = waits
            .iter()
            .take(5)
            .map(|(what, n)| format!("{} {:.1}", escape(what), **n as f64 / samples as f64))
            .collect();
        parts.push(format!("busy backends on average: {}", top.join(", ")));
    }
    if parts.is_empty() {
        return String::new();
    }
    format!(
        "<p class=\"note\">{} {}: PostgreSQL: {}.</p>",
        p.system.label(),
        escape(&p.phase),
        parts.join("; ")
    )
}

fn series(phases: &[&PhaseResult], value: fn(&Bin) -> Option<f64>) -> Vec<Line> {
    phases
        .iter()
        .map(|p| Line {
            label: format!("{} {}", p.system.name(), p.phase),
            points: p
                .series
                .iter()
                .filter_map(|b| value(b).map(|v| (b.t, v)))
                .collect(),
        })
        .collect()
}

fn curves(phases: &[&PhaseResult], curve: fn(&PhaseResult) -> &Vec<(f64, f64)>) -> Vec<Line> {
    phases
        .iter()
        .map(|p| Line {
            label: format!("{} {}", p.system.name(), p.phase),
            points: curve(p).clone(),
        })
        .collect()
}

/// The four plots of a workload (SVG, or a note saying why there is none), each with the name
/// of the file it is also saved under (`plots/` next to the report).
pub(super) fn workload_plots(workload: Workload, phases: &[&PhaseResult]) -> [(String, String); 4] {
    let name = workload.name();
    [
        (
            format!("{name}-applied-over-time.svg"),
            plots::over_time(
                &format!("{name}: accept→applied p99 over time"),
                &series(phases, |b| b.applied_p99_ms),
            ),
        ),
        (
            format!("{name}-answer-over-time.svg"),
            plots::over_time(
                &format!("{name}: answer latency p99 over time"),
                &series(phases, |b| b.answer_p99_ms),
            ),
        ),
        (
            format!("{name}-applied-percentiles.svg"),
            plots::percentiles(
                &format!("{name}: accept→applied by percentile"),
                &curves(phases, |p| &p.applied_curve),
            ),
        ),
        (
            format!("{name}-answer-percentiles.svg"),
            plots::percentiles(
                &format!("{name}: answer latency by percentile"),
                &curves(phases, |p| &p.answer_curve),
            ),
        ),
    ]
}
