//! The bundled runtime runs drasi-server's configuration file, whole: the
//! features a file may ask for beyond a pipeline, each checked by what it
//! does, against real runtime processes.
//!
//! - a scriptfile bootstrap with a reaction: the reaction starts once the
//!   query bootstrapped (no "not ready for subscriptions"), and the status
//!   says how many elements the bootstrap loaded;
//! - several lib instances in one server (`instances:`), each under
//!   `/api/v1/instances/{id}`;
//! - `persistIndex: true`: after a restart the query does not bootstrap
//!   again and continues from its persisted index (RocksDB under
//!   `./data/id-<hex>/index`);
//! - `stateStore`, `secretStore` (a secret resolved into an http
//!   reaction's token, seen by the receiver), an identity provider;
//! - references to the environment in top-level and plugin fields, and a
//!   missing variable refused at start naming it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use draas_testkit::process::TestProcess;
use draas_testkit::receiver::Receiver;
use draas_testkit::{free_port, get_json, wait_for};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_draas-runtime");

/// A runtime process working in `dir` on `server.yaml` there.
struct Runtime {
    process: TestProcess,
    port: u16,
}

impl Runtime {
    fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        std::fs::write(
            dir.join("server.yaml"),
            config.replace("{port}", &port.to_string()),
        )
        .unwrap();
        let mut command = Command::new(BIN);
        command.current_dir(dir).args(["--config", "server.yaml"]);
        for (k, v) in env {
            command.env(k, v);
        }
        let process = TestProcess::spawn(command, &format!("runtime-{port}"), dir).unwrap();
        Self { process, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn healthy(&mut self) {
        let url = self.url("/health");
        let process = &mut self.process;
        wait_for("/health", Duration::from_secs(30), || {
            assert!(process.is_running(), "runtime exited: {}", process.stderr());
            let url = url.clone();
            async move { get_json(&url).await.filter(|(s, _)| *s == 200) }
        })
        .await;
    }

    /// Waits until `path` gives a `data` array `done` says yes to.
    async fn data_until(&self, path: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let url = self.url(path);
        wait_for(path, Duration::from_secs(30), || {
            let url = url.clone();
            let done = &done;
            async move {
                let (status, body) = get_json(&url).await?;
                let rows = body["data"].as_array()?.clone();
                (status == 200 && done(&rows)).then_some(rows)
            }
        })
        .await
    }

    /// The runtime's own status.
    async fn status(&self) -> Value {
        get_json(&self.url("/draas/v1/status")).await.unwrap().1
    }

    fn stop(&mut self) {
        self.process.signal(Signal::SIGINT);
        let status = self.process.wait_timeout(Duration::from_secs(30));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "{}",
            self.process.stderr()
        );
    }
}

/// A scriptfile of `people` Person nodes.
fn script(dir: &Path, people: usize) -> String {
    let mut lines = vec![
        json!({"kind": "Header", "start_time": "2026-01-01T00:00:00Z", "description": "people"})
            .to_string(),
    ];
    for i in 0..people {
        lines.push(
            json!({"kind": "Node", "id": format!("p{i}"), "labels": ["Person"],
                   "properties": {"name": format!("person {i}"), "age": 20 + i}})
            .to_string(),
        );
    }
    lines.push(json!({"kind": "Finish", "description": "done"}).to_string());
    let path = dir.join("people.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.display().to_string()
}

fn bootstrapped_people(script_path: &str, hook_port: u16, extra: &str) -> String {
    // A persistent query resumes from checkpoints: its http source keeps a
    // write-ahead log to replay from.
    let durability = if extra.contains("persistIndex") {
        "\n    durability: {enabled: true}"
    } else {
        ""
    };
    format!(
        r#"
id: people
host: 127.0.0.1
port: {{port}}
persistConfig: false
{extra}
sources:
  - kind: http
    id: hooks
    host: 127.0.0.1
    port: {hook_port}{durability}
    bootstrapProvider:
      kind: scriptfile
      filePaths: ["{script_path}"]
queries:
  - id: adults
    autoStart: true
    queryLanguage: Cypher
    query: "MATCH (p:Person) WHERE p.age >= 21 RETURN p.name AS name, p.age AS age"
    sources: [{{sourceId: hooks}}]
reactions:
  - kind: log
    id: console
    queries: [adults]
"#
    )
}

#[tokio::test]
async fn a_reaction_waits_for_its_querys_scriptfile_bootstrap_and_the_status_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = script(dir.path(), 50);
    let mut rt = Runtime::start(
        dir.path(),
        &bootstrapped_people(&path, free_port(), ""),
        &[],
    );
    rt.healthy().await;
    let rows = rt
        .data_until("/api/v1/queries/adults/results", |r| r.len() == 49)
        .await;
    assert!(rows.iter().all(|r| r["age"].as_i64().unwrap() >= 21));
    // The reaction runs: it started once the query had bootstrapped.
    rt.data_until("/api/v1/reactions", |r| {
        r.iter()
            .any(|c| c["id"] == "console" && c["status"] == "Running")
    })
    .await;
    let status = rt.status().await;
    let query = &status["instances"][0]["queries"][0];
    assert_eq!(query["id"], "adults");
    assert_eq!(query["bootstrap"]["state"], "Done", "{status}");
    assert_eq!(query["bootstrap"]["elements"], 50, "{status}");
    assert_eq!(query["bootstrap"]["sources"][0]["source"], "hooks");
    assert_eq!(query["metrics"]["resultCount"], 49, "{status}");
    assert_eq!(status["instances"][0]["reactions"][0]["status"], "Running");
    rt.stop();
}

