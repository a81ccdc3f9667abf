//! What one start and one stop cost the state store: round trips (reads,
//! batches written, log reads) and bytes written, counted at the store port.
//!
//! Method: the control plane's service (`draas-api`'s `ControlPlane`, as
//! `draas up` wires it: Drasi's own validator, in-process bus) and the real
//! generic worker (`draas-worker`) over the testkit's scripted driver (it
//! runs nothing and answers at once, so only DRaaS's own bookkeeping is
//! counted), on the embedded store on disk (redb, a file in a temporary
//! directory) wrapped in a counter. One instance with a configuration of
//! one source, `queries` queries and one reaction is created; then each of
//! `runs` rounds starts it (through the same operation as `POST
//! .../start`), waits until the store is quiet (the worker's status writes
//! done), stops it, and waits again. Every store call between the start's
//! beginning and the quiet store counts for the start; the same for the
//! stop. The heartbeat and the worker's periodic sweeps are not counted
//! (their interval is longer than a round, and the counter is paused
//! outside the rounds).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use draas_api::service::{CreateInstance, Stopping};
use draas_api::{ControlPlane, ControlPlaneSettings};
use draas_bus::InProcessBus;
use draas_core::instance::PlatformType;
use draas_core::ports::store::{Applied, LogPage, StoreError, Versioned, Write};
use draas_core::ports::{MessageBus, StateStore};
use draas_store::EmbeddedStore;
use draas_testkit::fake::FakeDriver;
use draas_worker::{Worker, WorkerContext, WorkerSettings};
use tokio_util::sync::CancellationToken;

/// Store calls and bytes, counted while `on`.
#[derive(Default)]
struct Counts {
    on: AtomicBool,
    gets: AtomicU64,
    lists: AtomicU64,
    batches: AtomicU64,
    deferred_batches: AtomicU64,
    log_reads: AtomicU64,
    bytes_written: AtomicU64,
}

/// One snapshot of [`Counts`].
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    gets: u64,
    lists: u64,
    batches: u64,
    deferred_batches: u64,
    log_reads: u64,
    bytes_written: u64,
}

impl Snapshot {
    fn add(&mut self, more: Snapshot) {
        self.gets += more.gets;
        self.lists += more.lists;
        self.batches += more.batches;
        self.deferred_batches += more.deferred_batches;
        self.log_reads += more.log_reads;
        self.bytes_written += more.bytes_written;
    }

    fn round_trips(&self) -> u64 {
        self.gets + self.lists + self.batches + self.deferred_batches + self.log_reads
    }
}

impl Counts {
    fn take(&self) -> Snapshot {
        let take = |c: &AtomicU64| c.swap(0, Ordering::SeqCst);
        Snapshot {
            gets: take(&self.gets),
            lists: take(&self.lists),
            batches: take(&self.batches),
            deferred_batches: take(&self.deferred_batches),
            log_reads: take(&self.log_reads),
            bytes_written: take(&self.bytes_written),
        }
    }

    fn count(&self, counter: &AtomicU64, by: u64) {
        if self.on.load(Ordering::SeqCst) {
            counter.fetch_add(by, Ordering::SeqCst);
        }
    }

    fn written(&self, writes: &[Write]) {
        let bytes: usize = writes
            .iter()
            .map(|w| match w {
                Write::Put {
                    collection,
                    key,
                    value,
                    ..
                } => collection.len() + key.len() + value.len(),
                Write::Delete {
                    collection, key, ..
                } => collection.len() + key.len(),
                Write::Append { log, value, .. } => log.len() + value.len(),
            })
            .sum();
        self.count(&self.bytes_written, bytes as u64);
    }
}

/// A store that counts what passes through it.
struct CountingStore {
    inner: EmbeddedStore,
    counts: Arc<Counts>,
}

#[async_trait]
impl StateStore for CountingStore {
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.counts.count(&self.counts.gets, 1);
        self.inner.get(collection, key).await
    }
    async fn get_many(&self, keys: &[(&str, &str)]) -> Result<Vec<Option<Versioned>>, StoreError> {
        self.counts.count(&self.counts.gets, 1);
        self.inner.get_many(keys).await
    }
    async fn list(&self, collection: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.counts.count(&self.counts.lists, 1);
        self.inner.list(collection).await
    }
    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Applied>, StoreError> {
        self.counts.count(&self.counts.batches, 1);
        self.counts.written(&writes);
        self.inner.apply(writes).await
    }
    async fn apply_deferred(&self, writes: Vec<Write>) -> Result<Vec<Applied>, StoreError> {
        self.counts.count(&self.counts.deferred_batches, 1);
        self.counts.written(&writes);
        self.inner.apply_deferred(writes).await
    }
    async fn append(&self, log: &str, value: Vec<u8>, capacity: usize) -> Result<u64, StoreError> {
        self.counts.count(&self.counts.batches, 1);
        self.counts
            .count(&self.counts.bytes_written, (log.len() + value.len()) as u64);
        self.inner.append(log, value, capacity).await
    }
    async fn read_log(&self, log: &str, after: u64, limit: usize) -> Result<LogPage, StoreError> {
        self.counts.count(&self.counts.log_reads, 1);
        self.inner.read_log(log, after, limit).await
    }
}

