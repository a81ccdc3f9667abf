//! The generic half of a platform driver (DESIGN §7b).
//!
//! A platform implements [`Platform`]: how to launch, re-attach to, stop,
//! kill and remove a server, and where its output is. [`ManagedDriver`]
//! turns it into a [`PlatformDriver`] and does everything else, the same
//! way for every platform:
//!
//! - **readiness**: `/health`, then every component `Running` (`Degraded`
//!   with the failing component named), within the start timeout; a server
//!   that exits first failed to start, and its last words say why
//!   ([`classify_startup_failure`](crate::drasi::classify_startup_failure));
//! - **the registry** of the servers it runs, each with its exit monitor
//!   and component watch (never two of either);
//! - **crashes**: the platform reports an exit through an [`ExitWatch`];
//!   a crash of a running server is reported `Failed` at once, with the
//!   reason ([`Exit::reason`]) and the last words;
//! - **records and takeover**: every server is persisted as a
//!   [`ServerRecord`]; a worker takes over a server of a dead worker of its
//!   scope with a compare-and-set ([`Records::take_over`]);
//! - **recovery** after a restart: adopts what still runs, reports what is
//!   gone, confirms the adopted servers' health.
//!
//! ```text
//!  Worker ──PlatformDriver──▶ ManagedDriver<P> ──Platform──▶ P (processes, containers, ...)
//!                              │ registry, readiness, records, exit monitor
//!                              └──StatusSink──▶ the worker's StatusRecorder
//! ```
//!
//! Its modules: [`Platform`] and [`ManagedDriver`] here (the driver's
//! operations); `lifecycle` (launch, readiness, stop), `watchers` (the
//! tasks that watch a running server), `ownership` (takeover and what a
//! server's record says), `adoption` (servers this worker did not start:
//! adopted, orphaned, upkept), `registry` (the servers running here, each
//! with its tasks), `records` (what is persisted of each), `exit` and
//! `condition` (what platforms report).

mod adoption;
mod condition;
mod exit;
mod lifecycle;
mod ownership;
mod records;
mod registry;
mod watchers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use draas_core::instance::{
    ActualState, InstanceId, PlatformHandle, PlatformType, Reason, RuntimeInfo,
};
use draas_core::messages::{ErrorCode, LogsSpec, StartSpec, StopSpec};
use draas_core::policy::SilentWorker;
use draas_core::ports::{
    DriverError, LiveStatus, Observation, PlatformDriver, Readiness, RuntimeUpdate, Started,
    StatusSink,
};
use futures::StreamExt as _;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

pub use condition::Condition;
pub use exit::{exit_channel, signal_name, Exit, ExitNotifier, ExitWatch};
pub use records::{Records, ServerAddress, ServerRecord, Takeover};
pub use registry::Phase;

use crate::context::WorkerContext;
use crate::drasi::{classify_startup_failure, watch_components, ServerApi};
use crate::lock;
use registry::{Registry, Snapshot, Task};

/// How long an adopted server may take to prove healthy.
const CONFIRM_WITHIN: Duration = Duration::from_secs(30);
/// How long a killed server may take to be gone.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long after a crash its server's record is marked stopped: long
/// enough for the restart that usually follows to come first (see
/// `spawn_monitor`), short against a worker's restart.
const MARK_EXITED_AFTER: Duration = Duration::from_millis(250);
/// How often a worker of a platform whose servers outlive a silent worker
/// (Kubernetes) looks for servers whose worker died, to watch them.
const ADOPT_EVERY: Duration = Duration::from_secs(5);

/// A server a platform launched.
pub struct Launched<R, H> {
    /// The platform's part of its record.
    pub record: R,
    /// The live handle.
    pub handle: H,
    /// Its exit.
    pub exit: ExitWatch,
    /// Where its API is.
    pub address: ServerAddress,
}

