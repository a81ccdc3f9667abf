//! A schema-driven fuzz run: schemathesis (from PyPI; the test command
//! installs it) generates requests from the API's own `/openapi.json` and
//! sends them, with an admin key, to a real `draas up`. No answer may be a
//! 5xx the contract does not explain (`scripts/fuzz_checks.py`), and
//! requests that were refused must have changed nothing: the instances
//! that exist are exactly those the audit log shows created and not
//! deleted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Draas;
use serde_json::Value;

/// The schemathesis CLI: `$DRAAS_SCHEMATHESIS`, else the test command's
/// virtual environment.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("DRAAS_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME");
    let path = PathBuf::from(home).join(".cache/draas/venv/bin/st");
    assert!(
        path.exists(),
        "schemathesis is not installed: run scripts/test.sh (it installs it into ~/.cache/draas/venv) or set DRAAS_SCHEMATHESIS"
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_get_no_unexplained_server_error_and_refused_ones_change_nothing() {
    let st = schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let draas = Draas::up_with_args(
        dir.path(),
        &["--require-auth", "--docker", "off", "--rate-limit", "0"],
    )
    .await;
    let token = draas.api.token.clone().unwrap();
    let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts");
    let mut command = Command::new(st);
    command
        .arg("run")
        .arg(draas.url("/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "only_explained_server_errors"])
        // An event stream never ends; the reference page is HTML.
        .args([
            "--exclude-path",
            "/api/events",
            "--exclude-path",
            "/scalar/v1",
        ])
        .args(["--max-examples", "10", "--request-timeout", "45"])
        // One worker: CPython 3.11's AST construction is not thread-safe
        // under schemathesis's threads ("recursion depth mismatch").
        .args(["--phases", "coverage,fuzzing", "--workers", "1"])
        .args(["--seed", "20261124"])
        .env("PYTHONPATH", &scripts)
        .env("SCHEMATHESIS_HOOKS", "fuzz_checks")
        .env("NO_COLOR", "1")
        .current_dir(dir.path());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tail: String = stdout
        .lines()
        .rev()
        .take(200)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{tail}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("passed"), "{tail}");
    eprintln!("{tail}");

    // The audit log, all of it.
    let mut entries: Vec<Value> = Vec::new();
    let mut since = 0;
    loop {
        let (status, page) = draas
            .get(&format!("/api/audit?since={since}&limit=1000"))
            .await;
        assert_eq!(status, 200, "{page}");
        let got = page["entries"].as_array().unwrap().clone();
        if got.is_empty() {
            break;
        }
        since = page["next"].as_u64().unwrap();
        entries.extend(got);
    }
    assert!(entries.len() > 100, "the fuzzer sent mutations");
    assert!(
        entries.iter().all(|e| e["status"] != 500),
        "no internal errors"
    );
    let count = |method: &str, status: u64, is_instance_path: fn(&str) -> bool| {
        entries
            .iter()
            .filter(|e| {
                e["method"] == method
                    && e["status"] == status
                    && e["outcome"] == "ok"
                    && is_instance_path(e["path"].as_str().unwrap())
            })
            .count()
    };
    let created = count("POST", 201, |p| p == "/api/server/instances");
    let deleted = count("DELETE", 204, |p| {
        p.strip_prefix("/api/server/instances/")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
    });
    let (_, list) = draas.get("/api/server/instances?limit=1000").await;
    let total = list["total"].as_u64().unwrap() as usize;
    assert_eq!(
        total,
        created - deleted,
        "instances exist only through accepted creates: {created} created, {deleted} deleted"
    );
}
