//! Spawn-to-ready of the bundled runtime, against a bare process spawn.
//!
//! Method: for each run, a fresh working directory and config; the clock
//! starts just before `spawn`. `/health` is polled every 2 ms until it
//! answers 200 (the runtime binds only after every component started), then
//! `/api/v1/queries` until every query is `Running`. Peak RSS is the
//! kernel's VmHWM of the process, read just before SIGTERM. The bare
//! operation is spawning `/bin/true` and waiting for it to exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::stats::{ms, ratio, Summary};

const EMPTY: &str = "id: bench\nhost: 127.0.0.1\nport: {port}\npersistConfig: false\n";

const MOCK_PIPELINE: &str = r#"
id: bench
host: 127.0.0.1
port: {port}
persistConfig: false
sources:
  - {kind: mock, id: sensors, dataType: {type: sensorReading, sensorCount: 10}, intervalMs: 100}
queries:
  - {id: readings, autoStart: true, queryLanguage: Cypher, query: "MATCH (s:SensorReading) RETURN s.sensor_id AS id, s.temperature AS t", sources: [{sourceId: sensors}]}
  - {id: hot, autoStart: true, queryLanguage: Cypher, query: "MATCH (s:SensorReading) WHERE s.temperature > 25 RETURN s.sensor_id AS id", sources: [{sourceId: sensors}]}
reactions:
  - {kind: log, id: console, queries: [readings, hot]}
"#;

struct Run {
    health: Duration,
    running: Duration,
    peak_rss_kib: u64,
}

/// Runs the benchmark and prints a Markdown report.
pub async fn run(runtime: &Path, runs: usize) -> anyhow::Result<()> {
    let spawn = bare_spawn(runs)?;
    let spawn_p50 = Summary::of(&spawn).p50;
    println!("### Bundled runtime: spawn to ready ({runs} runs each)\n");
    println!("Binary: `{}`\n", runtime.display());
    println!("| config | to /health p50 | p95 | to all queries Running p50 | p95 | peak RSS (median) | /health vs bare spawn |");
    println!("|---|---|---|---|---|---|---|");
    for (name, config) in [
        ("empty", EMPTY),
        (
            "mock pipeline (1 source, 2 queries, 1 reaction)",
            MOCK_PIPELINE,
        ),
    ] {
        let mut results = Vec::new();
        for _ in 0..runs {
            results.push(one(runtime, config).await?);
        }
        let health = Summary::of(&results.iter().map(|r| r.health).collect::<Vec<_>>());
        let running = Summary::of(&results.iter().map(|r| r.running).collect::<Vec<_>>());
        let mut rss: Vec<u64> = results.iter().map(|r| r.peak_rss_kib).collect();
        rss.sort();
        println!(
            "| {name} | {} ms | {} ms | {} ms | {} ms | {:.1} MiB | {} |",
            ms(health.p50),
            ms(health.p95),
            ms(running.p50),
            ms(running.p95),
            rss[rss.len() / 2] as f64 / 1024.0,
            ratio(health.p50, spawn_p50)
        );
    }
    println!(
        "\nBare operation: spawn `/bin/true` and wait for exit, p50 {} ms.\n",
        ms(spawn_p50)
    );
    Ok(())
}

fn bare_spawn(runs: usize) -> anyhow::Result<Vec<Duration>> {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            Command::new("/bin/true")
                .status()
                .context("spawn /bin/true")?;
            Ok(start.elapsed())
        })
        .collect()
}

async fn one(runtime: &Path, config: &str) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let port = draas_testkit::free_port();
    let path: PathBuf = dir.path().join("server.yaml");
    std::fs::write(&path, config.replace("{port}", &port.to_string()))?;
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");

    let start = Instant::now();
    let mut child = Command::new(runtime)
        .current_dir(dir.path())
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn runtime")?;
    let pid = i32::try_from(child.id())?;
    let deadline = start + Duration::from_secs(30);

    let health = loop {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                break start.elapsed();
            }
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            bail!("runtime did not become healthy");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let running = loop {
        let body: serde_json::Value = client
            .get(format!("{base}/api/v1/queries"))
            .send()
            .await?
            .json()
            .await?;
        let all_running = body["data"]
            .as_array()
            .is_some_and(|qs| qs.iter().all(|q| q["status"] == "Running"));
        if all_running {
            break start.elapsed();
        }
        if Instant::now() > deadline {
            bail!("queries did not reach Running");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    // Let the pipeline process a few intervals before reading the peak.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let peak_rss_kib = procfs::process::Process::new(pid)?
        .status()?
        .vmhwm
        .unwrap_or_default();
    kill(Pid::from_raw(pid), Signal::SIGTERM)?;
    child.wait()?;
    Ok(Run {
        health,
        running,
        peak_rss_kib,
    })
}
