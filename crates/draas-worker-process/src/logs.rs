//! Server output files: where they are, reading their tail, rotating them.
//!
//! A server's stdout and stderr are opened by the worker in append mode and
//! handed to the server directly (not through pipes), so the server keeps
//! writing when its worker restarts. That rules out a rotating writer in the
//! worker; instead rotation is *copy-truncate*: the file is copied to
//! `<name>.1` (older copies shift to `.2`, ...) and truncated in place. An
//! append-mode writer continues at the new end, losing at most the lines
//! written between copy and truncate.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use draas_core::messages::LogStream;

/// Where a server's output goes.
#[derive(Debug, Clone)]
pub struct LogFiles {
    dir: PathBuf,
}

impl LogFiles {
    /// Output files under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The current file of `stream`.
    pub fn path(&self, stream: LogStream) -> PathBuf {
        self.dir.join(match stream {
            LogStream::Stdout => "stdout.log",
            LogStream::Stderr => "stderr.log",
        })
    }

    /// Opens `stream`'s file for appending (for the server).
    pub fn open_for_server(&self, stream: LogStream) -> std::io::Result<File> {
        fs::create_dir_all(&self.dir)?;
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(stream))
    }

    /// The last `lines` lines of `stream` (reading into the previous file
    /// when the current one is shorter).
    pub fn tail(&self, stream: LogStream, lines: usize) -> std::io::Result<Vec<String>> {
        let current = self.path(stream);
        let mut out = tail_lines(&current, lines)?;
        if out.len() < lines {
            let previous = rotated(&current, 1);
            if previous.exists() {
                let mut older = tail_lines(&previous, lines - out.len())?;
                older.append(&mut out);
                out = older;
            }
        }
        Ok(out)
    }

    /// Rotates `stream`'s file if it is larger than `max_bytes`, keeping
    /// `keep` old copies.
    pub fn rotate_if_larger(
        &self,
        stream: LogStream,
        max_bytes: u64,
        keep: usize,
    ) -> std::io::Result<bool> {
        let current = self.path(stream);
        let Ok(meta) = fs::metadata(&current) else {
            return Ok(false);
        };
        if meta.len() <= max_bytes || keep == 0 {
            return Ok(false);
        }
        for n in (1..keep).rev() {
            let from = rotated(&current, n);
            if from.exists() {
                fs::rename(&from, rotated(&current, n + 1))?;
            }
        }
        fs::copy(&current, rotated(&current, 1))?;
        OpenOptions::new().write(true).open(&current)?.set_len(0)?;
        Ok(true)
    }
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Bytes read from the end of a file to find its last lines; enough for
/// thousands of log lines.
const TAIL_WINDOW: u64 = 4 * 1024 * 1024;

fn tail_lines(path: &Path, lines: usize) -> std::io::Result<Vec<String>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        // The first line was cut by the window.
        all.remove(0);
    }
    let from = all.len().saturating_sub(lines);
    Ok(all[from..].iter().map(|l| l.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tail_spans_the_rotated_file_and_rotation_keeps_appending() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogFiles::new(dir.path().to_path_buf());
        let mut out = logs.open_for_server(LogStream::Stdout).unwrap();
        for i in 0..100 {
            writeln!(out, "line {i}").unwrap();
        }
        assert!(logs.rotate_if_larger(LogStream::Stdout, 10, 3).unwrap());
        // The same append-mode handle keeps writing into the truncated file.
        for i in 100..103 {
            writeln!(out, "line {i}").unwrap();
        }
        let tail = logs.tail(LogStream::Stdout, 5).unwrap();
        assert_eq!(
            tail,
            vec!["line 98", "line 99", "line 100", "line 101", "line 102"]
        );
        assert!(!logs
            .rotate_if_larger(LogStream::Stdout, 1_000_000, 3)
            .unwrap());
        assert_eq!(
            logs.tail(LogStream::Stderr, 5).unwrap(),
            Vec::<String>::new()
        );
    }
}
