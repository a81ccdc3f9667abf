//! Distributed mode in tests: `draas serve` replicas and `draas worker`
//! processes joined by a real redis-server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use draas_testkit::process::TestProcess;
use draas_testkit::redis_server::RedisServer;
use draas_testkit::{free_port, wait_for};

use super::{alive, runtime_binary, Api, DRAAS};

/// A `draas serve` process.
pub struct Serve {
    pub process: TestProcess,
    pub api: Api,
}

impl std::ops::Deref for Serve {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Starts `draas serve` on `redis`, logging into `dir/<name>.*`, without
/// its reconciler.
pub async fn serve(dir: &Path, name: &str, redis: &RedisServer, range: &str) -> Serve {
    serve_with(
        dir,
        name,
        redis,
        range,
        free_port(),
        &["--reconcile", "off"],
    )
    .await
}

/// Starts `draas serve` on `port` with `extra` arguments (which must say
/// `--reconcile`).
pub async fn serve_with(
    dir: &Path,
    name: &str,
    redis: &RedisServer,
    range: &str,
    port: u16,
    extra: &[&str],
) -> Serve {
    let mut command = Command::new(DRAAS);
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--redis",
            &redis.url(),
            "--port-range",
            range,
            "--watchdog-seconds",
            "1",
        ])
        .args(extra)
        .env("RUST_LOG", "info,tower_http=debug");
    let mut process = TestProcess::spawn(command, name, dir).expect("spawn draas serve");
    // `draas serve` requires API keys unless told otherwise.
    let api = if extra.windows(2).any(|w| w == ["--require-auth", "off"]) {
        Api::new(port)
    } else {
        let token = super::create_key(
            &["--redis", &redis.url()],
            "admin",
            &format!("admin-{}", uuid::Uuid::new_v4().simple()),
        );
        Api::with_token(port, token)
    };
    let url = api.url("/healthz");
    wait_for("draas serve to answer", Duration::from_secs(30), || {
        assert!(
            process.is_running(),
            "draas serve exited: {}",
            process.stderr()
        );
        let url = url.clone();
        async move { draas_testkit::get_json(&url).await.map(|_| ()) }
    })
    .await;
    Serve { process, api }
}

/// Starts `draas reconcile` against `api` as `name` (also its lease
/// holder name), keeping its cursor in `dir/<name>.cursor`; `run` numbers
/// its log files.
pub fn reconciler(dir: &Path, name: &str, api: &Api, run: usize, extra: &[&str]) -> TestProcess {
    let mut command = Command::new(DRAAS);
    command
        .args(["reconcile", "--control-plane", &api.url("")])
        .args(["--reconciler-id", name])
        .arg("--cursor-file")
        .arg(dir.join(format!("{name}.cursor")))
        .args(extra)
        .env("RUST_LOG", "info,draas_reconciler=debug");
    if let Some(token) = &api.token {
        command.env("DRAAS_TOKEN", token);
    }
    TestProcess::spawn(command, &format!("{name}-{run}"), dir).expect("spawn draas reconcile")
}

/// A `draas worker` process.
pub struct WorkerProcess {
    pub process: TestProcess,
    pub data: PathBuf,
    pub name: String,
    platform: String,
    dir: PathBuf,
    args: Vec<String>,
    url: String,
    runs: usize,
}

impl WorkerProcess {
    /// Starts a Process worker with its data in `dir/<name>`; `extra` are
    /// more `draas worker` arguments.
    pub fn start(dir: &Path, name: &str, redis: &RedisServer, extra: &[&str]) -> Self {
        Self::start_platform(dir, name, redis, "process", extra)
    }

    /// Starts a worker of `platform`.
    pub fn start_platform(
        dir: &Path,
        name: &str,
        redis: &RedisServer,
        platform: &str,
        extra: &[&str],
    ) -> Self {
        let mut worker = Self {
            process: spawn_worker(dir, name, &redis.url(), platform, extra, 0),
            data: dir.join(name),
            name: name.to_string(),
            platform: platform.to_string(),
            dir: dir.to_path_buf(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            url: redis.url(),
            runs: 0,
        };
        worker.wait_for_id();
        worker
    }

    fn wait_for_id(&mut self) {
        let path = self.data.join(format!("{}-worker-id", self.platform));
        for _ in 0..500 {
            if path.is_file() {
                return;
            }
            assert!(
                self.process.is_running(),
                "worker exited: {}",
                self.process.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("worker {} did not write its id", self.name);
    }

    /// The worker's id (stable across its restarts).
    pub fn id(&self) -> String {
        std::fs::read_to_string(self.data.join(format!("{}-worker-id", self.platform)))
            .expect("worker id")
            .trim()
            .to_string()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.signal(nix::sys::signal::Signal::SIGKILL);
        self.process
            .wait_timeout(Duration::from_secs(10))
            .expect("worker dies");
    }

    /// Starts it again with the same data directory (so the same id).
    pub fn restart(&mut self) {
        if self.process.is_running() {
            self.kill();
        }
        self.runs += 1;
        let extra: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.process = spawn_worker(
            &self.dir,
            &self.name,
            &self.url,
            &self.platform,
            &extra,
            self.runs,
        );
    }
}

fn spawn_worker(
    dir: &Path,
    name: &str,
    url: &str,
    platform: &str,
    extra: &[&str],
    run: usize,
) -> TestProcess {
    let mut command = Command::new(DRAAS);
    command
        .args([
            "worker",
            "--platform",
            platform,
            "--redis",
            url,
            "--heartbeat-seconds",
            "1",
        ])
        .arg("--data-dir")
        .arg(dir.join(name))
        .arg("--runtime")
        .arg(runtime_binary())
        .args(extra)
        .env("RUST_LOG", "info");
    TestProcess::spawn(command, &format!("{name}-{run}"), dir).expect("spawn draas worker")
}

/// A redis-server for a test, with its data in `dir/redis`.
pub fn redis(dir: &Path) -> RedisServer {
    let redis_dir = dir.join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    RedisServer::start(&redis_dir)
}

/// Waits until `api` sees `n` live Process workers.
pub async fn wait_workers(api: &Api, n: usize) {
    wait_for(
        &format!("{n} live workers"),
        Duration::from_secs(30),
        || async {
            let (_, body) = api.get("/api/server/platforms").await;
            let live = body["platforms"][0]["workers"]
                .as_array()
                .map_or(0, Vec::len);
            (live == n).then_some(())
        },
    )
    .await;
}

/// Processes whose working directory is `dir`.
pub fn processes_in(dir: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
            (cwd == dir && alive(pid as u64)).then_some(pid)
        })
        .collect()
}

/// The working directory of instance `id`'s server on `worker`.
pub fn workdir(worker: &WorkerProcess, id: &str) -> PathBuf {
    worker.data.join("process/instances").join(id)
}
