//! The benchmark's smoke run, end to end: every system × workload for about a second each,
//! orderflow being the real `orderflow-api` and `orderflow-worker` executables of this build
//! (debug, from the same target directory), each system on a fresh database on the server of
//! `DATABASE_URL`. It checks that the reports are written and cover everything, with work done
//! in every phase; it asserts nothing about speed.

use orderflow_bench::perf::{self, PerfConfig, System, Workload};
use orderflow_testkit::{amqp_url, base_database_url};
use std::path::PathBuf;

/// `target/<profile>/`: the test executable is `target/<profile>/deps/perf-<hash>`.
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its executable");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable lives in target/<profile>/deps")
        .to_owned()
}

fn executable(name: &str) -> PathBuf {
    let path = build_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (`cargo build -p orderflow-api -p orderflow-worker`, \
         which `cargo nextest run --workspace` does)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_run_reports_every_system_and_workload_with_work_done() {
    let out =
        std::env::temp_dir().join(format!("orderflow-perf-{}", uuid::Uuid::new_v4().simple()));
    let mut config = PerfConfig::new(
        base_database_url(),
        amqp_url(),
        executable("orderflow-api"),
        executable("orderflow-worker"),
    )
    .smoke();
    config.out_dir = out.clone();
    config.progress = false;

    let report = perf::run(&config, "perf smoke test".into())
        .await
        .expect("the smoke run completes");
    println!("{}", perf::report::table::render(&report));

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json"))
            .expect("report.json is JSON");
    let html = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    assert!(html.contains("<svg"), "the HTML report has plots");
    // The settings that change what the figures mean, read off the server, in both reports.
    let settings = json["machine"]["postgres_settings"].as_str().unwrap_or("");
    for name in [
        "autovacuum=",
        "fsync=",
        "synchronous_commit=",
        "shared_buffers=",
    ] {
        assert!(settings.contains(name), "{name} in {settings:?}");
    }
    assert!(
        html.contains(settings),
        "the HTML report shows {settings:?}"
    );
    let uniform_plot = out.join("plots/uniform-applied-percentiles.svg");
    let svg = std::fs::read_to_string(&uniform_plot).expect("each plot is also a file");
    assert!(svg.starts_with("<svg"), "{}", uniform_plot.display());
    for system in System::ALL {
        for workload in Workload::ALL {
            let (s, w) = (system.name(), workload.name());
            let phases: Vec<&serde_json::Value> = json["phases"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["system"] == s && p["workload"] == w)
                .collect();
            if let Some(reason) = workload.not_applicable(system) {
                assert!(phases.is_empty(), "{s} × {w} should not have run");
                assert!(
                    json["skipped"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["system"] == s && k["workload"] == w && k["reason"] == reason),
                    "{s} × {w} is listed as not run, with its reason"
                );
                continue;
            }
            assert!(!phases.is_empty(), "{s} × {w} is in the report");
            for p in phases {
                let phase = p["phase"].as_str().unwrap();
                assert!(
                    p["requests"].as_u64().unwrap() > 0,
                    "{s} × {w} {phase}: requests"
                );
                assert!(
                    p["accept_to_applied"]["count"].as_u64().unwrap() > 0,
                    "{s} × {w} {phase}: commands applied: {p:#}"
                );
                assert_eq!(p["unfinished"], 0, "{s} × {w} {phase}: nothing lost");
                assert!(html.contains(phase), "{s} × {w} {phase} in the HTML report");
            }
        }
    }
    let polls = json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| p["long_polls"].as_object())
        .expect("the long-polls figures");
    assert!(polls["woken_final"].as_u64().unwrap() > 0, "{polls:#?}");
    assert!(
        json["targets"].as_array().unwrap().len() >= 8,
        "every target is listed"
    );
    let _ = std::fs::remove_dir_all(&out);
}