/// A configuration of one mock source, `queries` queries over it and one
/// log reaction.
fn configuration(queries: usize) -> anyhow::Result<draas_core::config::DrasiServerConfig> {
    let ids: Vec<String> = (0..queries).map(|n| format!("values-{n}")).collect();
    let queries: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| {
            serde_json::json!({
                "id": id, "autoStart": true, "queryLanguage": "Cypher",
                "query": "MATCH (c:Counter) WHERE c.value > 10 RETURN c.value AS value, c.value * 2 AS doubled",
                "sources": [{"sourceId": "counter"}]
            })
        })
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "host": "127.0.0.1",
        "sources": [{"kind": "mock", "id": "counter", "dataType": {"type": "counter"}, "intervalMs": 100}],
        "queries": queries,
        "reactions": [{"kind": "log", "id": "console", "queries": ids}]
    }))?)
}

/// Waits until no store call was counted for `quiet`, up to 10 s.
async fn quiet(counts: &Counts, so_far: &mut Snapshot) -> anyhow::Result<()> {
    let quiet = Duration::from_millis(300);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(quiet).await;
        let more = counts.take();
        if more.round_trips() == 0 {
            return Ok(());
        }
        so_far.add(more);
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the store did not go quiet within 10 s"
        );
    }
}

/// Runs the benchmark and prints its table.
pub async fn run(runs: usize, queries: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let counts = Arc::new(Counts::default());
    let store: Arc<dyn StateStore> = Arc::new(CountingStore {
        inner: EmbeddedStore::open(&dir.path().join("state.redb"))?,
        counts: counts.clone(),
    });
    let bus: Arc<dyn MessageBus> = Arc::new(InProcessBus::new());
    let shutdown = CancellationToken::new();
    let _stop_worker = shutdown.clone().drop_guard();
    let driver = FakeDriver::new(PlatformType::Process, "bench");
    let context = WorkerContext::new(
        WorkerSettings {
            worker_id: "bench".into(),
            host: "bench".into(),
            // Longer than a round: the heartbeat is not a start's cost.
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_ttl: Duration::from_secs(120),
            concurrency: 4,
            capacity: None,
            orphan_sweep_every: Duration::from_secs(3600),
        },
        store.clone(),
        bus.clone(),
    );
    tokio::spawn(Worker::new(context, Arc::new(driver)).run(shutdown.clone()));
    draas_testkit::wait_for("the worker's heartbeat", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.get("workers", "bench").await.ok().flatten() }
    })
    .await;
    let cp = ControlPlane::new(
        store.clone(),
        bus,
        Arc::new(draas_drasi::validate::DrasiValidator),
        ControlPlaneSettings::default(),
    );
    let configuration = configuration(queries)?;
    let created = cp
        .create(CreateInstance {
            name: "store-cost".into(),
            description: String::new(),
            platform_type: PlatformType::Process,
            server_configuration: None,
            configuration: Some(configuration),
            restart_policy: Default::default(),
            update_strategy: Default::default(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("create: {}", e.detail))?;
    let id = created.instance.id;
    let record_bytes = store
        .get("instances", id.as_str())
        .await?
        .map_or(0, |v| v.value.len());

    let mut starts = Snapshot::default();
    let mut stops = Snapshot::default();
    for _ in 0..runs {
        counts.on.store(true, Ordering::SeqCst);
        let mut start = Snapshot::default();
        cp.start(&id)
            .await
            .map_err(|e| anyhow::anyhow!("start: {}", e.detail))?;
        quiet(&counts, &mut start).await?;
        let mut stop = Snapshot::default();
        match cp
            .stop(&id)
            .await
            .map_err(|e| anyhow::anyhow!("stop: {}", e.detail))?
        {
            Stopping::Done(_) => {}
            Stopping::Pending { why, .. } => anyhow::bail!("the stop is pending: {why}"),
        }
        quiet(&counts, &mut stop).await?;
        counts.on.store(false, Ordering::SeqCst);
        starts.add(start);
        stops.add(stop);
    }
    shutdown.cancel();

    let per = |n: u64| n as f64 / runs as f64;
    println!("### State store cost of a start and a stop\n");
    println!(
        "Embedded store (redb, on disk) behind a counter; control plane and generic worker in \
         process over the scripted driver; one instance whose stored record is {record_bytes} \
         bytes (one source, {queries} queries, one reaction); {runs} start/stop rounds; \
         figures per operation.\n"
    );
    println!(
        "| operation | reads (get) | lists | batches written (durable) | batches written (deferred) | log reads | round trips | bytes written |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, s) in [("start", starts), ("stop", stops)] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            per(s.gets),
            per(s.lists),
            per(s.batches),
            per(s.deferred_batches),
            per(s.log_reads),
            per(s.round_trips()),
            per(s.bytes_written),
        );
    }
    Ok(())
}
