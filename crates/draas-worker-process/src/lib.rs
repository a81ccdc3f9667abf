//! # draas-worker-process
//!
//! The Process platform: each instance is an OS process of the bundled
//! runtime (or another allowed executable, such as the official
//! drasi-server) on the worker's host.
//!
//! This crate holds only what is about OS processes; readiness, the
//! registry of running servers, crash reporting and takeover are the
//! generic driver's (`draas_worker::driver`), which [`ProcessDriver`] is
//! built on.
//!
//! - [`files`]: where a server's files are, writing and removing them;
//! - [`lifecycle`]: launching (ports checked free, a clean environment, its
//!   own process group) and stopping (SIGINT, then SIGKILL);
//! - [`exit`]: a pidfd per server, exits seen at once, signals that never
//!   reach a reused pid;
//! - [`record`]: pid, start time and paths, persisted for re-adoption;
//! - [`logs`]: output files, their tail and rotation;
//! - [`spare`]: a bundled runtime started ahead of the next start;
//! - [`platform`]: the `Platform` implementation tying them together.

pub mod exit;
pub mod files;
pub mod lifecycle;
pub mod logs;
pub mod platform;
pub mod record;
pub mod spare;

use std::path::PathBuf;

use draas_worker::driver::ManagedDriver;
use draas_worker::WorkerContext;

pub use exit::ProcessHandle;
pub use logs::LogFiles;
pub use platform::ProcessPlatform;
pub use record::ProcessRecord;

/// The Process driver: the generic driver over the Process platform.
pub type ProcessDriver = ManagedDriver<ProcessPlatform>;

/// Settings of the Process platform.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// Root of the worker's files (configurations, working directories, logs).
    pub root: PathBuf,
    /// The executable used when an instance names none: the bundled runtime.
    pub default_executable: PathBuf,
    /// Other executables instances may name (e.g. `/usr/local/bin/drasi-server`).
    pub allowed_executables: Vec<PathBuf>,
    /// This machine's name: the scope of the worker's servers (workers of
    /// the same host can take over each other's).
    pub host: String,
    /// The host users reach servers on when a server binds every interface
    /// (`0.0.0.0`): this machine's name or address as others see it.
    pub advertise_host: String,
    /// Rotate an output file beyond this size.
    pub log_max_bytes: u64,
    /// Rotated copies kept per output file.
    pub log_keep: usize,
    /// Keep one bundled runtime started ahead of need ([`spare`]), so the
    /// next start, or the restart after a crash, skips the runtime's exec.
    pub warm_runtime: bool,
}

impl ProcessSettings {
    /// Sensible defaults under `root`, advertising `host`.
    pub fn new(root: PathBuf, default_executable: PathBuf, host: String) -> Self {
        Self {
            root,
            default_executable,
            allowed_executables: Vec::new(),
            advertise_host: host.clone(),
            host,
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 3,
            warm_runtime: true,
        }
    }
}

/// A Process driver for the worker of `context`.
pub fn driver(settings: ProcessSettings, context: &WorkerContext) -> ProcessDriver {
    ManagedDriver::new(ProcessPlatform::new(settings), context)
}