#[tokio::test]
async fn several_lib_instances_run_in_one_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"
host: 127.0.0.1
port: {port}
persistConfig: false
instances:
  - id: counting
    sources: [{kind: mock, id: s, dataType: {type: counter}, intervalMs: 50}]
    queries:
      - {id: q, autoStart: true, queryLanguage: Cypher, query: "MATCH (c:Counter) RETURN c.value AS value", sources: [{sourceId: s}]}
  - id: sensing
    sources: [{kind: mock, id: s, dataType: {type: sensorReading, sensorCount: 2}, intervalMs: 50}]
    queries:
      - {id: q, autoStart: true, queryLanguage: Cypher, query: "MATCH (r:SensorReading) RETURN r.sensor_id AS sensor", sources: [{sourceId: s}]}
    reactions:
      - {kind: log, id: console, queries: [q]}
"#;
    let mut rt = Runtime::start(dir.path(), config, &[]);
    rt.healthy().await;
    let instances = rt.data_until("/api/v1/instances", |i| i.len() == 2).await;
    assert_eq!(instances[0]["id"], "counting");
    assert_eq!(instances[1]["reaction_count"], 1);
    let sensors = rt
        .data_until("/api/v1/instances/sensing/queries/q/results", |r| {
            r.len() == 2
        })
        .await;
    assert!(sensors[0]["sensor"]
        .as_str()
        .unwrap()
        .starts_with("sensor_"));
    let counter = rt
        .data_until("/api/v1/instances/counting/queries/q/results", |r| {
            !r.is_empty()
        })
        .await;
    assert!(counter[0]["value"].is_number());
    // The default routes are the first instance's.
    rt.data_until("/api/v1/queries/q/results", |r| {
        !r.is_empty() && r[0]["value"].is_number()
    })
    .await;
    let status = rt.status().await;
    assert_eq!(status["instances"].as_array().unwrap().len(), 2);
    // Each keeps its data apart.
    for id in ["counting", "sensing"] {
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(dir.path().join("data").join(format!("id-{hex}")).is_dir());
    }
    rt.stop();
}

