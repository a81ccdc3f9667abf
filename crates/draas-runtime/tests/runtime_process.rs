//! End-to-end tests of the `draas-runtime` binary as a real process: real
//! drasi-lib components, real HTTP, real signals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use draas_testkit::process::TestProcess;
use draas_testkit::{free_port, get_json, wait_for};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_draas-runtime");

/// A runtime process in its own working directory.
struct Runtime {
    process: TestProcess,
    port: u16,
    dir: tempfile::TempDir,
}

impl Runtime {
    /// Writes `config` (with `{port}` replaced by a free port) and starts
    /// the runtime on it.
    fn start(config: &str) -> Self {
        let port = free_port();
        Self::start_on(config, port)
    }

    fn start_on(config: &str, port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config.replace("{port}", &port.to_string());
        std::fs::write(dir.path().join("server.yaml"), text).expect("write config");
        let mut command = Command::new(BIN);
        command
            .current_dir(dir.path())
            .args(["--config", "server.yaml"]);
        let process = TestProcess::spawn(command, "runtime", dir.path()).expect("spawn runtime");
        Self { process, port, dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn wait_healthy(&mut self) {
        let url = self.url("/health");
        let process = &mut self.process;
        wait_for("runtime /health", Duration::from_secs(30), || {
            assert!(process.is_running(), "runtime exited: {}", process.stderr());
            let url = url.clone();
            async move { get_json(&url).await.filter(|(s, _)| *s == 200) }
        })
        .await;
    }

    /// Waits until the query has at least `min` result rows and returns them.
    async fn wait_rows(&self, query: &str, min: usize) -> Vec<Value> {
        let url = self.url(&format!("/api/v1/queries/{query}/results"));
        wait_for(
            &format!("{min} rows from {query}"),
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    let (status, body) = get_json(&url).await?;
                    let rows = body["data"].as_array()?.clone();
                    (status == 200 && rows.len() >= min).then_some(rows)
                }
            },
        )
        .await
    }
}

const MOCK_PIPELINE: &str = r#"
id: mock-pipeline
host: 127.0.0.1
port: {port}
persistConfig: false
sources:
  - kind: mock
    id: sensors
    dataType: {type: sensorReading, sensorCount: 3}
    intervalMs: 100
queries:
  - id: readings
    autoStart: true
    queryLanguage: Cypher
    query: "MATCH (s:SensorReading) RETURN s.sensor_id AS sensor, s.temperature AS temperature"
    sources: [{sourceId: sensors}]
reactions:
  - kind: log
    id: console
    queries: [readings]
"#;

#[tokio::test]
async fn mock_pipeline_returns_rows_shaped_like_the_return_clause() {
    let mut rt = Runtime::start(MOCK_PIPELINE);
    rt.wait_healthy().await;

    let rows = rt.wait_rows("readings", 3).await;
    for row in &rows {
        let keys: BTreeSet<&str> = row
            .as_object()
            .expect("row is an object")
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys, BTreeSet::from(["sensor", "temperature"]), "row {row}");
        assert!(row["sensor"]
            .as_str()
            .expect("sensor")
            .starts_with("sensor_"));
        let t = row["temperature"].as_f64().expect("temperature");
        assert!((20.0..=30.0).contains(&t), "temperature {t}");
    }

    // The envelope and per-kind lists, with status and links.
    for (kind, id) in [
        ("sources", "sensors"),
        ("queries", "readings"),
        ("reactions", "console"),
    ] {
        let (status, body) = get_json(&rt.url(&format!("/api/v1/{kind}")))
            .await
            .expect("list");
        assert_eq!(status, 200);
        assert_eq!(body["success"], true);
        assert_eq!(body["error"], Value::Null);
        let items = body["data"].as_array().expect("data");
        assert_eq!(items.len(), 1, "{kind}: {body}");
        assert_eq!(items[0]["id"], id);
        assert_eq!(items[0]["status"], "Running");
        assert_eq!(
            items[0]["links"]["self"],
            format!("/api/v1/instances/mock-pipeline/{kind}/{id}")
        );
    }
    let (_, full) = get_json(&rt.url("/api/v1/sources/sensors?view=full"))
        .await
        .expect("full");
    assert_eq!(full["data"]["config"]["dataType"]["sensorCount"], 3);
    let (_, scoped) = get_json(&rt.url("/api/v1/instances/mock-pipeline/queries/readings"))
        .await
        .expect("scoped");
    assert_eq!(scoped["data"]["status"], "Running");

    // drasi-server error shapes.
    let (status, body) = get_json(&rt.url("/api/v1/queries/nope/results"))
        .await
        .expect("404");
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("QUERY_NOT_FOUND"))
    );
    let (status, body) = get_json(&rt.url("/api/v1/instances/other/queries"))
        .await
        .expect("404");
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("INSTANCE_NOT_FOUND"))
    );

    // Data lives under the working directory, per id.
    assert!(rt
        .dir
        .path()
        .join("data/id-6d6f636b2d706970656c696e65")
        .is_dir());
}

