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

mod condition;
mod exit;
mod records;
mod registry;

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

// === impl Inner: ownership ===

impl<P: Platform> Inner<P> {
    /// Makes sure this worker manages the server of `id` if one runs in its
    /// scope (taking it over from a dead worker), and returns the record of
    /// the instance, if any.
    async fn ensure_managed(
        self: &Arc<Self>,
        id: &InstanceId,
    ) -> Result<Option<ServerRecord<P::Record>>, DriverError> {
        if let Some(current) = self.servers.get(id) {
            return Ok(Some(current.record));
        }
        if let Some(record) = self.exited_here(id).await {
            return Ok(Some(record));
        }
        match self.take_over(id).await? {
            Takeover::NoRecord => Ok(None),
            Takeover::OwnedBy(owner) => Err(DriverError::new(
                ErrorCode::InvalidState,
                format!("the server is run by worker {owner}, which is alive"),
            )),
            Takeover::Stopped(record) | Takeover::Gone(record) => Ok(Some(record)),
            Takeover::Adopted(record, ..) => Ok(Some(record)),
        }
    }

    /// The record of `id`, marked stopped, when it is of a launch this
    /// worker saw crash and has not marked yet: nothing to take over or
    /// attach to (and no write on the way to the restart).
    async fn exited_here(&self, id: &InstanceId) -> Option<ServerRecord<P::Record>> {
        let started_at = *lock(&self.exited).get(id)?;
        let mut record = self.records.get(id).await.ok()??.value;
        if record.owner != self.worker_id || record.started_at != started_at {
            return None;
        }
        record.running = false;
        Some(record)
    }

    /// Takes over the server of `id` (see [`Records::take_over`]); an
    /// adopted server is registered and watched.
    async fn take_over(
        self: &Arc<Self>,
        id: &InstanceId,
    ) -> Result<Takeover<P::Record, (P::Handle, ExitWatch)>, DriverError> {
        let platform = &self.platform;
        let takeover = self
            .records
            .take_over(
                id,
                |record| async move { platform.attach(id, &record).await },
            )
            .await?;
        if let Takeover::Adopted(record, (handle, exit)) = &takeover {
            let serial = self.servers.insert(
                id,
                record.clone(),
                handle.clone(),
                exit.clone(),
                Phase::Running,
            );
            self.spawn_monitor(id, serial, exit.clone());
            self.spawn_condition_watch(id, serial, handle);
            // Whether it is ready is what the confirmation finds out.
            self.spawn_component_watch(id, serial, record, false, ActualState::Starting);
            info!(instance = %id, "adopted a running server");
        }
        Ok(takeover)
    }

    /// The API of the server `record` names.
    fn api(&self, record: &ServerRecord<P::Record>) -> ServerApi {
        self.platform.server_api(&record.platform, &record.address)
    }

    fn runtime_info(&self, record: &ServerRecord<P::Record>) -> RuntimeInfo {
        RuntimeInfo {
            worker_id: self.worker_id.clone(),
            scope: self.scope.clone(),
            handle: Some(self.platform.handle_of(&record.platform)),
            host: record.address.host.clone(),
            port: record.address.port,
            endpoint: record.address.endpoint.clone(),
            started_at: Some(record.started_at),
            last_exit_code: None,
        }
    }
}

// === impl Inner: background tasks ===

impl<P: Platform> Inner<P> {
    /// Reports the server's exit the moment it happens, unless `start` or
    /// `stop` is the one waiting for it.
    fn spawn_monitor(self: &Arc<Self>, id: &InstanceId, serial: u64, exit: ExitWatch) {
        let me = self.clone();
        let instance = id.clone();
        let task = async move {
            let exit = exit.wait().await;
            let Some(crashed) = me.servers.take_crashed(&instance, serial) else {
                return;
            };
            // Known before anyone hears of the crash (the restart may come
            // at once): see `exited_here`.
            let started_at = crashed.record.started_at;
            lock(&me.exited).insert(instance.clone(), started_at);
            warn!(instance = %instance, "server {}", exit.description);
            let words = me
                .platform
                .last_words(&instance, &crashed.record.platform, false)
                .await;
            let message = if words.is_empty() {
                format!("the server {}", exit.description)
            } else {
                format!("the server {}: {words}", exit.description)
            };
            // The crash first, so the reconciler can answer it at once.
            me.sink
                .observe(
                    Observation::now(instance.clone(), ActualState::Failed, Some(exit.reason()))
                        .message(message)
                        .runtime(RuntimeUpdate::Exited(exit.code)),
                )
                .await;
            // Then the record's `running: false`, a moment later: the
            // restart that usually answers a crash rewrites the record
            // anyway, and meanwhile this commit would only queue in front
            // of the restart's own in the store. It marks only the launch
            // that crashed, never a later one's record.
            tokio::time::sleep(MARK_EXITED_AFTER).await;
            if let Err(e) = me.records.mark_exited(&instance, started_at).await {
                warn!(instance = %instance, "{e}");
            }
            let mut exited = lock(&me.exited);
            if exited.get(&instance) == Some(&started_at) {
                exited.remove(&instance);
            }
        };
        self.servers.spawn(id, serial, Task::Monitor, task);
    }

