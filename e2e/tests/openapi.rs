//! schemathesis, run against the live stack (the API and a worker) with every check, finds
//! nothing. (The OpenAPI document itself: `api/tests/openapi.rs`.)

mod common;

use orderflow_testkit::Stack;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

async fn fast_app() -> Stack {
    // schemathesis sends thousands of requests: no rate limit may get in its way.
    common::stack()
        .api_config(|c| {
            c.rate_limit_per_second = 100_000;
            c.rate_limit_burst = 100_000;
        })
        .worker()
        .start()
        .await
}

/// The schemathesis command (`pip install schemathesis`; `deploy/run-tests.sh` installs it).
fn schemathesis() -> Command {
    let probe = Command::new("schemathesis").arg("--version").output();
    match probe {
        Ok(output) if output.status.success() => Command::new("schemathesis"),
        _ => {
            // Installed for python3 but not on PATH (pip --user, a venv): run the module.
            let module = Command::new("python3")
                .args(["-m", "schemathesis.cli", "--version"])
                .output();
            match module {
                Ok(output) if output.status.success() => {
                    let mut command = Command::new("python3");
                    command.args(["-m", "schemathesis.cli"]);
                    command
                }
                _ => panic!(
                    "schemathesis is not installed: `python3 -m pip install schemathesis` \
                     (deploy/run-tests.sh does it); this test must not be skipped"
                ),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation_with_every_check() {
    let app = fast_app().await;
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut command = schemathesis();
    command
        // The admin key, for the `bearer` scheme (see the file).
        .arg("--config-file")
        .arg(tests.join("schemathesis.toml"))
        .env("ORDERFLOW_SCHEMATHESIS_KEY", &app.admin_key)
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--checks", "all"])
        // The one check left out: it reads a 404 from `GET /v1/orders/{id}` right after a 2xx
        // `POST /v1/orders` as "created resource not found". Here the POST answers `202
        // Accepted` and the worker creates the order a moment later; until then the order is
        // 404 by design (its command, events and `Location` exist at once), as the document
        // says in the `order` link of the 202 and in the 404 of `GET /v1/orders/{order_id}`.
        .args(["--exclude-checks", "ensure_resource_availability"])
        .args(["--max-examples", "200"])
        // Reproducible: the same cases every run (no random seed, no example database).
        .arg("--generation-deterministic")
        .args(["--workers", "1"])
        .args(["--request-timeout", "35"])
        .args(["--report", "junit"])
        .args(["--report-dir", env!("CARGO_TARGET_TMPDIR")])
        .arg("--no-color")
        // It keeps a cache in the working directory: not in the source tree.
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .env("SCHEMATHESIS_HOOKS", tests.join("schemathesis_hooks.py"));
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    println!("schemathesis took {:?}", started.elapsed());
    assert!(
        output.status.success(),
        "schemathesis failed ({}): see its report above",
        output.status
    );
}
