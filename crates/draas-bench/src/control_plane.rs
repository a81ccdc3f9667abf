//! The control plane with the Process platform, against the bare operations.
//!
//! Method (each figure is printed with its own description):
//! - `draas up` (release build) runs on a fresh data directory on loopback;
//! - **create → Running**: `POST /api/server/instances` with a mock
//!   pipeline, then `POST .../start`, which returns when the worker reports
//!   the server ready; against the bare runtime spawned directly on the same
//!   configuration until `/health` answers and all its queries run;
//! - **crash detection**: a Running instance's server is killed with
//!   SIGKILL; the time until the `InstanceStatusChanged` → `Failed` event
//!   arrives on the client's `/api/events` stream;
//! - **GET instance**: with N instances stored, concurrent clients GET
//!   random instances for a fixed number of requests; against `GET /healthz`
//!   (the bare HTTP round trip of the same server);
//! - **memory**: VmRSS of `draas up` after storing N instance records.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::stats::{ms, ratio, us, Summary};

/// A `draas up` under measurement; killed (and its servers reaped) on drop.
pub(crate) struct DraasUp {
    child: Child,
    base: String,
    pub(crate) client: reqwest::Client,
    /// Its servers outlive it by design; not the benchmark.
    _servers: draas_testkit::process::Reaper,
    _dir: tempfile::TempDir,
}

impl Drop for DraasUp {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl DraasUp {
    async fn start(draas: &Path, runtime: &Path, port_range: &str) -> anyhow::Result<Self> {
        Self::start_with(draas, runtime, port_range, &["--docker", "off"]).await
    }

