//! Launching and stopping server processes.
//!
//! - **Launch**: the ports the configuration listens on must be free on
//!   this host; the environment is not inherited (only `PATH` and the
//!   instance's own variables); the process gets its own process group (a
//!   Ctrl-C on the worker's terminal does not reach it); its output goes
//!   straight to files, so it outlives its worker. It works in its
//!   instance's directory: the bundled runtime is told so (`--workdir`),
//!   any other executable is started there. Telling is faster: with no
//!   working directory to set, the standard library launches with
//!   `posix_spawn` (vfork + exec) instead of fork + exec, and a static
//!   binary such as `draas` cannot set one through `posix_spawn` (glibc's
//!   `posix_spawn_file_actions_addchdir_np` is found only by dynamic
//!   lookup). Fork copies the worker's page tables and exec then tears
//!   them down: milliseconds on the way from a crash to its restart.
//! - **Warm start**: a start of the bundled runtime goes to the worker's
//!   warm spare when it has one ([`crate::spare`]): the same arguments,
//!   environment and output files, minus the ~2 ms of exec.
//! - **Stop**: SIGINT (drasi-server stops gracefully only on SIGINT), then
//!   SIGKILL after the grace period; always through the pidfd.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use draas_core::instance::{ActualState, InstanceId, Reason};
use draas_core::messages::{ErrorCode, LogStream, StartSpec};
use draas_core::ports::DriverError;
use draas_worker::driver::ExitWatch;
use rustix::process::Signal;
use tracing::{info, warn};

use crate::exit::ProcessHandle;
use crate::files::Prepared;
use crate::record::{start_time_of, ProcessRecord};
use crate::spare::{Order, Spares};

/// The bundled runtime's file name: it takes `--workdir`.
const BUNDLED_RUNTIME: &str = "draas-runtime";

/// Whether `executable` is the bundled runtime, which is told its working
/// directory rather than started in it (see the module docs).
fn takes_workdir(executable: &std::path::Path) -> bool {
    executable
        .file_name()
        .is_some_and(|name| name == BUNDLED_RUNTIME)
}

/// How long a server may take to die after SIGKILL.
const AFTER_SIGKILL: Duration = Duration::from_secs(10);

/// Fails when a port of `spec` is taken on this host.
pub fn check_ports_free(spec: &StartSpec) -> Result<(), DriverError> {
    for port in &spec.listening_ports {
        if let Err(e) = std::net::TcpListener::bind(("0.0.0.0", *port)) {
            return Err(DriverError::new(
                ErrorCode::PortInUse,
                format!("port {port} is not free on this host: {e}"),
            )
            .with_state(ActualState::Failed, Reason::PortInUse));
        }
    }
    Ok(())
}

/// The environment of a server of `spec`: nothing inherited, only `PATH`,
/// `NO_COLOR` and the instance's own variables (which may override both).
pub(crate) fn environment(spec: &StartSpec) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        (
            "PATH".to_string(),
            "/usr/local/bin:/usr/bin:/bin".to_string(),
        ),
        ("NO_COLOR".to_string(), "1".to_string()),
    ]);
    env.extend(spec.server_configuration.environment.clone());
    env
}

/// The arguments of a server of `spec` with `files` (see the module docs
/// for `--workdir`).
fn arguments(spec: &StartSpec, files: &Prepared) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--config".into(), files.config.clone().into()];
    if takes_workdir(&files.executable) {
        args.push("--workdir".into());
        args.push(files.workdir.clone().into());
    }
    args.extend(
        spec.server_configuration
            .process()
            .arguments
            .into_iter()
            .map(OsString::from),
    );
    args
}

/// The order that makes a warm spare this start, when a spare can serve it:
/// the bundled runtime, UTF-8 arguments, and an environment a spare can take.
fn order_for(spec: &StartSpec, files: &Prepared) -> Option<Order> {
    if !takes_workdir(&files.executable) {
        return None;
    }
    let args = arguments(spec, files)
        .into_iter()
        .map(|a| a.into_string().ok())
        .collect::<Option<Vec<String>>>()?;
    Order::new(
        args,
        environment(spec).into_iter().collect(),
        &files.logs.path(LogStream::Stdout),
        &files.logs.path(LogStream::Stderr),
    )
}

fn failed(what: &str, e: std::io::Error) -> DriverError {
    DriverError::new(ErrorCode::PlatformError, format!("{what}: {e}"))
        .with_state(ActualState::Failed, Reason::PlatformError)
}

