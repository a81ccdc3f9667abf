//! The compatibility suite: drasi-server configuration files written for
//! it (`tests/compat/`), created through the DRaaS API as a user would (a
//! YAML create body, and the CLI's `-f`), started on the Process platform,
//! and checked by what they do: query rows, log lines, deliveries to an
//! http receiver the test runs, files written, Redis streams filled. Files
//! the official server refuses (`tests/compat/refused/`) are refused with
//! the path and the shape that replaced them, and change nothing.
//!
//! Against: real `draas up`, bundled runtime processes, `redis-server`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Draas, DRAAS};
use draas_testkit::receiver::Receiver;
use draas_testkit::redis_server::RedisServer;
use draas_testkit::wait_for;
use serde_json::{json, Value};

/// A compatibility file's text, with `@DIR@` made `dir`.
fn file(name: &str, dir: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/compat")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("@DIR@", &dir.display().to_string())
}

/// A YAML create body: the instance's name, environment and the file.
fn create_yaml(name: &str, environment: &[(&str, String)], configuration: &str) -> String {
    let mut body = format!("name: {name}\nplatformType: Process\n");
    if !environment.is_empty() {
        body.push_str("serverConfiguration:\n  environment:\n");
        for (k, v) in environment {
            body.push_str(&format!("    {k}: {}\n", serde_json::to_string(v).unwrap()));
        }
    }
    body.push_str("configuration:\n");
    for line in configuration.lines() {
        body.push_str("  ");
        body.push_str(line);
        body.push('\n');
    }
    body
}

/// POSTs a YAML create body; returns status and answer.
async fn create(draas: &Draas, yaml: String) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(draas.url("/api/server/instances"))
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn warned(created: &Value, path: &str, text: &str) -> bool {
    created["warnings"].as_array().is_some_and(|w| {
        w.iter()
            .any(|w| w["path"] == path && w["message"].as_str().is_some_and(|m| m.contains(text)))
    })
}

