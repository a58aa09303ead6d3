//! The SQL that orderflow's "cannot race" rests on, run under PostgreSQL's own `isolationtester`:
//! each spec in `isolation/` interleaves copies of the statements in `storage/src/` across
//! sessions, permutation by permutation, and its expected output (`isolation/expected/`) records
//! which statements wait, what each returns and what is left. Each test here runs one spec
//! against a fresh database with the migrations applied and compares the output line for line; a
//! last test checks that every statement a spec says it copies (`# from: storage/src/<file>.rs <function>`)
//! is still in that function, so the specs cannot drift from the code unnoticed.
//!
//! isolationtester ships with the PostgreSQL packages (on Debian in `postgresql-client-15`, off
//! PATH); without it these tests fail, they do not skip.

use orderflow_storage::MIGRATOR;
use orderflow_testkit as testing;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Every spec in `isolation/`, each run by one test below.
const SPECS: &[&str] = &[
    "reserve_last_units",
    "reserve_sorted_skus",
    "inbox_redelivery",
    "inbox_direct_producer",
    "idempotency_key",
    "intake_batch",
    "order_lock",
    "confirm_mark",
    "lease_fence",
    "client_feed",
    "set_based_apply",
    "webhook_ready",
];

#[tokio::test]
async fn a_set_based_apply_of_two_commands_of_one_order_writes_both_in_order_and_the_confirm_skips_them()
 {
    run_spec("set_based_apply").await;
}

#[tokio::test]
async fn an_orders_next_webhook_delivery_is_made_ready_whichever_of_fan_out_and_record_comes_first()
{
    run_spec("webhook_ready").await;
}

#[tokio::test]
async fn reserving_the_last_units_never_oversells_and_losers_update_no_row() {
    run_spec("reserve_last_units").await;
}

#[tokio::test]
async fn reserving_several_skus_in_sorted_order_never_deadlocks() {
    run_spec("reserve_sorted_skus").await;
}

#[tokio::test]
async fn a_recorded_command_delivered_twice_at_once_is_applied_once() {
    run_spec("inbox_redelivery").await;
}

