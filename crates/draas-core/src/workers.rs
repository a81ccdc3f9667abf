//! Which workers are alive: the one reading of the heartbeat records,
//! shared by the control plane (routing, the watchdog) and the workers
//! (ownership takeover).

use chrono::{DateTime, Utc};

use crate::instance::PlatformType;
use crate::keys;
use crate::messages::WorkerInfo;
use crate::ports::store::{JsonStore, StateStore, StoreError};

/// Workers (of `platform`, or of every platform) whose heartbeat has not
/// expired at `now`.
pub async fn live_workers<S: StateStore + ?Sized>(
    store: &S,
    platform: Option<PlatformType>,
    now: DateTime<Utc>,
) -> Result<Vec<WorkerInfo>, StoreError> {
    Ok(store
        .list_json::<WorkerInfo>(keys::WORKERS)
        .await?
        .into_iter()
        .map(|(_, record)| record.value)
        .filter(|w| w.is_live(now) && platform.is_none_or(|p| w.platform == p))
        .collect())
}

/// Whether worker `worker_id` is alive at `now`.
pub async fn is_live<S: StateStore + ?Sized>(
    store: &S,
    worker_id: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    Ok(store
        .get_json::<WorkerInfo>(keys::WORKERS, worker_id)
        .await?
        .is_some_and(|record| record.value.is_live(now)))
}
