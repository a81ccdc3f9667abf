//! The event feed from a cursor: every kept event after it, then the live
//! ones, none twice. The server-sent event stream (`GET /api/events`) and
//! the reconciler built into the control plane both follow it.

use draas_core::messages::EVENT_CHANNELS;
use draas_core::ports::{BusError, EventStream};
use futures::StreamExt;

use super::ControlPlane;
use crate::error::{ApiError, ApiResult};

/// Events replayed per page when a follower resumes.
const RESUME_PAGE: usize = 1000;
/// Most events replayed to a resuming follower (the bus keeps 10,000).
const RESUME_LIMIT: usize = 20_000;

impl ControlPlane {
    /// Every event published after cursor `after` that the bus still
    /// keeps, then every live one (from now when `after` is `None`). A
    /// cursor the bus never gave out is `400 INVALID_CURSOR`.
    pub async fn events_after(&self, after: Option<&str>) -> ApiResult<EventStream> {
        // Subscribe before replaying, so nothing published in between is
        // lost; what both deliver is passed on once (by event id).
        let live = self.bus().subscribe(&EVENT_CHANNELS).await?;
        let mut missed = Vec::new();
        if let Some(after) = after {
            let mut after = after.to_string();
            loop {
                let page = self
                    .bus()
                    .replay_events(Some(&after), RESUME_PAGE)
                    .await
                    .map_err(|e| match e {
                        BusError::InvalidCursor(_) => {
                            ApiError::bad_request("INVALID_CURSOR", format!("Last-Event-ID: {e}"))
                        }
                        other => other.into(),
                    })?;
                let full = page.len() == RESUME_PAGE;
                if let Some(last) = page.last() {
                    after.clone_from(&last.cursor);
                }
                missed.extend(page);
                if !full || missed.len() >= RESUME_LIMIT {
                    break;
                }
            }
        }
        let replayed: std::collections::HashSet<uuid::Uuid> =
            missed.iter().map(|e| e.envelope.id).collect();
        let live = live.filter(move |e| {
            let fresh = !replayed.contains(&e.envelope.id);
            async move { fresh }
        });
        Ok(futures::stream::iter(missed).chain(live).boxed())
    }
}