#[tokio::test]
async fn a_direct_producers_command_delivered_twice_at_once_is_recorded_and_applied_once() {
    run_spec("inbox_direct_producer").await;
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_make_one_command_and_seqs_stay_gapless() {
    run_spec("idempotency_key").await;
}

#[tokio::test]
async fn a_batch_of_requests_records_each_as_alone_and_never_waits_on_a_held_stream() {
    run_spec("intake_batch").await;
}

#[tokio::test]
async fn the_order_row_lock_shows_a_waiting_worker_the_new_version_so_it_conflicts() {
    run_spec("order_lock").await;
}

#[tokio::test]
async fn the_brokers_confirm_never_waits_for_a_worker_and_a_final_command_is_published() {
    run_spec("confirm_mark").await;
}

#[tokio::test]
async fn a_zombie_worker_commits_only_before_its_partition_is_taken_and_never_after() {
    run_spec("lease_fence").await;
}

#[tokio::test]
async fn relays_append_to_the_clients_feed_gaplessly_in_commit_order_even_across_a_prune() {
    run_spec("client_feed").await;
}

#[test]
fn every_spec_in_the_isolation_directory_has_a_test_and_an_expected_output() {
    let mut found: Vec<String> = std::fs::read_dir(isolation_dir())
        .expect("isolation/ exists")
        .map(|entry| entry.expect("isolation/ is readable").path())
        .filter(|path| path.extension().is_some_and(|e| e == "spec"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut listed: Vec<String> = SPECS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(found, listed, "isolation/*.spec and SPECS disagree");
    for name in SPECS {
        let expected = isolation_dir().join("expected").join(format!("{name}.out"));
        assert!(expected.is_file(), "{} is missing", expected.display());
    }
}

#[test]
fn every_statement_a_spec_copies_is_still_in_the_code() {
    let repository = isolation_dir()
        .parent()
        .expect("isolation/ is inside the repository")
        .to_path_buf();
    let mut failures = Vec::new();
    for name in SPECS {
        let path = isolation_dir().join(format!("{name}.spec"));
        let spec = std::fs::read_to_string(&path).expect("the spec is readable");
        let steps = copied_steps(&spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            !steps.is_empty(),
            "{} copies no statement (`# from: storage/src/<file>.rs <function>` before a step)",
            path.display()
        );
        for step in &steps {
            for (file, function) in &step.claims {
                let source = std::fs::read_to_string(repository.join(file))
                    .unwrap_or_else(|e| panic!("{}: {file}: {e}", path.display()));
                let Some(body) = function_body(&source, function) else {
                    failures.push(format!(
                        "{name}.spec step {}: there is no fn {function} in {file}",
                        step.name
                    ));
                    continue;
                };
                let sql = normalise(&step.sql);
                let statements = sql_literals(body);
                if !statements
                    .iter()
                    .any(|s| contains_statement(&sql, &normalise(s)))
                {
                    failures.push(format!(
                        "{name}.spec step {}: none of the statements of {file} {function} appears \
                         in it (with each $n replaced by a value); the function has:\n    {}",
                        step.name,
                        statements.join("\n    ")
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "specs out of step with storage/src (update the spec, re-read its expected output):\n{}",
        failures.join("\n")
    );
}

#[test]
fn a_copied_statement_matches_only_with_one_value_per_parameter() {
    let code = "update inventory set available = available - $2, reserved = reserved + $2 where sku = $1 and available >= $2";
    let copy = |sql: &str| contains_statement(&normalise(sql), code);
    assert!(copy(
        "with r as (update inventory set available = available - 2, reserved = reserved + 2
           where sku = 'sku-a' and available >= 2 returning 1) select count(*) from r;"
    ));
    assert!(!copy(
        "update inventory set available = available - 2, reserved = reserved + 1 where sku = 'a' and available >= 2"
    ));
    assert!(!copy(
        "update inventory set available = available - 2, reserved = reserved + 2 where sku = 'a' and available > 2"
    ));
    // A value may hold the statement's own separators inside quotes or parentheses.
    assert!(contains_statement(
        "insert into t (a, b) values (jsonb_build_object('k', 'v, w'), 'x, y');",
        "insert into t (a, b) values ($1, $2)"
    ));
}

fn isolation_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("storage/ is inside the repository")
        .join("isolation")
}

/// Drops the spec's database when the test ends, whatever the outcome.
struct Database {
    name: String,
}

impl Drop for Database {
    fn drop(&mut self) {
        testing::remove(None, std::mem::take(&mut self.name));
    }
}

/// Runs `isolation/<name>.spec` on a fresh, migrated database and compares the output with
/// `isolation/expected/<name>.out`. The actual output is kept next to the test binary's scratch
/// files for inspection.
async fn run_spec(name: &str) {
    let tester = isolationtester();
    let id = format!(
        "isolation_{name}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let (url, database) = testing::create_migrated_database(&id, &MIGRATOR).await;
    let _database = Database { name: database };

    let spec = std::fs::File::open(isolation_dir().join(format!("{name}.spec")))
        .expect("the spec is readable");
    // isolationtester takes a libpq connection string; the test database's URL is one, with the
    // role and password of DATABASE_URL. PGISOLATIONTIMEOUT bounds a step that waits for ever
    // (a spec bug) well below the deadline below, so the output still shows which step it was.
    let child = tokio::process::Command::new(&tester)
        .arg(&url)
        .env("PGISOLATIONTIMEOUT", "60")
        .stdin(Stdio::from(spec))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", tester.display()));
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{name}.spec did not finish within 300 s"))
        .expect("isolationtester ran");
    let actual = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    let kept = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("isolation")
        .join(format!("{name}.out"));
    std::fs::create_dir_all(kept.parent().unwrap()).expect("creating the output directory");
    std::fs::write(&kept, actual.as_bytes()).expect("keeping the actual output");

    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "isolationtester failed on {name}.spec ({}); stderr:\n{stderr}\nstdout:\n{actual}",
        output.status
    );
    let expected_path = isolation_dir().join("expected").join(format!("{name}.out"));
    let expected = std::fs::read_to_string(&expected_path).expect("the expected output exists");
    if expected != actual {
        panic!(
            "{name}.spec: the output differs from {} (actual output in {}):\n{}",
            expected_path.display(),
            kept.display(),
            unified_diff(&expected, &actual, "expected", "actual")
        );
    }
}

/// Where isolationtester is: on PATH, or where the PostgreSQL packages put it (Debian keeps it in
/// the PGXS tree, off PATH).
fn isolationtester() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--pgxs")
        .output()
    {
        // …/lib/pgxs/src/makefiles/pgxs.mk → …/lib/pgxs/src/test/isolation
        let pgxs = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if let Some(src) = pgxs.parent().and_then(Path::parent) {
            candidates.push(src.join("test/isolation"));
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse().ok()?;
            Some((version, entry.path()))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    for (_, dir) in versions {
        candidates.push(dir.join("lib/pgxs/src/test/isolation"));
        candidates.push(dir.join("bin"));
    }
    candidates
        .iter()
        .map(|dir| dir.join("isolationtester"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "isolationtester not found: looked on PATH, in pg_config's PGXS tree and in \
                 /usr/lib/postgresql/*/lib/pgxs/src/test/isolation and /usr/lib/postgresql/*/bin. \
                 It ships with PostgreSQL (Debian: postgresql-client-15); install it to run these tests"
            )
        })
}

/// A step of a spec that copies statements from the code.
struct CopiedStep {
    name: String,
    sql: String,
    /// (`storage/src/<file>.rs`, function) for each `# from:` line above the step.
    claims: Vec<(String, String)>,
}

/// The steps preceded by `# from: storage/src/<file>.rs <function>` lines, with their SQL.
fn copied_steps(spec: &str) -> Result<Vec<CopiedStep>, String> {
    let mut steps = Vec::new();
    let mut claims = Vec::new();
    let mut rest = spec;
    while let Some(line_end) = rest.find('\n').or((!rest.is_empty()).then_some(rest.len())) {
        let line = rest[..line_end].trim();
        if let Some(claim) = line.strip_prefix("# from:") {
            let mut words = claim.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(file), Some(function), None) if file.starts_with("storage/src/") => {
                    claims.push((file.to_owned(), function.to_owned()));
                }
                _ => return Err(format!("malformed claim {line:?}")),
            }
        } else if let Some(step) = line.strip_prefix("step ") {
            let name = step.split(['{', ' ']).next().unwrap_or_default().to_owned();
            let open = rest.find('{').ok_or(format!("step {name} has no {{"))?;
            let close = open
                + rest[open..]
                    .find('}')
                    .ok_or(format!("step {name} has no }}"))?;
            if !claims.is_empty() {
                steps.push(CopiedStep {
                    name,
                    sql: rest[open + 1..close].to_owned(),
                    claims: std::mem::take(&mut claims),
                });
            }
            rest = &rest[close + 1..];
            continue;
        } else if !claims.is_empty() && !line.is_empty() && !line.starts_with('#') {
            return Err(format!(
                "a `# from:` line is not followed by a step: {line:?}"
            ));
        }
        rest = rest.get(line_end + 1..).unwrap_or_default();
    }
    if claims.is_empty() {
        Ok(steps)
    } else {
        Err("the last `# from:` line is not followed by a step".into())
    }
}

/// The text of `fn name` (from its signature to the closing brace at the start of a line).
fn function_body<'a>(source: &'a str, name: &str) -> Option<&'a str> {
    let start = [format!("fn {name}("), format!("fn {name}<")]
        .iter()
        .filter_map(|signature| source.find(signature.as_str()))
        .min()?;
    let end = source[start..]
        .find("\n}")
        .map_or(source.len(), |e| start + e);
    Some(&source[start..end])
}

/// The SQL string literals in a piece of Rust (plain and raw strings that start like a statement).
fn sql_literals(code: &str) -> Vec<String> {
    let mut literals = Vec::new();
    let mut chars = code.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let literal = if c == '/' && code[i..].starts_with("//") {
            while chars.next_if(|&(_, c)| c != '\n').is_some() {}
            continue;
        } else if c == 'r' && code[i..].starts_with("r#\"") {
            let body = &code[i + 3..];
            let end = body.find("\"#").unwrap_or(body.len());
            // Skip the rest of the literal: `#"`, the body, `"#`.
            while chars.next_if(|&(j, _)| j < i + 3 + end + 2).is_some() {}
            body[..end].to_owned()
        } else if c == '"' {
            let mut text = String::new();
            while let Some((_, c)) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => text.push('\n'),
                        // A line continuation: the newline and the next line's indent vanish.
                        Some('\n') => while chars.next_if(|&(_, c)| c.is_whitespace()).is_some() {},
                        Some(other) => text.push(other),
                        None => {}
                    },
                    other => text.push(other),
                }
            }
            text
        } else {
            continue;
        };
        let head = literal.trim_start().to_lowercase();
        if ["select", "insert", "update", "delete", "with"]
            .iter()
            .any(|k| head.starts_with(k))
        {
            literals.push(literal);
        }
    }
    literals
}

