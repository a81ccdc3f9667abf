//! What the driver persists per running server, so a restarted worker can
//! find, verify and re-adopt it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One running server process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRecord {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22):
    /// together with the pid it identifies the process; a reused pid has
    /// another start time.
    pub start_time: u64,
    /// Host the server's API listens on.
    pub api_host: String,
    /// The server's API port.
    pub api_port: u16,
    /// Configuration generation it runs.
    pub generation: u64,
    /// When it was launched.
    pub started_at: DateTime<Utc>,
    /// The executable.
    pub executable: String,
    /// The worker that runs it. Another worker on the host adopts it only
    /// when this one stopped heartbeating.
    #[serde(default)]
    pub worker_id: String,
}

/// The start time of `pid`, or `None` when no such process exists.
pub fn start_time_of(pid: u32) -> Option<u64> {
    let pid = i32::try_from(pid).ok()?;
    procfs::process::Process::new(pid)
        .ok()?
        .stat()
        .ok()
        .map(|s| s.starttime)
}