#[tokio::test]
async fn an_event_posted_to_an_http_source_shows_up_in_results() {
    let source_port = free_port();
    let config = format!(
        r#"
id: shop
host: 127.0.0.1
port: {{port}}
sources:
  - {{kind: http, id: orders, host: 127.0.0.1, port: {source_port}}}
queries:
  - id: big-orders
    autoStart: true
    queryLanguage: Cypher
    query: "MATCH (o:Order) WHERE o.total > 100 RETURN o.id AS order, o.total AS total"
    sources: [{{sourceId: orders}}]
reactions:
  - {{kind: log, id: console, queries: [big-orders]}}
"#
    );
    let mut rt = Runtime::start(&config);
    rt.wait_healthy().await;
    let (_, body) = get_json(&rt.url("/api/v1/queries/big-orders/results"))
        .await
        .expect("results");
    assert_eq!(body["data"], json!([]));

    let client = reqwest::Client::new();
    for (id, total) in [("o-1", 250), ("o-2", 20)] {
        let event = json!({
            "operation": "insert",
            "element": {"type": "node", "id": id, "labels": ["Order"], "properties": {"id": id, "total": total}}
        });
        let response = client
            .post(format!(
                "http://127.0.0.1:{source_port}/sources/orders/events"
            ))
            .json(&event)
            .send()
            .await
            .expect("post event");
        assert!(response.status().is_success(), "{}", response.status());
    }
    let rows = rt.wait_rows("big-orders", 1).await;
    assert_eq!(rows, vec![json!({"order": "o-1", "total": 250})]);
}

/// Starts the runtime on `config`, expects exit 1 before the API answers,
/// and returns stderr.
async fn startup_failure(config: &str, port: u16) -> String {
    let mut rt = Runtime::start_on(config, port);
    let status = rt
        .process
        .wait_timeout(Duration::from_secs(30))
        .expect("runtime exits");
    assert_eq!(status.code(), Some(1), "stderr: {}", rt.process.stderr());
    rt.process.stderr()
}

#[tokio::test]
async fn bad_configurations_exit_1_with_a_message_naming_the_problem() {
    let cases = [
        (
            "id: x\nport: {port}\npersist_index: true\n",
            vec!["unknown field `persist_index`", "line 3"],
        ),
        (
            "id: x\nport: {port}\nsources:\n  - kind: mock\n    id: s\n    intervalMS: 5\n",
            vec!["source 's' (mock)", "unknown field `intervalMS`", "line 6"],
        ),
        (
            "id: x\nport: {port}\nsources: [{kind: mock, id: s}]\nqueries:\n  - {id: q, query: 'MATCH (n) RETURN n', sources: [{sourceId: nope}]}\n",
            vec!["query 'q' references source 'nope'"],
        ),
        (
            "id: x\nport: {port}\nreactions:\n  - {kind: log, id: r, queries: [ghost]}\n",
            vec!["reaction 'r' references query 'ghost'"],
        ),
        ("id: x\nport: 0\n", vec!["port 0 is not allowed"]),
        (
            "id: x\nport: {port}\nqueries:\n  - {id: q, queryLanguage: Cypher, query: 'MATCH (n RETURN n'}\n",
            vec!["query 'q' is not valid Cypher"],
        ),
    ];
    for (config, expected) in cases {
        let stderr = startup_failure(config, free_port()).await;
        for needle in expected {
            assert!(
                stderr.contains(needle),
                "expected {needle:?} in stderr for\n{config}\ngot: {stderr}"
            );
        }
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("Error: "), "{stderr}");
    }
}

#[tokio::test]
async fn a_taken_api_port_or_source_port_fails_startup_naming_it() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = held.local_addr().expect("addr").port();

    let stderr = startup_failure("id: x\nhost: 127.0.0.1\nport: {port}\n", taken).await;
    assert!(
        stderr.contains(&format!("cannot bind the API on 127.0.0.1:{taken}")),
        "{stderr}"
    );

    let config = format!("id: x\nhost: 127.0.0.1\nport: {{port}}\nsources:\n  - {{kind: http, id: inbox, host: 127.0.0.1, port: {taken}}}\n");
    let api_port = free_port();
    let stderr = startup_failure(&config, api_port).await;
    assert!(stderr.contains("inbox"), "names the source: {stderr}");
    assert!(
        get_json(&format!("http://127.0.0.1:{api_port}/health"))
            .await
            .is_none(),
        "the API never bound"
    );
}

#[tokio::test]
async fn a_missing_config_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--config", "absent.yaml"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot read config file 'absent.yaml'"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("absent.yaml").exists(),
        "nothing is created"
    );
}