    /// Follows the server's component events, unless something already
    /// does for this registration (`again`: the server was restarted by its
    /// platform, and the earlier watch ended with it).
    fn spawn_component_watch(
        self: &Arc<Self>,
        id: &InstanceId,
        serial: u64,
        record: &ServerRecord<P::Record>,
        again: bool,
        initial: ActualState,
    ) {
        if !again && self.servers.has_task(id, serial, Task::Components) {
            return;
        }
        let task = watch_components(
            self.api(record),
            id.clone(),
            record.generation,
            self.sink.clone(),
            initial,
        );
        self.servers.spawn(id, serial, Task::Components, task);
    }

    /// Checks an adopted (or re-asserted) server is healthy and records it
    /// as running here, which clears `Unknown` left by a dead worker.
    fn spawn_confirm(self: &Arc<Self>, id: &InstanceId, serial: u64) {
        let me = self.clone();
        let instance = id.clone();
        let task = async move {
            // Stamped before looking: a stop recorded meanwhile is newer
            // and wins over this observation.
            let observed_at = Utc::now();
            let Some(current) = me.servers.get(&instance) else {
                return;
            };
            let api = me.api(&current.record);
            let deadline = Instant::now() + CONFIRM_WITHIN;
            let (state, reason, message) = loop {
                if api.healthy().await {
                    match api.readiness().await {
                        Some(Readiness::Ready) => {
                            break (ActualState::Running, Reason::Ready, None)
                        }
                        Some(Readiness::Failed(why)) => {
                            break (ActualState::Degraded, Reason::ComponentError, Some(why))
                        }
                        Some(Readiness::Bootstrapping(progress)) => {
                            break (ActualState::Starting, Reason::Bootstrapping, Some(progress))
                        }
                        _ => {}
                    }
                }
                if Instant::now() > deadline {
                    warn!(instance = %instance, "the server did not prove healthy; leaving its status as it is");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let still_running = me
                .servers
                .get(&instance)
                .is_some_and(|s| s.serial == serial && s.phase == Phase::Running);
            if !still_running {
                return;
            }
            let mut observation = Observation::now(instance, state, Some(reason))
                .generation(current.record.generation)
                .runtime(RuntimeUpdate::Set(me.runtime_info(&current.record)));
            observation.message = message;
            observation.observed_at = observed_at;
            me.sink.observe(observation).await;
        };
        self.servers.spawn(id, serial, Task::Confirm, task);
    }

    /// Reports every change of a running server's platform condition, for
    /// a platform that has them (see [`Condition`]).
    fn spawn_condition_watch(self: &Arc<Self>, id: &InstanceId, serial: u64, handle: &P::Handle) {
        let Some(mut changes) = self.platform.condition(handle) else {
            return;
        };
        let me = self.clone();
        let instance = id.clone();
        let task = async move {
            // A registration is `Running` only once it was ready.
            let mut was_ready = true;
            while changes.changed().await.is_ok() {
                let current = changes.borrow_and_update().clone();
                let Some(server) = me.servers.get(&instance).filter(|s| s.serial == serial) else {
                    return;
                };
                if server.phase != Phase::Running {
                    // Starting: `await_ready` reads the condition itself.
                    // Stopping: nothing is news.
                    continue;
                }
                match current {
                    Condition::Ready => {
                        if !was_ready {
                            info!(instance = %instance, "the server is ready again");
                            me.spawn_component_watch(
                                &instance,
                                serial,
                                &server.record,
                                true,
                                ActualState::Running,
                            );
                            me.spawn_confirm(&instance, serial);
                        }
                        was_ready = true;
                    }
                    Condition::Waiting {
                        state,
                        reason,
                        message,
                    } => {
                        was_ready = false;
                        me.sink
                            .observe(
                                Observation::now(instance.clone(), state, reason).message(message),
                            )
                            .await;
                    }
                    Condition::Failing {
                        reason,
                        message,
                        exit_code,
                        crashed,
                    } => {
                        was_ready = false;
                        warn!(instance = %instance, "{message}");
                        let words = if crashed {
                            me.platform
                                .last_words(&instance, &server.record.platform, false)
                                .await
                        } else {
                            String::new()
                        };
                        let message = if words.is_empty() {
                            message
                        } else {
                            format!("{message}: {words}")
                        };
                        me.sink
                            .observe(
                                Observation::now(
                                    instance.clone(),
                                    ActualState::Failed,
                                    Some(reason),
                                )
                                .message(message)
                                .runtime(RuntimeUpdate::Restarted(exit_code)),
                            )
                            .await;
                    }
                }
            }
        };
        self.servers.spawn(id, serial, Task::Condition, task);
    }

    /// Reports what a takeover found: an adopted server is confirmed
    /// healthy, a vanished one is `Failed`.
    async fn after_takeover(
        self: &Arc<Self>,
        id: &InstanceId,
        takeover: &Takeover<P::Record, (P::Handle, ExitWatch)>,
    ) -> bool {
        match takeover {
            Takeover::Adopted(..) => {
                if let Some(server) = self.servers.get(id) {
                    self.spawn_confirm(id, server.serial);
                }
                true
            }
            Takeover::Gone(record) => {
                warn!(instance = %id, "server gone while its worker was down");
                self.sink
                    .observe(
                        Observation::now(
                            id.clone(),
                            ActualState::Failed,
                            Some(Reason::LostWhileWorkerDown),
                        )
                        .message(format!(
                            "the server ({}) was gone when its worker restarted",
                            self.platform.handle_of(&record.platform)
                        ))
                        .runtime(RuntimeUpdate::Exited(None)),
                    )
                    .await;
                false
            }
            // Another live worker's server, a stopped one, or gone.
            Takeover::OwnedBy(_) | Takeover::Stopped(_) | Takeover::NoRecord => false,
        }
    }

    /// On a platform whose servers outlive a silent worker (Kubernetes),
    /// adopts now and then the running servers of workers that died, so
    /// that someone watches them (started once).
    fn start_adoption(self: &Arc<Self>) {
        if self.platform.platform().policy().silent_worker != SilentWorker::LeavesInstancesAlone
            || self.adoption_started.swap(true, Ordering::SeqCst)
        {
            return;
        }
        self.every(
            ADOPT_EVERY,
            |inner| async move { inner.adopt_unwatched().await },
        );
    }

    /// Runs `work` every `every` (the first time after one period), for as
    /// long as the driver lives and is not detached.
    fn every<F, Fut>(self: &Arc<Self>, every: Duration, work: F)
    where
        F: Fn(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.detached.load(Ordering::SeqCst) {
                    return;
                }
                work(inner).await;
            }
        });
    }

    /// Takes over the running servers of this scope whose owner is not
    /// this worker and is dead.
    async fn adopt_unwatched(self: &Arc<Self>) {
        let Ok(records) = self.records.list().await else {
            return;
        };
        for (id, record) in records {
            if !record.running || record.owner == self.worker_id || self.servers.get(&id).is_some()
            {
                continue;
            }
            match self.take_over(&id).await {
                Ok(takeover) => {
                    if self.after_takeover(&id, &takeover).await {
                        info!(instance = %id, owner = %record.owner, "adopted the server of a dead worker");
                    }
                }
                Err(e) => warn!(instance = %id, "cannot take the server over: {e}"),
            }
        }
    }

    /// Removes the platform objects of instances that no longer exist (they
    /// were deleted while this worker was down, or by `?force=true`, or
    /// someone made them by hand with this installation's labels): what the
    /// platform finds labelled, and the servers recorded in this scope by
    /// this worker or by dead ones. Safe at any time: an instance's record
    /// is written before any of its objects, and removed after them.
    async fn remove_orphans(&self) {
        let mut candidates: std::collections::BTreeSet<InstanceId> = self
            .platform
            .labelled_instances()
            .await
            .into_iter()
            .collect();
        if let Ok(records) = self.records.list().await {
            let live: Vec<String> = draas_core::workers::live_workers(
                self.store.as_ref(),
                Some(self.platform.platform()),
                Utc::now(),
            )
            .await
            .map(|workers| workers.into_iter().map(|w| w.worker_id).collect())
            .unwrap_or_default();
            candidates.extend(
                records
                    .into_iter()
                    .filter(|(_, r)| r.owner == self.worker_id || !live.contains(&r.owner))
                    .map(|(id, _)| id),
            );
        }
        for id in candidates {
            match self
                .store
                .get(draas_core::keys::INSTANCES, id.as_str())
                .await
            {
                Ok(Some(_)) => {}
                Ok(None) => {
                    info!(instance = %id, "removing what is left of an instance that no longer exists");
                    let record = self.records.get(&id).await.ok().flatten().map(|r| r.value);
                    if let Some(server) = self.servers.get(&id) {
                        // Unwatched first: its exit is no crash to report.
                        self.servers.remove(&id, server.serial, None);
                        let _ = self
                            .platform
                            .stop(&id, &server.handle, &server.exit, Duration::ZERO)
                            .await;
                    } else if let Some(record) = &record {
                        if let Some((handle, exit)) =
                            self.platform.attach(&id, &record.platform).await
                        {
                            let _ = self
                                .platform
                                .stop(&id, &handle, &exit, Duration::ZERO)
                                .await;
                        }
                    }
                    match self
                        .platform
                        .remove(&id, record.as_ref().map(|r| &r.platform))
                        .await
                    {
                        Ok(()) => {
                            let _ = self.records.remove(&id).await;
                        }
                        Err(e) => warn!(instance = %id, "cannot remove it: {e}"),
                    }
                }
                Err(e) => warn!(instance = %id, "cannot tell whether it still exists: {e}"),
            }
        }
    }

    /// Sweeps for orphans now and then, for as long as the driver lives
    /// (started once).
    fn start_orphan_sweep(self: &Arc<Self>) {
        if self.sweep_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let every = self.orphan_sweep_every.max(Duration::from_secs(1));
        self.every(every, |inner| async move { inner.remove_orphans().await });
    }

    /// Runs the platform's upkeep now and then, for as long as the driver
    /// lives (started once).
    fn start_upkeep(self: &Arc<Self>) {
        let Some(every) = self.platform.upkeep_every() else {
            return;
        };
        if self.upkeep_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let servers = inner
                    .servers
                    .in_phase(Phase::Running)
                    .into_iter()
                    .map(|(id, s)| (id, s.record.platform))
                    .collect();
                inner.platform.upkeep(servers).await;
            }
        });
    }
}

