//! The `draas` client commands: the real binary against a real `draas up
//! --require-auth`, with contexts, tables, `-o json|yaml`, `wait`, and the
//! exit codes scripts rely on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Draas, DRAAS};
use serde_json::Value;

/// Runs `draas ARGS` with the contexts file in `dir`.
fn draas(dir: &Path, args: &[&str]) -> Output {
    Command::new(DRAAS)
        .args(args)
        .env("DRAAS_CONFIG", dir.join("contexts.yaml"))
        .env_remove("DRAAS_SERVER")
        .env_remove("DRAAS_TOKEN")
        .output()
        .expect("run draas")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}{}",
        output.status.code(),
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_creates_starts_waits_lists_and_deletes_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let server = Draas::up_with_args(dir.path(), &["--require-auth"]).await;
    let url = server.url("");
    let token = server.api.token.clone().unwrap();
    let home = dir.path();

    // Without a key: refused, exit code 6.
    let denied = draas(home, &["instance", "list", "--server", &url]);
    assert_eq!(denied.status.code(), Some(6), "{}", stdout(&denied));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("UNAUTHENTICATED"));

    // A context holds the server and the key; the file is private.
    ok(&draas(
        home,
        &[
            "context", "add", "local", "--server", &url, "--token", &token, "--use",
        ],
    ));
    ok(&draas(
        home,
        &["context", "add", "other", "--server", "http://127.0.0.1:1"],
    ));
    let listed = ok(&draas(home, &["context", "list"]));
    assert!(
        listed.contains("local") && listed.contains("other"),
        "{listed}"
    );
    assert!(!listed.contains(&token), "keys are never listed");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(home.join("contexts.yaml"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Create from a configuration file, then start (waits for Running).
    let config = home.join("counter.yaml");
    std::fs::write(
        &config,
        "logLevel: info\nsources:\n  - kind: mock\n    id: counter\n    dataType:\n      type: counter\n    intervalMs: 100\nqueries:\n  - id: values\n    autoStart: true\n    queryLanguage: Cypher\n    query: MATCH (c:Counter) RETURN c.value AS value\n    sources:\n      - sourceId: counter\nreactions:\n  - kind: log\n    id: console\n    queries: [values]\n",
    )
    .unwrap();
    let created: Value = serde_json::from_str(&ok(&draas(
        home,
        &[
            "instance",
            "create",
            "demo",
            "-f",
            config.to_str().unwrap(),
            "-o",
            "json",
        ],
    )))
    .unwrap();
    assert_eq!(created["name"], "demo");
    let started: Value = serde_json::from_str(&ok(&draas(
        home,
        &["instance", "start", "demo", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(started["status"]["state"], "Running", "{started}");
    let waited: Value = serde_json::from_str(&ok(&draas(
        home,
        &[
            "instance",
            "wait",
            "demo",
            "--for",
            "Running",
            "--timeout",
            "10",
            "-o",
            "json",
        ],
    )))
    .unwrap();
    assert_eq!(waited["id"], created["id"]);

    // Tables: the name, the state; wide adds the endpoint.
    let table = ok(&draas(home, &["instance", "list"]));
    let row = table.lines().find(|l| l.contains("demo")).expect("a row");
    assert!(
        row.contains("Running") && row.contains("Process"),
        "{table}"
    );
    assert!(table.lines().next().unwrap().contains("STATE"));
    let wide = ok(&draas(home, &["instance", "get", "demo", "-o", "wide"]));
    assert!(wide.contains("http://"), "{wide}");
    let yaml = ok(&draas(home, &["instance", "get", "demo", "-o", "yaml"]));
    let parsed: Value = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(parsed["status"]["state"], "Running");
    let platforms = ok(&draas(home, &["platforms"]));
    assert!(
        platforms.contains("Process") && platforms.contains("true"),
        "{platforms}"
    );

    // Exit codes: not found 3, a wait that runs out 4, unreachable 5,
    // a bad file 7, and the server's reasons on stderr.
    let missing = draas(home, &["instance", "get", "nothing-here"]);
    assert_eq!(missing.status.code(), Some(3));
    let timed_out = draas(
        home,
        &[
            "instance",
            "wait",
            "demo",
            "--for",
            "Stopped",
            "--timeout",
            "1",
        ],
    );
    assert_eq!(timed_out.status.code(), Some(4));
    let unreachable = draas(home, &["platforms", "--context", "other"]);
    assert_eq!(unreachable.status.code(), Some(5));
    let bad_file = draas(
        home,
        &["instance", "create", "x", "-f", "/nonexistent.yaml"],
    );
    assert_eq!(bad_file.status.code(), Some(7));
    std::fs::write(
        &config,
        "queries:\n  - id: q\n    query: THIS IS NOT CYPHER\n    sources:\n      - sourceId: missing\n",
    )
    .unwrap();
    let rejected = draas(
        home,
        &[
            "instance",
            "create",
            "rejected",
            "-f",
            config.to_str().unwrap(),
        ],
    );
    assert_eq!(rejected.status.code(), Some(1));
    let reason = String::from_utf8_lossy(&rejected.stderr);
    assert!(
        reason.contains("422") && reason.contains("at /"),
        "{reason}"
    );

    // Stop and delete.
    let stopped: Value = serde_json::from_str(&ok(&draas(
        home,
        &["instance", "stop", "demo", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(stopped["status"]["state"], "Stopped");
    ok(&draas(home, &["instance", "delete", "demo"]));
    assert_eq!(
        draas(home, &["instance", "get", "demo"]).status.code(),
        Some(3)
    );

    // Completions for the shells.
    let bash = ok(&draas(home, &["completions", "bash"]));
    assert!(
        bash.contains("instance") && bash.contains("_draas"),
        "completion script"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_edits_configurations_and_reads_status_events_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let server = Draas::up(dir.path()).await;
    let url = server.url("");
    let home = dir.path();
    let with = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", url.as_str()]);
        draas(home, &all)
    };
    ok(&with(&["instance", "create", "edited"]));

    // get (YAML), patch, apply.
    let yaml = ok(&with(&["config", "get", "edited"]));
    assert!(yaml.contains("logLevel: info"), "{yaml}");
    let patched = ok(&with(&[
        "config",
        "patch",
        "edited",
        "--patch",
        r#"[{"op": "replace", "path": "/logLevel", "value": "warn"}]"#,
    ]));
    assert!(patched.contains("logLevel: warn"), "{patched}");
    let file = home.join("whole.yaml");
    std::fs::write(&file, patched.replace("logLevel: warn", "logLevel: error")).unwrap();
    let applied = ok(&with(&[
        "config",
        "apply",
        "edited",
        "-f",
        file.to_str().unwrap(),
    ]));
    assert!(applied.contains("logLevel: error"), "{applied}");

    // edit: the first save is refused and comes back with the server's
    // objection at its line; the second is accepted.
    let editor = home.join("editor.py");
    std::fs::write(
        &editor,
        r##"import os, pathlib, sys
f = pathlib.Path(sys.argv[1])
count = pathlib.Path(os.environ["EDIT_COUNT"])
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
text = f.read_text()
bad = "queries:\n- id: q\n  query: THIS IS NOT CYPHER\n  sources:\n  - sourceId: counter\n"
if n == 1:
    text = text.replace("queries: []\n", bad)
else:
    pathlib.Path(os.environ["EDIT_SEEN"]).write_text(text)
    kept = [l for l in text.splitlines(True) if "# draas:" not in l]
    text = "".join(kept).replace(bad, "queries: []\n").replace("logLevel: error", "logLevel: debug")
f.write_text(text)
"##,
    )
    .unwrap();
    let edited = Command::new(DRAAS)
        .args(["config", "edit", "edited", "--server", &url])
        .env("DRAAS_CONFIG", home.join("contexts.yaml"))
        .env("EDITOR", format!("python3 {}", editor.display()))
        .env_remove("VISUAL")
        .env("EDIT_COUNT", home.join("count"))
        .env("EDIT_SEEN", home.join("seen.yaml"))
        .output()
        .unwrap();
    let after = ok(&edited);
    assert!(after.contains("logLevel: debug"), "{after}");
    let seen = std::fs::read_to_string(home.join("seen.yaml")).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("query: THIS IS NOT CYPHER"))
        .expect("the bad line came back");
    assert!(
        lines[at - 1].contains("# draas: /queries/0/query"),
        "the objection sits above its line:\n{seen}"
    );
    assert_eq!(std::fs::read_to_string(home.join("count")).unwrap(), "2");

    // Status changes, events, logs, query results.
    ok(&with(&["instance", "start", "edited"]));
    let changes = ok(&with(&["status", "changes"]));
    assert!(changes.contains("Running"), "{changes}");
    let events = ok(&with(&["events"]));
    assert!(
        events
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
            && !events.is_empty(),
        "{events}"
    );
    ok(&with(&["instance", "logs", "edited", "--tail", "5"]));
    let pipeline = home.join("counter.yaml");
    std::fs::write(
        &pipeline,
        "sources:\n- kind: mock\n  id: counter\n  dataType:\n    type: counter\n  intervalMs: 100\nqueries:\n- id: values\n  autoStart: true\n  queryLanguage: Cypher\n  query: MATCH (c:Counter) RETURN c.value AS value\n  sources:\n  - sourceId: counter\nreactions:\n- kind: log\n  id: console\n  queries: [values]\n",
    )
    .unwrap();
    ok(&with(&[
        "instance",
        "create",
        "counting",
        "-f",
        pipeline.to_str().unwrap(),
    ]));
    ok(&with(&["instance", "start", "counting"]));
    let rows = draas_testkit::wait_for("query rows", std::time::Duration::from_secs(10), || {
        let out = ok(&with(&[
            "query", "results", "counting", "values", "-o", "json",
        ]));
        let rows = serde_json::from_str::<Vec<Value>>(&out).unwrap();
        async move { (!rows.is_empty()).then_some(rows) }
    })
    .await;
    assert!(rows[0]["value"].is_number(), "{rows:?}");
    let table = ok(&with(&["query", "results", "counting", "values"]));
    assert!(table.lines().next().unwrap().contains("value"), "{table}");
    let missing = with(&["query", "results", "counting", "nope"]);
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no query 'nope'"),
        "{missing:?}"
    );
}

/// The attack: a saved context holds an operator's key; a command is
/// pointed (`--server`) at another host, one that records what it is sent.
/// The key is not sent there. The control: the same host saved as a
/// context with its own key receives that key.
#[test]
fn a_contexts_key_is_never_sent_to_another_server() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let trap = format!("http://{}", listener.local_addr().unwrap());
    // Records the request headers of each connection, answers `[]`.
    let recorder = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                headers.push_str(&line.to_ascii_lowercase());
            }
            let mut stream = stream;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]")
                .unwrap();
            seen.push(headers);
        }
        seen
    });
    ok(&draas(
        home,
        &[
            "context",
            "add",
            "prod",
            "--server",
            "http://127.0.0.1:1",
            "--token",
            "secret-operator-key",
            "--use",
        ],
    ));
    ok(&draas(
        home,
        &[
            "context",
            "add",
            "trap",
            "--server",
            &trap,
            "--token",
            "the-traps-own-key",
        ],
    ));
    // The attack: the current context's key, pointed elsewhere.
    let _ = draas(home, &["platforms", "--server", &trap]);
    // The control: the trap's own context.
    let _ = draas(home, &["platforms", "--context", "trap"]);
    let seen = recorder.join().unwrap();
    assert!(
        !seen[0].contains("authorization") && !seen[0].contains("secret-operator-key"),
        "{}",
        seen[0]
    );
    assert!(
        seen[1].contains("authorization: bearer the-traps-own-key"),
        "{}",
        seen[1]
    );
}
