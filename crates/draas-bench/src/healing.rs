//! Self-healing: kill -9 of a running Drasi server → its `/health`
//! answering again, under DRaaS and under what users otherwise rely on,
//! side by side in one run on the same runtime binary and configuration;
//! and the convergence of a fleet after its worker restarts.
//!
//! Method (each figure is printed with its own description):
//! - **the same machine state before every event**: the benchmark does
//!   nothing for [`QUIET`] before each timed start and each kill, whoever
//!   supervises (see there for why);
//! - **the runtime's own start**: the bundled runtime spawned directly on
//!   the configuration until `/health` answers, after the quiet period: the
//!   floor of any restart (also shown back to back, on a hot machine);
//! - **the runtime's start from standby**: `draas-runtime --standby`
//!   started and left waiting, then after the quiet period handed its
//!   start (what the Process worker's warm runtime gets) until `/health`;
//! - **a bare respawn loop**: a thread that waits for the runtime and spawns
//!   it again at once; each kill after the quiet period;
//! - **DRaaS, Process** (`draas up`, reconciler on; with its warm runtime,
//!   the default, and again with `--warm-runtime off`) and **DRaaS, Docker**
//!   (`draas up --docker on`; with its warm containers, the default, and
//!   again with `--warm-containers off`; with them, each kill also waits
//!   until the instance's warm container is ready, 1–1.5 s after a start;
//!   the endpoint is read from the API every 2 ms, a container's port
//!   changing with each restart): an instance of the mock pipeline with restart
//!   policy `on-failure` and `resetAfterSeconds: 1`; before each kill the
//!   instance has run long enough for its restarts in a row to be reset
//!   (`restartCount` 0), so each figure is an occasional crash (the first
//!   restart in a row, immediate by policy); SIGKILL to the server's
//!   process (the container's process from the host, for Docker); the
//!   clock stops when the old process is gone and the instance's endpoint
//!   answers `/health`, probed every 1 ms (see [`PROBE_EVERY`]);
//! - **supervisord** (Debian's `supervisor`): a `[program]` running the
//!   same runtime on the same configuration with `autorestart=true`,
//!   `startsecs=1`; each kill after 1.5 s of running; same clock;
//! - **Docker `--restart on-failure`**: a container of the same image and
//!   configuration; Docker doubles its restart delay unless the container
//!   ran 10 s, so each kill comes after 11 s of running (its best case);
//! - **fleet convergence**: `draas serve` + `draas worker` over a real
//!   redis-server, N running instances; the worker is killed with SIGKILL,
//!   and once all N are `Unknown` (declared dead) it is started again; the
//!   clock runs from its spawn until all N are `Running` again (re-adopted,
//!   same processes).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bollard::models::RestartPolicyNameEnum;
use bollard::Docker;
use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::control_plane::{pipeline, DraasUp};
use crate::docker::{bare_container, pid_of, published, remove, until_ready, IMAGE};
use crate::stats::{ms, Summary};

/// Whether process `pid` still exists (a zombie does not count).
fn alive(pid: i32) -> bool {
    u64::try_from(pid).is_ok_and(draas_testkit::process::alive)
}

