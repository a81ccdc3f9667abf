//! Knowing the moment a server exits, and signalling it safely.
//!
//! Every managed server is held through a **pidfd** (Linux `pidfd_open`):
//! - signals go through `pidfd_send_signal`, which can only reach the
//!   process the fd was opened for, never a later process that reused its
//!   pid;
//! - a pidfd becomes readable when its process exits, so a re-adopted
//!   server (not our child) is watched without polling.
//!
//! A server we spawned is also our child: waiting on the child handle gives
//! its exit code at once.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::record::start_time_of;

/// How a server ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, when it exited normally and was our child.
    pub code: Option<i32>,
    /// Signal that killed it, when known.
    pub signal: Option<i32>,
    /// For humans: "exited with code 1", "killed by signal 9".
    pub description: String,
}

impl ExitInfo {
    fn from_status(status: std::io::Result<std::process::ExitStatus>) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => Self {
                    code: Some(code),
                    signal: None,
                    description: format!("exited with code {code}"),
                },
                (None, Some(signal)) => Self {
                    code: None,
                    signal: Some(signal),
                    description: format!("was killed by signal {signal}{}", signal_name(signal)),
                },
                (None, None) => Self::unknown("exited"),
            },
            Err(e) => Self::unknown(&format!("exited (its status could not be read: {e})")),
        }
    }

    fn unknown(description: &str) -> Self {
        Self {
            code: None,
            signal: None,
            description: description.to_string(),
        }
    }
}

/// ` (SIGKILL)` for the common signals, empty otherwise.
fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => " (SIGHUP)",
        2 => " (SIGINT)",
        6 => " (SIGABRT)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

/// A handle on one server process.
#[derive(Clone)]
pub struct ProcessHandle {
    pidfd: Arc<OwnedFd>,
    /// Becomes `Some` when the process exits.
    pub exited: watch::Receiver<Option<ExitInfo>>,
}

impl ProcessHandle {
    /// Takes a freshly spawned child: opens its pidfd (the pid cannot be
    /// reused before we reap it) and waits for it in the background.
    pub fn for_child(mut child: tokio::process::Child) -> std::io::Result<Self> {
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .and_then(Pid::from_raw)
            .ok_or_else(|| std::io::Error::other("the child has no pid"))?;
        let pidfd = Arc::new(pidfd_open(pid, PidfdFlags::empty())?);
        let (tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = tx.send(Some(ExitInfo::from_status(status)));
        });
        Ok(Self { pidfd, exited })
    }

    /// Adopts a process that is not our child, if `pid` still is the
    /// process that started at `start_time`.
    pub fn adopt(pid: u32, start_time: u64) -> Option<Self> {
        if start_time_of(pid)? != start_time {
            return None;
        }
        let raw = Pid::from_raw(i32::try_from(pid).ok()?)?;
        let pidfd = pidfd_open(raw, PidfdFlags::empty()).ok()?;
        // Checked again with the fd held: if the pid was reused between the
        // first check and the open, the start time differs now.
        if start_time_of(pid)? != start_time {
            return None;
        }
        let pidfd = Arc::new(pidfd);
        let (tx, exited) = watch::channel(None);
        let watched = pidfd.clone();
        tokio::spawn(async move {
            // NOTE(io-safety): `AsyncFd::new` is deprecated in favour of an
            // `unsafe fn register` whose contract is that the fd stays open
            // and the same while registered. `DupFd` owns an `Arc` of the
            // pidfd, so it does; this crate forbids `unsafe`, hence the
            // safe (deprecated) constructor.
            #[allow(deprecated)]
            let registered = AsyncFd::new(DupFd(watched));
            let info = match registered {
                Ok(fd) => match fd.readable().await {
                    Ok(_) => ExitInfo::unknown(
                        "exited (adopted process: its exit code is not ours to read)",
                    ),
                    Err(e) => ExitInfo::unknown(&format!("lost track of it: {e}")),
                },
                Err(e) => ExitInfo::unknown(&format!("cannot watch it: {e}")),
            };
            let _ = tx.send(Some(info));
        });
        Some(Self { pidfd, exited })
    }

    /// Sends `signal`; `Ok(false)` when the process is already gone.
    pub fn signal(&self, signal: Signal) -> std::io::Result<bool> {
        match pidfd_send_signal(&*self.pidfd, signal) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// Waits until the process exits and returns how.
    pub async fn wait(&self) -> ExitInfo {
        let mut exited = self.exited.clone();
        let info = match exited.wait_for(Option::is_some).await {
            Ok(info) => info.clone(),
            Err(_) => None,
        };
        info.unwrap_or_else(|| ExitInfo::unknown("exited"))
    }
}

/// `AsyncFd` needs to own an `AsRawFd`; this shares the pidfd with the handle.
struct DupFd(Arc<OwnedFd>);

impl std::os::fd::AsRawFd for DupFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}
