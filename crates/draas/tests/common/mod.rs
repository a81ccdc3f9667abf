//! Running the real `draas` binary in tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub mod cluster;

use draas_testkit::process::TestProcess;
use draas_testkit::{free_port, wait_for};
use serde_json::{json, Value};

pub const DRAAS: &str = env!("CARGO_BIN_EXE_draas");

/// The bundled runtime built next to `draas` (the workspace test command
/// builds every binary).
pub fn runtime_binary() -> PathBuf {
    let path = Path::new(DRAAS).with_file_name("draas-runtime");
    assert!(
        path.is_file(),
        "{} is missing: run the workspace tests (cargo nextest run --workspace) or cargo build -p draas-runtime",
        path.display()
    );
    path
}

/// Writes an executable shell script at `path` that runs `before` and then
/// execs the runtime with its arguments (a slow or foreign executable, to be
/// allowed with `--allow-executable`); returns its path as a string.
pub fn runtime_wrapper(path: &Path, before: &str) -> String {
    let script = format!(
        "#!/bin/sh\n{before}exec {} \"$@\"\n",
        runtime_binary().display()
    );
    std::fs::write(path, script).expect("write the wrapper script");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make the wrapper executable");
    path.display().to_string()
}

/// A block of 100 ports for a test's instances that no other test on this
/// machine uses (see `draas_testkit::PortBlock`). The block stays reserved
/// until the test process exits (nextest runs each test in a process of its
/// own).
pub fn port_range() -> String {
    port_block(100)
}

/// A block of `size` ports, reserved until the test process exits.
pub fn port_block(size: u16) -> String {
    let block = draas_testkit::PortBlock::reserve(size);
    let range = block.range();
    std::mem::forget(block);
    range
}

/// An HTTP client of one DRaaS API (sending an API key when it has one).
#[derive(Clone)]
pub struct Api {
    pub port: u16,
    pub client: reqwest::Client,
    pub token: Option<String>,
}

/// Makes an API key with `draas keys create --role ROLE --name NAME` plus
/// `ring` (where keys are kept: `--data-dir DIR` or `--redis URL`) and
/// returns the token (the command's last line).
pub fn create_key(ring: &[&str], role: &str, name: &str) -> String {
    let output = Command::new(DRAAS)
        .args(["keys", "create", "--role", role, "--name", name])
        .args(ring)
        .output()
        .expect("run draas keys create");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "draas keys create failed: {}{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().last().expect("a token").trim().to_string()
}

/// A `draas up` process with its own data directory and port.
pub struct Draas {
    pub process: TestProcess,
    pub api: Api,
    pub port: u16,
    pub data: PathBuf,
    logs: PathBuf,
    run: usize,
    range: String,
    /// The extra arguments it was started with (a restart keeps them).
    extra: Vec<String>,
}

impl std::ops::Deref for Draas {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Draas {
    /// Starts `draas up` on a fresh data directory inside `dir`.
    pub async fn up(dir: &Path) -> Self {
        let data = dir.join("data");
        Self::up_with(dir, data, free_port(), 0, port_range()).await
    }

    /// Starts `draas up` on an existing data directory (run `run` names
    /// its log files).
    pub async fn up_on(dir: &Path, data: PathBuf, run: usize) -> Self {
        Self::up_with(dir, data, free_port(), run, port_range()).await
    }

    /// Stops this process with SIGTERM (expecting a clean exit) and returns
    /// its data directory.
    pub async fn stop(self) -> PathBuf {
        let Draas {
            mut process, data, ..
        } = self;
        terminate(&mut process);
        data
    }

    /// Starts `draas up` on a fresh data directory with more arguments.
    pub async fn up_with_args(dir: &Path, extra: &[&str]) -> Self {
        let data = dir.join("data");
        let mut draas = Self::spawn(dir, data, free_port(), 0, port_range(), extra);
        let api = draas.api.clone();
        api.wait_for_worker(&mut draas.process).await;
        draas
    }

    async fn up_with(dir: &Path, data: PathBuf, port: u16, run: usize, range: String) -> Self {
        Self::up_with_extra(dir, data, port, run, range, &[]).await
    }

    async fn up_with_extra(
        dir: &Path,
        data: PathBuf,
        port: u16,
        run: usize,
        range: String,
        extra: &[&str],
    ) -> Self {
        let mut draas = Self::spawn(dir, data, port, run, range, extra);
        let api = draas.api.clone();
        api.wait_for_worker(&mut draas.process).await;
        draas
    }

