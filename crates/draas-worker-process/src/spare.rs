//! The warm spare: one bundled runtime started ahead of need.
//!
//! A process of the bundled runtime spends ~2 ms before its `main` runs
//! (exec, the self-relocation of a 40 MB static-pie binary, first page
//! faults): a third of a whole server start, and more than everything the
//! control plane does between a crash and its restart. So the worker keeps
//! one runtime started with `--standby` (see the runtime's `standby`
//! module): it waits on a pipe, and the next start of the bundled runtime
//! writes it the arguments, environment and output files a cold start would
//! have been given, instead of spawning. The spare becomes the server: its
//! pid, its start time, its own process group. Another spare is started a
//! moment later, when the start it served no longer needs the CPU.
//!
//! A spare is only used when it is exactly what a cold start would run:
//! - the same executable file (path, device, inode, size and mtime; a
//!   runtime upgraded on disk retires the spare);
//! - an environment without variables the C library reads when a process
//!   starts (`LD_*`, `MALLOC_*`, `GLIBC_TUNABLES`): the spare started
//!   without them;
//! - arguments, paths and environment that are UTF-8 (the order is JSON).
//!
//! Anything else, or a spare that died, means a cold start: the spare only
//! saves time, it never decides what runs. A spare costs one idle process
//! (a few MB) per worker; when its worker goes away its pipe closes and it
//! exits. `--warm-runtime off` turns it off.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};
use tracing::{debug, warn};

use crate::record::start_time_of;

/// How long after a start the next spare is started: the start it served
/// and its readiness checks have the CPU to themselves first.
const REFILL_AFTER: Duration = Duration::from_millis(250);

/// Environment variables read by the C library at process start; an
/// instance that sets one gets a cold start.
fn read_at_exec(name: &str) -> bool {
    name.starts_with("LD_") || name.starts_with("MALLOC_") || name == "GLIBC_TUNABLES"
}

/// What identifies an executable file's content without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl FileIdentity {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
        })
    }
}

/// A runtime waiting in standby.
pub struct Spare {
    child: Child,
    stdin: ChildStdin,
    pid: u32,
    start_time: u64,
    executable: PathBuf,
    identity: FileIdentity,
}

/// A cold start's command line, environment and output files, as a spare
/// reads them (the runtime's `standby::Go`).
#[derive(Debug, Serialize)]
pub struct Order {
    /// The arguments after the program name.
    args: Vec<String>,
    /// The whole environment.
    env: Vec<(String, String)>,
    /// The stdout file.
    stdout: String,
    /// The stderr file.
    stderr: String,
}

impl Order {
    /// The order of a start, when a spare can serve it (see the module
    /// docs): `None` when its environment sets a variable read at exec, or
    /// an output path is not UTF-8 (the order is JSON).
    pub fn new(
        args: Vec<String>,
        env: Vec<(String, String)>,
        stdout: &Path,
        stderr: &Path,
    ) -> Option<Self> {
        if env.iter().any(|(name, _)| read_at_exec(name)) {
            return None;
        }
        Some(Self {
            args,
            env,
            stdout: stdout.to_str()?.to_string(),
            stderr: stderr.to_str()?.to_string(),
        })
    }
}

impl Spare {
    /// The spare's pid and start time.
    pub fn identity(&self) -> (u32, u64) {
        (self.pid, self.start_time)
    }

    /// Orders the spare to run `order`; on success it is the server, and
    /// its child handle is returned. `Err`: it could not be ordered (it
    /// died meanwhile); it has been killed.
    pub async fn go(mut self, order: &Order) -> std::io::Result<Child> {
        let text = serde_json::to_vec(order).map_err(std::io::Error::other)?;
        let written = async {
            self.stdin.write_all(&text).await?;
            self.stdin.shutdown().await
        }
        .await;
        if let Err(e) = written {
            let _ = self.child.start_kill();
            return Err(e);
        }
        drop(self.stdin);
        Ok(self.child)
    }
}

/// The worker's spare, if it keeps one.
pub struct Spares {
    enabled: bool,
    executable: PathBuf,
    slot: Mutex<Option<Spare>>,
    refilling: AtomicBool,
}

impl Spares {
    /// Spares of `executable` (the bundled runtime) when `enabled`.
    pub fn new(enabled: bool, executable: PathBuf) -> Self {
        Self {
            enabled,
            executable,
            slot: Mutex::new(None),
            refilling: AtomicBool::new(false),
        }
    }

