//! What a worker is made of, built before its driver so that the driver
//! reports through the worker's own status recorder (one per worker).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use draas_core::ports::{Credits, MessageBus, Permit, StateStore, StatusSink};
use draas_core::status::StatusRecorder;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Identity and tuning of a worker.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Unique and stable across restarts of the same worker (it is also its
    /// consumer name, so its unacknowledged commands come back to it).
    pub worker_id: String,
    /// The machine it runs on.
    pub host: String,
    /// Interval between heartbeats.
    pub heartbeat_interval: Duration,
    /// A worker counts as gone this long after its last heartbeat.
    pub heartbeat_ttl: Duration,
    /// Most commands held at once (taken off the bus and not yet answered).
    pub concurrency: usize,
    /// Most instances this worker will run, if limited.
    pub capacity: Option<u32>,
    /// How often the driver looks for platform objects (processes,
    /// containers, Deployments) of instances that no longer exist, and
    /// removes them.
    pub orphan_sweep_every: Duration,
}

/// The parts of one worker: its settings, the store and bus it uses, and
/// its status recorder.
#[derive(Clone)]
pub struct WorkerContext {
    /// Identity and tuning.
    pub settings: WorkerSettings,
    /// The state store.
    pub store: Arc<dyn StateStore>,
    /// The message bus.
    pub bus: Arc<dyn MessageBus>,
    /// The worker's one status recorder (its driver reports through it).
    pub recorder: StatusRecorder,
    /// This run of the worker: tells a command this run is executing from
    /// one an earlier run (same worker id) left unfinished when it died.
    pub incarnation: Uuid,
}

impl WorkerContext {
    /// The context of a worker.
    pub fn new(
        settings: WorkerSettings,
        store: Arc<dyn StateStore>,
        bus: Arc<dyn MessageBus>,
    ) -> Self {
        let recorder = StatusRecorder::new(store.clone(), bus.clone(), settings.worker_id.clone());
        Self {
            settings,
            store,
            bus,
            recorder,
            incarnation: Uuid::new_v4(),
        }
    }

    /// The recorder, as the sink a driver reports to. It defers
    /// durability ([`StatusRecorder::deferring`]): what a driver reports
    /// (a crash, a component's state, a server adopted) it observes again
    /// when the worker starts, and the fsync it spares is one on the way
    /// from a crash to its restart. The results of commands go through
    /// [`recorder`](Self::recorder), durable at once.
    pub fn sink(&self) -> Arc<dyn StatusSink> {
        Arc::new(self.recorder.deferring())
    }
}

/// [`Credits`] backed by a semaphore: `permits` commands at once.
pub struct SemaphoreCredits(Arc<Semaphore>);

impl SemaphoreCredits {
    /// Credits for `permits` commands (at least one).
    pub fn new(permits: usize) -> Self {
        Self(Arc::new(Semaphore::new(permits.max(1))))
    }

    /// Permits free now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

#[async_trait]
impl Credits for SemaphoreCredits {
    async fn acquire(&self) -> Permit {
        // The semaphore is never closed.
        match self.0.clone().acquire_owned().await {
            Ok(permit) => Permit::new(permit),
            Err(_) => Permit::new(()),
        }
    }

    fn try_acquire(&self) -> Option<Permit> {
        self.0.clone().try_acquire_owned().ok().map(Permit::new)
    }
}
