//! # draas-worker-process
//!
//! The Process platform: each instance is an OS process of the bundled
//! runtime (or another allowed executable, such as the official
//! drasi-server) on the worker's host.
//!
//! ```text
//! <root>/configs/<id>-config.yaml        rendered configuration (mode 0600)
//! <root>/instances/<id>/                 working directory (./data/... of Drasi)
//! <root>/instances/<id>/logs/stdout.log  output, rotated by copy-truncate
//! ```
//!
//! - **Launch**: the environment is not inherited (only `PATH` and the
//!   instance's own variables), the process gets its own process group (a
//!   Ctrl-C on the control plane's terminal does not reach it), and its
//!   output goes straight to files, so it outlives its worker.
//! - **Readiness**: `/health`, then every component `Running` (or one in
//!   `Error`: `Degraded`), within the start timeout. A process that exits
//!   first failed to start; its stderr tail is the reason.
//! - **Exit**: noticed at once, from the child handle or the pidfd; never
//!   polled.
//! - **Stop**: SIGINT, then SIGKILL after the grace period; signals go
//!   through the pidfd, so a reused pid is never signalled.
//! - **Re-adoption**: pid and start time are persisted; a restarted worker
//!   adopts each process whose pid still has that start time.

mod exit;
mod logs;
mod readiness;
mod record;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use draas_core::instance::{
    ActualState, InstanceId, PlatformHandle, PlatformType, Reason, RuntimeInfo,
};
use draas_core::keys;
use draas_core::messages::{ErrorCode, LogStream, LogsSpec, StartSpec, StopSpec};
use draas_core::ports::store::{JsonStore, Precondition};
use draas_core::ports::{
    DriverError, Observation, PlatformDriver, RuntimeUpdate, Started, StateStore, StatusSink,
};
use rustix::process::Signal;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use exit::{ExitInfo, ProcessHandle};
pub use logs::LogFiles;
pub use record::ProcessRecord;

use readiness::{Components, ServerApi};

/// Settings of the Process driver.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// Root of the driver's files (configs, working directories, logs).
    pub root: PathBuf,
    /// The executable used when an instance names none: the bundled runtime.
    pub default_executable: PathBuf,
    /// Other executables instances may name (e.g. `/usr/local/bin/drasi-server`).
    pub allowed_executables: Vec<PathBuf>,
    /// This worker's id (written into runtime info).
    pub worker_id: String,
    /// This machine's name (records are kept per host).
    pub host: String,
    /// Rotate an output file beyond this size.
    pub log_max_bytes: u64,
    /// Rotated copies kept per output file.
    pub log_keep: usize,
}

impl ProcessSettings {
    /// Sensible defaults under `root`.
    pub fn new(
        root: PathBuf,
        default_executable: PathBuf,
        worker_id: String,
        host: String,
    ) -> Self {
        Self {
            root,
            default_executable,
            allowed_executables: Vec::new(),
            worker_id,
            host,
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 3,
        }
    }
}

/// Where a managed server is in its life, as far as exit handling goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `start` is waiting for readiness and reports an exit itself.
    Starting,
    /// An exit now is a failure, reported by the exit monitor.
    Running,
    /// `stop` is waiting for the exit it caused.
    Stopping,
}

struct Managed {
    record: ProcessRecord,
    handle: ProcessHandle,
    phase: Arc<Mutex<Phase>>,
    watcher: Option<JoinHandle<()>>,
}

struct Inner {
    settings: ProcessSettings,
    store: Arc<dyn StateStore>,
    sink: Arc<dyn StatusSink>,
    managed: Mutex<HashMap<InstanceId, Managed>>,
    records: String,
}

/// The Process platform driver. Cheap to clone.
#[derive(Clone)]
pub struct ProcessDriver {
    inner: Arc<Inner>,
}

impl ProcessDriver {
    /// A driver keeping its records in `store` and reporting to `sink`.
    pub fn new(
        settings: ProcessSettings,
        store: Arc<dyn StateStore>,
        sink: Arc<dyn StatusSink>,
    ) -> Self {
        let records = keys::worker_records(PlatformType::Process, &settings.host);
        Self {
            inner: Arc::new(Inner {
                settings,
                store,
                sink,
                managed: Mutex::new(HashMap::new()),
                records,
            }),
        }
    }
}

