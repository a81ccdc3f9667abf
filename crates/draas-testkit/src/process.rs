//! Child processes owned by a test.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Whether process `pid` exists and is not a zombie (a killed child its
/// parent has not reaped yet counts as gone).
pub fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// The live children of process `parent` (from `/proc`: any process,
/// not only this one's).
pub fn children_of(parent: u64) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u64 = e.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u64 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent && alive(pid)).then_some(pid)
        })
        .collect()
}

/// A child process that is SIGKILLed when dropped, so a failing test never
/// leaves it behind. Its stdout and stderr go to files in `log_dir`.
pub struct TestProcess {
    child: Child,
    name: String,
    log_dir: std::path::PathBuf,
}

impl TestProcess {
    /// Starts `command`, sending output to `<log_dir>/<name>.stdout|stderr`.
    pub fn spawn(mut command: Command, name: &str, log_dir: &Path) -> anyhow::Result<Self> {
        let stdout = std::fs::File::create(log_dir.join(format!("{name}.stdout")))?;
        let stderr = std::fs::File::create(log_dir.join(format!("{name}.stderr")))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()?;
        Ok(Self {
            child,
            name: name.to_string(),
            log_dir: log_dir.to_path_buf(),
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: Signal) {
        // A pid from a live `Child` always fits in i32.
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits in i32"));
        kill(pid, signal).expect("send signal");
    }

    /// Waits up to `limit` for the child to exit.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("{}.stderr", self.name)))
            .unwrap_or_default()
    }

    /// What the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("{}.stdout", self.name)))
            .unwrap_or_default()
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills, when dropped, every process whose working directory lies under
/// `root`: Drasi servers outlive their workers by design, so a failing
/// test must not leave them behind.
pub struct Reaper(pub std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
                if cwd.starts_with(&self.0) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}
