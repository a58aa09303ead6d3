//! The terminal summary: one row per phase, then the targets with their figures and whether
//! each held, then what was not run.

use super::{PerfReport, PhaseResult};
use comfy_table::{Cell, Table, presets::UTF8_FULL_CONDENSED};

/// `p50 / p99 / max` in milliseconds ("–" when there is nothing to show).
pub fn latencies(l: &crate::perf::stats::Latency) -> String {
    if l.count == 0 {
        return "–".into();
    }
    format!(
        "{} / {} / {}",
        short(l.p50_ms),
        short(l.p99_ms),
        short(l.max_ms)
    )
}

/// A millisecond figure with as many decimals as it deserves.
pub fn short(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// Answers other than acceptances, e.g. `429: 3, timeout: 1`.
pub fn refusals(p: &PhaseResult) -> String {
    let accepted = ["200", "202", "409", "applied", "rejected"];
    let text: Vec<String> = p
        .statuses
        .iter()
        .filter(|(k, _)| !accepted.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    if text.is_empty() {
        "–".into()
    } else {
        text.join(", ")
    }
}

/// Memory of the processes the phase watched, e.g. `api 41, worker 30`.
pub fn memory(p: &PhaseResult) -> String {
    p.cost
        .rss_max_mb
        .iter()
        .map(|(name, mb)| format!("{} {mb:.0}", name.split(' ').next().unwrap_or(name)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn render(report: &PerfReport) -> String {
    let mut phases = Table::new();
    phases.load_preset(UTF8_FULL_CONDENSED);
    phases.set_header(vec![
        "system",
        "workload",
        "phase",
        "requests",
        "accepted/s",
        "applied/s",
        "answer ms p50/p99/max",
        "accept→applied ms p50/p99/max",
        "cold p99 ms",
        "refused / errors",
        "lost",
        "drain s",
        "RSS MB",
    ]);
    for p in &report.phases {
        phases.add_row(vec![
            Cell::new(p.system.name()),
            Cell::new(p.workload.name()),
            Cell::new(&p.phase),
            Cell::new(p.requests),
            Cell::new(format!("{:.0}", p.accepted_per_s)),
            Cell::new(format!("{:.0}", p.applied_per_s)),
            Cell::new(latencies(&p.answer_latency)),
            Cell::new(latencies(&p.accept_to_applied)),
            Cell::new(p.cold.map_or("–".into(), |c| short(c.p99_ms))),
            Cell::new(refusals(p)),
            Cell::new(p.unfinished),
            Cell::new(format!("{:.1}", p.drain_seconds)),
            Cell::new(memory(p)),
        ]);
    }

    let mut cost = Table::new();
    cost.load_preset(UTF8_FULL_CONDENSED);
    cost.set_header(vec![
        "system",
        "workload",
        "phase",
        "commits/cmd",
        "write xacts/cmd",
        "WAL KB/cmd",
        "rows written/cmd",
        "by table (ins/upd/del per cmd)",
        "CPU s per 1,000 applied",
    ]);
    for p in report.phases.iter().filter(|p| p.commands_ended() > 0) {
        cost.add_row(vec![
            Cell::new(p.system.name()),
            Cell::new(p.workload.name()),
            Cell::new(&p.phase),
            Cell::new(
                p.per_command("xact_commit")
                    .map_or("–".into(), |v| format!("{v:.2}")),
            ),
            Cell::new(
                p.per_command("write_xacts")
                    .map_or("–".into(), |v| format!("{v:.2}")),
            ),
            Cell::new(
                p.per_command("wal_bytes")
                    .map_or("–".into(), |v| format!("{:.1}", v / 1024.0)),
            ),
            Cell::new(
                p.rows_written_per_command()
                    .map_or("–".into(), |v| format!("{v:.1}")),
            ),
            Cell::new(table_writes(p)),
            Cell::new(cpu_per_thousand(p)),
        ]);
    }

    let mut targets = Table::new();
    targets.load_preset(UTF8_FULL_CONDENSED);
    targets.set_header(vec!["target", "figure", "goal", "held"]);
    for t in &report.targets {
        targets.add_row(vec![
            Cell::new(&t.target),
            Cell::new(&t.figure),
            Cell::new(&t.goal),
            Cell::new(match t.held {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "–",
            }),
        ]);
    }
    let mut text = format!("{phases}\ncost per command\n{cost}\n{targets}\n");
    for s in &report.skipped {
        text.push_str(&format!(
            "not run: {} × {}: {}\n",
            s.system.name(),
            s.workload.name(),
            s.reason
        ));
    }
    text.push_str(&format!(
        "{} cores, {} GiB, {} build; PostgreSQL {}; {:.0} s in all\n",
        report.machine.cores,
        report.machine.memory_gib,
        report.machine.build,
        report.machine.postgres_settings,
        report.seconds
    ));
    text
}

/// Each table's row writes per ended command, as `table ins/upd/del`, the most written first.
pub fn table_writes(p: &PhaseResult) -> String {
    let commands = p.commands_ended().max(1) as f64;
    let mut tables: Vec<_> = p.table_writes.iter().collect();
    tables.sort_by_key(|(_, w)| std::cmp::Reverse(w.total()));
    tables
        .iter()
        .map(|(table, w)| {
            format!(
                "{table} {:.1}/{:.1}/{:.1}",
                w.inserted as f64 / commands,
                w.updated as f64 / commands,
                w.deleted as f64 / commands
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU seconds per 1,000 applied commands, per process, the busiest first.
pub fn cpu_per_thousand(p: &PhaseResult) -> String {
    let mut cpu: Vec<_> = p.cpu_per_thousand().into_iter().collect();
    cpu.sort_by(|a, b| b.1.total_cmp(&a.1));
    cpu.iter()
        .map(|(name, s)| format!("{name} {s:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}