// === impl Inner: files and records ===

impl Inner {
    fn managed(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Managed>> {
        // Critical sections are single map operations.
        self.managed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts following the server's component events (Degraded/Running).
    fn watch_components(&self, id: &InstanceId, record: &ProcessRecord) -> JoinHandle<()> {
        tokio::spawn(readiness::watch_components(
            ServerApi::new(&record.api_host, record.api_port),
            id.clone(),
            record.generation,
            self.sink.clone(),
        ))
    }

    /// Registers a server as managed here.
    fn register(
        &self,
        id: &InstanceId,
        record: &ProcessRecord,
        handle: &ProcessHandle,
        phase: &Arc<Mutex<Phase>>,
        watcher: Option<JoinHandle<()>>,
    ) {
        self.managed().insert(
            id.clone(),
            Managed {
                record: record.clone(),
                handle: handle.clone(),
                phase: phase.clone(),
                watcher,
            },
        );
    }

    fn workdir(&self, id: &InstanceId) -> PathBuf {
        self.settings.root.join("instances").join(id.as_str())
    }

    fn config_path(&self, id: &InstanceId) -> PathBuf {
        self.settings
            .root
            .join("configs")
            .join(format!("{}-config.yaml", id.as_str()))
    }

    fn logs(&self, id: &InstanceId) -> LogFiles {
        LogFiles::new(self.workdir(id).join("logs"))
    }

    async fn save_record(
        &self,
        id: &InstanceId,
        record: &ProcessRecord,
    ) -> Result<(), DriverError> {
        self.store
            .put_json(&self.records, id.as_str(), record, Precondition::None)
            .await
            .map(|_| ())
            .map_err(|e| {
                DriverError::new(
                    ErrorCode::PlatformError,
                    format!("cannot persist the process record: {e}"),
                )
            })
    }

    async fn forget(&self, id: &InstanceId) {
        let removed = self.managed().remove(id);
        if let Some(Managed {
            watcher: Some(w), ..
        }) = removed
        {
            w.abort();
        }
        if let Err(e) = self
            .store
            .delete(&self.records, id.as_str(), Precondition::None)
            .await
        {
            warn!(instance = %id, "cannot remove the process record: {e}");
        }
    }

    /// The executable to run for `requested`, if allowed.
    fn resolve_executable(&self, requested: Option<&str>) -> Result<PathBuf, DriverError> {
        let not_allowed = |message: String| {
            DriverError::new(ErrorCode::ExecutableNotAllowed, message)
                .with_state(ActualState::Failed, Reason::ExecutableMissing)
        };
        let path = match requested {
            None => self.settings.default_executable.clone(),
            Some(p) => PathBuf::from(p),
        };
        let canonical = std::fs::canonicalize(&path)
            .map_err(|e| not_allowed(format!("executable {} not found: {e}", path.display())))?;
        if requested.is_some() {
            let allowed = std::iter::once(&self.settings.default_executable)
                .chain(&self.settings.allowed_executables)
                .filter_map(|p| std::fs::canonicalize(p).ok())
                .any(|p| p == canonical);
            if !allowed {
                return Err(not_allowed(format!(
                    "executable {} is not on this worker's allow-list (--allow-executable)",
                    path.display()
                )));
            }
        }
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&canonical)
            .map_err(|e| not_allowed(format!("executable {}: {e}", canonical.display())))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(not_allowed(format!(
                "{} is not an executable file",
                canonical.display()
            )));
        }
        Ok(canonical)
    }

    /// Writes the configuration atomically (temp file + rename, mode 0600:
    /// it may hold credentials).
    fn write_config(&self, id: &InstanceId, yaml: &str) -> std::io::Result<PathBuf> {
        use std::io::Write;
        let path = self.config_path(id);
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        file.write_all(yaml.as_bytes())?;
        file.as_file().sync_all()?;
        file.persist(&path).map_err(|e| e.error)?;
        Ok(path)
    }