#[tokio::test]
async fn a_persistent_index_survives_a_restart_without_a_second_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let path = script(dir.path(), 5);
    let hook_port = free_port();
    let config = bootstrapped_people(
        &path,
        hook_port,
        "persistIndex: true\nstateStore: {kind: redb, path: ./data/state.redb}",
    );
    let mut rt = Runtime::start(dir.path(), &config, &[]);
    rt.healthy().await;
    rt.data_until("/api/v1/queries/adults/results", |r| r.len() == 4)
        .await;
    // A change after the bootstrap.
    let client = reqwest::Client::new();
    let event = json!({"operation": "insert", "element": {"type": "node", "id": "p99",
        "labels": ["Person"], "properties": {"name": "late", "age": 60}}});
    let response = client
        .post(format!("http://127.0.0.1:{hook_port}/sources/hooks/events"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    rt.data_until("/api/v1/queries/adults/results", |r| r.len() == 5)
        .await;
    let first = rt.status().await;
    assert_eq!(
        first["instances"][0]["queries"][0]["bootstrap"]["elements"],
        5
    );
    rt.stop();
    let hex: String = "people".bytes().map(|b| format!("{b:02x}")).collect();
    let index = dir
        .path()
        .join("data")
        .join(format!("id-{hex}"))
        .join("index");
    assert!(
        index.join("adults").is_dir(),
        "RocksDB under {}",
        index.display()
    );
    assert!(dir.path().join("data/state.redb").is_file());

    // Started again on the same directory: the query did not bootstrap
    // again, and its results continue from the persisted index: the change
    // made before the restart is there, and a change to a bootstrapped
    // element is applied against the element the index kept. (Rows that
    // came from the bootstrap alone and never changed since are not: drasi-lib
    // 0.9.3 persists a query's results from its changes only; see
    // README, "Limits".)
    let mut again = Runtime::start(dir.path(), &config, &[]);
    again.healthy().await;
    let rows = again
        .data_until("/api/v1/queries/adults/results", |r| !r.is_empty())
        .await;
    assert!(rows.iter().any(|r| r["name"] == "late"), "{rows:?}");
    let status = again.status().await;
    let query = &status["instances"][0]["queries"][0];
    assert_eq!(query["status"], "Running", "{status}");
    assert!(
        query["bootstrap"].is_null(),
        "no bootstrap after the restart: {status}"
    );
    let update = json!({"operation": "update", "element": {"type": "node", "id": "p2",
        "labels": ["Person"], "properties": {"name": "person 2", "age": 70}}});
    let response = client
        .post(format!("http://127.0.0.1:{hook_port}/sources/hooks/events"))
        .json(&update)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    again
        .data_until("/api/v1/queries/adults/results", |r| {
            r.iter()
                .any(|row| row["name"] == "person 2" && row["age"] == 70)
        })
        .await;
    again.stop();
}

#[tokio::test]
async fn secrets_identities_and_environment_references_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    std::fs::write(
        dir.path().join("secrets.json"),
        json!({"hook-token": "s3cr3t"}).to_string(),
    )
    .unwrap();
    let config = r#"
id: "${SERVER_ID:-resolved}"
host: "${HOST:-127.0.0.1}"
port: {port}
logLevel: "${LEVEL:-info}"
persistConfig: false
defaultDispatchBufferCapacity: "${BUFFER:-500}"
secretStore: {kind: file, path: ./secrets.json}
identityProviders:
  - {kind: password, id: pw, username: drasi, password: "${PW:-unused}"}
sources:
  - kind: mock
    id: counter
    dataType: {type: counter}
    intervalMs: "${EVERY:-100}"
queries:
  - {id: values, autoStart: true, queryLanguage: Cypher, query: "MATCH (c:Counter) RETURN c.value AS value", sources: [{sourceId: counter}]}
reactions:
  - kind: http
    id: hook
    queries: [values]
    identityProvider: pw
    baseUrl: "${RECEIVER}"
    token: {kind: Secret, name: hook-token}
    outputTemplates:
      routes:
        values:
          added: {url: /added, method: POST, template: '{{json after}}'}
          updated: {url: /updated, method: POST, template: '{{json after}}'}
"#;
    let receiver_url = format!("http://127.0.0.1:{}", receiver.port);
    let mut rt = Runtime::start(
        dir.path(),
        config,
        &[("RECEIVER", receiver_url.as_str()), ("EVERY", "50")],
    );
    rt.healthy().await;
    let delivered = receiver
        .wait_for("a delivery", Duration::from_secs(30), |r| {
            r.method == "POST" && (r.path == "/added" || r.path == "/updated")
        })
        .await;
    assert_eq!(
        delivered.header("authorization"),
        Some("Bearer s3cr3t"),
        "the secret store's token: {delivered:?}"
    );
    let body: Value = serde_json::from_str(&delivered.body).unwrap();
    assert!(body["value"].is_number(), "{}", delivered.body);
    // The id came from its default.
    let instances = rt.data_until("/api/v1/instances", |i| i.len() == 1).await;
    assert_eq!(instances[0]["id"], "resolved");
    rt.stop();

    // A variable that is not set and has no default: refused at start,
    // named.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("server.yaml"),
        "port: \"${API_PORT}\"\nsources: []\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--config", "server.yaml"])
        .env_remove("API_PORT")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("'API_PORT' is not set"), "{stderr}");
}