#[tokio::test]
async fn sigterm_and_sigint_stop_components_in_order_and_exit_0() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut rt = Runtime::start(MOCK_PIPELINE);
        rt.wait_healthy().await;
        rt.wait_rows("readings", 1).await;

        // Watch the lifecycle events while stopping.
        let events = reqwest::get(rt.url("/api/v1/events"))
            .await
            .expect("events");
        assert_eq!(events.headers()["content-type"], "text/event-stream");
        rt.process.signal(signal);
        let status = rt
            .process
            .wait_timeout(Duration::from_secs(20))
            .expect("exits in time");
        assert_eq!(status.code(), Some(0), "{signal}: {}", rt.process.stderr());

        let body = events.text().await.unwrap_or_default();
        let stopped: Vec<String> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|e| e["status"] == "Stopped")
            .map(|e| e["componentId"].as_str().unwrap_or_default().to_string())
            .collect();
        let position = |id: &str| stopped.iter().position(|s| s == id);
        assert!(
            position("console") < position("readings")
                && position("readings") < position("sensors")
                && position("console").is_some(),
            "{signal}: reactions, then queries, then sources stop: {stopped:?}"
        );
    }
}

#[test]
fn validate_reports_and_sets_the_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, MOCK_PIPELINE.replace("{port}", "8080")).expect("write");
    let output = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("Summary: valid"), "{stdout}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "sources:\n  - {kind: kafka, id: k}\n").expect("write");
    let output = Command::new(BIN)
        .args(["validate", "-c"])
        .arg(&bad)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("[ERR]  source 'k': the bundled runtime has no plugin of kind 'kafka'"),
        "{stdout}"
    );
    assert!(stdout.contains("line 2"), "{stdout}");
}

#[test]
fn every_example_configuration_validates() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let output = Command::new(BIN)
                .arg("validate")
                .arg("-c")
                .arg(&path)
                .output()
                .expect("run");
            assert!(
                output.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&output.stdout)
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "found {checked} examples");
}

#[tokio::test]
async fn the_configuration_can_come_from_an_environment_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = draas_testkit::free_port();
    let yaml = format!("id: from-env\nhost: 127.0.0.1\nport: {port}\n");
    let validated = std::process::Command::new(BIN)
        .current_dir(dir.path())
        .args(["validate", "--config-env", "SERVER_YAML"])
        .env("SERVER_YAML", &yaml)
        .output()
        .expect("validate");
    assert!(
        validated.status.success(),
        "{}",
        String::from_utf8_lossy(&validated.stdout)
    );
    assert!(String::from_utf8_lossy(&validated.stdout).contains("Validating $SERVER_YAML"));

    let mut command = std::process::Command::new(BIN);
    command
        .current_dir(dir.path())
        .args(["--config-env", "SERVER_YAML"])
        .env("SERVER_YAML", &yaml);
    let mut server =
        draas_testkit::process::TestProcess::spawn(command, "from-env", dir.path()).expect("spawn");
    let health = format!("http://127.0.0.1:{port}/health");
    draas_testkit::wait_for("/health", std::time::Duration::from_secs(10), || {
        let health = health.clone();
        async move { draas_testkit::get_json(&health).await.map(|_| ()) }
    })
    .await;
    assert!(server.is_running());

    // A bad value is reported like a bad file, naming the variable.
    let bad = std::process::Command::new(BIN)
        .current_dir(dir.path())
        .args(["--config-env", "SERVER_YAML"])
        .env("SERVER_YAML", "id: x\nport: 1\nnonsense: true\n")
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("invalid config file '$SERVER_YAML'") && stderr.contains("nonsense"),
        "{stderr}"
    );
    let unset = std::process::Command::new(BIN)
        .current_dir(dir.path())
        .args(["--config-env", "NOT_SET_ANYWHERE"])
        .env_remove("NOT_SET_ANYWHERE")
        .output()
        .expect("run");
    assert_eq!(unset.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unset.stderr).contains("$NOT_SET_ANYWHERE"));
}