    /// A server's last words: its stderr tail. During startup, when stderr
    /// is empty, the stdout tail (drasi-server logs its errors to stdout).
    fn last_words(&self, id: &InstanceId, starting: bool) -> String {
        let logs = self.logs(id);
        let stderr = logs.tail(LogStream::Stderr, 10).unwrap_or_default();
        let lines = if stderr.iter().any(|l| !l.trim().is_empty()) || !starting {
            stderr
        } else {
            logs.tail(LogStream::Stdout, 5).unwrap_or_default()
        };
        lines.join("\n").trim().to_string()
    }
}

/// Classifies a startup failure from the server's last words. The bundled
/// runtime prints `Error: invalid configuration ...` or `Error: cannot bind
/// ...`; drasi-server prints its own variants.
fn startup_failure(words: &str) -> (ErrorCode, Reason) {
    let lower = words.to_lowercase();
    if lower.contains("address already in use") || lower.contains("cannot bind") {
        (ErrorCode::PortInUse, Reason::PortInUse)
    } else if lower.contains("invalid configuration")
        || lower.contains("invalid config file")
        || lower.contains("validation error")
        || lower.contains("failed to parse config")
    {
        (ErrorCode::ConfigRejected, Reason::ConfigRejected)
    } else {
        (ErrorCode::PlatformError, Reason::ExitedWithCode)
    }
}

// === impl Inner: adoption ===

/// What [`Inner::adopt`] found.
enum Adoption {
    /// The process runs and is now managed here.
    Adopted(ProcessRecord),
    /// The record named a process that is gone (the record is removed).
    Gone(ProcessRecord),
    /// No record for the instance on this host.
    NoRecord,
}