// === impl Inner: lifecycle ===

impl<P: Platform> Inner<P> {
    async fn launch(
        self: &Arc<Self>,
        id: &InstanceId,
        spec: &StartSpec,
    ) -> Result<Started, DriverError> {
        let launched = self.platform.launch(id, spec).await?;
        let record = ServerRecord {
            owner: self.worker_id.clone(),
            generation: spec.generation,
            address: launched.address,
            started_at: Utc::now(),
            running: true,
            platform: launched.record,
        };
        let serial = self.servers.insert(
            id,
            record.clone(),
            launched.handle.clone(),
            launched.exit.clone(),
            Phase::Starting,
        );
        if let Err(e) = self.records.save(id, &record).await {
            // A server nobody could find again after a restart must not run.
            self.platform.kill(id, &launched.handle).await;
            self.servers.remove(id, serial, None);
            return Err(e.with_state(ActualState::Failed, Reason::PlatformError));
        }
        self.spawn_monitor(id, serial, launched.exit);
        self.spawn_condition_watch(id, serial, &launched.handle);
        info!(instance = %id, generation = spec.generation, "launched");
        let deadline = Instant::now()
            + Duration::from_secs(u64::from(spec.server_configuration.start_timeout_seconds));
        let mut started = self.await_ready(id, serial, deadline).await?;
        if started.state == ActualState::Running && started.message.is_none() {
            started.message = self.platform.note(id, spec);
        }
        Ok(started)
    }