/// Collapses every run of whitespace to one space.
fn normalise(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Does `text` contain `statement` with each `$n` replaced by some value (the same value for every
/// occurrence of one `$n`)? A value is whatever stands there up to the statement's next piece,
/// outside quotes and parentheses: a literal, a cast, a `jsonb_build_object(…)`.
fn contains_statement(text: &str, statement: &str) -> bool {
    let (pieces, params) = split_params(statement);
    text.match_indices(pieces[0].as_str()).any(|(start, _)| {
        let mut at = start + pieces[0].len();
        let mut bound: Vec<(usize, &str)> = Vec::new();
        for (param, next) in params.iter().zip(&pieces[1..]) {
            let Some(end) = value_end(text, at, next) else {
                return false;
            };
            let value = text[at..end].trim();
            match bound.iter().find(|(p, _)| p == param) {
                Some((_, earlier)) if *earlier != value => return false,
                Some(_) => {}
                None => bound.push((*param, value)),
            }
            at = end + next.len();
        }
        true
    })
}

/// `update t set a = $2 where b = $1` → (["update t set a = ", " where b = ", ""], [2, 1]).
fn split_params(statement: &str) -> (Vec<String>, Vec<usize>) {
    let mut pieces = vec![String::new()];
    let mut params = Vec::new();
    let mut chars = statement.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut number = 0;
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                number = number * 10 + d.to_digit(10).unwrap() as usize;
            }
            params.push(number);
            pieces.push(String::new());
        } else {
            pieces.last_mut().unwrap().push(c);
        }
    }
    (pieces, params)
}

