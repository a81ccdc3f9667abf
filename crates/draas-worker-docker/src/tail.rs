//! The last lines each running container wrote to its error output, kept
//! as it writes them.
//!
//! Why: a crashed server's last words go into its `Failed` status, and the
//! restart waits for that status. Asked for them after the `die` event,
//! the engine answers only once it has finished handling the exit
//! (unmounting, releasing the network: about 90 ms on the benchmark
//! machine), which held up every restart. Following the output while the
//! container runs (one streaming request per container, to the engine the
//! worker already talks to) makes them known the moment the exit is.
//!
//! A container that is not followed (the follow could not be opened) is
//! asked the old way; a server failing to start is too (that path is not
//! waiting on a restart, and startup errors may be on the standard output).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use tokio::task::AbortHandle;
use tracing::debug;

/// Lines kept per container (as many as a crash report shows).
pub const KEPT_LINES: usize = 10;

type Lines = Arc<Mutex<VecDeque<String>>>;

struct Followed {
    lines: Lines,
    task: AbortHandle,
}

/// The followed containers of one driver.
#[derive(Clone, Default)]
pub struct Tails {
    followed: Arc<Mutex<HashMap<String, Followed>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections are single map or queue operations.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds the lines of `chunk` to `lines`, keeping the last [`KEPT_LINES`].
fn keep(lines: &Mutex<VecDeque<String>>, chunk: &[u8]) {
    let text = String::from_utf8_lossy(chunk);
    let mut lines = lock(lines);
    for line in text.lines() {
        if lines.len() == KEPT_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_string());
    }
}

impl Tails {
    /// Starts following `container`'s error output (from its last
    /// [`KEPT_LINES`] lines on), until it ends or [`forget`](Self::forget).
    pub fn follow(&self, docker: &Docker, container: &str) {
        let lines: Lines = Arc::default();
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(false)
            .stderr(true)
            .tail(&KEPT_LINES.to_string())
            .build();
        let mut output = docker.logs(container, Some(options));
        let kept = lines.clone();
        let id = container.to_string();
        let task = tokio::spawn(async move {
            while let Some(next) = output.next().await {
                match next {
                    Ok(chunk) => keep(&kept, chunk.as_ref()),
                    Err(e) => {
                        debug!(container = %id, "following the container's output ended: {e}");
                        return;
                    }
                }
            }
        });
        let replaced = lock(&self.followed).insert(
            container.to_string(),
            Followed {
                lines,
                task: task.abort_handle(),
            },
        );
        if let Some(old) = replaced {
            old.task.abort();
        }
    }

    /// The last lines `container` wrote to its error output, if it is
    /// followed.
    pub fn last_lines(&self, container: &str) -> Option<Vec<String>> {
        let followed = lock(&self.followed);
        let lines = lock(&followed.get(container)?.lines)
            .iter()
            .cloned()
            .collect();
        Some(lines)
    }

    /// Stops following `container`.
    pub fn forget(&self, container: &str) {
        if let Some(old) = lock(&self.followed).remove(container) {
            old.task.abort();
        }
    }

    /// Stops following every container.
    pub fn forget_all(&self) {
        for (_, old) in lock(&self.followed).drain() {
            old.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_lines_are_kept_across_chunks() {
        let lines = Mutex::new(VecDeque::new());
        keep(&lines, b"one\ntwo\n");
        assert_eq!(lock(&lines).len(), 2);
        let many: String = (0..15).map(|i| format!("line {i}\n")).collect();
        keep(&lines, many.as_bytes());
        let kept: Vec<String> = lock(&lines).iter().cloned().collect();
        assert_eq!(kept.len(), KEPT_LINES);
        assert_eq!(kept.first().map(String::as_str), Some("line 5"));
        assert_eq!(kept.last().map(String::as_str), Some("line 14"));
        keep(&lines, "not utf-8: \u{fffd}\n".as_bytes());
        assert_eq!(
            lock(&lines).back().map(String::as_str),
            Some("not utf-8: \u{fffd}")
        );
    }
}
