//! The Docker platform against the bare operations and Docker's own restart
//! policy.
//!
//! Method (each figure is printed with its own description):
//! - the image is built once from the release runtime (`draas-runtime:bench`);
//! - **create → Running**: `draas up` with its Docker worker; `POST create`
//!   (the mock pipeline) then `POST start`, which returns when the server is
//!   ready; against the same image and configuration run directly (a) through
//!   the Engine API (create with the configuration in the environment, as
//!   DRaaS gives it to the bundled runtime, start, read the published port)
//!   and (b) with the `docker run` CLI (the configuration bind-mounted), each
//!   until `/health` answers and every query is `Running` (polled every 2 ms);
//! - **crash → Failed**: the container's process is killed with SIGKILL from
//!   the host; time until the `Failed` event arrives on `/api/events`;
//! - **Docker's restart policy** (what users otherwise rely on): a container
//!   of the same image with `--restart on-failure`; its process is killed
//!   with SIGKILL from the host; time until `/health` answers again. Docker
//!   doubles its restart delay after each restart (from 100 ms) unless the
//!   container ran for 10 s, so each kill comes after 11 s of running: the
//!   figure for an occasional crash, Docker's best case.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bollard::models::{
    ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, RemoveContainerOptionsBuilder,
    StartContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::control_plane::{pipeline, DraasUp};
use crate::stats::{ms, ratio, Summary};

/// The image the benchmark builds and runs.
pub(crate) const IMAGE: &str = "draas-runtime:bench";

/// The configuration a bare container runs: the same pipeline, on every
/// interface, on 8080.
fn bare_config(id: &str) -> String {
    let mut config = pipeline();
    config["id"] = json!(id);
    config["host"] = json!("0.0.0.0");
    config["port"] = json!(8080);
    config["persistConfig"] = json!(false);
    serde_json::to_string(&config).unwrap_or_default()
}

/// Polls `base` every 2 ms until `/health` answers and every query runs.
pub(crate) async fn until_ready(
    client: &reqwest::Client,
    base: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(r) = client.get(format!("{base}/api/v1/queries")).send().await {
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if body["data"]
                .as_array()
                .is_some_and(|q| !q.is_empty() && q.iter().all(|q| q["status"] == "Running"))
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{base} not ready within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The host port `container` publishes 8080 on.
pub(crate) async fn published(docker: &Docker, container: &str) -> anyhow::Result<u16> {
    docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await?
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get("8080/tcp").cloned().flatten())
        .and_then(|b| b.into_iter().find_map(|b| b.host_port))
        .and_then(|p| p.parse().ok())
        .context("no published port")
}

pub(crate) async fn remove(docker: &Docker, container: &str) {
    let _ = docker
        .remove_container(
            container,
            Some(
                RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .v(true)
                    .build(),
            ),
        )
        .await;
}

/// A bare container of the image: created with its configuration in the
/// environment and started, through the Engine API. Returns its id.
pub(crate) async fn bare_container(
    docker: &Docker,
    name: &str,
    restart: Option<RestartPolicyNameEnum>,
    host_port: &str,
) -> anyhow::Result<String> {
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        cmd: Some(vec!["--config-env".into(), "SERVER_YAML".into()]),
        env: Some(vec![format!("SERVER_YAML={}", bare_config(name))]),
        exposed_ports: Some(vec!["8080/tcp".into()]),
        stop_signal: Some("SIGINT".into()),
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(
                "8080/tcp".to_string(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(host_port.into()),
                }]),
            )])),
            restart_policy: restart.map(|name| RestartPolicy {
                name: Some(name),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(name).build()),
            body,
        )
        .await?
        .id;
    docker
        .start_container(&id, None::<StartContainerOptions>)
        .await?;
    Ok(id)
}