async fn healthy(client: &reqwest::Client, base: &str) -> bool {
    client
        .get(format!("{base}/health"))
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Between two probes of a start or a heal. tokio's timer counts whole
/// milliseconds, so `tokio::time::sleep(2 ms)` waits 2–3 ms: a probe that
/// coarse adds up to 3 ms (1.5 ms on average) to figures of 5–10 ms and
/// flattens their ratios. The thread sleeps instead (the runtime is told,
/// so its other tasks move on). Not finer: probing every 0.25 ms took
/// enough of the two CPUs to slow the very start it timed.
const PROBE_EVERY: Duration = Duration::from_millis(1);

/// Between two probes of a container's heal under DRaaS: each probe reads
/// the instance's endpoint from the API first, and a read every
/// millisecond would load the control plane it times.
const PROBE_API_EVERY: Duration = Duration::from_millis(2);

/// How long the benchmark does nothing before each timed event (a start of
/// the floor, a kill), so every figure begins from the same machine state.
/// It matters: on a 2-vCPU VM the runtime starts ~1.5 ms (25–40 %) faster
/// right after another process ran than after even 50 ms of idling
/// (halted vCPUs wake, caches are cold), and killing a process that ran a
/// while takes longer to reap than one that just started. A crash comes at
/// any time, and every supervisor here is measured after a second or more
/// of running; a floor measured back to back would charge that difference
/// to the healer.
const QUIET: Duration = Duration::from_secs(1);

async fn pause(every: Duration) {
    tokio::task::block_in_place(|| std::thread::sleep(every));
}

/// Kills `pid`, then times until it is gone and `base()` answers
/// `/health` (probed every `every`, at most 60 s).
async fn time_healing<F, Fut>(
    client: &reqwest::Client,
    pid: i32,
    every: Duration,
    mut base: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let killed = Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    loop {
        if !alive(pid) {
            if let Some(base) = base().await {
                if healthy(client, &base).await {
                    return Ok(killed.elapsed());
                }
            }
        }
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("not healthy again within 60 s of the kill");
        }
        pause(every).await;
    }
}

/// A server configuration file for the bare runtime on `port`.
fn config_file(dir: &Path, port: u16) -> anyhow::Result<PathBuf> {
    let mut config = pipeline();
    config["id"] = json!("healing");
    config["host"] = json!("127.0.0.1");
    config["port"] = json!(port);
    config["persistConfig"] = json!(false);
    let path = dir.join("server.yaml");
    std::fs::write(&path, serde_json::to_string(&config)?)?;
    Ok(path)
}

/// The bare runtime on `config`, run in `workdir`, its output discarded.
fn spawn_runtime(runtime: &Path, workdir: &Path, config: &Path) -> anyhow::Result<Child> {
    Command::new(runtime)
        .current_dir(workdir)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn the runtime")
}

/// How long since `started` until `base` answers `/health` (probed every
/// [`PROBE_EVERY`], at most 30 s, failing if `child`, `what`, exits);
/// then `child` is killed.
async fn healthy_since(
    client: &reqwest::Client,
    base: &str,
    started: Instant,
    child: &mut Child,
    what: &str,
) -> anyhow::Result<Duration> {
    let result = async {
        while !healthy(client, base).await {
            if started.elapsed() > Duration::from_secs(30) || child.try_wait()?.is_some() {
                bail!("{what} did not become healthy");
            }
            pause(PROBE_EVERY).await;
        }
        Ok(started.elapsed())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The runtime's own start: spawn → `/health`, each after `quiet` of
/// doing nothing (zero: back to back, each right after the last one ended).
async fn runtime_start(
    runtime: &Path,
    runs: usize,
    quiet: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        let port = draas_testkit::free_port();
        let config = config_file(dir.path(), port)?;
        let base = format!("http://127.0.0.1:{port}");
        tokio::time::sleep(quiet).await;
        let started = Instant::now();
        let mut child = spawn_runtime(runtime, dir.path(), &config)?;
        samples.push(healthy_since(&client, &base, started, &mut child, "the runtime").await?);
    }
    Ok(samples)
}

/// The runtime's start from standby: `draas-runtime --standby` started
/// and left waiting, then after `QUIET` handed the same start a spawn
/// would get (the order the Process worker's warm runtime receives), until
/// `/health`. What a restart through a warm runtime cannot beat.
async fn standby_start(runtime: &Path, runs: usize) -> anyhow::Result<Vec<Duration>> {
    use std::io::Write;
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        let port = draas_testkit::free_port();
        let config = config_file(dir.path(), port)?;
        let base = format!("http://127.0.0.1:{port}");
        let mut child = Command::new(runtime)
            .arg("--standby")
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn the runtime in standby")?;
        let order = serde_json::to_vec(&json!({
            "args": ["--config", config, "--workdir", dir.path()],
            "env": [["PATH", "/usr/local/bin:/usr/bin:/bin"], ["NO_COLOR", "1"]],
            "stdout": "/dev/null",
            "stderr": "/dev/null",
        }))?;
        let mut stdin = child.stdin.take().context("stdin")?;
        tokio::time::sleep(QUIET).await;
        let started = Instant::now();
        stdin.write_all(&order)?;
        drop(stdin);
        samples.push(
            healthy_since(
                &client,
                &base,
                started,
                &mut child,
                "the runtime in standby",
            )
            .await?,
        );
    }
    Ok(samples)
}

