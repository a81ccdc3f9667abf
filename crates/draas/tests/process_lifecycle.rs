//! The Process platform end to end: the real `draas up` binary, real
//! runtime processes, real signals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{alive, counter_pipeline, Draas, Reaper};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_lives_its_whole_life_through_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let draas = Draas::up(dir.path()).await;

    // Create, then configure with JSON Patch.
    let id = draas.create("orders", None).await;
    assert_eq!(draas.state(&id).await, "Created");
    let config_path = format!("/api/configuration/instances/{id}");
    let (status, config, etag) = draas
        .patch(&config_path, counter_pipeline(), Some("\"1\""))
        .await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(etag.as_deref(), Some("\"2\""));
    let port = config["port"].as_u64().expect("allocated port");

    // Start: Running, with live query results from the instance itself.
    let (status, instance) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    assert_eq!(instance["status"]["state"], "Running");
    assert_eq!(instance["status"]["observedGeneration"], 2);
    let endpoint = instance["runtime"]["endpoint"]
        .as_str()
        .expect("endpoint")
        .to_string();
    assert_eq!(endpoint, format!("http://127.0.0.1:{port}"));
    let rows = draas.rows(&endpoint, "values").await;
    assert!(rows.iter().all(|r| r["value"].is_u64()), "{rows:?}");
    let pid = instance["runtime"]["handle"]["pid"].as_u64().expect("pid");
    assert!(alive(pid));

    // Files in their places.
    let config_file = draas.data.join(format!("process/configs/{id}-config.yaml"));
    let yaml = std::fs::read_to_string(&config_file).expect("rendered config");
    for needle in [
        &format!("id: {id}") as &str,
        "persistConfig: false",
        "autoStart: true",
        "queryLanguage: Cypher",
    ] {
        assert!(yaml.contains(needle), "{needle} in {yaml}");
    }
    let workdir = draas.data.join(format!("process/instances/{id}"));
    assert!(workdir.join("logs/stdout.log").is_file());
    // It works in its instance's directory, told so (`--workdir`).
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd"),
        workdir.canonicalize().expect("workdir")
    );
    // On its command line when spawned; in its order when the worker's
    // warm runtime (`--standby`) served the start.
    assert!(
        cmdline_has(pid, "--workdir") || cmdline_has(pid, "--standby"),
        "{:?}",
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
    );

    // The live view and the logs come from the worker.
    let (_, live) = draas
        .get(&format!("/api/server/instances/{id}/runtime-status"))
        .await;
    assert_eq!(live["live"]["healthy"], true, "{live}");
    assert_eq!(
        live["live"]["components"]["queries"][0]["status"],
        "Running"
    );
    let (status, logs) = draas
        .get(&format!("/api/server/instances/{id}/logs?tail=20"))
        .await;
    assert_eq!(status, 200);
    assert!(!logs["lines"].as_array().expect("lines").is_empty());

    // A new query is stored at once but runs only after a restart.
    let add_query = json!([{"op": "add", "path": "/queries/-", "value": {
        "id": "big", "autoStart": true, "queryLanguage": "Cypher",
        "query": "MATCH (c:Counter) WHERE c.value > 3 RETURN c.value AS value", "sources": [{"sourceId": "counter"}]}}]);
    let (status, _, etag) = draas.patch(&config_path, add_query, None).await;
    assert_eq!(status, 200);
    assert_eq!(etag.as_deref(), Some("\"3\""));
    let (_, instance) = draas.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(instance["generation"], 3);
    assert_eq!(
        instance["status"]["observedGeneration"], 2,
        "still running the old configuration"
    );
    let (status, instance) = draas
        .post(&format!("/api/server/instances/{id}/restart"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    assert_eq!(instance["status"]["observedGeneration"], 3);
    let new_pid = instance["runtime"]["handle"]["pid"].as_u64().expect("pid");
    assert_ne!(new_pid, pid, "a new process");
    assert!(!alive(pid), "the old process is gone");
    let big = draas.rows(&endpoint, "big").await;
    assert!(big.iter().all(|r| r["value"].as_u64() > Some(3)), "{big:?}");

    // Stop: the process is gone, the instance Stopped.
    let (status, instance) = draas
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    assert_eq!(instance["status"]["state"], "Stopped");
    assert!(!alive(new_pid), "process gone after stop");
    assert!(draas_testkit::get_json(&format!("{endpoint}/health"))
        .await
        .is_none());

    // Start again, then kill -9 the server: Failed within a second.
    let (status, instance) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    let pid = instance["runtime"]["handle"]["pid"].as_u64().expect("pid");
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let failed = draas
        .wait_state(&id, "Failed", Duration::from_secs(1))
        .await;
    let detected = killed.elapsed();
    assert_eq!(failed["status"]["reason"], "KilledBySignal");
    assert!(
        failed["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("SIGKILL"),
        "{failed}"
    );
    println!("crash detected after {detected:?}");

    // The status buffer tells the story in order.
    let (_, changes) = draas.get("/api/status/recent-changes?since=0").await;
    let story: Vec<String> = changes["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["instanceId"] == id.as_str())
        .map(|c| c["new"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        story,
        [
            "Created", "Starting", "Running", "Stopping", "Stopped", "Starting", "Running",
            "Stopping", "Stopped", "Starting", "Running", "Failed"
        ],
        "{changes}"
    );

    // Delete: files removed, name and port free again.
    let (status, _) = draas
        .call(Method::DELETE, &format!("/api/server/instances/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = draas.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(status, 404);
    assert!(!workdir.exists(), "working directory removed");
    assert!(!config_file.exists(), "configuration file removed");
    let again = draas.create("orders", Some(json!({ "port": port }))).await;
    assert_ne!(again, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_survive_a_restart_of_draas_and_running_servers_are_readopted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let draas = Draas::up(dir.path()).await;

    let running = draas.create("keeps-running", None).await;
    let (status, _, _) = draas
        .patch(
            &format!("/api/configuration/instances/{running}"),
            counter_pipeline(),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, instance) = draas
        .post(&format!("/api/server/instances/{running}/start"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    let pid = instance["runtime"]["handle"]["pid"].as_u64().expect("pid");
    let endpoint = instance["runtime"]["endpoint"]
        .as_str()
        .expect("endpoint")
        .to_string();
    let idle = draas.create("stays-stopped", None).await;
    let (_, before) = draas
        .get(&format!("/api/configuration/instances/{running}"))
        .await;

    // SIGTERM to draas: the server keeps running.
    let draas = draas.restart().await;
    assert!(alive(pid), "servers outlive the control plane");
    assert!(
        !draas
            .process
            .stderr()
            .contains("was not closed by its last process"),
        "a clean stop closes the state store: {}",
        draas.process.stderr()
    );

    // Everything is still there.
    let (_, list) = draas.get("/api/server/instances").await;
    assert_eq!(list["total"], 2, "{list}");
    let (_, after) = draas
        .get(&format!("/api/configuration/instances/{running}"))
        .await;
    assert_eq!(after, before, "configuration survives");
    assert_eq!(draas.state(&idle).await, "Created");
    let (_, instance) = draas.get(&format!("/api/server/instances/{running}")).await;
    assert_eq!(instance["status"]["state"], "Running");
    assert_eq!(
        instance["runtime"]["handle"]["pid"].as_u64(),
        Some(pid),
        "same process"
    );
    assert!(!draas.rows(&endpoint, "values").await.is_empty());

    // Re-adopted, not just remembered: the new worker notices its death...
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let failed = draas
        .wait_state(&running, "Failed", Duration::from_secs(2))
        .await;
    assert_eq!(failed["status"]["reason"], "ExitedWithCode", "{failed}");

    // ...and can start and stop it again.
    let (status, instance) = draas
        .post(&format!("/api/server/instances/{running}/start"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    let pid = instance["runtime"]["handle"]["pid"].as_u64().expect("pid");
    let draas = draas.restart().await;
    let (status, instance) = draas
        .post(&format!("/api/server/instances/{running}/stop"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    assert!(!alive(pid), "a re-adopted server is stopped for real");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_while_draas_was_down_is_reported_failed_and_a_reused_pid_is_never_signalled()
{
    use draas_core::ports::store::{JsonStore, Precondition};
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let draas = Draas::up(dir.path()).await;
    let id = draas.create("short-lived", None).await;
    let (status, instance) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    let pid = instance["runtime"]["handle"]["pid"].as_u64().expect("pid");
    let host = instance["runtime"]["scope"]
        .as_str()
        .expect("host")
        .to_string();

    // Stop draas, then kill the server behind its back.
    let data = draas.stop().await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    while alive(pid) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Simulate pid reuse: the record now names a live, unrelated process
    // (with the dead server's start time, as a reused pid would have).
    let mut decoy = std::process::Command::new("sleep")
        .arg("120")
        .spawn()
        .expect("decoy");
    {
        let store = draas_store::EmbeddedStore::open(&data.join("state.redb")).expect("open store");
        let records =
            draas_core::keys::worker_records(draas_core::instance::PlatformType::Process, &host);
        let mut record = store
            .get_json::<Value>(&records, &id)
            .await
            .expect("read")
            .expect("record")
            .value;
        record["platform"]["pid"] = json!(decoy.id());
        store
            .put_json(&records, &id, &record, Precondition::None)
            .await
            .expect("write");
    }

    let draas = Draas::up_on(dir.path(), data, 1).await;
    let failed = draas
        .wait_state(&id, "Failed", Duration::from_secs(5))
        .await;
    assert_eq!(
        failed["status"]["reason"], "LostWhileWorkerDown",
        "{failed}"
    );
    let (status, _) = draas
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = draas
        .call(Method::DELETE, &format!("/api/server/instances/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert!(
        decoy.try_wait().expect("decoy status").is_none(),
        "the decoy with the reused pid was never signalled"
    );
    decoy.kill().expect("kill decoy");
    let _ = decoy.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failures_are_reported_with_their_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let draas = Draas::up(dir.path()).await;

    // A port another program holds: refused before launch.
    let held = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let taken = held.local_addr().expect("addr").port();
    let id = draas
        .create(
            "blocked",
            Some(json!({"sources": [{"kind": "http", "id": "inbox", "host": "127.0.0.1", "port": taken}]})),
        )
        .await;
    let (status, body) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "PORT_IN_USE");
    assert!(body["detail"]
        .as_str()
        .unwrap_or_default()
        .contains(&taken.to_string()));
    let (_, status_doc) = draas.get(&format!("/api/status/{id}/status")).await;
    assert_eq!(status_doc["status"]["state"], "Failed");
    assert_eq!(status_doc["status"]["reason"], "PortInUse");

    // An executable not on the worker's allow-list.
    let (status, body) = draas
        .post("/api/server/instances", Some(json!({"name": "sneaky", "platformType": "Process", "serverConfiguration": {"process": {"executablePath": "/bin/sh"}}})))
        .await;
    assert_eq!(status, 201, "{body}");
    let sneaky = body["instance"]["id"].as_str().expect("id").to_string();
    let (status, body) = draas
        .post(&format!("/api/server/instances/{sneaky}/start"), None)
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "EXECUTABLE_NOT_ALLOWED");

    // A server that exits during startup: its stderr is the reason.
    let (status, body) = draas
        .post("/api/server/instances", Some(json!({"name": "no-db", "platformType": "Process", "configuration": {
            "sources": [{"kind": "postgres", "id": "pg", "host": "127.0.0.1", "port": free_closed_port(), "database": "d", "user": "u"}]}})))
        .await;
    assert_eq!(status, 201, "{body}");
    let no_db = body["instance"]["id"].as_str().expect("id").to_string();
    let (status, body) = draas
        .post(&format!("/api/server/instances/{no_db}/start"), None)
        .await;
    assert_eq!(status, 502, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("before it was ready") && detail.contains("pg"),
        "{detail}"
    );
    let (_, status_doc) = draas.get(&format!("/api/status/{no_db}/status")).await;
    assert_eq!(status_doc["status"]["state"], "Failed", "{status_doc}");
    assert_eq!(status_doc["status"]["reason"], "ExitedWithCode");
}

/// An executable other than the bundled runtime is started in its
/// instance's directory, and is not given `--workdir` (it may not know it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_executable_is_started_in_its_instances_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let allow = common::runtime_wrapper(&dir.path().join("drasi-server"), "");
    let draas = Draas::up_with_args(dir.path(), &["--allow-executable", &allow]).await;
    let (status, created) = draas
        .post(
            "/api/server/instances",
            Some(json!({"name": "foreign", "serverConfiguration": {
                "process": {"executablePath": allow}, "startTimeoutSeconds": 60}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().expect("id").to_string();
    let (status, started) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["status"]["state"], "Running", "{started}");
    let pid = common::server_pid(&started).expect("pid");
    let workdir = draas.data.join(format!("process/instances/{id}"));
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd"),
        workdir.canonicalize().expect("workdir")
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(
        !cmdline.split(|b| *b == 0).any(|arg| arg == b"--workdir"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    let (status, _) = draas
        .call(Method::DELETE, &format!("/api/server/instances/{id}"), None)
        .await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_wait_for_running_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    // A server that takes a minute before the runtime even starts.
    let allow = common::runtime_wrapper(&dir.path().join("slow-runtime"), "sleep 60\n");
    let mut draas = Draas::up_with_args(dir.path(), &["--allow-executable", &allow]).await;
    let (status, created) = draas
        .post(
            "/api/server/instances",
            Some(json!({"name": "slow", "serverConfiguration": {
                "process": {"executablePath": allow}, "startTimeoutSeconds": 120}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().expect("id").to_string();
    // Its connection breaks when draas exits: the outcome is not awaited.
    let start = tokio::spawn(
        draas
            .client
            .post(draas.url(&format!("/api/server/instances/{id}/start")))
            .send(),
    );
    // The start is running (the script sleeps): a first signal waits for it...
    let state_of = |draas: &Draas| {
        let api = draas.api.clone();
        async move {
            let (_, list) = api.get("/api/server/instances").await;
            list["items"][0]["status"]["state"]
                .as_str()
                .map(str::to_string)
        }
    };
    draas_testkit::wait_for("the start to run", Duration::from_secs(10), || {
        let state = state_of(&draas);
        async move { (state.await.as_deref() == Some("Starting")).then_some(()) }
    })
    .await;
    draas.process.signal(nix::sys::signal::Signal::SIGINT);
    assert!(
        draas.process.wait_timeout(Duration::from_secs(2)).is_none(),
        "the first signal waits for the running start"
    );
    // ...a second one does not.
    let second = Instant::now();
    draas.process.signal(nix::sys::signal::Signal::SIGINT);
    let status = draas
        .process
        .wait_timeout(Duration::from_secs(5))
        .expect("the second signal ends the wait");
    assert!(status.success(), "{status}: {}", draas.process.stderr());
    println!("stopped {:?} after the second signal", second.elapsed());
    let _ = start.await;
}

/// A loopback port nothing listens on.
fn free_closed_port() -> u16 {
    draas_testkit::free_port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_and_restart_wait_for_the_state_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let draas = Draas::up(dir.path()).await;
    let id = draas.create("waited", None).await;
    let path = |verb: &str, query: &str| format!("/api/server/instances/{id}/{verb}?{query}");

    // Bad queries are refused before anything happens.
    for query in [
        "wait=Exploded",
        "timeout=5",
        "wait=Running&timeout=0",
        "wait=Running&timeout=soon",
        "wait=Running&later=1",
    ] {
        let (status, body) = draas.post(&path("start", query), None).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], "INVALID_QUERY", "{query}: {body}");
    }
    assert_eq!(draas.state(&id).await, "Created");

    let (status, body) = draas
        .post(&path("start", "wait=Running&timeout=30"), None)
        .await;
    assert_eq!(
        (status, &body["status"]["state"]),
        (200, &json!("Running")),
        "{body}"
    );
    let (status, body) = draas
        .post(&path("restart", "wait=Running&timeout=30"), None)
        .await;
    assert_eq!(
        (status, &body["status"]["state"]),
        (200, &json!("Running")),
        "{body}"
    );

    // A state that the command leads away from: a clear 409 at once,
    // naming the state it is in and the desired state.
    let asked = Instant::now();
    let (status, body) = draas
        .post(&path("stop", "wait=Running&timeout=30"), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("STATE_NOT_EXPECTED")),
        "{body}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("Stopped") && detail.contains("Running"),
        "{detail}"
    );
    assert_eq!(
        draas.state(&id).await,
        "Stopped",
        "the stop itself was done"
    );

    let (status, body) = draas.post(&path("start", "wait=Running"), None).await;
    assert_eq!(status, 200, "{body}");
    // A state it may come to but does not within the timeout: a clear 504
    // once the timeout has passed, naming the state it is in.
    let asked = Instant::now();
    let (status, body) = draas
        .post(&path("restart", "wait=Failed&timeout=1"), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (504, Some("STATE_NOT_REACHED")),
        "{body}"
    );
    assert!(asked.elapsed() >= Duration::from_secs(1));
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("Running") && detail.contains("Failed"),
        "{detail}"
    );
    let (status, body) = draas
        .post(&path("stop", "wait=Stopped&timeout=30"), None)
        .await;
    assert_eq!(
        (status, &body["status"]["state"]),
        (200, &json!("Stopped")),
        "{body}"
    );
}

/// The one warm runtime of `draas` other than `not` (it is started a
/// moment after the worker, and after each start), once it is there.
async fn warm_runtime(draas: &Draas, not: Option<u64>) -> u64 {
    let parent = draas.process.pid();
    draas_testkit::wait_for("a warm runtime", Duration::from_secs(10), || {
        let found = common::warm_runtimes(parent);
        async move {
            match found.as_slice() {
                [one] if Some(*one) != not => Some(*one),
                _ => None,
            }
        }
    })
    .await
}

/// Creates instance `name` of the counter pipeline with `environment`.
async fn counter_instance(draas: &Draas, name: &str, environment: Value) -> String {
    let (status, created) = draas
        .post(
            "/api/server/instances",
            Some(json!({"name": name, "serverConfiguration": {"environment": environment}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().expect("id").to_string();
    let (status, _, _) = draas
        .patch(
            &format!("/api/configuration/instances/{id}"),
            counter_pipeline(),
            None,
        )
        .await;
    assert_eq!(status, 200);
    id
}

fn cmdline_has(pid: u64, arg: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .expect("cmdline")
        .split(|b| *b == 0)
        .any(|a| a == arg.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_restarts_are_served_by_the_warm_runtime_which_never_outlives_draas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let mut draas = Draas::up_with_args(dir.path(), &["--reconcile", "on"]).await;
    let first = warm_runtime(&draas, None).await;

    // A start: the warm runtime becomes the server, with everything a
    // spawned server gets (its directory, its environment, its output).
    let id = counter_instance(&draas, "warm", json!({"RUST_LOG": "debug"})).await;
    let (status, started) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["status"]["state"], "Running", "{started}");
    let pid = common::server_pid(&started).expect("pid");
    assert_eq!(pid, first, "the warm runtime serves the start");
    let workdir = draas.data.join(format!("process/instances/{id}"));
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd"),
        workdir.canonicalize().expect("workdir")
    );
    let endpoint = started["runtime"]["endpoint"].as_str().expect("endpoint");
    assert!(!draas.rows(endpoint, "values").await.is_empty());
    let stdout = std::fs::read_to_string(workdir.join("logs/stdout.log")).expect("stdout.log");
    assert!(
        stdout.contains(" DEBUG "),
        "the instance's RUST_LOG applies: {stdout}"
    );

    // Another waits for the next start: the restart after a crash.
    let second = warm_runtime(&draas, Some(first)).await;
    common::kill9(pid);
    let healed = draas
        .until(&id, Duration::from_secs(10), |i| {
            i["status"]["state"] == "Running" && common::server_pid(i) != Some(pid)
        })
        .await;
    assert_eq!(healed["status"]["restartCount"], 1, "{healed}");
    assert_eq!(common::server_pid(&healed), Some(second), "{healed}");
    let endpoint = healed["runtime"]["endpoint"].as_str().expect("endpoint");
    assert!(!draas.rows(endpoint, "values").await.is_empty());

    // An environment the C library reads at exec cannot be given to a
    // process already started: that start spawns, and the warm one waits on.
    let third = warm_runtime(&draas, Some(second)).await;
    let cold = counter_instance(&draas, "cold", json!({"MALLOC_ARENA_MAX": "2"})).await;
    let (status, started) = draas
        .post(&format!("/api/server/instances/{cold}/start"), None)
        .await;
    assert_eq!(status, 200, "{started}");
    let cold_pid = common::server_pid(&started).expect("pid");
    assert_ne!(cold_pid, third);
    assert!(cmdline_has(cold_pid, "--workdir"), "spawned");
    assert_eq!(common::warm_runtimes(draas.process.pid()), vec![third]);

    // draas dies: its warm runtime ends with it; its servers do not.
    draas.process.signal(nix::sys::signal::Signal::SIGKILL);
    draas
        .process
        .wait_timeout(Duration::from_secs(10))
        .expect("draas dies");
    draas_testkit::wait_for(
        "the warm runtime to end",
        Duration::from_secs(10),
        || async move { (!alive(third)).then_some(()) },
    )
    .await;
    assert!(alive(second) && alive(cold_pid), "servers outlive draas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_runtime_is_retired_when_its_executable_changes_and_none_waits_when_turned_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    let runtime = bin.join("draas-runtime");
    std::fs::copy(common::runtime_binary(), &runtime).expect("copy the runtime");
    let runtime_arg = runtime.display().to_string();
    let draas = Draas::up_with_args(dir.path(), &["--runtime", &runtime_arg]).await;
    let stale = warm_runtime(&draas, None).await;

    // An upgrade on disk: the next start runs the new file, not the old
    // process, and the old one is stopped.
    let upgraded = bin.join("draas-runtime.new");
    std::fs::copy(common::runtime_binary(), &upgraded).expect("copy");
    std::fs::rename(&upgraded, &runtime).expect("replace the runtime");
    let id = counter_instance(&draas, "upgraded", json!({})).await;
    let (status, started) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{started}");
    let pid = common::server_pid(&started).expect("pid");
    assert_ne!(pid, stale);
    assert!(cmdline_has(pid, "--workdir"), "spawned from the new file");
    draas_testkit::wait_for(
        "the stale warm runtime to end",
        Duration::from_secs(10),
        || async move { (!alive(stale)).then_some(()) },
    )
    .await;
    let fresh = warm_runtime(&draas, Some(stale)).await;
    assert_eq!(
        std::fs::read_link(format!("/proc/{fresh}/exe")).expect("exe"),
        runtime.canonicalize().expect("runtime"),
        "the new warm runtime runs the new file"
    );

    // Turned off: every start spawns, nothing waits.
    let off_dir = dir.path().join("off");
    std::fs::create_dir(&off_dir).expect("off");
    let off = Draas::up_with_args(&off_dir, &["--warm-runtime", "off"]).await;
    let id = counter_instance(&off, "spawned", json!({})).await;
    let (status, started) = off
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{started}");
    let pid = common::server_pid(&started).expect("pid");
    assert!(cmdline_has(pid, "--workdir"), "spawned");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        common::warm_runtimes(off.process.pid()).is_empty(),
        "no warm runtime when turned off"
    );
}

/// The data directory is this user's alone. The attack: another user
/// (nobody) reads the state store (every instance's environment) and a
/// server's files; it fails, while a file the test leaves readable in the
/// same directory is read (the control). What an earlier version left
/// readable by others is made private when `draas up` starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_readable_by_no_other_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().to_path_buf());
    // Only DRaaS's own permissions may stand in the attacker's way.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let leftover = data.join("left-by-an-earlier-version");
    std::fs::write(&leftover, "x").unwrap();
    std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o644)).unwrap();
    let control = dir.path().join("readable");
    std::fs::write(&control, "x").unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o644)).unwrap();

    let draas = Draas::up_on(dir.path(), data.clone(), 0).await;
    let (status, created) = draas
        .post(
            "/api/server/instances",
            Some(json!({"name": "private", "serverConfiguration": {"environment": {"PW": "hunter2"}}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let (status, config, _) = draas
        .patch(
            &format!("/api/configuration/instances/{id}"),
            counter_pipeline(),
            None,
        )
        .await;
    assert_eq!(status, 200, "{config}");
    let (status, started) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{started}");

    // Everything under the data directory: no permission for others.
    let mut seen = 0;
    let mut pending = vec![data.clone()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            continue;
        }
        assert_eq!(
            meta.permissions().mode() & 0o077,
            0,
            "{} is {:o}",
            path.display(),
            meta.permissions().mode()
        );
        seen += 1;
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(seen > 5, "the store, the server's files and logs: {seen}");

    // The attack, as user nobody (switching users takes root; without it
    // the permissions checked above are the proof).
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: the read as another user is not attempted");
        return;
    }
    let read_as_nobody = |path: &std::path::Path| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(path)
            .output()
            .expect("setpriv runs")
    };
    assert!(
        read_as_nobody(&control).status.success(),
        "the control is read"
    );
    for target in [data.join("state.redb"), leftover] {
        let attempt = read_as_nobody(&target);
        assert!(!attempt.status.success(), "{} was read", target.display());
        assert!(
            String::from_utf8_lossy(&attempt.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&attempt.stderr)
        );
    }
    let (status, _) = draas
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(status, 200);
}
