//! # draas-worker
//!
//! The platform-independent half of a platform worker: it consumes the
//! platform's command channel, executes each command through a
//! [`PlatformDriver`], records the status changes, replies, and announces
//! itself with heartbeats. The driver only knows its platform.
//!
//! ```text
//!  bus ──command──▶ Worker ── dedup / deadline / per-instance lock
//!                     │  ├──▶ StatusRecorder (Starting, Running, Stopped, ...)
//!                     │  └──▶ PlatformDriver (spawn, docker, kube)
//!  bus ◀──reply────────┘        │ exits, component errors ──▶ StatusRecorder
//! ```
//!
//! ## Guarantees
//! - A command whose deadline passed is not executed (its requester has
//!   given up); it is answered `DEADLINE_EXCEEDED`.
//! - A command already executed (same id, e.g. redelivered after this
//!   worker crashed before acknowledging it) is answered from the stored
//!   reply and not executed again.
//! - Commands for one instance run one at a time, in arrival order;
//!   commands for different instances run concurrently (bounded).
//! - On shutdown the worker stops taking commands, lets running ones finish
//!   (bounded), and leaves the servers running: they are re-adopted when a
//!   worker comes back.

mod executor;
mod heartbeat;

use std::sync::Arc;
use std::time::Duration;

use draas_core::instance::PlatformType;
use draas_core::ports::{MessageBus, PlatformDriver, StateStore};
use draas_core::status::StatusRecorder;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

pub use heartbeat::deregister;

/// Most commands executed at once by one worker.
pub const DEFAULT_CONCURRENCY: usize = 32;
/// How long a stopping worker waits for running commands.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Most commands executed at once.
    pub concurrency: usize,
    /// Most instances this worker will run, if limited.
    pub capacity: Option<u32>,
}

/// Why a worker stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] draas_core::ports::BusError),
    /// The driver could not recover its instances.
    #[error("recovering instances failed: {0}")]
    Recover(draas_core::ports::DriverError),
}

/// A platform worker; see the crate docs.
pub struct Worker {
    settings: WorkerSettings,
    driver: Arc<dyn PlatformDriver>,
    store: Arc<dyn StateStore>,
    bus: Arc<dyn MessageBus>,
    recorder: StatusRecorder,
}

impl Worker {
    /// A worker running `driver`'s platform.
    pub fn new(
        settings: WorkerSettings,
        driver: Arc<dyn PlatformDriver>,
        store: Arc<dyn StateStore>,
        bus: Arc<dyn MessageBus>,
    ) -> Self {
        let recorder = StatusRecorder::new(store.clone(), bus.clone(), settings.worker_id.clone());
        Self {
            settings,
            driver,
            store,
            bus,
            recorder,
        }
    }

    /// The platform served.
    pub fn platform(&self) -> PlatformType {
        self.driver.platform()
    }

    /// Runs until `shutdown` is cancelled: recovers running servers,
    /// announces itself, and executes commands.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let platform = self.driver.platform();
        let span = tracing::info_span!("worker", worker = %self.settings.worker_id, %platform);
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let adopted = self.driver.recover().await.map_err(WorkerError::Recover)?;
        info!(adopted, "recovered running servers");

        let heartbeat = tokio::spawn(heartbeat::run(
            self.settings.clone(),
            self.driver.clone(),
            self.store.clone(),
            self.bus.clone(),
            shutdown.clone(),
        ));

        // The platform's shared channel (new and orphaned instances) and
        // this worker's own (instances it runs).
        let platform = self.driver.platform();
        let shared = self
            .bus
            .consume(platform.command_channel(), &self.settings.worker_id)
            .await?;
        let private_channel = platform.worker_channel(&self.settings.worker_id);
        let private = self
            .bus
            .consume(&private_channel, &self.settings.worker_id)
            .await?;
        let mut commands = futures::stream::select(shared, private);
        info!(shared = platform.command_channel(), private = %private_channel, "taking commands");
        let executor = executor::Executor::new(
            self.settings.worker_id.clone(),
            self.driver.clone(),
            self.store.clone(),
            self.recorder.clone(),
            self.settings.concurrency,
        );

        loop {
            let delivery = tokio::select! {
                () = shutdown.cancelled() => break,
                next = commands.next() => next,
            };
            match delivery {
                Some(Ok(delivery)) => executor.dispatch(delivery),
                Some(Err(e)) => {
                    warn!("receiving commands failed: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => {
                    warn!("command stream ended");
                    break;
                }
            }
        }

        drop(commands);
        info!("stopping: waiting for running commands");
        if !executor.drain(DRAIN_TIMEOUT).await {
            warn!("commands still running after {DRAIN_TIMEOUT:?}; abandoning them");
        }
        shutdown.cancel();
        let _ = heartbeat.await;
        Ok(())
    }
}
