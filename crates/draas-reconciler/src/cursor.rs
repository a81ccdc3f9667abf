//! Following the control plane's event stream from a cursor, and keeping
//! that cursor in a file, so a reconciler that restarts replays every
//! change it has not seen instead of missing them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use draas_core::messages::StatusChange;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::port::ControlPlanePort;
use crate::port::PortError;

/// An instance an event named, with the event's cursor.
#[derive(Debug, Clone)]
pub struct Named {
    /// The instance's id.
    pub instance: String,
    /// The event's cursor (resume after it).
    pub cursor: Option<String>,
    /// The change of its actual state, when the event is one.
    pub change: Option<StatusChange>,
}

/// Longest cursor accepted from a file (they are short stream ids).
const MAX_CURSOR_LEN: usize = 256;

/// A file holding the last cursor a reconciler handled.
#[derive(Debug, Clone)]
pub struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    /// The cursor file at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The saved cursor, if any (an unreadable file is reported and
    /// ignored: the first full pass covers what it would have replayed).
    pub async fn load(&self) -> Option<String> {
        match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => {
                let cursor = text.trim();
                if cursor.is_empty()
                    || cursor.len() > MAX_CURSOR_LEN
                    || !cursor.chars().all(|c| c.is_ascii_graphic())
                {
                    warn!(path = %self.path.display(), "ignoring a cursor file that holds no cursor");
                    return None;
                }
                Some(cursor.to_string())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                warn!(path = %self.path.display(), "cannot read the cursor file: {e}");
                None
            }
        }
    }

    /// Saves `cursor` (write to a temporary file, then rename: a crash
    /// leaves the old cursor or the new one, never half of one).
    pub async fn save(&self, cursor: &str) {
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let written = async {
            tokio::fs::write(&temporary, cursor.as_bytes()).await?;
            tokio::fs::rename(&temporary, &self.path).await
        }
        .await;
        if let Err(e) = written {
            warn!(path = %self.path.display(), "cannot save the event cursor: {e}");
        }
    }
}

/// Feeds the instances named by events into `named`, from `cursor` on
/// (from now when `None`), reconnecting from the last cursor seen whenever
/// the stream ends (the control plane restarted, say). `named` is bounded:
/// a reconciler that falls behind slows the stream down (the control
/// plane keeps the history) instead of queueing without limit.
pub async fn follow_events(
    client: Arc<dyn ControlPlanePort>,
    mut cursor: Option<String>,
    named: mpsc::Sender<Named>,
    reconnect_after: Duration,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        match client.instance_events(cursor.as_deref()).await {
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        next = stream.next() => match next {
                            Some(event) => {
                                if event.cursor.is_some() {
                                    cursor.clone_from(&event.cursor);
                                }
                                if named.send(event).await.is_err() {
                                    return;
                                }
                            }
                            None => break,
                        }
                    }
                }
            }
            Err(PortError::InvalidCursor(_)) => {
                // Older than the kept history (or from another store):
                // start from now; the full pass covers the gap.
                info!("the saved event cursor is no longer known; following from now");
                cursor = None;
                continue;
            }
            Err(e) => debug!("reconciler: event stream: {e}"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(reconnect_after) => {}
        }
    }
}