/// Where a value starting at `from` ends: before the first `next` outside quotes and parentheses
/// (or, when `next` is empty, at the first space, `;` or unmatched `)`).
fn value_end(text: &str, from: usize, next: &str) -> Option<usize> {
    let mut depth = 0i32;
    let mut quote = None;
    for (offset, c) in text[from..].char_indices() {
        let at = from + offset;
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => {
                if depth == 0 && offset > 0 {
                    let ends = if next.is_empty() {
                        c == ' ' || c == ';' || c == ')'
                    } else {
                        text[at..].starts_with(next)
                    };
                    if ends {
                        return Some(at);
                    }
                }
                match c {
                    '\'' | '"' => quote = Some(c),
                    '(' => depth += 1,
                    ')' if depth == 0 => return None,
                    ')' => depth -= 1,
                    _ => {}
                }
            }
        }
    }
    (next.is_empty() && quote.is_none() && depth == 0).then_some(text.len())
}

/// A unified diff (3 lines of context) of two texts, line by line.
fn unified_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // The edit script: (' ' | '-' | '+', line in a, line in b).
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', i, j));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, j));
            i += 1;
        } else {
            ops.push(('+', i, j));
            j += 1;
        }
    }
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut k = 0;
    while k < changed.len() {
        // A hunk: changes less than 7 lines apart, with 3 lines of context around them.
        let mut last = k;
        while last + 1 < changed.len() && changed[last + 1] - changed[last] <= 6 {
            last += 1;
        }
        let start = changed[k].saturating_sub(3);
        let end = (changed[last] + 4).min(ops.len());
        let (a_start, b_start) = (ops[start].1, ops[start].2);
        let a_len = ops[start..end].iter().filter(|o| o.0 != '+').count();
        let b_len = ops[start..end].iter().filter(|o| o.0 != '-').count();
        out += &format!("@@ -{},{a_len} +{},{b_len} @@\n", a_start + 1, b_start + 1);
        for &(op, i, j) in &ops[start..end] {
            let line = if op == '+' { b[j] } else { a[i] };
            out += &format!("{op}{line}\n");
        }
        k = last + 1;
    }
    if changed.is_empty() {
        out += "(the texts differ only in line endings or the final newline)\n";
    }
    out
}