    /// `draas up` with more arguments.
    pub(crate) async fn start_with(
        draas: &Path,
        runtime: &Path,
        port_range: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = draas_testkit::free_port();
        // What is measured is the command path, not healing, unless the
        // benchmark says otherwise.
        let reconcile: &[&str] = if extra.contains(&"--reconcile") {
            &[]
        } else {
            &["--reconcile", "off"]
        };
        let child = Command::new(draas)
            .args([
                "up",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--port-range",
                port_range,
            ])
            .args(reconcile)
            .args(extra)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--runtime")
            .arg(runtime)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn draas up")?;
        let up = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            _servers: draas_testkit::process::Reaper(dir.path().to_path_buf()),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while up.client.get(up.url("/healthz")).send().await.is_err() {
            if Instant::now() > deadline {
                bail!("draas up did not start");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(up)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let response = self.client.get(self.url(path)).send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let response = self.client.post(self.url(path)).json(&body).send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST {path}: {status} {body}");
        }
        Ok(body)
    }

    /// Creates an instance from the create request `body`; its id.
    pub(crate) async fn create(&self, body: Value) -> anyhow::Result<String> {
        let created = self.post("/api/server/instances", body).await?;
        Ok(created["instance"]["id"]
            .as_str()
            .context("id")?
            .to_string())
    }

    /// `POST create` then `POST start` of `body`, timed until the start
    /// answered with a Running instance; the id and the time.
    pub(crate) async fn create_and_start(&self, body: Value) -> anyhow::Result<(String, Duration)> {
        let started = Instant::now();
        let id = self.create(body).await?;
        let instance = self
            .post(&format!("/api/server/instances/{id}/start"), json!({}))
            .await?;
        if instance["status"]["state"] != "Running" {
            bail!("not running: {instance}");
        }
        Ok((id, started.elapsed()))
    }

    /// Deletes instance `id`.
    pub(crate) async fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.client
            .delete(self.url(&format!("/api/server/instances/{id}")))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

pub(crate) fn pipeline() -> Value {
    json!({
        "sources": [{"kind": "mock", "id": "sensors", "dataType": {"type": "sensorReading", "sensorCount": 10}, "intervalMs": 100}],
        "queries": [{"id": "readings", "autoStart": true, "queryLanguage": "Cypher",
                     "query": "MATCH (s:SensorReading) RETURN s.sensor_id AS id, s.temperature AS t", "sources": [{"sourceId": "sensors"}]}],
        "reactions": [{"kind": "log", "id": "console", "queries": ["readings"]}]
    })
}

/// Runs every control-plane benchmark and prints Markdown.
pub async fn run(
    draas: &Path,
    runtime: &Path,
    runs: usize,
    kills: usize,
    stored: usize,
    records: usize,
) -> anyhow::Result<()> {
    create_to_running(draas, runtime, runs).await?;
    crash_detection(draas, runtime, kills).await?;
    get_throughput(draas, runtime, stored).await?;
    memory(draas, runtime, records).await?;
    Ok(())
}

async fn create_to_running(draas: &Path, runtime: &Path, runs: usize) -> anyhow::Result<()> {
    let up = DraasUp::start(draas, runtime, "22000-22999").await?;
    let mut managed = Vec::new();
    for i in 0..runs {
        let (id, took) = up
            .create_and_start(json!({"name": format!("bench-{i}"), "platformType": "Process", "configuration": pipeline()}))
            .await?;
        managed.push(took);
        up.post(&format!("/api/server/instances/{id}/stop"), json!({}))
            .await?;
    }
    // The bare operation: the same runtime and configuration, spawned directly.
    let mut bare = Vec::new();
    for _ in 0..runs {
        bare.push(bare_spawn_to_ready(runtime).await?);
    }
    let (m, b) = (Summary::of(&managed), Summary::of(&bare));
    println!("### Create → Running (Process platform, {runs} runs)\n");
    println!("| operation | p50 | p95 | max |");
    println!("|---|---|---|---|");
    println!(
        "| DRaaS: POST create + POST start (returns when Running) | {} ms | {} ms | {} ms |",
        ms(m.p50),
        ms(m.p95),
        ms(m.max)
    );
    println!(
        "| bare: spawn draas-runtime until /health and queries Running | {} ms | {} ms | {} ms |",
        ms(b.p50),
        ms(b.p95),
        ms(b.max)
    );
    println!(
        "\nRatio (p50): **{}** the bare spawn-to-ready.\n",
        ratio(m.p50, b.p50)
    );
    Ok(())
}

async fn bare_spawn_to_ready(runtime: &Path) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir()?;
    let port = draas_testkit::free_port();
    let mut config = pipeline();
    config["id"] = json!("bare");
    config["host"] = json!("127.0.0.1");
    config["port"] = json!(port);
    config["persistConfig"] = json!(false);
    let path = dir.path().join("server.yaml");
    std::fs::write(&path, serde_json::to_string(&config)?)?;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut child = Command::new(runtime)
        .current_dir(dir.path())
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = started + Duration::from_secs(30);
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/api/v1/queries"))
            .send()
            .await
        {
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if body["data"]
                .as_array()
                .is_some_and(|q| q.iter().all(|q| q["status"] == "Running"))
            {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("bare runtime not ready");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
    child.wait()?;
    Ok(elapsed)
}

async fn crash_detection(draas: &Path, runtime: &Path, kills: usize) -> anyhow::Result<()> {
    let up = DraasUp::start(draas, runtime, "23000-23999").await?;
    let id = up
        .create(json!({"name": "victim", "platformType": "Process", "configuration": pipeline()}))
        .await?;
    let response = up.client.get(up.url("/api/events")).send().await?;
    let mut events = eventsource_stream::EventStream::new(response.bytes_stream());
    let mut samples = Vec::new();
    for _ in 0..kills {
        let instance = up
            .post(&format!("/api/server/instances/{id}/start"), json!({}))
            .await?;
        let pid = instance["runtime"]["handle"]["pid"]
            .as_i64()
            .context("pid")? as i32;
        let killed = Instant::now();
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .context("no Failed event within 10 s")?
                .context("event stream ended")??;
            let body: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            if body["event"]["type"] == "InstanceStatusChanged"
                && body["event"]["instanceId"] == id.as_str()
                && body["event"]["new"] == "Failed"
            {
                samples.push(killed.elapsed());
                break;
            }
        }
    }
    let s = Summary::of(&samples);
    println!(
        "### Crash detection ({} SIGKILLs of a Running server)\n",
        s.n
    );
    println!("| from SIGKILL to the `Failed` event on `/api/events` | p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!("| draas up, Process worker (exit seen on the child handle / pidfd) | {} ms | {} ms | {} ms |\n", ms(s.p50), ms(s.p99), ms(s.max));
    Ok(())
}

async fn get_throughput(draas: &Path, runtime: &Path, stored: usize) -> anyhow::Result<()> {
    let up = Arc::new(DraasUp::start(draas, runtime, "24000-24999").await?);
    let mut ids = Vec::with_capacity(stored);
    for i in 0..stored {
        let created = up
            .post(
                "/api/server/instances",
                json!({"name": format!("stored-{i}"), "platformType": "Process", "configuration": {"port": 30000 + i}}),
            )
            .await?;
        ids.push(
            created["instance"]["id"]
                .as_str()
                .context("id")?
                .to_string(),
        );
    }
    let ids = Arc::new(ids);
    let requests = 20_000;
    let clients = 16;
    let (get, get_rate) = hammer(
        &up,
        clients,
        requests,
        |i, ids: &[String]| format!("/api/server/instances/{}", ids[i % ids.len()]),
        ids.clone(),
    )
    .await?;
    let (bare, bare_rate) = hammer(
        &up,
        clients,
        requests,
        |_, _: &[String]| "/healthz".to_string(),
        ids.clone(),
    )
    .await?;
    println!("### GET one instance with {stored} instances stored ({requests} requests, {clients} concurrent clients)\n");
    println!("| request | throughput | p50 | p99 |");
    println!("|---|---|---|---|");
    println!(
        "| `GET /api/server/instances/{{id}}` | {get_rate:.0} req/s | {} µs | {} µs |",
        us(get.p50),
        us(get.p99)
    );
    println!(
        "| bare: `GET /healthz` (same server) | {bare_rate:.0} req/s | {} µs | {} µs |",
        us(bare.p50),
        us(bare.p99)
    );
    println!(
        "\nRatio (p50 latency): **{}** the bare round trip.\n",
        ratio(get.p50, bare.p50)
    );
    Ok(())
}

async fn hammer(
    up: &Arc<DraasUp>,
    clients: usize,
    requests: usize,
    path: fn(usize, &[String]) -> String,
    ids: Arc<Vec<String>>,
) -> anyhow::Result<(Summary, f64)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let up = up.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for i in (c..requests).step_by(clients) {
                let t = Instant::now();
                let response = up.client.get(up.url(&path(i, &ids))).send().await?;
                if !response.status().is_success() {
                    bail!("GET failed: {}", response.status());
                }
                let _ = response.bytes().await?;
                samples.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((Summary::of(&all), rate))
}

async fn memory(draas: &Path, runtime: &Path, records: usize) -> anyhow::Result<()> {
    let up = DraasUp::start(draas, runtime, "25000-25999").await?;
    let rss = |pid: i32| -> anyhow::Result<u64> {
        Ok(procfs::process::Process::new(pid)?
            .status()?
            .vmrss
            .unwrap_or_default())
    };
    let empty = rss(up.pid())?;
    let started = Instant::now();
    for i in 0..records {
        up.post(
            "/api/server/instances",
            json!({"name": format!("record-{i}"), "platformType": "Process", "description": "a stored instance record",
                   "configuration": {"port": 30000 + (i % 30000), "sources": [{"kind": "mock", "id": "s"}]}}),
        )
        .await
        .or_else(|e| if e.to_string().contains("PORT_CONFLICT") { Ok(Value::Null) } else { Err(e) })?;
    }
    let create_time = started.elapsed();
    // A full listing touches every record once more.
    let listed: Value = up
        .client
        .get(up.url("/api/server/instances?limit=1000"))
        .send()
        .await?
        .json()
        .await?;
    let full = rss(up.pid())?;
    let peak = procfs::process::Process::new(up.pid())?
        .status()?
        .vmhwm
        .unwrap_or_default();
    println!("### Control-plane memory with {records} instance records\n");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| VmRSS of `draas up`, empty | {:.1} MiB |",
        empty as f64 / 1024.0
    );
    println!(
        "| VmRSS after creating {records} instances (total listed: {}) | {:.1} MiB |",
        listed["total"],
        full as f64 / 1024.0
    );
    println!("| peak (VmHWM) | {:.1} MiB |", peak as f64 / 1024.0);
    println!(
        "| creation rate (sequential POSTs) | {:.0} instances/s |\n",
        records as f64 / create_time.as_secs_f64()
    );
    Ok(())
}