/// The platform half of a driver: only what is about the platform.
#[async_trait]
pub trait Platform: Send + Sync + 'static {
    /// The platform's part of a server's record (pid and start time;
    /// container id; ...): what it needs to find the server again.
    type Record: Serialize
        + DeserializeOwned
        + Clone
        + PartialEq
        + std::fmt::Debug
        + Send
        + Sync
        + 'static;
    /// A live handle on a running server (a pidfd; a container id).
    type Handle: Clone + Send + Sync + 'static;

    /// The platform served.
    fn platform(&self) -> PlatformType;

    /// Which workers can reach this worker's servers: its host (Process),
    /// its engine (Docker), its cluster (Kubernetes).
    fn scope(&self) -> String;

    /// What the platform says of itself (e.g. the engine's version).
    fn version(&self) -> Option<String> {
        None
    }

    /// Instances that have objects on the platform labelled as this
    /// installation's (containers, volumes), whatever their records say.
    /// After a restart, the objects of instances that no longer exist are
    /// removed. Default: the platform keeps no such objects.
    async fn labelled_instances(&self) -> Vec<InstanceId> {
        Vec::new()
    }

    /// Checks that `spec` can run here and launches the server (without
    /// waiting for readiness). An error says in which state it leaves the
    /// instance (e.g. `Failed` with `PortInUse`).
    async fn launch(
        &self,
        id: &InstanceId,
        spec: &StartSpec,
    ) -> Result<Launched<Self::Record, Self::Handle>, DriverError>;

    /// Re-attaches to the server `record` names, if it still runs and is
    /// the same server (not a reused pid, not a recreated container).
    async fn attach(
        &self,
        id: &InstanceId,
        record: &Self::Record,
    ) -> Option<(Self::Handle, ExitWatch)>;

    /// Stops the server gracefully (SIGINT), then forcibly after `grace`,
    /// and returns once it is gone.
    async fn stop(
        &self,
        id: &InstanceId,
        handle: &Self::Handle,
        exit: &ExitWatch,
        grace: Duration,
    ) -> Result<(), DriverError>;

    /// Kills the server at once (it did not become ready in time).
    async fn kill(&self, id: &InstanceId, handle: &Self::Handle);

    /// The server's last words: its error output, for a startup failure
    /// (`starting`) or a crash.
    async fn last_words(&self, id: &InstanceId, record: &Self::Record, starting: bool) -> String;

    /// The last lines of the server's output (`record` is `None` for an
    /// instance this worker never ran).
    async fn logs(
        &self,
        id: &InstanceId,
        record: Option<&Self::Record>,
        spec: &LogsSpec,
    ) -> Result<Vec<String>, DriverError>;

    /// Removes everything of the instance on the platform (files,
    /// containers, volumes). The server is already stopped.
    async fn remove(
        &self,
        id: &InstanceId,
        record: Option<&Self::Record>,
    ) -> Result<(), DriverError>;

    /// Drops the replication slots of the postgres sources of `start`
    /// while its server does not run (running servers drop their own, see
    /// [`ServerApi::release_replication_slots`]), by running the bundled
    /// runtime once. Default: the platform cannot.
    async fn release_slots(
        &self,
        _id: &InstanceId,
        _start: &StartSpec,
    ) -> Result<Vec<String>, String> {
        Err("this platform drops replication slots only through a running server".to_string())
    }

    /// What the status of a ready server of `spec` says besides that it
    /// runs (where its data lives, say). Default: nothing.
    fn note(&self, _id: &InstanceId, _spec: &StartSpec) -> Option<String> {
        None
    }

    /// The handle shown in the instance's runtime info.
    fn handle_of(&self, record: &Self::Record) -> PlatformHandle;

    /// How the worker reaches the API of the server `record` names.
    /// Default: plain HTTP to `address.api_url`.
    fn server_api(&self, _record: &Self::Record, address: &ServerAddress) -> ServerApi {
        ServerApi::new(&address.api_url)
    }

    /// For a platform that restarts its servers itself (Kubernetes): the
    /// server's [`Condition`], kept current by the platform. Then readiness
    /// waits for `Ready` instead of polling `/health`, and every change of a
    /// running server is reported as it happens. Default `None`: a crash is
    /// an exit.
    fn condition(&self, _handle: &Self::Handle) -> Option<watch::Receiver<Condition>> {
        None
    }

    /// How often [`upkeep`](Self::upkeep) runs, if at all.
    fn upkeep_every(&self) -> Option<Duration> {
        None
    }

    /// Periodic upkeep of the running servers (log rotation, say).
    async fn upkeep(&self, _servers: Vec<(InstanceId, Self::Record)>) {}
}

