//! The `orderflow-api` binary: its commands and the deploy files it ships with.

mod common;

use orderflow_testkit::Stack;
use reqwest::StatusCode;
use std::process::Command;

const API: &str = env!("CARGO_BIN_EXE_orderflow-api");

#[tokio::test]
async fn client_create_prints_a_working_key_alone_on_stdout() {
    let app = Stack::builder().api().start().await;
    let output = Command::new(API)
        .args(["client", "create", "--name", "cli-test", "--admin"])
        .env("DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let key = stdout.strip_suffix('\n').unwrap();
    assert!(key.starts_with("of_") && key.len() == 67, "{stdout:?}");
    assert!(key[3..].bytes().all(|b| b.is_ascii_hexdigit()));

    let response = app
        .http
        .put(app.url("/v1/inventory/CLI-SKU"))
        .bearer_auth(key)
        .json(&serde_json::json!({"available": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "an admin key");
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("select key_hash from clients where name = 'cli-test'")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], key.as_bytes(), "only the hash is stored");
}

#[tokio::test]
async fn client_revoke_stops_a_key_even_where_the_api_has_it_cached() {
    let app = Stack::builder().api().start().await;
    let read = || app.request(reqwest::Method::GET, "/v1/inventory/X").send();
    // Checked once (and so cached, by default, once the API listens for changes to clients).
    assert_eq!(read().await.unwrap().status(), StatusCode::NOT_FOUND);
    let id: uuid::Uuid = sqlx::query_scalar("select id from clients where name = 'test-client'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let output = Command::new(API)
        .args(["client", "revoke", "--id", &id.to_string()])
        .env("DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Another process revoked it: the notification empties the API's cache.
    common::until_unauthorized(StatusCode::NOT_FOUND, read).await;
    assert_eq!(read().await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn help_describes_every_option() {
    let output = Command::new(API).arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for option in [
        "DATABASE_URL",
        "AMQP_URL",
        "ORDERFLOW_NAMESPACE",
        "ORDERFLOW_PARTITIONS",
        "ORDERFLOW_LISTEN",
        "migrate",
        "client",
    ] {
        assert!(help.contains(option), "--help lacks {option}:\n{help}");
    }
}

#[test]
fn the_compose_stack_is_valid() {
    let compose = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/docker-compose.yml");
    let output = Command::new("docker-compose")
        .args(["-f", compose, "config", "-q"])
        .output()
        .expect("docker-compose is installed (deploy/run-tests.sh installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(compose).unwrap();
    for service in [
        "postgres:",
        "rabbitmq:",
        "migrate:",
        "api:",
        "worker-1:",
        "worker-2:",
    ] {
        assert!(text.contains(service), "compose lacks {service}");
    }
}

/// Runs `orderflow-api operator …` against the stack's database, with `stdin` on standard input.
fn operator_command(app: &Stack, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(API)
        .arg("operator")
        .args(args)
        .env("DATABASE_URL", &app.database_url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A subcommand that reads nothing (and may have exited already) closes the pipe first: that
    // is no failure; what it printed and its exit status are what the tests check.
    let written = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn operator_create_list_set_password_and_disable_work_from_the_command_line() {
    let app = Stack::builder().api().start().await;
    let create = |name: &str, role: &str, password: &str| {
        operator_command(
            &app,
            &["create", "--name", name, "--role", role, "--password-stdin"],
            &format!("{password}\n"),
        )
    };
    let created = create("olga", "operator", "a long enough password");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    // Refused, each with its reason, and nothing written.
    for (output, reason) in [
        (
            create("olga", "viewer", "another long password"),
            "exists already",
        ),
        (
            create("Bad Name", "viewer", "another long password"),
            "--name",
        ),
        (create("pat", "viewer", "short"), "12 to 1024 bytes"),
        (create("pat", "root", "another long password"), "root"),
    ] {
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason), "{reason}: {stderr}");
    }
    let no_stdin_flag = Command::new(API)
        .args(["operator", "create", "--name", "pat", "--role", "viewer"])
        .env("DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    assert!(!no_stdin_flag.status.success(), "a password only on stdin");

    let session = app.sign_in("olga", "a long enough password").await;
    let list = operator_command(&app, &["list"], "");
    let listed = String::from_utf8(list.stdout).unwrap();
    let line = listed.lines().find(|l| l.starts_with("olga\t")).unwrap();
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields[1..4], ["operator", "live", "1"], "{line}");
    assert_eq!(listed.lines().count(), 1, "{listed}");

    // A new password ends the sessions signed in with the old one.
    let set = operator_command(
        &app,
        &["set-password", "--name", "olga", "--password-stdin"],
        "a new long password\n",
    );
    assert!(set.status.success());
    let old = app
        .as_signed_in(&session, reqwest::Method::GET, "/dashboard/api/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    let session = app.sign_in("olga", "a new long password").await;

    let disabled = operator_command(&app, &["disable", "--name", "olga"], "");
    assert!(disabled.status.success());
    let after = app
        .as_signed_in(&session, reqwest::Method::GET, "/dashboard/api/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    let again = operator_command(&app, &["disable", "--name", "olga"], "");
    assert!(!again.status.success(), "no live operator olga");
    let list = operator_command(&app, &["list"], "");
    let listed = String::from_utf8(list.stdout).unwrap();
    assert!(listed.contains("\tdisabled "), "{listed}");
}
