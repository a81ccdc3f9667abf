//! The Process platform's part of a server record: what a worker needs to
//! find a server process again (possibly another worker of the same host,
//! after the first one died), and where its files are.

use std::path::{Path, PathBuf};

use draas_core::instance::InstanceId;
use serde::{Deserialize, Serialize};

/// One server process and its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRecord {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22):
    /// together with the pid it identifies the process; a reused pid has
    /// another start time.
    pub start_time: u64,
    /// The server's working directory (`./data`, `logs/`). Recorded, not
    /// derived: a worker that adopts the server finds its files where the
    /// launching worker put them.
    pub workdir: PathBuf,
    /// The rendered configuration file.
    pub config: PathBuf,
    /// The executable.
    pub executable: PathBuf,
}

impl ProcessRecord {
    /// Whether the recorded paths are where a Process worker puts an
    /// instance's files (`.../instances/<id>`, `.../configs/<id>-config.yaml`,
    /// absolute, no `..`): records live in a shared store, so nothing is
    /// deleted on a record's word alone.
    pub fn paths_are_plausible(&self, id: &InstanceId) -> bool {
        let clean = |p: &Path| {
            p.is_absolute()
                && p.components()
                    .all(|c| !matches!(c, std::path::Component::ParentDir))
        };
        let workdir_ok = clean(&self.workdir)
            && self.workdir.file_name() == Some(id.as_str().as_ref())
            && self
                .workdir
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "instances");
        let config_ok = clean(&self.config)
            && self.config.file_name() == Some(format!("{id}-config.yaml").as_ref())
            && self
                .config
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "configs");
        workdir_ok && config_ok
    }
}

/// The start time of `pid`, or `None` when no such process exists. A
/// zombie (exited, not yet reaped) still has one.
pub fn start_time_of(pid: u32) -> Option<u64> {
    stat_of(pid).map(|s| s.starttime)
}

/// The start time of `pid` if it is alive: `None` for a missing process
/// and for a zombie (it exited; only its parent has not collected it yet).
pub fn live_start_time_of(pid: u32) -> Option<u64> {
    stat_of(pid)
        .filter(|s| s.state != 'Z' && s.state != 'X')
        .map(|s| s.starttime)
}

fn stat_of(pid: u32) -> Option<procfs::process::Stat> {
    let pid = i32::try_from(pid).ok()?;
    procfs::process::Process::new(pid).ok()?.stat().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_shaped_like_an_instances_files_are_trusted() {
        let id: InstanceId = "i-abc".parse().unwrap();
        let good = ProcessRecord {
            pid: 1,
            start_time: 1,
            workdir: "/var/lib/draas/process/instances/i-abc".into(),
            config: "/var/lib/draas/process/configs/i-abc-config.yaml".into(),
            executable: "/usr/bin/draas-runtime".into(),
        };
        assert!(good.paths_are_plausible(&id));
        for (workdir, config) in [
            ("/", "/var/lib/draas/process/configs/i-abc-config.yaml"),
            (
                "/home/user",
                "/var/lib/draas/process/configs/i-abc-config.yaml",
            ),
            (
                "/x/instances/../../etc/instances/i-abc",
                "/x/configs/i-abc-config.yaml",
            ),
            ("relative/instances/i-abc", "/x/configs/i-abc-config.yaml"),
            ("/x/instances/i-abc", "/etc/passwd"),
            ("/x/instances/i-other", "/x/configs/i-abc-config.yaml"),
        ] {
            let bad = ProcessRecord {
                workdir: workdir.into(),
                config: config.into(),
                ..good.clone()
            };
            assert!(!bad.paths_are_plausible(&id), "{workdir} {config}");
        }
    }
}