async fn start(draas: &Draas, id: &str) -> Value {
    let (status, body) = draas
        .post(
            &format!("/api/server/instances/{id}/start?wait=Running&timeout=90"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_the_official_server_refuses_are_refused_naming_what_replaced_them() {
    let dir = tempfile::tempdir().unwrap();
    // Servers outlive their control plane by design: none outlives the test.
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let draas = Draas::up(dir.path()).await;
    // (file, status, code, JSON Pointer in the create body, words).
    let cases = [
        (
            "outdated-http-routes.yaml",
            422,
            "INVALID_CONFIGURATION",
            "/configuration/reactions/0/routes",
            "outputTemplates",
        ),
        (
            "adaptive-kind.yaml",
            422,
            "INVALID_CONFIGURATION",
            "/configuration/reactions/0/kind",
            "adaptive:",
        ),
        (
            "reaction-on-stopped-query.yaml",
            422,
            "INVALID_CONFIGURATION",
            "/configuration/reactions/0/queries/0",
            "query 'q' does not",
        ),
        (
            "unknown-kind.yaml",
            422,
            "INVALID_CONFIGURATION",
            "/configuration/sources/0/kind",
            "it has: mock, http, postgres, grpc, platform",
        ),
        (
            "missing-variable.yaml",
            422,
            "INVALID_CONFIGURATION",
            "/configuration/sources/0/password",
            "'DB_PASSWORD' is not set",
        ),
        (
            "state-store-outside.yaml",
            422,
            "INVALID_CONFIGURATION",
            "/configuration/stateStore/path",
            "own directory",
        ),
        (
            "persistent-volatile-source.yaml",
            422,
            "INVALID_CONFIGURATION",
            "/configuration/sources/0",
            "durability: {enabled: true}",
        ),
        (
            "snake-case-key.yaml",
            422,
            "INVALID_CONFIGURATION",
            "/configuration/sources/0/auto_start",
            "autoStart",
        ),
        (
            "unknown-top-level-key.yaml",
            400,
            "MALFORMED_YAML",
            "",
            "persist_index",
        ),
    ];
    for (name, status, code, path, words) in cases {
        let text = file(&format!("refused/{name}"), dir.path());
        let (got, body) = create(&draas, create_yaml("refused", &[], &text)).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{name}: {body}"
        );
        assert!(
            body.to_string().contains(words),
            "{name}: {words:?} in {body}"
        );
        if !path.is_empty() {
            let error = body["errors"]
                .as_array()
                .and_then(|e| e.iter().find(|e| e["path"] == path))
                .unwrap_or_else(|| panic!("{name}: an error at {path} in {body}"));
            assert!(
                error["line"].as_u64().is_some(),
                "{name}: the YAML line: {body}"
            );
        }
    }
    let (_, list) = draas.get("/api/server/instances").await;
    assert_eq!(list["total"], 0, "nothing was created: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_of_a_drasi_server_file_is_honoured_or_said() {
    let dir = tempfile::tempdir().unwrap();
    // Servers outlive their control plane by design: none outlives the test.
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let draas = Draas::up(dir.path()).await;
    let receiver = Receiver::start().await;
    let people: Vec<String> = std::iter::once(
        json!({"kind": "Header", "start_time": "2026-01-01T00:00:00Z"}).to_string(),
    )
    .chain((0..6).map(|i| {
        json!({"kind": "Node", "id": format!("p{i}"), "labels": ["Person"],
               "properties": {"name": format!("person {i}"), "age": 18 + i}})
        .to_string()
    }))
    .collect();
    std::fs::write(dir.path().join("people.jsonl"), people.join("\n") + "\n").unwrap();

    let environment = [
        (
            "RECEIVER_URL",
            format!("http://127.0.0.1:{}", receiver.port),
        ),
        ("LOG_LEVEL", "debug".to_string()),
    ];
    let (status, created) = create(
        &draas,
        create_yaml(
            "everything",
            &environment,
            &file("everything.yaml", dir.path()),
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let configuration = &created["instance"]["configuration"];
    // Honoured and kept as written.
    assert_eq!(configuration["id"], "${SERVER_ID:-everything}");
    assert_eq!(configuration["logLevel"], "${LOG_LEVEL:-info}");
    assert_eq!(configuration["plugins"][2]["ref"], "reaction/http");
    assert_eq!(configuration["reactions"][1]["token"]["kind"], "Secret");
    // DRaaS's decisions, said.
    assert!(warned(&created, "/host", "'127.0.0.1'"), "{created}");
    assert!(
        warned(&created, "/persistConfig", "persistConfig: false"),
        "{created}"
    );
    assert!(warned(&created, "/plugins", "do nothing here"), "{created}");
    assert!(
        warned(&created, "/solutionsDir", "no solutions API"),
        "{created}"
    );
    assert!(
        warned(&created, "/sources/0/port", "chosen by DRaaS"),
        "{created}"
    );
    assert!(
        warned(&created, "/reactions/2/port", "chosen by DRaaS"),
        "{created}"
    );
    let hook_port = configuration["sources"][0]["port"].as_u64().unwrap();

    // The secret store's file, in the instance's own directory.
    let workdir = draas.data.join("process/instances").join(&id);
    std::fs::create_dir_all(&workdir).unwrap();
    std::fs::write(
        workdir.join("secrets.json"),
        json!({"receiver-token": "t0ken"}).to_string(),
    )
    .unwrap();

    start(&draas, &id).await;
    // The shared scriptfile bootstrap reached both queries.
    let adults = draas.query_rows(&id, "adults", |r| r.len() == 3).await;
    assert!(
        adults.iter().all(|r| r["age"].as_i64().unwrap() >= 21),
        "{adults:?}"
    );
    draas.query_rows(&id, "everyone", |r| r.len() == 6).await;

    // A change through the http source reaches every reaction.
    let event = json!({"operation": "insert", "element": {"type": "node", "id": "p9",
        "labels": ["Person"], "properties": {"name": "newcomer", "age": 33}}});
    let response = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{hook_port}/sources/people-hooks/events"
        ))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    draas.query_rows(&id, "adults", |r| r.len() == 4).await;
    draas.logged(&id, "ADULT newcomer (33)").await;
    let delivered = receiver
        .wait_for("the added person", Duration::from_secs(30), |r| {
            r.path == "/people/added"
        })
        .await;
    assert_eq!(delivered.method, "POST");
    assert_eq!(delivered.header("authorization"), Some("Bearer t0ken"));
    let body: Value = serde_json::from_str(&delivered.body).unwrap();
    assert_eq!(body, json!({"name": "newcomer", "age": 33}));
    wait_for("the journal", Duration::from_secs(30), || async {
        let files = std::fs::read_dir(workdir.join("journal")).ok()?;
        files
            .flatten()
            .filter_map(|f| std::fs::read_to_string(f.path()).ok())
            .any(|text| text.contains("newcomer"))
            .then_some(())
    })
    .await;

    // Its data lives in its own directory: the persistent index, the
    // state store.
    let hex: String = "everything".bytes().map(|b| format!("{b:02x}")).collect();
    assert!(workdir
        .join("data")
        .join(format!("id-{hex}"))
        .join("index/adults")
        .is_dir());
    assert!(workdir.join("data/state.redb").is_file());
    // The status counts the bootstrap.
    let (_, status) = draas
        .get(&format!("/api/server/instances/{id}/runtime-status"))
        .await;
    let query = &status["live"]["dataPlane"]["instances"][0]["queries"][0];
    assert_eq!(query["bootstrap"]["elements"], 6, "{status}");

    // Written back as YAML, it is a drasi-server file again, references
    // and all.
    let yaml = reqwest::Client::new()
        .get(draas.url(&format!("/api/configuration/instances/{id}")))
        .header("accept", "application/yaml")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let back = draas_core::config::parse_yaml(&yaml).expect("a drasi-server file");
    assert_eq!(serde_json::to_value(&back).unwrap(), *configuration);
    assert!(yaml.contains("${SERVER_ID:-everything}"), "{yaml}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lib_instances_and_a_platform_reaction_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    // Servers outlive their control plane by design: none outlives the test.
    let _reaper = common::Reaper(dir.path().to_path_buf());
    let draas = Draas::up(dir.path()).await;

    // Several lib instances, from the CLI's -f.
    let path = dir.path().join("multi.yaml");
    std::fs::write(&path, file("multi-instance.yaml", dir.path())).unwrap();
    let output = Command::new(DRAAS)
        .args([
            "instance",
            "--server",
            &draas.url(""),
            "create",
            "multi",
            "-f",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("top-level sources"),
        "warnings on stderr: {stderr}"
    );
    let (_, instance) = draas.get("/api/server/instances/multi").await;
    let id = instance["id"].as_str().unwrap().to_string();
    start(&draas, &id).await;
    let values = draas.query_rows(&id, "values", |r| !r.is_empty()).await;
    assert!(values[0]["value"].is_number());
    let hot = draas.query_rows(&id, "hot", |r| r.len() == 3).await;
    assert!(hot[0]["sensor"].as_str().unwrap().starts_with("sensor_"));
    let (_, status) = draas
        .get(&format!("/api/server/instances/{id}/runtime-status"))
        .await;
    let libs = status["live"]["dataPlane"]["instances"].as_array().unwrap();
    assert_eq!(libs.len(), 2, "{status}");
    assert_eq!(libs[1]["id"], "sensing");

    // A platform reaction publishes to Redis.
    let redis_dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(redis_dir.path());
    let (status, created) = create(
        &draas,
        create_yaml(
            "to-redis",
            &[("REDIS_URL", redis.url())],
            &file("platform-redis.yaml", dir.path()),
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    start(&draas, &id).await;
    wait_for("results in Redis", Duration::from_secs(30), || async {
        let output = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "XLEN", "values-results"])
            .output()
            .ok()?;
        let count: u64 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .ok()?;
        (count > 0).then_some(())
    })
    .await;
}
