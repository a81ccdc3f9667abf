//! Command round trips over the buses, against a raw Redis round trip.
//!
//! Method: a `Status` command (the worker asks its driver, which answers at
//! once, and replies; nothing is written) is sent with `MessageBus::request`
//! and timed until the reply arrives, through the real generic worker
//! (`draas-worker`: permits, command loop, reply). Latency is measured one
//! command at a time; throughput with 64 requests in flight.
//! - embedded: in-process bus, embedded store;
//! - Redis: Redis bus and store on a local `redis-server` (AOF, fsync
//!   everysec), one or two worker instances as competing consumers;
//! - bare: `PING` on one multiplexed connection to the same Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use draas_core::instance::{InstanceId, PlatformType};
use draas_core::messages::{Command, CommandEnvelope, LogsSpec, StartSpec, StopSpec};
use draas_core::ports::{DriverError, LiveStatus, MessageBus, PlatformDriver, Started, StateStore};
use draas_worker::{Worker, WorkerContext, WorkerSettings};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::stats::{ratio, us, Summary};

/// Commands in flight in the throughput figures.
const IN_FLIGHT: usize = 64;

/// A driver that answers `Status` at once.
struct NoopDriver;

#[async_trait]
impl PlatformDriver for NoopDriver {
    fn platform(&self) -> PlatformType {
        PlatformType::Process
    }
    fn scope(&self) -> String {
        "bench".into()
    }
    async fn running_generation(&self, _: &InstanceId) -> Option<u64> {
        None
    }
    async fn start(&self, _: &InstanceId, _: &StartSpec) -> Result<Started, DriverError> {
        Err(DriverError::new(
            draas_core::messages::ErrorCode::Unsupported,
            "benchmark driver",
        ))
    }
    async fn stop(&self, _: &InstanceId, _: &StopSpec) -> Result<(), DriverError> {
        Ok(())
    }
    async fn delete(&self, _: &InstanceId, _: &StopSpec) -> Result<(), DriverError> {
        Ok(())
    }
    async fn status(&self, _: &InstanceId) -> Result<LiveStatus, DriverError> {
        Ok(LiveStatus::not_running())
    }
    async fn logs(&self, _: &InstanceId, _: &LogsSpec) -> Result<Vec<String>, DriverError> {
        Ok(Vec::new())
    }
    async fn recover(&self) -> Result<usize, DriverError> {
        Ok(0)
    }
    async fn running(&self) -> usize {
        0
    }
}

fn spawn_worker(
    name: &str,
    store: Arc<dyn StateStore>,
    bus: Arc<dyn MessageBus>,
    stop: CancellationToken,
    concurrency: usize,
) {
    let context = WorkerContext::new(
        WorkerSettings {
            worker_id: name.to_string(),
            host: "bench".into(),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_ttl: Duration::from_secs(5),
            concurrency,
            capacity: None,
            orphan_sweep_every: std::time::Duration::from_secs(30),
        },
        store,
        bus,
    );
    let worker = Worker::new(context, Arc::new(NoopDriver));
    tokio::spawn(worker.run(stop));
}

/// Waits until the Process command stream's group has `n` consumers.
async fn wait_for_consumers(url: &str, n: usize) -> anyhow::Result<()> {
    let mut connection = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let stream = draas_redis::RedisSettings::new(url).key(PlatformType::Process.command_channel());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let consumers: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&stream)
            .arg("workers")
            .query_async(&mut connection)
            .await
            .unwrap_or_default();
        if consumers.len() >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("only {} consumers joined", consumers.len());
        }
        tokio::task::yield_now().await;
    }
}

fn status_command(i: usize) -> CommandEnvelope {
    // Different instances, so the worker's per-instance queues do not
    // serialise the commands.
    let id: InstanceId = format!("i-bench-{}", i % 256).parse().expect("valid id");
    CommandEnvelope::new(id, Command::Status, Duration::from_secs(30))
}

/// Waits until a worker answers on `bus` (it consumes once it started).
async fn until_answered(bus: &Arc<dyn MessageBus>) -> anyhow::Result<()> {
    let channel = PlatformType::Process.command_channel();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match bus
            .request(channel, status_command(0), Duration::from_millis(500))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => anyhow::bail!("no worker answers: {e}"),
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

async fn latency(bus: &Arc<dyn MessageBus>, n: usize) -> anyhow::Result<Summary> {
    let channel = PlatformType::Process.command_channel();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        bus.request(channel, status_command(i), Duration::from_secs(30))
            .await?;
        samples.push(started.elapsed());
    }
    Ok(Summary::of(&samples))
}

