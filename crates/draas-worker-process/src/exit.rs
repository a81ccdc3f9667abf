//! Knowing the moment a server process exits, and signalling it safely.
//!
//! Every managed server is held through a **pidfd** (Linux `pidfd_open`):
//! - signals go through `pidfd_send_signal`, which can only reach the
//!   process the fd was opened for, never a later process that reused its
//!   pid;
//! - a pidfd becomes readable when its process exits, so an adopted server
//!   (not our child) is watched without polling.
//!
//! A server we spawned is also our child: waiting on the child handle gives
//! its exit code at once. Either way the exit is reported on an
//! [`ExitWatch`] of the generic driver.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use draas_worker::driver::{exit_channel, Exit, ExitWatch};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use tokio::io::unix::AsyncFd;

use crate::record::live_start_time_of;

/// A handle on one server process.
#[derive(Clone, Debug)]
pub struct ProcessHandle {
    pidfd: Arc<OwnedFd>,
}

fn exit_of(status: std::io::Result<std::process::ExitStatus>) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => Exit::code(code),
            (None, Some(signal)) => Exit::signal(signal),
            (None, None) => Exit::unknown("exited"),
        },
        Err(e) => Exit::unknown(format!("exited (its status could not be read: {e})")),
    }
}

impl ProcessHandle {
    /// Takes a freshly spawned child whose pid is `pid`: opens its pidfd
    /// (the pid cannot be reused before we reap it) and waits for it in the
    /// background.
    pub fn for_child(
        mut child: tokio::process::Child,
        pid: u32,
    ) -> std::io::Result<(Self, ExitWatch)> {
        let raw = i32::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| std::io::Error::other("the child has no valid pid"))?;
        let pidfd = Arc::new(pidfd_open(raw, PidfdFlags::empty())?);
        let (notifier, exit) = exit_channel();
        tokio::spawn(async move {
            let status = child.wait().await;
            notifier.exited(exit_of(status));
        });
        Ok((Self { pidfd }, exit))
    }

    /// Adopts a process that is not our child, if `pid` still is the
    /// process that started at `start_time` and has not exited.
    pub fn adopt(pid: u32, start_time: u64) -> Option<(Self, ExitWatch)> {
        if start_time == 0 || live_start_time_of(pid)? != start_time {
            return None;
        }
        let raw = Pid::from_raw(i32::try_from(pid).ok()?)?;
        let pidfd = pidfd_open(raw, PidfdFlags::empty()).ok()?;
        // Checked again with the fd held: if the pid was reused between the
        // first check and the open, the start time differs now.
        if live_start_time_of(pid)? != start_time {
            return None;
        }
        let pidfd = Arc::new(pidfd);
        let (notifier, exit) = exit_channel();
        let watched = pidfd.clone();
        tokio::spawn(async move {
            // NOTE(io-safety): `AsyncFd::new` is deprecated in favour of an
            // `unsafe fn register` whose contract is that the fd stays open
            // and the same while registered. `SharedFd` owns an `Arc` of the
            // pidfd, so it does; this crate forbids `unsafe`, hence the
            // safe (deprecated) constructor.
            #[allow(deprecated)]
            let registered = AsyncFd::new(SharedFd(watched));
            let exit = match registered {
                Ok(fd) => match fd.readable().await {
                    Ok(_) => {
                        Exit::unknown("exited (adopted process: its exit code is not ours to read)")
                    }
                    Err(e) => Exit::unknown(format!("lost track of it: {e}")),
                },
                Err(e) => Exit::unknown(format!("cannot watch it: {e}")),
            };
            notifier.exited(exit);
        });
        Some((Self { pidfd }, exit))
    }

    /// Sends `signal`; `Ok(false)` when the process is already gone.
    pub fn signal(&self, signal: Signal) -> std::io::Result<bool> {
        match pidfd_send_signal(&*self.pidfd, signal) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// `AsyncFd` needs to own an `AsRawFd`; this shares the pidfd with the handle.
struct SharedFd(Arc<OwnedFd>);

impl std::os::fd::AsRawFd for SharedFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}
