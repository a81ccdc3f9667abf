//! The Process platform as the generic driver sees it: the
//! [`Platform`] implementation, delegating to the modules that know
//! processes and files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use draas_core::instance::{InstanceId, PlatformHandle, PlatformType};
use draas_core::messages::{ErrorCode, LogStream, LogsSpec, StartSpec};
use draas_core::ports::DriverError;
use draas_worker::driver::{ExitWatch, Launched, Platform, ServerAddress};
use rustix::process::Signal;
use tracing::warn;

use crate::exit::ProcessHandle;
use crate::files::{self, Files};
use crate::lifecycle;
use crate::logs::LogFiles;
use crate::record::ProcessRecord;
use crate::spare::Spares;
use crate::ProcessSettings;

/// The Process platform: Drasi servers as OS processes of this host.
pub struct ProcessPlatform {
    settings: ProcessSettings,
    files: Files,
    spares: Arc<Spares>,
}

impl ProcessPlatform {
    /// The platform with `settings`.
    pub fn new(settings: ProcessSettings) -> Self {
        let files = Files::new(settings.root.clone());
        let spares = Arc::new(Spares::new(
            settings.warm_runtime,
            settings.default_executable.clone(),
        ));
        Self {
            settings,
            files,
            spares,
        }
    }

    /// Where the output of instance `id` is: its recorded working directory
    /// (it may have been launched by another worker of this host), else
    /// this worker's.
    fn logs_of(&self, id: &InstanceId, record: Option<&ProcessRecord>) -> LogFiles {
        let workdir = match record {
            Some(r) if r.paths_are_plausible(id) => r.workdir.clone(),
            _ => self.files.workdir(id),
        };
        LogFiles::new(workdir.join("logs"))
    }

    /// The URLs of a server whose configuration binds `host:port`.
    fn address(&self, host: &str, port: u16) -> ServerAddress {
        let wildcard = host == "0.0.0.0" || host == "::" || host.is_empty();
        let reach = if wildcard { "127.0.0.1" } else { host };
        let advertised = if wildcard {
            self.settings.advertise_host.as_str()
        } else {
            host
        };
        ServerAddress {
            api_url: format!("http://{reach}:{port}"),
            endpoint: format!("http://{advertised}:{port}"),
            host: advertised.to_string(),
            port,
        }
    }
}

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DriverError> + Send + 'static,
) -> Result<T, DriverError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(DriverError::new(
            ErrorCode::PlatformError,
            format!("file work failed: {e}"),
        ))
    })
}

#[async_trait]
impl Platform for ProcessPlatform {
    type Record = ProcessRecord;
    type Handle = ProcessHandle;

    fn platform(&self) -> PlatformType {
        PlatformType::Process
    }

    fn scope(&self) -> String {
        self.settings.host.clone()
    }

    async fn launch(
        &self,
        id: &InstanceId,
        spec: &StartSpec,
    ) -> Result<Launched<ProcessRecord, ProcessHandle>, DriverError> {
        let default = self.settings.default_executable.clone();
        let allowed = self.settings.allowed_executables.clone();
        let requested = spec.server_configuration.process().executable_path;
        let files = self.files.clone();
        let (instance, job) = (id.clone(), spec.clone());
        let prepared = blocking(move || {
            let executable = files::resolve_executable(&default, &allowed, requested.as_deref())?;
            lifecycle::check_ports_free(&job)?;
            files.prepare(&instance, executable, &job.configuration_yaml)
        })
        .await?;
        let started = lifecycle::start(id, spec, prepared, &self.spares).await;
        // The next start finds a spare again (once this one is under way).
        self.spares.refill_later();
        let (record, handle, exit) = started?;
        Ok(Launched {
            record,
            handle,
            exit,
            address: self.address(&spec.api_host, spec.api_port),
        })
    }

    async fn attach(
        &self,
        _id: &InstanceId,
        record: &ProcessRecord,
    ) -> Option<(ProcessHandle, ExitWatch)> {
        ProcessHandle::adopt(record.pid, record.start_time)
    }