/// A bare supervisor: a loop that starts the runtime again the moment it
/// exits (wait, spawn; nothing recorded anywhere), timed like the others
/// from the kill to `/health`. What no supervisor can beat: the kernel's
/// teardown of the killed process, then the runtime's own start.
async fn bare_respawn(runtime: &Path, kills: usize) -> anyhow::Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let port = draas_testkit::free_port();
    let config = config_file(dir.path(), port)?;
    let base = format!("http://127.0.0.1:{port}");
    let (pids, spawned) = std::sync::mpsc::channel::<u32>();
    let (runtime, workdir) = (runtime.to_path_buf(), dir.path().to_path_buf());
    let supervisor = std::thread::spawn(move || -> anyhow::Result<()> {
        for _ in 0..=kills {
            let mut child = spawn_runtime(&runtime, &workdir, &config)?;
            pids.send(child.id())?;
            child.wait()?;
        }
        Ok(())
    });
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    let next = || {
        spawned
            .recv_timeout(Duration::from_secs(30))
            .context("the bare supervisor stopped spawning")
            .and_then(|pid| Ok(i32::try_from(pid)?))
    };
    for _ in 0..kills {
        let pid = next()?;
        until_ready(&client, &base, Duration::from_secs(30)).await?;
        tokio::time::sleep(QUIET).await;
        samples.push(
            time_healing(&client, pid, PROBE_EVERY, || {
                std::future::ready(Some(base.clone()))
            })
            .await?,
        );
    }
    let _ = kill(Pid::from_raw(next()?), Signal::SIGKILL);
    supervisor
        .join()
        .map_err(|_| anyhow::anyhow!("the bare supervisor panicked"))??;
    Ok(samples)
}

/// The runtime's own start in a container: create and start through the
/// Engine API → `/health` on the published port.
async fn container_start(docker: &Docker, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    for i in 0..runs {
        let name = format!("draas-bench-floor-{i}-{}", std::process::id());
        tokio::time::sleep(QUIET).await;
        let started = Instant::now();
        let container = bare_container(docker, &name, None, "0").await?;
        let result = async {
            let base = format!("http://127.0.0.1:{}", published(docker, &container).await?);
            while !healthy(&client, &base).await {
                if started.elapsed() > Duration::from_secs(30) {
                    bail!("the container did not become healthy");
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(started.elapsed())
        }
        .await;
        remove(docker, &container).await;
        samples.push(result?);
    }
    Ok(samples)
}

/// Where a DRaaS instance's server process is.
enum Platform<'a> {
    Process,
    /// A container of `docker`; with `warm`, each kill waits for the warm
    /// container of the restart to be ready (made 1–1.5 s after a start).
    Docker {
        docker: &'a Docker,
        warm: bool,
    },
}

/// Whether instance `id` has a warm container ready (running, named as
/// one in standby).
async fn warm_container_ready(docker: &Docker, id: &str) -> anyhow::Result<bool> {
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("draas.instanceId={id}")],
    )]);
    let listed = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await?;
    Ok(listed.iter().any(|c| {
        c.names
            .iter()
            .flatten()
            .any(|n| draas_worker_docker::warm::in_standby(n))
    }))
}

