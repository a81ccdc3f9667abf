//! Holding the reconciler lease: claim it, renew it every third of its
//! term, and say at every moment whether this reconciler may act (with
//! the term's fencing token) or only watch.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::port::ControlPlanePort;

/// Claims and renews the lease for `holder` until `shutdown`, publishing
/// the fencing token while it holds, `None` otherwise.
pub async fn hold_lease(
    client: Arc<dyn ControlPlanePort>,
    holder: String,
    ttl: Duration,
    token: watch::Sender<Option<u64>>,
    shutdown: CancellationToken,
) {
    let renew_every = (ttl / 3).max(Duration::from_millis(200));
    // Until when the last granted term surely lasts, by this clock: from
    // before the request was sent, so never later than the control plane
    // thinks.
    let mut held_until: Option<Instant> = None;
    loop {
        let asked_at = Instant::now();
        match client.claim_lease(&holder, ttl).await {
            Ok(Some(lease)) => {
                held_until = Some(asked_at + ttl);
                token.send_if_modified(|current| replace(current, Some(lease.token)));
            }
            Ok(None) => {
                held_until = None;
                token.send_if_modified(|current| replace(current, None));
            }
            Err(e) => {
                debug!("reconciler: cannot renew the lease: {e}");
                if held_until.is_some_and(|until| Instant::now() >= until) {
                    warn!("reconciler: the lease ran out while the control plane was unreachable");
                    held_until = None;
                    token.send_if_modified(|current| replace(current, None));
                }
            }
        }
        // Wake to renew, or to drop the lease when it runs out unrenewed.
        let mut wake = Instant::now() + renew_every;
        if let Some(until) = held_until {
            wake = wake.min(until);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

fn replace(current: &mut Option<u64>, new: Option<u64>) -> bool {
    if *current == new {
        return false;
    }
    *current = new;
    true
}