    async fn stop(
        &self,
        id: &InstanceId,
        handle: &ProcessHandle,
        exit: &ExitWatch,
        grace: Duration,
    ) -> Result<(), DriverError> {
        lifecycle::stop(id, handle, exit, grace).await
    }

    async fn kill(&self, id: &InstanceId, handle: &ProcessHandle) {
        if let Err(e) = handle.signal(Signal::KILL) {
            warn!(instance = %id, "cannot kill the server: {e}");
        }
    }

    async fn last_words(&self, id: &InstanceId, record: &ProcessRecord, starting: bool) -> String {
        // During startup, when stderr is empty, the stdout tail: drasi-server
        // logs its errors to stdout.
        let logs = self.logs_of(id, Some(record));
        blocking(move || {
            let stderr = logs.tail(LogStream::Stderr, 10).unwrap_or_default();
            let lines = if stderr.iter().any(|l| !l.trim().is_empty()) || !starting {
                stderr
            } else {
                logs.tail(LogStream::Stdout, 5).unwrap_or_default()
            };
            Ok(lines.join("\n").trim().to_string())
        })
        .await
        .unwrap_or_default()
    }

    async fn logs(
        &self,
        id: &InstanceId,
        record: Option<&ProcessRecord>,
        spec: &LogsSpec,
    ) -> Result<Vec<String>, DriverError> {
        let logs = self.logs_of(id, record);
        let (stream, tail) = (spec.stream, spec.tail);
        blocking(move || {
            logs.tail(stream, tail).map_err(|e| {
                DriverError::new(
                    ErrorCode::PlatformError,
                    format!("cannot read the output: {e}"),
                )
            })
        })
        .await
    }

    async fn remove(
        &self,
        id: &InstanceId,
        record: Option<&ProcessRecord>,
    ) -> Result<(), DriverError> {
        let mut targets: Vec<(PathBuf, PathBuf)> =
            vec![(self.files.workdir(id), self.files.config_path(id))];
        if let Some(record) = record {
            if record.paths_are_plausible(id) {
                targets.push((record.workdir.clone(), record.config.clone()));
            } else {
                warn!(instance = %id, "the record's paths are not an instance's; not removing them");
            }
        }
        blocking(move || {
            for (workdir, config) in targets {
                files::remove(&workdir, &config)?;
            }
            Ok(())
        })
        .await
    }

    async fn release_slots(
        &self,
        _id: &InstanceId,
        start: &StartSpec,
    ) -> Result<Vec<String>, String> {
        if start
            .server_configuration
            .process()
            .executable_path
            .is_some()
        {
            return Err("the instance runs another executable than the bundled runtime".into());
        }
        lifecycle::release_slots(&self.settings.default_executable, start).await
    }

    fn handle_of(&self, record: &ProcessRecord) -> PlatformHandle {
        PlatformHandle::Process {
            pid: record.pid,
            start_time: record.start_time,
        }
    }

    fn upkeep_every(&self) -> Option<Duration> {
        Some(Duration::from_secs(10))
    }

    /// Rotates output files that grew too large.
    async fn upkeep(&self, servers: Vec<(InstanceId, ProcessRecord)>) {
        let logs: Vec<(InstanceId, LogFiles)> = servers
            .into_iter()
            .map(|(id, record)| {
                let logs = self.logs_of(&id, Some(&record));
                (id, logs)
            })
            .collect();
        let (max, keep) = (self.settings.log_max_bytes, self.settings.log_keep);
        // A spare that died or whose executable changed is replaced.
        self.spares.check();
        let _ = blocking(move || {
            for (id, logs) in logs {
                for stream in [LogStream::Stdout, LogStream::Stderr] {
                    if let Err(e) = logs.rotate_if_larger(stream, max, keep) {
                        warn!(instance = %id, "log rotation failed: {e}");
                    }
                }
            }
            Ok(())
        })
        .await;
    }
}