    fn spawn(
        dir: &Path,
        data: PathBuf,
        port: u16,
        run: usize,
        range: String,
        extra: &[&str],
    ) -> Self {
        let mut command = Command::new(DRAAS);
        command
            .arg("up")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data)
            .args(["--heartbeat-seconds", "1", "--port-range", &range])
            .args(extra)
            // The bundled runtime built with this binary, unless the test
            // names another.
            .args(if extra.contains(&"--runtime") {
                vec![]
            } else {
                vec!["--runtime".into(), runtime_binary().into_os_string()]
            })
            // Never a cluster the developer happens to have configured.
            .args(if extra.contains(&"--kubernetes") {
                &[][..]
            } else {
                &["--kubernetes", "off"][..]
            })
            // Tests of other features see failures stay as they are; the
            // reconciler's own tests turn it on.
            .args(if extra.contains(&"--reconcile") {
                &[][..]
            } else {
                &["--reconcile", "off"][..]
            })
            .env("RUST_LOG", "info,tower_http=debug");
        // A control plane that requires keys gets an admin key for the
        // test's own calls (made before it starts, kept across restarts).
        let api = if extra.contains(&"--require-auth") {
            let ring = ["--data-dir".to_string(), data.display().to_string()];
            let ring: Vec<&str> = ring.iter().map(String::as_str).collect();
            let name = format!("test-admin-{run}");
            Api::with_token(port, create_key(&ring, "admin", &name))
        } else {
            Api::new(port)
        };
        let process =
            TestProcess::spawn(command, &format!("draas-{run}"), dir).expect("spawn draas up");
        Self {
            process,
            api,
            port,
            data,
            logs: dir.to_path_buf(),
            run,
            range,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Stops this process with SIGTERM and starts another on the same data
    /// directory and port.
    pub async fn restart(self) -> Self {
        let extra = self.extra.clone();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.replace(terminate, &extra, async {}).await
    }

    /// Kills this process with SIGKILL (nothing closed, nothing flushed:
    /// a crash) and starts another on the same data directory and port,
    /// with `extra` arguments.
    pub async fn crash_and_restart_with(self, extra: &[&str]) -> Self {
        self.replace(sigkill, extra, async {}).await
    }

    /// Kills this process with SIGKILL, waits for `meanwhile`, and starts
    /// another on the same data directory and port with `extra` arguments.
    #[allow(dead_code)]
    pub async fn crash_and_restart_after(
        self,
        extra: &[&str],
        meanwhile: impl std::future::Future<Output = ()>,
    ) -> Self {
        self.replace(sigkill, extra, meanwhile).await
    }

    /// Ends this process with `end`, waits for `meanwhile`, and starts
    /// another on the same data directory and port, with `extra` arguments.
    async fn replace(
        self,
        end: impl FnOnce(&mut TestProcess),
        extra: &[&str],
        meanwhile: impl std::future::Future<Output = ()>,
    ) -> Self {
        let Draas {
            mut process,
            port,
            data,
            logs,
            run,
            range,
            ..
        } = self;
        end(&mut process);
        drop(process);
        meanwhile.await;
        Self::up_with_extra(&logs, data, port, run + 1, range, extra).await
    }
}

/// SIGKILL, and its end within 10 s.
fn sigkill(process: &mut TestProcess) {
    process.signal(nix::sys::signal::Signal::SIGKILL);
    process
        .wait_timeout(Duration::from_secs(10))
        .expect("draas dies");
}

/// SIGTERM, and a clean exit within 30 s.
fn terminate(process: &mut TestProcess) {
    process.signal(nix::sys::signal::Signal::SIGTERM);
    let status = process
        .wait_timeout(Duration::from_secs(30))
        .expect("draas stops");
    assert!(
        status.success(),
        "draas exited with {status}: {}",
        process.stderr()
    );
}

impl Api {
    /// A client of the API on 127.0.0.1:`port`.
    pub fn new(port: u16) -> Self {
        Self {
            port,
            client: reqwest::Client::new(),
            token: None,
        }
    }

    /// A client that sends `token` with every request.
    pub fn with_token(port: u16, token: String) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        Self {
            port,
            client: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap(),
            token: Some(token),
        }
    }

    /// Waits until the API answers and a Process worker is live.
    pub async fn wait_for_worker(&self, process: &mut TestProcess) {
        let url = self.url("/api/server/platforms");
        let client = self.client.clone();
        wait_for("a live Process worker", Duration::from_secs(30), || {
            assert!(process.is_running(), "draas exited: {}", process.stderr());
            let url = url.clone();
            let client = client.clone();
            async move {
                let body: Value = client.get(&url).send().await.ok()?.json().await.ok()?;
                (body["platforms"][0]["available"] == true).then_some(())
            }
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends a request and returns status and JSON body (Null when empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_with(method, path, body, &[]).await
    }

    /// [`Self::call`] with request headers.
    pub async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, String)],
    ) -> (u16, Value) {
        let mut request = self.client.request(method, self.url(path));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, body).await
    }