async fn throughput(bus: &Arc<dyn MessageBus>, n: usize, in_flight: usize) -> anyhow::Result<f64> {
    let channel = PlatformType::Process.command_channel();
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let bus = bus.clone();
            async move {
                bus.request(channel, status_command(i), Duration::from_secs(60))
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Runs the benchmark and prints Markdown.
pub async fn run(samples: usize, commands: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Embedded.
    let stop = CancellationToken::new();
    let store: Arc<dyn StateStore> = Arc::new(draas_store::EmbeddedStore::open(
        &dir.path().join("state.redb"),
    )?);
    let bus: Arc<dyn MessageBus> = Arc::new(draas_bus::InProcessBus::new());
    spawn_worker("embedded", store, bus.clone(), stop.clone(), IN_FLIGHT);
    until_answered(&bus).await?;
    latency(&bus, 200).await?; // warm-up
    let embedded = latency(&bus, samples).await?;
    let embedded_rate = throughput(&bus, commands, IN_FLIGHT).await?;
    stop.cancel();

    // Redis.
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir_all(&redis_dir)?;
    let port = draas_testkit::free_port();
    let mut redis_server = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
        ])
        .arg("--dir")
        .arg(&redis_dir)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let url = format!("redis://127.0.0.1:{port}");
    let settings = draas_redis::RedisSettings::new(url.clone());
    let mut raw = loop {
        match redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut pings = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut raw).await?;
        pings.push(started.elapsed());
    }
    let ping = Summary::of(&pings);

    let store: Arc<dyn StateStore> =
        Arc::new(draas_redis::RedisStore::connect(settings.clone()).await?);
    let connect_bus = || async {
        let bus: Arc<dyn MessageBus> = Arc::new(
            draas_redis::RedisBus::connect(settings.clone(), draas_redis::BusOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        Ok::<_, anyhow::Error>(bus)
    };
    let client_bus = connect_bus().await?;
    // One worker with headroom (more permits than commands in flight).
    let roomy = CancellationToken::new();
    spawn_worker(
        "redis-roomy",
        store.clone(),
        connect_bus().await?,
        roomy.clone(),
        IN_FLIGHT * 4,
    );
    until_answered(&client_bus).await?;
    latency(&client_bus, 200).await?;
    let redis_latency = latency(&client_bus, samples).await?;
    let redis_roomy = throughput(&client_bus, commands, IN_FLIGHT).await?;
    roomy.cancel();
    // One worker exactly at capacity: it takes a command only when one of
    // its own finishes (nothing is leased beyond what it can run).
    let one = CancellationToken::new();
    spawn_worker(
        "redis-1",
        store.clone(),
        connect_bus().await?,
        one.clone(),
        IN_FLIGHT,
    );
    wait_for_consumers(&url, 2).await?;
    let redis_one = throughput(&client_bus, commands, IN_FLIGHT).await?;
    let two = CancellationToken::new();
    let second_bus = connect_bus().await?;
    // The second worker has joined once its consumer group membership
    // shows; commands then spread over both.
    spawn_worker("redis-2", store.clone(), second_bus, two.clone(), IN_FLIGHT);
    wait_for_consumers(&url, 3).await?;
    let redis_two = throughput(&client_bus, commands, IN_FLIGHT).await?;
    one.cancel();
    two.cancel();
    let _ = redis_server.kill();
    let _ = redis_server.wait();

    println!("### Command round trip: a no-op `Status` command through the real worker ({samples} sequential commands)\n");
    println!("| path | p50 | p99 | p50 vs raw Redis PING |");
    println!("|---|---|---|---|");
    println!(
        "| embedded: in-process bus | {} µs | {} µs | {} |",
        us(embedded.p50),
        us(embedded.p99),
        ratio(embedded.p50, ping.p50)
    );
    println!(
        "| Redis: Streams + consumer group, reply over pub/sub | {} µs | {} µs | {} |",
        us(redis_latency.p50),
        us(redis_latency.p99),
        ratio(redis_latency.p50, ping.p50)
    );
    println!(
        "| bare: Redis `PING` on one connection | {} µs | {} µs | 1.0x |",
        us(ping.p50),
        us(ping.p99)
    );
    println!("\n### Commands per second ({commands} `Status` commands, {IN_FLIGHT} in flight)\n");
    println!("| setup | commands/s |");
    println!("|---|---|");
    println!("| embedded, 1 worker ({IN_FLIGHT} permits) | {embedded_rate:.0} |");
    println!(
        "| Redis, 1 worker with headroom ({} permits) | {redis_roomy:.0} |",
        IN_FLIGHT * 4
    );
    println!("| Redis, 1 worker at capacity ({IN_FLIGHT} permits) | {redis_one:.0} |");
    println!("| Redis, 2 workers at capacity (competing consumers, {IN_FLIGHT} permits each) | {redis_two:.0} |\n");
    Ok(())
}