// === ManagedDriver ===

struct Inner<P: Platform> {
    platform: P,
    store: Arc<dyn draas_core::ports::StateStore>,
    worker_id: String,
    scope: String,
    sink: Arc<dyn StatusSink>,
    records: Records<P::Record>,
    servers: Registry<P::Record, P::Handle>,
    /// Launches this worker saw crash whose records do not say so yet
    /// (`MARK_EXITED_AFTER`), by instance: their `started_at`.
    exited: Mutex<HashMap<InstanceId, DateTime<Utc>>>,
    upkeep_started: AtomicBool,
    adoption_started: AtomicBool,
    sweep_started: AtomicBool,
    orphan_sweep_every: Duration,
    /// Set by `detach`: background sweeps end.
    detached: AtomicBool,
}

/// A [`PlatformDriver`] for platform `P`; see the module docs. Cheap to
/// clone.
pub struct ManagedDriver<P: Platform> {
    inner: Arc<Inner<P>>,
}

impl<P: Platform> Clone for ManagedDriver<P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<P: Platform> ManagedDriver<P> {
    /// A driver of `platform` for the worker of `context`, reporting to the
    /// worker's status recorder.
    pub fn new(platform: P, context: &WorkerContext) -> Self {
        let scope = platform.scope();
        let records = Records::new(
            context.store.clone(),
            platform.platform(),
            &scope,
            &context.settings.worker_id,
        );
        Self {
            inner: Arc::new(Inner {
                worker_id: context.settings.worker_id.clone(),
                scope,
                sink: context.sink(),
                records,
                servers: Registry::default(),
                exited: Mutex::new(HashMap::new()),
                upkeep_started: AtomicBool::new(false),
                adoption_started: AtomicBool::new(false),
                sweep_started: AtomicBool::new(false),
                orphan_sweep_every: context.settings.orphan_sweep_every,
                detached: AtomicBool::new(false),
                store: context.store.clone(),
                platform,
            }),
        }
    }

    /// The platform half.
    pub fn platform(&self) -> &P {
        &self.inner.platform
    }

    /// The persisted records of this worker's scope.
    pub fn records(&self) -> &Records<P::Record> {
        &self.inner.records
    }
}

/// How many servers a restarted worker takes over at once.
const RECOVERY_CONCURRENCY: usize = 16;

// === impl PlatformDriver ===

fn grace(seconds: u32) -> Duration {
    Duration::from_secs(u64::from(seconds))
}

#[async_trait]
impl<P: Platform> PlatformDriver for ManagedDriver<P> {
    fn platform(&self) -> PlatformType {
        self.inner.platform.platform()
    }

    fn scope(&self) -> String {
        self.inner.scope.clone()
    }

    fn platform_version(&self) -> Option<String> {
        self.inner.platform.version()
    }

    async fn start(&self, id: &InstanceId, spec: &StartSpec) -> Result<Started, DriverError> {
        let inner = &self.inner;
        inner.ensure_managed(id).await?;
        if let Some(current) = inner.servers.get(id) {
            if current.record.generation == spec.generation
                && !current.exit.has_exited()
                && current.phase != Phase::Stopping
            {
                // Already running this generation (a repeated or redelivered
                // Start): confirm readiness, launch nothing.
                let deadline =
                    Instant::now() + grace(spec.server_configuration.start_timeout_seconds);
                return inner.await_ready(id, current.serial, deadline).await;
            }
            inner
                .stop(
                    id,
                    grace(spec.server_configuration.shutdown_timeout_seconds),
                )
                .await?;
        }
        inner.launch(id, spec).await
    }

    async fn stop(&self, id: &InstanceId, spec: &StopSpec) -> Result<(), DriverError> {
        self.inner.ensure_managed(id).await?;
        self.inner
            .stop(id, grace(spec.shutdown_timeout_seconds))
            .await
    }