    /// The spare, if there is a live one of `executable` as it is on disk
    /// now. Blocking (a `stat`): call from the blocking pool or where a
    /// `stat` is fine.
    pub fn take(&self, executable: &Path) -> Option<Spare> {
        let mut spare = self.slot.lock().ok()?.take()?;
        let current = FileIdentity::of(executable);
        let alive = matches!(spare.child.try_wait(), Ok(None));
        if alive && spare.executable == executable && current.as_ref() == Some(&spare.identity) {
            return Some(spare);
        }
        debug!(
            pid = spare.pid,
            alive, "the warm runtime is stale; starting cold"
        );
        let _ = spare.child.start_kill();
        None
    }

    /// Starts a spare [`REFILL_AFTER`] from now, unless one is there or on
    /// its way. Needs a Tokio runtime.
    pub fn refill_later(self: &Arc<Self>) {
        if !self.enabled || self.refilling.swap(true, Ordering::SeqCst) {
            return;
        }
        let spares = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(REFILL_AFTER).await;
            if let Some(spares) = spares.upgrade() {
                spares.refill();
                spares.refilling.store(false, Ordering::SeqCst);
            }
        });
    }

    /// Makes sure a live, current spare is there (upkeep calls this).
    pub fn check(self: &Arc<Self>) {
        if !self.enabled {
            return;
        }
        let Ok(mut slot) = self.slot.lock() else {
            return;
        };
        let fresh = slot.as_mut().is_some_and(|spare| {
            matches!(spare.child.try_wait(), Ok(None))
                && FileIdentity::of(&spare.executable).as_ref() == Some(&spare.identity)
        });
        if fresh {
            return;
        }
        if let Some(mut old) = slot.take() {
            let _ = old.child.start_kill();
        }
        drop(slot);
        self.refill_later();
    }

    /// Starts a spare now if the slot is empty.
    fn refill(&self) {
        let Ok(slot) = self.slot.lock() else { return };
        if slot.is_some() {
            return;
        }
        drop(slot);
        let spare = match start(&self.executable) {
            Ok(spare) => spare,
            Err(e) => {
                warn!(
                    "cannot start a warm runtime ({}): {e}; starts stay cold",
                    self.executable.display()
                );
                return;
            }
        };
        debug!(pid = spare.pid, "warm runtime waiting");
        if let Ok(mut slot) = self.slot.lock() {
            if let Some(mut extra) = slot.replace(spare) {
                let _ = extra.child.start_kill();
            }
        }
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.slot.lock() {
            if let Some(mut spare) = slot.take() {
                let _ = spare.child.start_kill();
            }
        }
    }
}

/// Starts `executable --standby` as a cold start would be started (clean
/// environment, own process group, no output until ordered).
fn start(executable: &Path) -> std::io::Result<Spare> {
    let canonical = std::fs::canonicalize(executable)?;
    let identity = FileIdentity::of(&canonical)
        .ok_or_else(|| std::io::Error::other("cannot stat the executable"))?;
    let mut child = tokio::process::Command::new(&canonical)
        .arg("--standby")
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(false)
        .spawn()?;
    let identified = child
        .id()
        .and_then(|pid| start_time_of(pid).map(|start| (pid, start)));
    let (Some((pid, start_time)), Some(stdin)) = (identified, child.stdin.take()) else {
        let _ = child.start_kill();
        return Err(std::io::Error::other("cannot identify the started runtime"));
    };
    Ok(Spare {
        child,
        stdin,
        pid,
        start_time,
        executable: canonical,
        identity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(env: &[(&str, &str)]) -> Option<Order> {
        Order::new(
            vec!["--config".into(), "/c.yaml".into()],
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            Path::new("/w/logs/stdout.log"),
            Path::new("/w/logs/stderr.log"),
        )
    }

    #[test]
    fn a_spare_serves_only_an_environment_it_could_have_started_with() {
        let served = order(&[("PATH", "/bin"), ("RUST_LOG", "debug"), ("TOKEN", "x")])
            .expect("an ordinary environment");
        let text = serde_json::to_value(&served).unwrap();
        assert_eq!(text["stdout"], "/w/logs/stdout.log");
        assert_eq!(text["env"][1], serde_json::json!(["RUST_LOG", "debug"]));
        for read_at_start in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "MALLOC_ARENA_MAX",
            "GLIBC_TUNABLES",
        ] {
            assert!(
                order(&[("PATH", "/bin"), (read_at_start, "1")]).is_none(),
                "{read_at_start}"
            );
        }
    }

    #[test]
    fn output_paths_that_are_not_utf8_mean_a_cold_start() {
        use std::os::unix::ffi::OsStrExt;
        let odd = Path::new(std::ffi::OsStr::from_bytes(b"/w/\xff/stdout.log"));
        assert!(Order::new(Vec::new(), Vec::new(), odd, Path::new("/w/e.log")).is_none());
        assert!(Order::new(Vec::new(), Vec::new(), Path::new("/w/o.log"), odd).is_none());
    }
}