    /// Sends a JSON Patch; returns status, body and ETag.
    pub async fn patch(
        &self,
        path: &str,
        ops: Value,
        if_match: Option<&str>,
    ) -> (u16, Value, Option<String>) {
        let mut request = self
            .client
            .patch(self.url(path))
            .header("content-type", "application/json-patch+json")
            .body(ops.to_string());
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        let response = request.send().await.expect("patch");
        let status = response.status().as_u16();
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body, etag)
    }

    /// Creates a Process instance and returns its id.
    pub async fn create(&self, name: &str, configuration: Option<Value>) -> String {
        let mut body = json!({ "name": name, "platformType": "Process" });
        if let Some(c) = configuration {
            body["configuration"] = c;
        }
        let (status, created) = self.post("/api/server/instances", Some(body)).await;
        assert_eq!(status, 201, "{created}");
        created["instance"]["id"].as_str().expect("id").to_string()
    }

    /// Creates an instance from `create` (a create body), gives it the
    /// counter pipeline and starts it, until `Running`; returns its id and
    /// the started instance.
    #[allow(dead_code)]
    pub async fn running_pipeline(&self, create: Value) -> (String, Value) {
        let (status, created) = self.post("/api/server/instances", Some(create)).await;
        assert_eq!(status, 201, "{created}");
        let id = created["instance"]["id"].as_str().expect("id").to_string();
        let (status, body, _) = self
            .patch(
                &format!("/api/configuration/instances/{id}"),
                counter_pipeline(),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, instance) = self
            .post(
                &format!("/api/server/instances/{id}/start?wait=Running&timeout=60"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{instance}");
        (id, instance)
    }

    /// The instance's actual state.
    pub async fn state(&self, id: &str) -> String {
        let (_, body) = self.get(&format!("/api/status/{id}/status")).await;
        body["status"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Polls instance `id` every 20 ms until `done` says yes (at most
    /// `limit`); returns it.
    pub async fn until(&self, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let (_, instance) = self.get(&format!("/api/server/instances/{id}")).await;
            if done(&instance) {
                return instance;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not reached in {limit:?}: {instance}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the instance is in `state`; returns its status document.
    pub async fn wait_state(&self, id: &str, state: &str, limit: Duration) -> Value {
        let path = format!("/api/status/{id}/status");
        wait_for(&format!("{id} to be {state}"), limit, || {
            let path = path.clone();
            async move {
                let (_, body) = self.get(&path).await;
                (body["status"]["state"] == state).then_some(body)
            }
        })
        .await
    }

    /// Waits until the server of instance `id` has logged a line
    /// containing `text` (read through DRaaS: `/logs`).
    pub async fn logged(&self, id: &str, text: &str) {
        let path = format!("/api/server/instances/{id}/logs?tail=1000");
        wait_for(
            &format!("log line {text:?}"),
            Duration::from_secs(30),
            || {
                let path = path.clone();
                async move {
                    let (_, body) = self.get(&path).await;
                    body["lines"]
                        .as_array()?
                        .iter()
                        .any(|l| l.as_str().is_some_and(|l| l.contains(text)))
                        .then_some(())
                }
            },
        )
        .await;
    }

    /// Waits until query `query` of instance `id`, read through DRaaS
    /// (`/queries/{query}/results`), has rows `done` says yes to.
    pub async fn query_rows(
        &self,
        id: &str,
        query: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let path = format!("/api/server/instances/{id}/queries/{query}/results");
        wait_for(&format!("rows of {query}"), Duration::from_secs(30), || {
            let path = path.clone();
            let done = &done;
            async move {
                let (status, body) = self.get(&path).await;
                let rows = body["rows"].as_array()?.clone();
                (status == 200 && done(&rows)).then_some(rows)
            }
        })
        .await
    }

    /// The rows of a query on the instance's own API, once there are some.
    pub async fn rows(&self, endpoint: &str, query: &str) -> Vec<Value> {
        let url = format!("{endpoint}/api/v1/queries/{query}/results");
        wait_for(&format!("rows of {query}"), Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let (status, body) = draas_testkit::get_json(&url).await?;
                let rows = body["data"].as_array()?.clone();
                (status == 200 && !rows.is_empty()).then_some(rows)
            }
        })
        .await
    }
}

/// A mock counter source and one Cypher query over it.
pub fn counter_pipeline() -> Value {
    json!([
        {"op": "add", "path": "/sources/-", "value": {"kind": "mock", "id": "counter", "dataType": {"type": "counter"}, "intervalMs": 100}},
        {"op": "add", "path": "/queries/-", "value": {
            "id": "values", "autoStart": true, "queryLanguage": "Cypher",
            "query": "MATCH (c:Counter) RETURN c.value AS value", "sources": [{"sourceId": "counter"}]}},
        {"op": "add", "path": "/reactions/-", "value": {"kind": "log", "id": "console", "queries": ["values"]}}
    ])
}

pub use draas_testkit::process::alive;

/// Kills the process `pid` with SIGKILL (a crash, as far as DRaaS can
/// tell).
pub fn kill9(pid: u64) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
}

/// The bundled runtimes waiting in standby (the warm runtime of a Process
/// worker, not yet serving a start) whose parent is process `parent`.
pub fn warm_runtimes(parent: u32) -> Vec<u64> {
    draas_testkit::process::children_of(u64::from(parent))
        .into_iter()
        .filter(|pid| {
            let standby = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == b"--standby"));
            // Still waiting: a served one works in its instance's directory.
            let waiting = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd == Path::new("/"));
            standby && waiting
        })
        .collect()
}

/// The pid of an instance's server, from its runtime info (Process).
pub fn server_pid(instance: &Value) -> Option<u64> {
    instance["runtime"]["handle"]["pid"].as_u64()
}

#[allow(unused_imports)]
pub use draas_testkit::process::Reaper;