impl Inner {
    /// Workers whose heartbeat has not expired.
    async fn live_workers(&self) -> std::collections::HashSet<String> {
        let now = Utc::now();
        self.store
            .list_json::<draas_core::messages::WorkerInfo>(keys::WORKERS)
            .await
            .map(|workers| {
                workers
                    .into_iter()
                    .map(|(_, w)| w.value)
                    .filter(|w| w.is_live(now))
                    .map(|w| w.worker_id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Takes over the server of `id` from its record on this host, if this
    /// worker owns it or its owner is gone. The record is rewritten with a
    /// revision check, so two workers never both adopt one server.
    async fn adopt(self: &Arc<Self>, id: &InstanceId) -> Result<Adoption, DriverError> {
        let store_error = |e: draas_core::ports::StoreError| {
            DriverError::new(
                ErrorCode::PlatformError,
                format!("cannot read the process record: {e}"),
            )
        };
        let Some(found) = self
            .store
            .get_json::<ProcessRecord>(&self.records, id.as_str())
            .await
            .map_err(store_error)?
        else {
            return Ok(Adoption::NoRecord);
        };
        let mut record = found.value;
        let me = &self.settings.worker_id;
        if !record.worker_id.is_empty()
            && &record.worker_id != me
            && self.live_workers().await.contains(&record.worker_id)
        {
            return Err(DriverError::new(
                ErrorCode::InvalidState,
                format!(
                    "the server is run by worker {}, which is alive",
                    record.worker_id
                ),
            ));
        }
        let Some(handle) = ProcessHandle::adopt(record.pid, record.start_time) else {
            let _ = self
                .store
                .delete(
                    &self.records,
                    id.as_str(),
                    Precondition::Revision(found.revision),
                )
                .await;
            return Ok(Adoption::Gone(record));
        };
        record.worker_id = me.clone();
        match self
            .store
            .put_json(
                &self.records,
                id.as_str(),
                &record,
                Precondition::Revision(found.revision),
            )
            .await
        {
            Ok(_) => {}
            Err(draas_core::ports::StoreError::Conflict { .. }) => {
                return Err(DriverError::new(
                    ErrorCode::InvalidState,
                    "another worker is adopting the server right now",
                ))
            }
            Err(e) => return Err(store_error(e)),
        }
        let phase = Arc::new(Mutex::new(Phase::Running));
        let watcher = self.watch_components(id, &record);
        self.register(id, &record, &handle, &phase, Some(watcher));
        self.clone().monitor(id.clone(), handle, phase);
        info!(instance = %id, pid = record.pid, "adopted running server");
        Ok(Adoption::Adopted(record))
    }

    /// Makes sure `id` is managed here when a record of it exists (after
    /// another worker died): commands then act on the real server.
    async fn ensure_adopted(self: &Arc<Self>, id: &InstanceId) -> Result<(), DriverError> {
        if self.managed().contains_key(id) {
            return Ok(());
        }
        self.adopt(id).await.map(|_| ())
    }

    /// After adopting a server, checks it is healthy and records it as
    /// running here (this clears `Unknown` left by the old worker's death).
    async fn confirm_adopted(self: Arc<Self>, id: InstanceId, record: ProcessRecord) {
        // Stamped before looking: a stop recorded meanwhile is newer and
        // wins over this observation.
        let observed_at = Utc::now();
        let api = ServerApi::new(&record.api_host, record.api_port);
        let deadline = Instant::now() + Duration::from_secs(30);
        let (state, reason, message) = loop {
            if api.healthy().await {
                match api.component_state().await {
                    Some(Components::Ready) => break (ActualState::Running, Reason::Ready, None),
                    Some(Components::Failed(why)) => {
                        break (ActualState::Degraded, Reason::ComponentError, Some(why))
                    }
                    _ => {}
                }
            }
            if Instant::now() > deadline || !self.managed().contains_key(&id) {
                warn!(instance = %id, "adopted server did not prove healthy; leaving its status as it is");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let still_running = self
            .managed()
            .get(&id)
            .is_some_and(|m| *m.phase.lock().unwrap_or_else(|p| p.into_inner()) == Phase::Running);
        if !still_running {
            return;
        }
        let mut observation = Observation::now(id, state, Some(reason))
            .generation(record.generation)
            .runtime(RuntimeUpdate::Set(
                self.runtime_info(&record, api.endpoint()),
            ));
        observation.message = message;
        observation.observed_at = observed_at;
        self.sink.observe(observation).await;
    }
}

// === impl Inner: lifecycle ===

impl Inner {
    async fn launch(
        self: &Arc<Self>,
        id: &InstanceId,
        spec: &StartSpec,
    ) -> Result<Started, DriverError> {
        let executable =
            self.resolve_executable(spec.server_configuration.executable_path.as_deref())?;
        for port in &spec.listening_ports {
            if let Err(e) = std::net::TcpListener::bind(("0.0.0.0", *port)) {
                return Err(DriverError::new(
                    ErrorCode::PortInUse,
                    format!("port {port} is not free on this host: {e}"),
                )
                .with_state(ActualState::Failed, Reason::PortInUse));
            }
        }
        let platform_error = |what: &str, e: std::io::Error| {
            DriverError::new(ErrorCode::PlatformError, format!("{what}: {e}"))
                .with_state(ActualState::Failed, Reason::PlatformError)
        };
        let workdir = self.workdir(id);
        std::fs::create_dir_all(&workdir)
            .map_err(|e| platform_error("cannot create the working directory", e))?;
        let config = self
            .write_config(id, &spec.configuration_yaml)
            .map_err(|e| platform_error("cannot write the configuration", e))?;
        let logs = self.logs(id);
        let stdout = logs
            .open_for_server(LogStream::Stdout)
            .map_err(|e| platform_error("cannot open the output file", e))?;
        let stderr = logs
            .open_for_server(LogStream::Stderr)
            .map_err(|e| platform_error("cannot open the output file", e))?;

        let mut command = tokio::process::Command::new(&executable);
        command
            .arg("--config")
            .arg(&config)
            .args(&spec.server_configuration.arguments)
            .current_dir(&workdir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("NO_COLOR", "1")
            .envs(&spec.server_configuration.environment)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false);
        let child = command
            .spawn()
            .map_err(|e| platform_error(&format!("cannot start {}", executable.display()), e))?;
        let pid = child.id().unwrap_or_default();
        let handle = ProcessHandle::for_child(child)
            .map_err(|e| platform_error("cannot watch the process", e))?;
        let start_time = record::start_time_of(pid).unwrap_or_default();
        let record = ProcessRecord {
            pid,
            start_time,
            api_host: spec.api_host.clone(),
            api_port: spec.api_port,
            generation: spec.generation,
            started_at: Utc::now(),
            executable: executable.display().to_string(),
            worker_id: self.settings.worker_id.clone(),
        };
        info!(instance = %id, pid, executable = %executable.display(), "launched");
        let phase = Arc::new(Mutex::new(Phase::Starting));
        self.register(id, &record, &handle, &phase, None);
        if let Err(e) = self.save_record(id, &record).await {
            // A server nobody could find again after a restart must not run.
            let _ = handle.signal(Signal::KILL);
            self.managed().remove(id);
            return Err(e.with_state(ActualState::Failed, Reason::PlatformError));
        }
        self.clone()
            .monitor(id.clone(), handle.clone(), phase.clone());

        let deadline = Instant::now()
            + Duration::from_secs(u64::from(spec.server_configuration.start_timeout_seconds));
        self.await_ready(id, &record, &handle, phase, deadline)
            .await
    }

    /// Waits for readiness of a launched or adopted server.
    async fn await_ready(
        self: &Arc<Self>,
        id: &InstanceId,
        record: &ProcessRecord,
        handle: &ProcessHandle,
        phase: Arc<Mutex<Phase>>,
        deadline: Instant,
    ) -> Result<Started, DriverError> {
        let api = ServerApi::new(&record.api_host, record.api_port);
        let mut healthy = false;
        let mut polls = 0u32;
        let outcome = loop {
            if let Some(exit) = handle.exited.borrow().clone() {
                let words = self.last_words(id, true);
                let (code, reason) = startup_failure(&words);
                break Err(DriverError::new(
                    code,
                    format!(
                        "the server {} before it was ready: {words}",
                        exit.description
                    ),
                )
                .with_state(ActualState::Failed, reason));
            }
            healthy = healthy || api.healthy().await;
            if healthy {
                match api.component_state().await {
                    Some(Components::Ready) => break Ok((ActualState::Running, None)),
                    Some(Components::Failed(why)) => break Ok((ActualState::Degraded, Some(why))),
                    Some(Components::Starting) | None => {}
                }
            }
            if Instant::now() >= deadline {
                let what = if healthy {
                    "its components did not all start"
                } else {
                    "/health did not answer"
                };
                break Err(DriverError::new(
                    ErrorCode::StartTimeout,
                    format!("the server was not ready in time: {what}; it was killed"),
                )
                .with_state(ActualState::Failed, Reason::StartTimeout));
            }
            // Servers usually start in milliseconds: look often at first.
            let pause = if polls < 100 { 5 } else { 25 };
            polls += 1;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        };
        match outcome {
            Ok((state, message)) => {
                *phase.lock().unwrap_or_else(|p| p.into_inner()) = Phase::Running;
                let watcher = self.watch_components(id, record);
                if let Some(m) = self.managed().get_mut(id) {
                    m.watcher = Some(watcher);
                }
                // The server may have exited between the last check and the
                // phase change; the monitor would then not have reported it.
                if handle.has_exited() {
                    let words = self.last_words(id, true);
                    self.forget(id).await;
                    return Err(DriverError::new(
                        ErrorCode::PlatformError,
                        format!("the server exited right after starting: {words}"),
                    )
                    .with_state(ActualState::Failed, Reason::ExitedWithCode));
                }
                Ok(Started {
                    runtime: self.runtime_info(record, api.endpoint()),
                    state,
                    message,
                })
            }
            Err(e) => {
                if e.code == ErrorCode::StartTimeout {
                    let _ = handle.signal(Signal::KILL);
                    let _ = tokio::time::timeout(Duration::from_secs(5), handle.wait()).await;
                }
                self.forget(id).await;
                Err(e)
            }
        }
    }

    fn runtime_info(&self, record: &ProcessRecord, endpoint: &str) -> RuntimeInfo {
        RuntimeInfo {
            worker_id: self.settings.worker_id.clone(),
            handle: Some(PlatformHandle::Process {
                pid: record.pid,
                start_time: record.start_time,
            }),
            host: self.settings.host.clone(),
            port: record.api_port,
            endpoint: endpoint.to_string(),
            started_at: Some(record.started_at),
            last_exit_code: None,
        }
    }

    /// Reports the server's exit the moment it happens, unless `start` or
    /// `stop` is the one waiting for it.
    fn monitor(self: Arc<Self>, id: InstanceId, handle: ProcessHandle, phase: Arc<Mutex<Phase>>) {
        tokio::spawn(async move {
            let exit = handle.wait().await;
            let current = *phase.lock().unwrap_or_else(|p| p.into_inner());
            if current != Phase::Running {
                return;
            }
            let words = self.last_words(&id, false);
            let reason = if exit.signal.is_some() {
                Reason::KilledBySignal
            } else {
                Reason::ExitedWithCode
            };
            warn!(instance = %id, "server {}", exit.description);
            self.forget(&id).await;
            let message = if words.is_empty() {
                format!("the server {}", exit.description)
            } else {
                format!("the server {}: {words}", exit.description)
            };
            self.sink
                .observe(
                    Observation::now(id, ActualState::Failed, Some(reason))
                        .message(message)
                        .runtime(RuntimeUpdate::Exited(exit.code)),
                )
                .await;
        });
    }

    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), DriverError> {
        let target = {
            let managed = self.managed();
            managed.get(id).map(|m| {
                *m.phase.lock().unwrap_or_else(|p| p.into_inner()) = Phase::Stopping;
                m.handle.clone()
            })
        };
        let Some(handle) = target else {
            // Not running here; drop a stale record if one is left.
            self.forget(id).await;
            return Ok(());
        };
        let signal_error = |e: std::io::Error| {
            DriverError::new(
                ErrorCode::PlatformError,
                format!("cannot signal the server: {e}"),
            )
        };
        let signalled = handle.signal(Signal::INT).map_err(signal_error)?;
        if signalled && tokio::time::timeout(grace, handle.wait()).await.is_err() {
            warn!(instance = %id, "no exit {grace:?} after SIGINT; sending SIGKILL");
            handle.signal(Signal::KILL).map_err(signal_error)?;
            if tokio::time::timeout(Duration::from_secs(10), handle.wait())
                .await
                .is_err()
            {
                return Err(DriverError::new(
                    ErrorCode::PlatformError,
                    "the server survived SIGKILL for 10 s",
                ));
            }
        }
        info!(instance = %id, "stopped");
        self.forget(id).await;
        Ok(())
    }
}

// === impl PlatformDriver ===

#[async_trait]
impl PlatformDriver for ProcessDriver {
    fn platform(&self) -> PlatformType {
        PlatformType::Process
    }

    async fn start(&self, id: &InstanceId, spec: &StartSpec) -> Result<Started, DriverError> {
        self.inner.ensure_adopted(id).await?;
        let current = {
            let managed = self.inner.managed();
            managed
                .get(id)
                .map(|m| (m.record.clone(), m.handle.clone(), m.phase.clone()))
        };
        if let Some((record, handle, phase)) = current {
            if record.generation == spec.generation && !handle.has_exited() {
                // Already running this generation (a repeated or redelivered
                // Start): confirm readiness, launch nothing.
                let deadline = Instant::now()
                    + Duration::from_secs(u64::from(
                        spec.server_configuration.start_timeout_seconds,
                    ));
                return self
                    .inner
                    .await_ready(id, &record, &handle, phase, deadline)
                    .await;
            }
            let grace = Duration::from_secs(u64::from(
                spec.server_configuration.shutdown_timeout_seconds,
            ));
            self.inner.stop(id, grace).await?;
        }
        self.inner.launch(id, spec).await
    }

    async fn stop(&self, id: &InstanceId, spec: &StopSpec) -> Result<(), DriverError> {
        self.inner.ensure_adopted(id).await?;
        self.inner
            .stop(
                id,
                Duration::from_secs(u64::from(spec.shutdown_timeout_seconds)),
            )
            .await
    }

    async fn delete(&self, id: &InstanceId, spec: &StopSpec) -> Result<(), DriverError> {
        self.stop(id, spec).await?;
        let remove = |path: &Path, result: std::io::Result<()>| match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::new(
                ErrorCode::PlatformError,
                format!("cannot remove {}: {e}", path.display()),
            )),
        };
        let workdir = self.inner.workdir(id);
        remove(&workdir, std::fs::remove_dir_all(&workdir))?;
        let config = self.inner.config_path(id);
        remove(&config, std::fs::remove_file(&config))?;
        Ok(())
    }

    async fn status(&self, id: &InstanceId) -> Result<serde_json::Value, DriverError> {
        self.inner.ensure_adopted(id).await?;
        let current = self.inner.managed().get(id).map(|m| m.record.clone());
        let Some(record) = current else {
            return Ok(serde_json::json!({ "running": false }));
        };
        let api = ServerApi::new(&record.api_host, record.api_port);
        Ok(serde_json::json!({
            "running": true,
            "pid": record.pid,
            "startTime": record.start_time,
            "generation": record.generation,
            "endpoint": api.endpoint(),
            "healthy": api.healthy().await,
            "components": api.components().await,
        }))
    }

    async fn logs(&self, id: &InstanceId, spec: &LogsSpec) -> Result<Vec<String>, DriverError> {
        self.inner
            .logs(id)
            .tail(spec.stream, spec.tail)
            .map_err(|e| {
                DriverError::new(
                    ErrorCode::PlatformError,
                    format!("cannot read the output: {e}"),
                )
            })
    }

    async fn recover(&self) -> Result<usize, DriverError> {
        let records = self
            .inner
            .store
            .list_json::<ProcessRecord>(&self.inner.records)
            .await
            .map_err(|e| {
                DriverError::new(
                    ErrorCode::PlatformError,
                    format!("cannot read process records: {e}"),
                )
            })?;
        let mut adopted = 0;
        for (key, _) in records {
            let Ok(id) = key.parse::<InstanceId>() else {
                warn!("ignoring a process record with an invalid key {key:?}");
                continue;
            };
            match self.inner.adopt(&id).await {
                Ok(Adoption::Adopted(record)) => {
                    adopted += 1;
                    tokio::spawn(self.inner.clone().confirm_adopted(id, record));
                }
                Ok(Adoption::Gone(record)) => {
                    warn!(instance = %id, pid = record.pid, "server gone while its worker was down");
                    self.inner
                        .sink
                        .observe(
                            Observation::now(
                                id,
                                ActualState::Failed,
                                Some(Reason::LostWhileWorkerDown),
                            )
                            .message(format!(
                                "the server (pid {}) was gone when its worker restarted",
                                record.pid
                            ))
                            .runtime(RuntimeUpdate::Exited(None)),
                        )
                        .await;
                }
                // Another live worker's server, or no longer recorded.
                Ok(Adoption::NoRecord) | Err(_) => {}
            }
        }
        self.spawn_log_rotation();
        Ok(adopted)
    }

    async fn running(&self) -> usize {
        self.inner.managed().len()
    }

    async fn reassert(&self) {
        let running: Vec<(InstanceId, ProcessRecord)> = self
            .inner
            .managed()
            .iter()
            .filter(|(_, m)| *m.phase.lock().unwrap_or_else(|p| p.into_inner()) == Phase::Running)
            .map(|(id, m)| (id.clone(), m.record.clone()))
            .collect();
        for (id, record) in running {
            tokio::spawn(self.inner.clone().confirm_adopted(id, record));
        }
    }
}

impl ProcessDriver {
    /// Checks output sizes every 10 s and rotates what grew too large.
    fn spawn_log_rotation(&self) {
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let Some(inner) = inner.upgrade() else { return };
                let ids: Vec<InstanceId> = inner.managed().keys().cloned().collect();
                for id in ids {
                    let logs = inner.logs(&id);
                    for stream in [LogStream::Stdout, LogStream::Stderr] {
                        if let Err(e) = logs.rotate_if_larger(
                            stream,
                            inner.settings.log_max_bytes,
                            inner.settings.log_keep,
                        ) {
                            warn!(instance = %id, "log rotation failed: {e}");
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_failures_are_classified_from_the_servers_words() {
        assert_eq!(
            startup_failure(
                "Error: cannot bind the API on 0.0.0.0:8080: Address already in use (os error 98)"
            )
            .1,
            Reason::PortInUse
        );
        assert_eq!(
            startup_failure("Error: invalid configuration 'x.yaml': port 0 is not allowed").1,
            Reason::ConfigRejected
        );
        assert_eq!(
            startup_failure("Error: source 'pg': connection refused").1,
            Reason::ExitedWithCode
        );
    }
}