/// kill -9 → healthy again, `kills` times, for one instance under `up`.
async fn under_draas(
    up: &DraasUp,
    id: &str,
    platform: Platform<'_>,
    kills: usize,
) -> anyhow::Result<Vec<Duration>> {
    let path = format!("/api/server/instances/{id}");
    let mut samples = Vec::new();
    for _ in 0..kills {
        // Running, and run long enough that this is an occasional crash.
        let deadline = Instant::now() + Duration::from_secs(30);
        let instance = loop {
            let instance = up.get(&path).await?;
            if instance["status"]["state"] == "Running" && instance["status"]["restartCount"] == 0 {
                break instance;
            }
            if Instant::now() > deadline {
                bail!("not Running with its restarts reset: {instance}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let pid = match &platform {
            Platform::Process => i32::try_from(
                instance["runtime"]["handle"]["pid"]
                    .as_u64()
                    .context("pid")?,
            )?,
            Platform::Docker { docker, warm } => {
                let deadline = Instant::now() + Duration::from_secs(30);
                while *warm && !warm_container_ready(docker, id).await? {
                    if Instant::now() > deadline {
                        bail!("no warm container within 30 s");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let container = instance["runtime"]["handle"]["containerId"]
                    .as_str()
                    .context("container id")?;
                pid_of(docker, container).await?
            }
        };
        // A Process server comes back on the same address; a container may
        // publish another port, so its endpoint is read from the instance.
        let fixed = match platform {
            Platform::Process => instance["runtime"]["endpoint"].as_str().map(str::to_string),
            Platform::Docker { .. } => None,
        };
        let every = match platform {
            Platform::Process => PROBE_EVERY,
            Platform::Docker { .. } => PROBE_API_EVERY,
        };
        tokio::time::sleep(QUIET).await;
        let took = time_healing(&up.client, pid, every, || {
            let fixed = fixed.clone();
            let path = path.clone();
            async move {
                if fixed.is_some() {
                    return fixed;
                }
                let instance = up.get(&path).await.ok()?;
                (instance["status"]["state"] == "Running")
                    .then(|| instance["runtime"]["endpoint"].as_str().map(str::to_string))
                    .flatten()
            }
        })
        .await?;
        samples.push(took);
    }
    Ok(samples)
}

/// An instance of the pipeline on `platform_type`, started and Running.
async fn healing_instance(
    up: &DraasUp,
    platform_type: &str,
    configuration: Value,
) -> anyhow::Result<String> {
    let id = up
        .create(json!({
            "name": format!("healing-{}", platform_type.to_lowercase()),
            "platformType": platform_type,
            "configuration": configuration,
            "restartPolicy": {"policy": "on-failure", "resetAfterSeconds": 1, "maxRestarts": 0},
        }))
        .await?;
    let started = up
        .post(
            &format!("/api/server/instances/{id}/start?wait=Running&timeout=60"),
            json!({}),
        )
        .await?;
    if started["status"]["state"] != "Running" {
        bail!("not running: {started}");
    }
    Ok(id)
}

/// supervisord running the runtime with `autorestart=true`.
struct Supervisord {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Supervisord {
    fn start(runtime: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = draas_testkit::free_port();
        let config = config_file(dir.path(), port)?;
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work)?;
        let d = dir.path().display();
        let conf = format!(
            "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\n\
             [program:drasi]\ncommand={} --config {}\ndirectory={}\nautorestart=true\nstartsecs=1\n\
             startretries=100\nstopsignal=INT\nstdout_logfile=NONE\nstderr_logfile=NONE\n",
            runtime.display(),
            config.display(),
            work.display()
        );
        let conf_path = dir.path().join("supervisord.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new("supervisord")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn supervisord (apt-get install supervisor)")?;
        Ok(Self {
            child,
            _dir: dir,
            port,
        })
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn server_pid(&self) -> Option<i32> {
        draas_testkit::process::children_of(u64::from(self.child.id()))
            .into_iter()
            .next()
            .and_then(|pid| i32::try_from(pid).ok())
    }
}

async fn under_supervisord(runtime: &Path, kills: usize) -> anyhow::Result<Vec<Duration>> {
    let supervisor = Supervisord::start(runtime)?;
    let client = reqwest::Client::new();
    let base = supervisor.base();
    let mut samples = Vec::new();
    for _ in 0..kills {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !healthy(&client, &base).await {
            if Instant::now() > deadline {
                bail!("supervisord's server is not healthy");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pid = supervisor
            .server_pid()
            .context("supervisord runs no server")?;
        // Past startsecs (supervisord counts it as started) and QUIET.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let base = base.clone();
        samples.push(
            time_healing(&client, pid, PROBE_EVERY, || {
                std::future::ready(Some(base.clone()))
            })
            .await?,
        );
    }
    Ok(samples)
}

async fn under_docker_policy(docker: &Docker, kills: usize) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::new();
    let port = draas_testkit::free_port();
    let name = format!("draas-bench-healing-{}", std::process::id());
    let container = bare_container(
        docker,
        &name,
        Some(RestartPolicyNameEnum::ON_FAILURE),
        &port.to_string(),
    )
    .await?;
    let base = format!("http://127.0.0.1:{port}");
    let result = async {
        until_ready(&client, &base, Duration::from_secs(30)).await?;
        let mut samples = Vec::new();
        for _ in 0..kills {
            let pid = pid_of(docker, &container).await?;
            tokio::time::sleep(Duration::from_secs(11)).await;
            let base = base.clone();
            samples.push(
                time_healing(&client, pid, PROBE_EVERY, || {
                    std::future::ready(Some(base.clone()))
                })
                .await?,
            );
        }
        Ok(samples)
    }
    .await;
    remove(docker, &container).await;
    result
}

fn row(what: &str, samples: &[Duration], floor: Duration) {
    let s = Summary::of(samples);
    println!(
        "| {what} | {} | {} ms | {} ms | {} ms | {:.2}x |",
        s.n,
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
        s.p50.as_secs_f64() / floor.as_secs_f64()
    );
}

/// One part of the healing benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// The runtime's own start as a process, and DRaaS's Process platform.
    Process,
    /// The runtime's own start as a container, and DRaaS's Docker platform.
    Docker,
    /// The fleet's convergence after a worker restart.
    Fleet,
}

pub async fn run(
    draas: &Path,
    runtime: &Path,
    kills: usize,
    docker_kills: usize,
    fleet: usize,
    only: Option<Only>,
) -> anyhow::Result<()> {
    let engine = draas_worker_docker::Engine::connect(None, Duration::from_secs(10)).await?;
    let docker = engine.docker.clone();
    draas_worker_docker::image::build_runtime_image(&docker, runtime, IMAGE).await?;
    let process_part = matches!(only, None | Some(Only::Process));
    let docker_part = matches!(only, None | Some(Only::Docker));
    if only == Some(Only::Fleet) {
        return convergence(draas, runtime, fleet).await;
    }

    println!("### Self-healing: kill -9 → `/health` answering again (same runtime, same configuration, one run)\n");
    println!("| | runs | p50 | p99 | max | p50 vs the runtime's own start there |");
    println!("|---|---|---|---|---|---|");
    if process_part {
        let own = runtime_start(runtime, kills, QUIET).await?;
        let floor = Summary::of(&own).p50;
        let hot = runtime_start(runtime, kills, Duration::ZERO).await?;
        let standby = standby_start(runtime, kills).await?;
        let process = under_draas_process(draas, runtime, kills, "on").await?;
        let cold = under_draas_process(draas, runtime, kills, "off").await?;
        row(
            "the runtime's own start as a process (spawn → `/health`, after 1 s quiet like every kill): the floor",
            &own,
            floor,
        );
        row(
            "the same, back to back (each start right after the last ended: a hot machine)",
            &hot,
            floor,
        );
        row(
            "the runtime's start from standby (`--standby`, then its order → `/health`, after 1 s quiet): what a restart through the warm runtime cannot beat",
            &standby,
            floor,
        );
        let bare = bare_respawn(runtime, kills).await?;
        row(
            "a bare respawn loop (wait → spawn, nothing recorded): the least a supervisor can take",
            &bare,
            floor,
        );
        row(
            "**DRaaS, Process** (`draas up`, reconciler; its warm runtime, the default)",
            &process,
            floor,
        );
        row(
            "DRaaS, Process, `--warm-runtime off` (every restart spawns the runtime)",
            &cold,
            floor,
        );
        if only.is_none() {
            let supervisord = under_supervisord(runtime, kills).await?;
            row("supervisord `autorestart=true`", &supervisord, floor);
        }
    }
    if docker_part {
        let own_container = container_start(&docker, kills).await?;
        let container_floor = Summary::of(&own_container).p50;
        let in_docker = under_draas_docker(draas, runtime, &docker, kills, "on").await?;
        let in_docker_cold = under_draas_docker(draas, runtime, &docker, kills, "off").await?;
        row(
            "the runtime's own start as a container (Engine API create + start → `/health`, after 1 s quiet): the floor",
            &own_container,
            container_floor,
        );
        row(
            "**DRaaS, Docker** (`draas up --docker on`, reconciler; its warm containers, the default)",
            &in_docker,
            container_floor,
        );
        row(
            "DRaaS, Docker, `--warm-containers off` (every restart creates and starts a container)",
            &in_docker_cold,
            container_floor,
        );
        if only.is_none() {
            let docker_policy = under_docker_policy(&docker, docker_kills).await?;
            row(
                "Docker `--restart on-failure` (each kill after 11 s)",
                &docker_policy,
                container_floor,
            );
        }
    }
    println!();
    if only.is_some() {
        return Ok(());
    }
    convergence(draas, runtime, fleet).await
}

/// kill -9 → healthy again in a container under `draas up --docker on
/// --warm-containers <warm>`.
async fn under_draas_docker(
    draas: &Path,
    runtime: &Path,
    docker: &Docker,
    kills: usize,
    warm: &str,
) -> anyhow::Result<Vec<Duration>> {
    let up = DraasUp::start_with(
        draas,
        runtime,
        "27500-27999",
        &[
            "--docker",
            "on",
            "--docker-image",
            IMAGE,
            "--reconcile",
            "on",
            "--warm-containers",
            warm,
        ],
    )
    .await?;
    let mut configuration = pipeline();
    configuration["host"] = json!("0.0.0.0");
    configuration["port"] = json!(8080);
    let id = healing_instance(&up, "Docker", configuration).await?;
    let platform = Platform::Docker {
        docker,
        warm: warm == "on",
    };
    let samples = under_draas(&up, &id, platform, kills).await;
    let _ = up.delete(&id).await;
    samples
}

/// kill -9 → healthy again under `draas up --warm-runtime <warm>`.
async fn under_draas_process(
    draas: &Path,
    runtime: &Path,
    kills: usize,
    warm: &str,
) -> anyhow::Result<Vec<Duration>> {
    let up = DraasUp::start_with(
        draas,
        runtime,
        "27000-27499",
        &[
            "--docker",
            "off",
            "--reconcile",
            "on",
            "--warm-runtime",
            warm,
        ],
    )
    .await?;
    let id = healing_instance(&up, "Process", pipeline()).await?;
    let samples = under_draas(&up, &id, Platform::Process, kills).await;
    // Servers outlive `draas up` (to be re-adopted): delete it.
    let _ = up.delete(&id).await;
    samples
}

/// A child process killed (SIGKILL) on drop.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn spawn_worker(draas: &Path, runtime: &Path, redis: &str, data: &Path) -> anyhow::Result<Spawned> {
    Ok(Spawned(
        Command::new(draas)
            .args([
                "worker",
                "--platform",
                "process",
                "--redis",
                redis,
                "--heartbeat-seconds",
                "1",
            ])
            .arg("--data-dir")
            .arg(data)
            .arg("--runtime")
            .arg(runtime)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn draas worker")?,
    ))
}

/// Instances in `state`, as the control plane counts them.
async fn count(client: &reqwest::Client, base: &str, state: &str) -> anyhow::Result<u64> {
    let body: Value = client
        .get(format!("{base}/api/server/instances?state={state}&limit=1"))
        .send()
        .await?
        .json()
        .await?;
    body["total"].as_u64().context("total")
}

async fn convergence(draas: &Path, runtime: &Path, fleet: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir_all(&redis_dir)?;
    let redis = draas_testkit::redis_server::RedisServer::start(&redis_dir);
    let port = draas_testkit::free_port();
    let base = format!("http://127.0.0.1:{port}");
    // draas serve requires API keys: an admin key for the benchmark's calls.
    let key = Command::new(draas)
        .args([
            "keys",
            "create",
            "--role",
            "admin",
            "--name",
            "bench",
            "--redis",
            &redis.url(),
        ])
        .output()
        .context("draas keys create")?;
    anyhow::ensure!(
        key.status.success(),
        "draas keys create: {}",
        String::from_utf8_lossy(&key.stderr)
    );
    let token = String::from_utf8_lossy(&key.stdout)
        .lines()
        .last()
        .context("no key printed")?
        .trim()
        .to_string();
    let _serve = Spawned(
        Command::new(draas)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--redis",
                &redis.url(),
            ])
            .args([
                "--port-range",
                "28000-28999",
                "--watchdog-seconds",
                "1",
                "--reconcile",
                "on",
                // Convergence is measured, not the per-key limiter.
                "--rate-limit",
                "0",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn draas serve")?,
    );
    let data = dir.path().join("worker");
    let mut worker = spawn_worker(draas, runtime, &redis.url(), &data)?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live = client
            .get(format!("{base}/api/server/platforms"))
            .send()
            .await
            .ok();
        if let Some(r) = live {
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if body["platforms"][0]["workers"]
                .as_array()
                .is_some_and(|w| !w.is_empty())
            {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("no live worker");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The fleet, started 8 at a time.
    let create = |n: usize| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let created: Value = client
                .post(format!("{base}/api/server/instances"))
                .json(&json!({"name": format!("fleet-{n}"), "platformType": "Process", "configuration": pipeline()}))
                .send()
                .await?
                .json()
                .await?;
            let id = created["instance"]["id"]
                .as_str()
                .context("id")?
                .to_string();
            let started: Value = client
                .post(format!(
                    "{base}/api/server/instances/{id}/start?wait=Running&timeout=60"
                ))
                .send()
                .await?
                .json()
                .await?;
            if started["status"]["state"] != "Running" {
                bail!("not running: {started}");
            }
            anyhow::Ok(())
        }
    };
    let results: Vec<anyhow::Result<()>> = futures::stream::iter((0..fleet).map(create))
        .buffer_unordered(8)
        .collect()
        .await;
    for result in results {
        result?;
    }

    drop(worker);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&client, &base, "Unknown").await? < fleet as u64 {
        if Instant::now() > deadline {
            bail!("the fleet was not declared Unknown");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restarted = Instant::now();
    worker = spawn_worker(draas, runtime, &redis.url(), &data)?;
    let deadline = restarted + Duration::from_secs(120);
    while count(&client, &base, "Running").await? < fleet as u64 {
        if Instant::now() > deadline {
            bail!("the fleet did not converge");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = restarted.elapsed();
    // Delete the fleet (its servers stop with it).
    let all: Value = client
        .get(format!("{base}/api/server/instances?limit=1000"))
        .send()
        .await?
        .json()
        .await?;
    let mut servers = Vec::new();
    for instance in all["items"].as_array().into_iter().flatten() {
        let Some(id) = instance["id"].as_str() else {
            continue;
        };
        match client
            .delete(format!("{base}/api/server/instances/{id}"))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                eprintln!("could not delete {id}: {status} {body}");
            }
            Err(e) => eprintln!("could not delete {id}: {e}"),
        }
        if let Some(pid) = instance["runtime"]["handle"]["pid"]
            .as_i64()
            .and_then(|pid| i32::try_from(pid).ok())
        {
            servers.push(pid);
        }
    }
    // Whatever the API said, leave no server behind: a stray fleet would
    // load the machine for every later measurement (and hold its ports).
    let deadline = Instant::now() + Duration::from_secs(30);
    while servers.iter().any(|pid| alive(*pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<i32> = servers.into_iter().filter(|pid| alive(*pid)).collect();
    if !left.is_empty() {
        eprintln!(
            "{} servers outlived their deletion; killing them",
            left.len()
        );
        for pid in left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    drop(worker);
    println!(
        "### Fleet convergence after a worker restart ({fleet} running instances, Redis mode)\n"
    );
    println!("| from the worker's spawn to all {fleet} `Running` again (re-adopted) | goal |");
    println!("|---|---|");
    println!("| {} ms | ≤ 2000 ms |\n", ms(took));
    Ok(())
}