/// Starts the server prepared in `files` for `spec`: through the warm
/// spare when there is one that can serve it (see [`crate::spare`]), else
/// by spawning the executable.
pub async fn start(
    id: &InstanceId,
    spec: &StartSpec,
    files: Prepared,
    spares: &Spares,
) -> Result<(ProcessRecord, ProcessHandle, ExitWatch), DriverError> {
    if let Some(order) = order_for(spec, &files) {
        if let Some(spare) = spares.take(&files.executable) {
            let (pid, start_time) = spare.identity();
            match spare.go(&order).await {
                Ok(child) => {
                    info!(instance = %id, pid, "started from the warm runtime");
                    let record = ProcessRecord {
                        pid,
                        start_time,
                        workdir: files.workdir,
                        config: files.config,
                        executable: files.executable,
                    };
                    return watch(child, record);
                }
                Err(e) => {
                    warn!(instance = %id, "the warm runtime did not take the start ({e}); starting cold")
                }
            }
        }
    }
    spawn(id, spec, files)
}

/// Spawns the server prepared in `files` for `spec`.
fn spawn(
    id: &InstanceId,
    spec: &StartSpec,
    files: Prepared,
) -> Result<(ProcessRecord, ProcessHandle, ExitWatch), DriverError> {
    let args = arguments(spec, &files);
    let Prepared {
        executable,
        workdir,
        config,
        stdout,
        stderr,
        ..
    } = files;
    let mut command = tokio::process::Command::new(&executable);
    command.args(args);
    if !takes_workdir(&executable) {
        command.current_dir(&workdir);
    }
    command
        .env_clear()
        .envs(environment(spec))
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(false);
    let mut child = command
        .spawn()
        .map_err(|e| failed(&format!("cannot start {}", executable.display()), e))?;
    // Read pid and start time before anything can reap the child (a
    // zombie keeps its /proc entry): without both, the server could never
    // be found again after a worker restart, so it must not run.
    let identity = child
        .id()
        .and_then(|pid| start_time_of(pid).map(|start| (pid, start)));
    let Some((pid, start_time)) = identity else {
        let _ = child.start_kill();
        return Err(failed(
            "cannot identify the launched process",
            std::io::Error::other("its pid or start time could not be read"),
        ));
    };
    info!(instance = %id, pid, executable = %executable.display(), "spawned");
    watch(
        child,
        ProcessRecord {
            pid,
            start_time,
            workdir,
            config,
            executable,
        },
    )
}

/// Watches the started `child`, the process of `record`.
fn watch(
    child: tokio::process::Child,
    record: ProcessRecord,
) -> Result<(ProcessRecord, ProcessHandle, ExitWatch), DriverError> {
    match ProcessHandle::for_child(child, record.pid) {
        Ok((handle, exit)) => Ok((record, handle, exit)),
        Err(e) => Err(failed("cannot watch the process", e)),
    }
}

/// SIGINT, then SIGKILL after `grace`; returns once the process is gone.
pub async fn stop(
    id: &InstanceId,
    handle: &ProcessHandle,
    exit: &ExitWatch,
    grace: Duration,
) -> Result<(), DriverError> {
    let signal_error = |e: std::io::Error| {
        DriverError::new(
            ErrorCode::PlatformError,
            format!("cannot signal the server: {e}"),
        )
    };
    let signalled = handle.signal(Signal::INT).map_err(signal_error)?;
    if signalled && tokio::time::timeout(grace, exit.wait()).await.is_err() {
        warn!(instance = %id, "no exit {grace:?} after SIGINT; sending SIGKILL");
        handle.signal(Signal::KILL).map_err(signal_error)?;
        if tokio::time::timeout(AFTER_SIGKILL, exit.wait())
            .await
            .is_err()
        {
            return Err(DriverError::new(
                ErrorCode::PlatformError,
                format!("the server survived SIGKILL for {AFTER_SIGKILL:?}"),
            ));
        }
    }
    Ok(())
}

/// The environment variable that hands the bundled runtime a configuration
/// without a file (`--config-env`).
const RELEASE_CONFIG: &str = "DRAAS_RELEASE_CONFIGURATION";

/// Runs the bundled `runtime` once to drop the replication slots of the
/// postgres sources of `spec` (its configuration, in its environment).
pub(crate) async fn release_slots(runtime: &Path, spec: &StartSpec) -> Result<Vec<String>, String> {
    let output = tokio::process::Command::new(runtime)
        .args(["release-replication-slots", "--config-env", RELEASE_CONFIG])
        .env_clear()
        .envs(environment(spec))
        .env(RELEASE_CONFIG, &spec.configuration_yaml)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), output)
        .await
        .map_err(|_| "the runtime did not finish within 60 s".to_string())?
        .map_err(|e| format!("cannot run {}: {e}", runtime.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    Ok(stdout
        .lines()
        .filter_map(|l| l.strip_prefix("released: "))
        .flat_map(|l| l.split(", "))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn only_the_bundled_runtime_is_told_its_working_directory() {
        assert!(takes_workdir(Path::new("/opt/draas/draas-runtime")));
        assert!(takes_workdir(Path::new("draas-runtime")));
        assert!(!takes_workdir(Path::new("/usr/local/bin/drasi-server")));
        assert!(!takes_workdir(Path::new("/opt/draas-runtime/bin/server")));
        assert!(!takes_workdir(Path::new(
            "/opt/draas/draas-runtime-wrapper"
        )));
    }
}
