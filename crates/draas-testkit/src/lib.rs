//! # draas-testkit
//!
//! Helpers for tests that drive real processes and servers: free loopback
//! ports, waiting for a condition with a deadline (never a bare sleep),
//! child processes that are killed when the test ends, pass or fail,
//! [`conformance`] suites that every implementation of a port must pass
//! (stores, buses, platform drivers), and a scripted [`fake`] driver for
//! the layers above drivers.

pub mod conformance;
pub mod fake;
pub mod kubelet;
pub mod kubernetes;
pub mod postgres_server;
pub mod process;
pub mod receiver;
pub mod redis_server;

use std::future::Future;
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after
/// `limit` with `what` in the message.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs `url` and parses the body as JSON; `None` on any failure (so it
/// can be used inside [`wait_for`]).
pub async fn get_json(url: &str) -> Option<(u16, serde_json::Value)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    let body = response.json().await.ok()?;
    Some((status, body))
}

/// A binary of the workspace, built next to the running test binary (the
/// workspace test command builds every binary of the workspace).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<triple>/<profile>/deps/<test> → target/<triple>/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the target directory");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the workspace tests (cargo nextest run --workspace) or cargo build -p {name}",
        path.display()
    );
    path
}

/// A small real Drasi configuration: a mock counter source and a query over
/// it, the API on `127.0.0.1:<port>`.
pub fn counter_configuration(port: u16) -> draas_core::config::DrasiServerConfig {
    serde_json::from_value(serde_json::json!({
        "host": "127.0.0.1",
        "port": port,
        "sources": [{"kind": "mock", "id": "counter", "dataType": {"type": "counter"}, "intervalMs": 100}],
        "queries": [{"id": "values", "autoStart": true, "queryLanguage": "Cypher",
                     "query": "MATCH (c:Counter) RETURN c.value AS value", "sources": [{"sourceId": "counter"}]}],
        "reactions": [{"kind": "log", "id": "console", "queries": ["values"]}]
    }))
    .expect("a valid configuration")
}

/// What a worker is given to start instance `id` with `configuration` at
/// `generation` on `platform` (as the control plane renders it).
pub fn start_spec(
    id: &draas_core::instance::InstanceId,
    configuration: &draas_core::config::DrasiServerConfig,
    platform: draas_core::instance::PlatformType,
    generation: u64,
) -> draas_core::messages::StartSpec {
    let mut server_configuration =
        draas_core::instance::ServerConfiguration::for_platform(platform);
    server_configuration.shutdown_timeout_seconds = 5;
    draas_core::messages::StartSpec::render(
        id.as_str(),
        id.as_str(),
        generation,
        configuration,
        server_configuration,
    )
    .expect("render")
}

/// A block of ports that no other test on this machine holds while this
/// value lives (an exclusive lock on a file per block, so tests in other
/// processes skip it): instances of one test never meet another test's on
/// a port. Below 32768, where Linux picks ports for outgoing connections.
pub struct PortBlock {
    first: u16,
    last: u16,
    _lock: std::fs::File,
}

impl PortBlock {
    /// The range searched.
    const SPACE: std::ops::Range<u16> = 20_000..32_000;

    /// Reserves a block of `size` ports.
    pub fn reserve(size: u16) -> Self {
        let dir = std::env::temp_dir().join("draas-test-port-blocks");
        std::fs::create_dir_all(&dir).expect("the lock directory");
        let blocks = (Self::SPACE.end - Self::SPACE.start) / size;
        let offset = (uuid::Uuid::new_v4().as_u128() % u128::from(blocks)) as u16;
        for n in 0..blocks {
            let first = Self::SPACE.start + ((offset + n) % blocks) * size;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{first}-{size}.lock")))
                .expect("a lock file");
            // A block is taken only when no port of it is bound now: a
            // server another test (or anything else) left listening must not
            // make this test's first start fail with PORT_IN_USE.
            let all_free = || {
                (first..first + size)
                    .all(|port| std::net::TcpListener::bind(("0.0.0.0", port)).is_ok())
            };
            if file.try_lock().is_ok() && all_free() {
                return Self {
                    first,
                    last: first + size - 1,
                    _lock: file,
                };
            }
        }
        panic!("every block of {size} ports is held by another test");
    }

    /// The block as `FIRST-LAST` (the form of `--port-range`).
    pub fn range(&self) -> String {
        format!("{}-{}", self.first, self.last)
    }
}