/// Starts `draas-runtime --standby` with its stdin a pipe.
fn standby() -> std::process::Child {
    Command::new(BIN)
        .arg("--standby")
        .env_clear()
        .env("STANDBY_ONLY", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn standby")
}

/// Waits up to 10 s for `child` to exit.
fn exit_of(child: &mut std::process::Child) -> std::process::ExitStatus {
    for _ in 0..500 {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("still running after 10 s");
}

#[tokio::test]
async fn a_runtime_in_standby_becomes_the_server_it_is_ordered_to_run() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    std::fs::write(
        dir.path().join("server.yaml"),
        MOCK_PIPELINE.replace("{port}", &port.to_string()),
    )
    .expect("write config");
    let mut child = standby();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait().expect("try_wait").is_none(), "it waits");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd"),
        std::path::Path::new("/"),
        "waiting, it keeps no directory busy"
    );

    // The order: a relative config resolved in --workdir, the environment
    // replaced (RUST_LOG=debug shows in the output), output to files.
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("logs dir");
    let order = json!({
        "args": ["--config", "server.yaml", "--workdir", dir.path()],
        "env": [["PATH", "/usr/bin:/bin"], ["RUST_LOG", "debug"]],
        "stdout": logs.join("stdout.log"),
        "stderr": logs.join("stderr.log"),
    });
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(order.to_string().as_bytes())
        .expect("write order");
    drop(stdin);

    let health = format!("http://127.0.0.1:{port}/health");
    wait_for(
        "the ordered server's /health",
        Duration::from_secs(30),
        || {
            let health = health.clone();
            async move { get_json(&health).await.filter(|(s, _)| *s == 200) }
        },
    )
    .await;
    assert_eq!(child.id(), pid, "the same process");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd"),
        dir.path().canonicalize().expect("dir")
    );
    let rows = format!("http://127.0.0.1:{port}/api/v1/queries/readings/results");
    wait_for("rows", Duration::from_secs(30), || {
        let rows = rows.clone();
        async move {
            let (_, body) = get_json(&rows).await?;
            (!body["data"].as_array()?.is_empty()).then_some(())
        }
    })
    .await;
    let stdout = std::fs::read_to_string(logs.join("stdout.log")).expect("stdout.log");
    assert!(stdout.contains("API listening"), "{stdout}");
    assert!(
        stdout.contains(" DEBUG "),
        "RUST_LOG from the order: {stdout}"
    );

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGINT).expect("SIGINT");
    assert_eq!(exit_of(&mut child).code(), Some(0));
    let mut own = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut own)
        .expect("read");
    assert!(own.is_empty(), "nothing went to the starter's pipe: {own}");
}

/// The order a container's standby gets: arguments only, its stdin left
/// open (an attached stream), its environment and output its own.
#[tokio::test]
async fn a_runtime_in_standby_takes_an_order_of_arguments_only_without_the_end_of_its_stdin() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = Command::new(BIN)
        .arg("--standby")
        .env_clear()
        .env("RUST_LOG", "debug")
        .env(
            "PIPELINE",
            MOCK_PIPELINE.replace("{port}", &port.to_string()),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn standby");
    let order = json!({"args": ["--config-env", "PIPELINE", "--workdir", dir.path()]});
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(order.to_string().as_bytes())
        .expect("write order");
    stdin.flush().expect("flush");

    let health = format!("http://127.0.0.1:{port}/health");
    wait_for(
        "the ordered server's /health, its stdin still open",
        Duration::from_secs(30),
        || {
            let health = health.clone();
            async move { get_json(&health).await.filter(|(s, _)| *s == 200) }
        },
    )
    .await;
    let pid = child.id();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd"),
        dir.path().canonicalize().expect("dir")
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGINT).expect("SIGINT");
    assert_eq!(exit_of(&mut child).code(), Some(0));
    drop(stdin);
    let mut own = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut own)
        .expect("read");
    assert!(own.contains("API listening"), "its own stdout: {own}");
    assert!(own.contains(" DEBUG "), "its own RUST_LOG: {own}");
}

#[tokio::test]
async fn a_runtime_in_standby_ends_quietly_without_an_order_and_refuses_a_bad_one() {
    use std::io::{Read, Write};
    // Its starter went away: stdin ends, it exits 0.
    let mut child = standby();
    drop(child.stdin.take());
    assert_eq!(exit_of(&mut child).code(), Some(0));

    // Not an order: exit 1, saying why, on its own stderr.
    for (order, why) in [
        (
            r#"{"args": [], "env": [], "shell": "/bin/sh"}"#,
            "invalid standby order",
        ),
        (
            r#"{"args": ["--standby"], "env": [], "stdout": "/dev/null", "stderr": "/dev/null"}"#,
            "cannot ask for --standby again",
        ),
    ] {
        let mut child = standby();
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(order.as_bytes()).expect("write");
        drop(stdin);
        assert_eq!(exit_of(&mut child).code(), Some(1), "{order}");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read");
        assert!(stderr.contains(why), "{order}: {stderr}");
    }

    // Once its output is redirected, what goes wrong is said there.
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr = dir.path().join("stderr.log");
    let order = json!({"args": [], "env": [["A=B", "c"]], "stdout": "/dev/null", "stderr": stderr});
    let mut child = standby();
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(order.to_string().as_bytes())
        .expect("write");
    drop(stdin);
    assert_eq!(exit_of(&mut child).code(), Some(1));
    let said = std::fs::read_to_string(&stderr).expect("stderr.log");
    assert!(
        said.contains("invalid environment variable 'A=B'"),
        "{said}"
    );
}
