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
//!                     │  └──▶ PlatformDriver = ManagedDriver<Platform>
//!  bus ◀──reply────────┘        │ exits, component errors ──▶ StatusRecorder
//! ```
//!
//! It also holds the generic half of every driver ([`driver`]): Drasi
//! readiness and component watching ([`drasi`]), the registry of managed
//! servers, server records and their takeover, crash reporting. A platform
//! crate implements [`driver::Platform`] and nothing else.
//!
//! ## Guarantees
//! - A command is executed once. Over a bus that redelivers (Redis) it is
//!   claimed in the store before it runs (a claim that cannot be written
//!   means it is not run, and the reply says so); a command already executed
//!   (same id, e.g. redelivered after this worker crashed before
//!   acknowledging it) is answered from the stored reply, even after its
//!   deadline. The in-process bus never delivers a command twice.
//! - A command whose deadline passed before it was claimed is not executed
//!   (its requester has given up); it is answered `DEADLINE_EXCEEDED`.
//! - A reply is `Ok` only if the effect was recorded.
//! - Commands for one instance run one at a time, in arrival order; Status
//!   and Logs never wait behind them; commands for different instances run
//!   concurrently, bounded by the permits the worker takes them off the bus
//!   with (so an idle peer gets the commands a busy worker cannot run).
//! - On shutdown the worker stops taking commands, lets running ones finish
//!   (bounded), and leaves the servers running: they are re-adopted when a
//!   worker comes back.

mod claims;
mod context;
pub mod drasi;
pub mod driver;
mod executor;
mod heartbeat;

use std::sync::Arc;
use std::time::Duration;

use draas_core::instance::PlatformType;
use draas_core::ports::PlatformDriver;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

pub use context::{SemaphoreCredits, WorkerContext, WorkerSettings};
pub use heartbeat::deregister;

/// Most commands held at once by one worker.
pub const DEFAULT_CONCURRENCY: usize = 32;
/// How long a stopping worker waits for running commands.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a worker stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] draas_core::ports::BusError),
    /// The driver could not recover its instances.
    #[error("recovering instances failed: {0}")]
    Recover(draas_core::ports::DriverError),
    /// The command stream ended (the bus went away).
    #[error("the command stream ended")]
    StreamEnded,
}

/// A platform worker; see the crate docs.
pub struct Worker {
    context: WorkerContext,
    driver: Arc<dyn PlatformDriver>,
}

impl Worker {
    /// A worker running `driver`'s platform (a driver built for the same
    /// `context`, so that it reports through the worker's recorder).
    pub fn new(context: WorkerContext, driver: Arc<dyn PlatformDriver>) -> Self {
        Self { context, driver }
    }

    /// The worker's id.
    pub fn id(&self) -> &str {
        &self.context.settings.worker_id
    }

    /// The platform served.
    pub fn platform(&self) -> PlatformType {
        self.driver.platform()
    }

    /// Runs until `shutdown` is cancelled: recovers running servers,
    /// announces itself, and executes commands.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let platform = self.driver.platform();
        let span =
            tracing::info_span!("worker", worker = %self.context.settings.worker_id, %platform);
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let Worker { context, driver } = self;
        let settings = context.settings.clone();
        let started_at = chrono::Utc::now();

        // Before recovery reports a single server `Running`, the worker
        // takes commands (they wait until recovery is done) and is
        // announced: whoever sees a server of it `Running` can command it
        // at once, rather than hear that no live worker serves it.
        //
        // The platform's shared channel (new and orphaned instances) and
        // this worker's own (instances it runs), read together: a command
        // is taken off either only when a permit is free.
        let platform = driver.platform();
        let channels = vec![
            platform.command_channel().to_string(),
            platform.worker_channel(&settings.worker_id),
        ];
        let credits = Arc::new(SemaphoreCredits::new(settings.concurrency));
        let mut commands = context
            .bus
            .consume(&channels, &settings.worker_id, credits)
            .await?;
        let announced = match heartbeat::beat(
            &settings,
            started_at,
            driver.as_ref(),
            context.store.as_ref(),
            context.bus.as_ref(),
        )
        .await
        {
            Ok(()) => true,
            Err(e) => {
                warn!("heartbeat not recorded: {e}");
                false
            }
        };
        let adopted = match driver.recover().await {
            Ok(adopted) => adopted,
            Err(e) => {
                heartbeat::deregister(context.store.as_ref(), &settings.worker_id).await;
                return Err(WorkerError::Recover(e));
            }
        };
        info!(adopted, "recovered running servers");
        let heartbeat = tokio::spawn(heartbeat::run(
            settings.clone(),
            started_at,
            announced,
            driver.clone(),
            context.store.clone(),
            context.bus.clone(),
            shutdown.clone(),
        ));
        info!(?channels, "taking commands");
        let executor = executor::Executor::new(&context, driver.clone());

        let mut outcome = Ok(());
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
                    outcome = Err(WorkerError::StreamEnded);
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
        driver.detach().await;
        outcome
    }
}

/// The guard of `mutex`, whether or not a holder panicked: the worker's
/// critical sections are single map operations, so a poisoned lock still
/// holds a consistent map.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