/// Runs the Docker benchmarks and prints Markdown.
pub async fn run(
    draas: &Path,
    runtime: &Path,
    runs: usize,
    kills: usize,
    restarts: usize,
) -> anyhow::Result<()> {
    let engine = draas_worker_docker::Engine::connect(None, Duration::from_secs(10)).await?;
    let docker = engine.docker.clone();
    draas_worker_docker::image::build_runtime_image(&docker, runtime, IMAGE).await?;
    let client = reqwest::Client::new();

    // DRaaS.
    let up = DraasUp::start_with(
        draas,
        runtime,
        "26000-26999",
        &["--docker", "on", "--docker-image", IMAGE],
    )
    .await?;
    let mut configuration = pipeline();
    configuration["host"] = json!("0.0.0.0");
    configuration["port"] = json!(8080);
    let mut managed = Vec::new();
    for i in 0..runs {
        let (id, took) = up
            .create_and_start(json!({"name": format!("bench-{i}"), "platformType": "Docker", "configuration": configuration}))
            .await?;
        managed.push(took);
        up.delete(&id).await?;
    }

    // Bare, through the Engine API.
    let mut bare = Vec::new();
    for i in 0..runs {
        let name = format!("draas-bench-bare-{i}-{}", std::process::id());
        let started = Instant::now();
        let id = bare_container(&docker, &name, None, "0").await?;
        let port = published(&docker, &id).await?;
        until_ready(
            &client,
            &format!("http://127.0.0.1:{port}"),
            Duration::from_secs(30),
        )
        .await?;
        bare.push(started.elapsed());
        remove(&docker, &id).await;
    }

    // Bare, with the docker CLI.
    let dir = tempfile::tempdir()?;
    let mut cli = Vec::new();
    for i in 0..runs {
        let name = format!("draas-bench-cli-{i}-{}", std::process::id());
        let config = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&config, bare_config(&name))?;
        let started = Instant::now();
        let run = tokio::process::Command::new("docker")
            .args([
                "run",
                "-d",
                "--name",
                &name,
                "-p",
                "127.0.0.1::8080",
                "--stop-signal",
                "SIGINT",
                "-v",
            ])
            .arg(format!("{}:/etc/drasi/server.yaml:ro", config.display()))
            .arg(IMAGE)
            .output()
            .await?;
        if !run.status.success() {
            bail!("docker run: {}", String::from_utf8_lossy(&run.stderr));
        }
        let id = String::from_utf8_lossy(&run.stdout).trim().to_string();
        let port = published(&docker, &id).await?;
        until_ready(
            &client,
            &format!("http://127.0.0.1:{port}"),
            Duration::from_secs(30),
        )
        .await?;
        cli.push(started.elapsed());
        remove(&docker, &id).await;
    }

    let (m, b, c) = (Summary::of(&managed), Summary::of(&bare), Summary::of(&cli));
    println!("### Create → Running (Docker platform, {runs} runs)\n");
    println!("| operation | p50 | p95 | max |");
    println!("|---|---|---|---|");
    println!(
        "| DRaaS: POST create + POST start (returns when Running) | {} ms | {} ms | {} ms |",
        ms(m.p50),
        ms(m.p95),
        ms(m.max)
    );
    println!(
        "| bare, Engine API: create (configuration in the environment) + start, until /health and queries Running | {} ms | {} ms | {} ms |",
        ms(b.p50),
        ms(b.p95),
        ms(b.max)
    );
    println!(
        "| bare, `docker run` CLI, until /health and queries Running | {} ms | {} ms | {} ms |",
        ms(c.p50),
        ms(c.p95),
        ms(c.max)
    );
    println!(
        "\nRatio (p50): **{}** the bare Engine API run, **{}** `docker run`.\n",
        ratio(m.p50, b.p50),
        ratio(m.p50, c.p50)
    );

    crash_detection(&up, &docker, kills).await?;
    restart_policy(&docker, &client, restarts).await?;
    Ok(())
}

/// The host pid of `container`'s process.
pub(crate) async fn pid_of(docker: &Docker, container: &str) -> anyhow::Result<i32> {
    let pid = docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await?
        .state
        .and_then(|s| s.pid)
        .context("no pid")?;
    Ok(i32::try_from(pid)?)
}

async fn crash_detection(up: &DraasUp, docker: &Docker, kills: usize) -> anyhow::Result<()> {
    let mut configuration = pipeline();
    configuration["host"] = json!("0.0.0.0");
    configuration["port"] = json!(8080);
    let id = up
        .create(json!({"name": "victim", "platformType": "Docker", "configuration": configuration}))
        .await?;
    let response = up.client.get(up.url("/api/events")).send().await?;
    let mut events = eventsource_stream::EventStream::new(response.bytes_stream());
    let mut samples = Vec::new();
    for _ in 0..kills {
        let instance = up
            .post(&format!("/api/server/instances/{id}/start"), json!({}))
            .await?;
        let container = instance["runtime"]["handle"]["containerId"]
            .as_str()
            .context("container")?
            .to_string();
        let pid = pid_of(docker, &container).await?;
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
    up.client
        .delete(up.url(&format!("/api/server/instances/{id}")))
        .send()
        .await?;
    let s = Summary::of(&samples);
    println!(
        "### Crash → Failed (Docker platform, {} SIGKILLs of a container's process)\n",
        s.n
    );
    println!("| from SIGKILL to the `Failed` event on `/api/events` | p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| draas up, Docker worker (the engine's `die` event) | {} ms | {} ms | {} ms |\n",
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
    );
    Ok(())
}

async fn restart_policy(
    docker: &Docker,
    client: &reqwest::Client,
    kills: usize,
) -> anyhow::Result<()> {
    let port = draas_testkit::free_port();
    let name = format!("draas-bench-restart-{}", std::process::id());
    let container = bare_container(
        docker,
        &name,
        Some(RestartPolicyNameEnum::ON_FAILURE),
        &port.to_string(),
    )
    .await?;
    let base = format!("http://127.0.0.1:{port}");
    until_ready(client, &base, Duration::from_secs(30)).await?;
    let mut samples = Vec::new();
    for _ in 0..kills {
        // Long enough for Docker to reset its restart backoff.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let pid = pid_of(docker, &container).await?;
        let killed = Instant::now();
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        // Healthy again means: a new process answers.
        let deadline = killed + Duration::from_secs(60);
        loop {
            let restarted = pid_of(docker, &container)
                .await
                .is_ok_and(|p| p != pid && p != 0);
            if restarted
                && client
                    .get(format!("{base}/health"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            {
                samples.push(killed.elapsed());
                break;
            }
            if Instant::now() > deadline {
                remove(docker, &container).await;
                bail!("no restart within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    remove(docker, &container).await;
    let s = Summary::of(&samples);
    println!(
        "### Docker's own restart policy (the anchor; {} SIGKILLs, each after 11 s of running)\n",
        s.n
    );
    println!("| from SIGKILL to `/health` answering again | p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| `--restart on-failure` container of the same image | {} ms | {} ms | {} ms |\n",
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
    );
    Ok(())
}
