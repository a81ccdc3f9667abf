//! Where a server's files are, and writing and removing them. All of it is
//! blocking file I/O: callers run it on the blocking pool.
//!
//! ```text
//! <root>/configs/<id>-config.yaml        rendered configuration (mode 0600)
//! <root>/instances/<id>/                 working directory (./data/... of Drasi)
//! <root>/instances/<id>/logs/stdout.log  output, rotated by copy-truncate
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use draas_core::instance::{ActualState, InstanceId, Reason};
use draas_core::messages::{ErrorCode, LogStream};
use draas_core::ports::DriverError;

use crate::logs::LogFiles;

/// The files of one worker's instances, under its root.
#[derive(Debug, Clone)]
pub struct Files {
    root: PathBuf,
}

/// What a server needs on disk before it is launched.
pub struct Prepared {
    /// The executable, resolved and checked.
    pub executable: PathBuf,
    /// The working directory.
    pub workdir: PathBuf,
    /// The written configuration.
    pub config: PathBuf,
    /// Its stdout file, opened for appending.
    pub stdout: File,
    /// Its stderr file, opened for appending.
    pub stderr: File,
    /// Where those files are.
    pub logs: LogFiles,
}

fn failed(what: &str, e: std::io::Error) -> DriverError {
    DriverError::new(ErrorCode::PlatformError, format!("{what}: {e}"))
        .with_state(ActualState::Failed, Reason::PlatformError)
}

impl Files {
    /// Files under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The working directory this worker gives instance `id`.
    pub fn workdir(&self, id: &InstanceId) -> PathBuf {
        self.root.join("instances").join(id.as_str())
    }

    /// The configuration file this worker writes for instance `id`.
    pub fn config_path(&self, id: &InstanceId) -> PathBuf {
        self.root
            .join("configs")
            .join(format!("{}-config.yaml", id.as_str()))
    }

    /// Writes everything instance `id` needs to run `executable` with
    /// `yaml`, and opens its output files.
    pub fn prepare(
        &self,
        id: &InstanceId,
        executable: PathBuf,
        yaml: &str,
    ) -> Result<Prepared, DriverError> {
        let workdir = self.workdir(id);
        std::fs::create_dir_all(&workdir)
            .map_err(|e| failed("cannot create the working directory", e))?;
        let config = self.config_path(id);
        write_private(&config, yaml).map_err(|e| failed("cannot write the configuration", e))?;
        let logs = LogFiles::new(workdir.join("logs"));
        let stdout = logs
            .open_for_server(LogStream::Stdout)
            .map_err(|e| failed("cannot open the output file", e))?;
        let stderr = logs
            .open_for_server(LogStream::Stderr)
            .map_err(|e| failed("cannot open the output file", e))?;
        Ok(Prepared {
            executable,
            workdir,
            config,
            stdout,
            stderr,
            logs,
        })
    }
}

/// Writes `text` to `path` atomically (temp file + rename), mode 0600: a
/// configuration may hold credentials. A file that already holds exactly
/// `text`, private, is left as it is: a restart of the same generation
/// (the reconciler's, after a crash) then costs no fsync on its way to the
/// spawn.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    if let (Ok(metadata), Ok(current)) = (std::fs::metadata(path), std::fs::read(path)) {
        if metadata.permissions().mode() & 0o777 == 0o600 && current == text.as_bytes() {
            return Ok(());
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(text.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The executable to run for `requested` (the default when `None`), if it
/// exists, is executable and, when requested, is on the allow-list.
pub fn resolve_executable(
    default: &Path,
    allowed: &[PathBuf],
    requested: Option<&str>,
) -> Result<PathBuf, DriverError> {
    let not_allowed = |message: String| {
        DriverError::new(ErrorCode::ExecutableNotAllowed, message)
            .with_state(ActualState::Failed, Reason::ExecutableMissing)
    };
    let path = match requested {
        None => default.to_path_buf(),
        Some(p) => PathBuf::from(p),
    };
    let canonical = std::fs::canonicalize(&path)
        .map_err(|e| not_allowed(format!("executable {} not found: {e}", path.display())))?;
    if requested.is_some() {
        let allowed = std::iter::once(default)
            .chain(allowed.iter().map(PathBuf::as_path))
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

/// Removes a working directory and a configuration file (absent is fine).
pub fn remove(workdir: &Path, config: &Path) -> Result<(), DriverError> {
    let check = |path: &Path, result: std::io::Result<()>| match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DriverError::new(
            ErrorCode::PlatformError,
            format!("cannot remove {}: {e}", path.display()),
        )),
    };
    check(workdir, std::fs::remove_dir_all(workdir))?;
    check(config, std::fs::remove_file(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn configurations_are_private_and_rewritten_only_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("configs").join("x-config.yaml");
        let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

        write_private(&path, "port: 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "port: 1\n");
        assert_eq!(mode(&path), 0o600);
        let first = inode(&path);

        // The same text: the file is left alone.
        write_private(&path, "port: 1\n").unwrap();
        assert_eq!(inode(&path), first);

        // Other text: replaced atomically.
        write_private(&path, "port: 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "port: 2\n");
        assert_ne!(inode(&path), first);

        // The same text in a file others may read: made private again.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "port: 2\n").unwrap();
        assert_eq!(mode(&path), 0o600);
    }
}