    async fn delete(&self, id: &InstanceId, spec: &StopSpec) -> Result<(), DriverError> {
        let record = self.inner.ensure_managed(id).await?;
        // Its postgres sources' replication slots go with it: dropped by
        // the server while it runs, else by the platform after it stopped.
        let mut slots_released = spec.release_slots.is_none();
        if spec.release_slots.is_some() {
            if let Some(server) = self.inner.servers.get(id) {
                match self
                    .inner
                    .api(&server.record)
                    .release_replication_slots()
                    .await
                {
                    Ok(released) => {
                        info!(instance = %id, ?released, "replication slots dropped");
                        slots_released = true;
                    }
                    Err(e) => {
                        warn!(instance = %id, "the server did not drop its replication slots: {e}")
                    }
                }
            }
        }
        self.inner
            .stop(id, grace(spec.shutdown_timeout_seconds))
            .await?;
        if let (false, Some(start)) = (slots_released, &spec.release_slots) {
            match self.inner.platform.release_slots(id, start).await {
                Ok(released) => info!(instance = %id, ?released, "replication slots dropped"),
                Err(e) => warn!(
                    instance = %id,
                    "replication slots of the instance's postgres sources were not dropped \
                     (drop them with pg_drop_replication_slot): {e}"
                ),
            }
        }
        self.inner
            .platform
            .remove(id, record.as_ref().map(|r| &r.platform))
            .await?;
        self.inner.records.remove(id).await
    }

    async fn status(&self, id: &InstanceId) -> Result<LiveStatus, DriverError> {
        self.inner.ensure_managed(id).await?;
        match self.inner.servers.get(id) {
            Some(server) => Ok(self.inner.live(&server).await),
            None => Ok(LiveStatus::not_running()),
        }
    }

    async fn running_generation(&self, id: &InstanceId) -> Option<u64> {
        self.inner
            .servers
            .get(id)
            .filter(|s| s.phase != Phase::Stopping && !s.exit.has_exited())
            .map(|s| s.record.generation)
    }

    async fn logs(&self, id: &InstanceId, spec: &LogsSpec) -> Result<Vec<String>, DriverError> {
        let record = self.inner.ensure_managed(id).await?;
        self.inner
            .platform
            .logs(id, record.as_ref().map(|r| &r.platform), spec)
            .await
    }

    async fn query_results(
        &self,
        id: &InstanceId,
        query: &str,
    ) -> Result<Vec<serde_json::Value>, DriverError> {
        self.inner.ensure_managed(id).await?;
        let Some(server) = self.inner.servers.get(id) else {
            return Err(DriverError::new(
                ErrorCode::InvalidState,
                "the server is not running",
            ));
        };
        self.inner.api(&server.record).query_results(query).await
    }

    async fn recover(&self) -> Result<usize, DriverError> {
        let inner = &self.inner;
        let records = inner.records.list().await.map_err(|e| {
            DriverError::new(
                ErrorCode::PlatformError,
                format!("cannot read the server records: {e}"),
            )
        })?;
        // Several at a time: each takeover waits on the store (read the
        // record, check its owner, write the new owner), so one after the
        // other a worker restarted under a fleet would take seconds.
        let adopted = futures::stream::iter(records.into_iter().map(|(id, _)| {
            let inner = inner.clone();
            async move {
                match inner.take_over(&id).await {
                    Ok(takeover) => inner.after_takeover(&id, &takeover).await,
                    Err(e) => {
                        warn!(instance = %id, "cannot take the server over: {e}");
                        false
                    }
                }
            }
        }))
        .buffer_unordered(RECOVERY_CONCURRENCY)
        .filter(|adopted| futures::future::ready(*adopted))
        .count()
        .await;
        inner.remove_orphans().await;
        inner.start_orphan_sweep();
        inner.start_upkeep();
        inner.start_adoption();
        Ok(adopted)
    }

    async fn running(&self) -> usize {
        self.inner.servers.len()
    }

    async fn reassert(&self) {
        for (id, server) in self.inner.servers.in_phase(Phase::Running) {
            self.inner.spawn_confirm(&id, server.serial);
        }
    }

    async fn detach(&self) {
        self.inner.detached.store(true, Ordering::SeqCst);
        self.inner.servers.clear();
    }
}