    /// Waits for readiness of registration `serial` of `id`.
    async fn await_ready(
        self: &Arc<Self>,
        id: &InstanceId,
        serial: u64,
        deadline: Instant,
    ) -> Result<Started, DriverError> {
        let Some(server) = self.servers.get(id).filter(|s| s.serial == serial) else {
            return Err(DriverError::new(
                ErrorCode::InvalidState,
                "the server was replaced or stopped while starting",
            ));
        };
        let api = self.api(&server.record);
        let mut condition = self.platform.condition(&server.handle);
        let mut healthy = false;
        let mut bootstrapping: Option<String> = None;
        let mut waiting_for: Option<String> = None;
        let mut polls = 0u32;
        // Err: the error, and whether the server must be killed first.
        let outcome = loop {
            if let Some(exit) = server.exit.current() {
                let words = self
                    .platform
                    .last_words(id, &server.record.platform, true)
                    .await;
                let (code, reason) = classify_startup_failure(&words);
                break Err((
                    DriverError::new(
                        code,
                        format!(
                            "the server {} before it was ready: {words}",
                            exit.description
                        ),
                    )
                    .with_state(ActualState::Failed, reason),
                    false,
                ));
            }
            match condition.as_ref().map(|c| c.borrow().clone()) {
                Some(failing @ Condition::Failing { .. }) => {
                    break Err((self.failed_start(id, &server.record, failing).await, true));
                }
                Some(Condition::Ready) => healthy = true,
                Some(Condition::Waiting { message, .. }) => {
                    healthy = false;
                    waiting_for = Some(message);
                }
                // No platform condition: `/health` says when startup ended.
                None => healthy = healthy || api.healthy().await,
            }
            if healthy {
                match api.readiness().await {
                    Some(Readiness::Ready) => break Ok((ActualState::Running, None)),
                    Some(Readiness::Failed(why)) => break Ok((ActualState::Degraded, Some(why))),
                    Some(Readiness::Bootstrapping(progress)) => bootstrapping = Some(progress),
                    Some(Readiness::Starting) | None => bootstrapping = None,
                }
            }
            let now = Instant::now();
            if now >= deadline {
                if let (true, Some(progress)) = (healthy, bootstrapping.take()) {
                    // Up, and loading its sources: a long bootstrap is no
                    // failed start. The component watch says when it is done.
                    break Ok((ActualState::Starting, Some(progress)));
                }
                let what = match (&waiting_for, healthy) {
                    (_, true) => "its components did not all start".to_string(),
                    (Some(waiting), false) => waiting.clone(),
                    (None, false) => "/health did not answer".to_string(),
                };
                break Err((
                    DriverError::new(
                        ErrorCode::StartTimeout,
                        format!("the server was not ready in time: {what}; it was killed"),
                    )
                    .with_state(ActualState::Failed, Reason::StartTimeout),
                    true,
                ));
            }
            match condition.as_mut() {
                // The platform says when something changes: wait for that
                // (bounded, to notice the exit and the deadline).
                Some(changes) if !healthy => {
                    let bound = Duration::from_millis(250).min(deadline - now);
                    if let Ok(Err(_)) = tokio::time::timeout(bound, changes.changed()).await {
                        // The platform stopped following the server; its
                        // exit watch says what became of it.
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
                _ => {
                    // Servers usually start in milliseconds: look often at
                    // first (a refused connection costs microseconds), then
                    // every 25 ms.
                    let pause = if polls < 200 && condition.is_none() {
                        1
                    } else {
                        25
                    };
                    polls += 1;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        };
        match outcome {
            Ok((state, message)) => {
                if server.phase != Phase::Running
                    && !self.servers.set_phase(id, serial, Phase::Running)
                {
                    return Err(DriverError::new(
                        ErrorCode::InvalidState,
                        "the server was stopped while starting",
                    ));
                }
                self.spawn_component_watch(id, serial, &server.record, false, state);
                // The server may have exited (or started failing) between
                // the last look and the phase change, when the monitor
                // would not report it.
                if server.exit.has_exited() {
                    let words = self
                        .platform
                        .last_words(id, &server.record.platform, true)
                        .await;
                    self.forget(id, serial).await;
                    return Err(DriverError::new(
                        ErrorCode::PlatformError,
                        format!("the server exited right after starting: {words}"),
                    )
                    .with_state(ActualState::Failed, Reason::ExitedWithCode));
                }
                if let Some(failing @ Condition::Failing { .. }) =
                    condition.as_ref().map(|c| c.borrow().clone())
                {
                    let e = self.failed_start(id, &server.record, failing).await;
                    self.kill_and_forget(id, &server).await;
                    return Err(e);
                }
                Ok(Started {
                    runtime: self.runtime_info(&server.record),
                    state,
                    message,
                })
            }
            Err((e, kill)) => {
                if kill {
                    self.kill_and_forget(id, &server).await;
                } else {
                    self.forget(id, serial).await;
                }
                Err(e)
            }
        }
    }

    /// Kills registration `server` of `id`, waits (bounded) for it to be
    /// gone, and forgets it.
    async fn kill_and_forget(&self, id: &InstanceId, server: &Snapshot<P::Record, P::Handle>) {
        self.platform.kill(id, &server.handle).await;
        let _ = tokio::time::timeout(KILL_WAIT, server.exit.wait()).await;
        self.forget(id, server.serial).await;
    }

    /// The error of a start the platform says is failing (`failing` is a
    /// [`Condition::Failing`]): a server that crashed is judged by its last
    /// words, as one that exited (a rejected configuration is
    /// `ConfigRejected`, whatever the platform calls the crash).
    async fn failed_start(
        &self,
        id: &InstanceId,
        record: &ServerRecord<P::Record>,
        failing: Condition,
    ) -> DriverError {
        let Condition::Failing {
            reason,
            message,
            crashed,
            ..
        } = failing
        else {
            return DriverError::new(ErrorCode::PlatformError, "the server failed to start")
                .with_state(ActualState::Failed, Reason::PlatformError);
        };
        if !crashed {
            let code = match reason {
                Reason::ImagePullBackOff | Reason::ErrImageNeverPull | Reason::ImageMissing => {
                    ErrorCode::ImageMissing
                }
                _ => ErrorCode::PlatformError,
            };
            return DriverError::new(code, format!("the server could not start: {message}"))
                .with_state(ActualState::Failed, reason);
        }
        let words = self.platform.last_words(id, &record.platform, true).await;
        let (code, classified) = classify_startup_failure(&words);
        let reason = if classified == Reason::ExitedWithCode {
            reason
        } else {
            classified
        };
        let detail = if words.is_empty() {
            message
        } else {
            format!("{message}: {words}")
        };
        DriverError::new(
            code,
            format!("the server failed before it was ready: {detail}"),
        )
        .with_state(ActualState::Failed, reason)
    }

    /// Drops registration `serial` of `id` and marks its record stopped.
    async fn forget(&self, id: &InstanceId, serial: u64) {
        if self.servers.remove(id, serial, None).is_some() {
            if let Err(e) = self.records.mark_stopped(id).await {
                warn!(instance = %id, "{e}");
            }
        }
    }

    /// Stops the server of `id` if this worker runs one.
    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), DriverError> {
        let Some((before, server)) = self.servers.begin_stop(id) else {
            // Not running here: make sure no record says it runs.
            return self.records.mark_stopped(id).await;
        };
        if let Err(e) = self
            .platform
            .stop(id, &server.handle, &server.exit, grace)
            .await
        {
            // Still running: an exit from now on is the monitor's again.
            self.servers.set_phase(id, server.serial, before);
            return Err(e);
        }
        info!(instance = %id, "stopped");
        self.forget(id, server.serial).await;
        Ok(())
    }

    /// The live view of registration `server`.
    async fn live(&self, server: &Snapshot<P::Record, P::Handle>) -> LiveStatus {
        let api = self.api(&server.record);
        let (healthy, data_plane) = futures::join!(api.healthy(), api.data_plane());
        LiveStatus {
            running: true,
            handle: Some(self.platform.handle_of(&server.record.platform)),
            generation: Some(server.record.generation),
            endpoint: Some(server.record.address.endpoint.clone()),
            healthy: Some(healthy),
            components: data_plane.as_ref().map(|d| d.components_by_kind()),
            data_plane,
        }
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
