//! Heartbeats: the worker's record in the store (which the control plane
//! reads to know which platforms have a live worker) and a
//! `WorkerHeartbeat` event, every interval. Also prunes old
//! executed-command records.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use draas_core::keys;
use draas_core::messages::{Event, EventEnvelope, WorkerInfo};
use draas_core::ports::store::{JsonStore, Precondition, StateStore, StoreError, Write};
use draas_core::ports::{MessageBus, PlatformDriver};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::claims::CommandRecord;
use crate::executor::EXECUTED_RETENTION;
use crate::WorkerSettings;

/// Heartbeats between re-assertions of the running servers' states.
const REASSERT_EVERY: u64 = 10;
/// Heartbeats between prunes of executed-command records.
const PRUNE_EVERY: u64 = 120;

/// One heartbeat: the worker's record and its `WorkerHeartbeat` event.
/// Fails when the record could not be written.
pub(crate) async fn beat(
    settings: &WorkerSettings,
    started_at: DateTime<Utc>,
    driver: &dyn PlatformDriver,
    store: &dyn StateStore,
    bus: &dyn MessageBus,
) -> Result<(), StoreError> {
    let info = WorkerInfo {
        worker_id: settings.worker_id.clone(),
        platform: driver.platform(),
        host: settings.host.clone(),
        scope: driver.scope(),
        platform_version: driver.platform_version(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at,
        last_heartbeat: Utc::now(),
        ttl_seconds: u32::try_from(settings.heartbeat_ttl.as_secs()).unwrap_or(u32::MAX),
        instances: u32::try_from(driver.running().await).unwrap_or(u32::MAX),
        capacity: settings.capacity,
    };
    let recorded = store
        .put_json(
            keys::WORKERS,
            &settings.worker_id,
            &info,
            Precondition::None,
        )
        .await;
    let _ = bus
        .publish(&EventEnvelope::new(Event::WorkerHeartbeat(info)))
        .await;
    recorded.map(|_| ())
}

/// Beats every interval after the worker's first beat (`announced`: whether
/// that one was recorded) until `shutdown`, then withdraws the worker.
pub(crate) async fn run(
    settings: WorkerSettings,
    started_at: DateTime<Utc>,
    announced: bool,
    driver: Arc<dyn PlatformDriver>,
    store: Arc<dyn StateStore>,
    bus: Arc<dyn MessageBus>,
    shutdown: CancellationToken,
) {
    let every = settings.heartbeat_interval;
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    prune_executed(store.as_ref()).await;
    let mut beats: u64 = 1;
    let mut failing = !announced;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        match beat(
            &settings,
            started_at,
            driver.as_ref(),
            store.as_ref(),
            bus.as_ref(),
        )
        .await
        {
            Ok(()) => {
                // After a gap (or now and then, to heal any drift) the
                // control plane hears again what this worker runs.
                if failing || beats.is_multiple_of(REASSERT_EVERY) {
                    driver.reassert().await;
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    warn!("heartbeat not recorded: {e}");
                }
                failing = true;
            }
        }
        if beats.is_multiple_of(PRUNE_EVERY) {
            prune_executed(store.as_ref()).await;
        }
        beats += 1;
    }
    deregister(store.as_ref(), &settings.worker_id).await;
}

/// Removes a worker's record, so the control plane stops sending it
/// commands at once rather than after its heartbeat expires.
pub async fn deregister(store: &dyn StateStore, worker_id: &str) {
    if let Err(e) = store
        .apply(vec![Write::Delete {
            collection: keys::WORKERS.to_string(),
            key: worker_id.to_string(),
            precondition: Precondition::None,
        }])
        .await
    {
        warn!("could not deregister the worker: {e}");
    }
}

async fn prune_executed(store: &dyn StateStore) {
    let cutoff = Utc::now() - chrono::Duration::from_std(EXECUTED_RETENTION).unwrap_or_default();
    let Ok(records) = store
        .list_json::<CommandRecord>(keys::EXECUTED_COMMANDS)
        .await
    else {
        return;
    };
    let old: Vec<Write> = records
        .into_iter()
        .filter(|(_, r)| r.value.claimed_at < cutoff)
        .map(|(key, r)| Write::Delete {
            collection: keys::EXECUTED_COMMANDS.to_string(),
            key,
            precondition: Precondition::Revision(r.revision),
        })
        .collect();
    for write in old {
        // One at a time: a record rewritten meanwhile just stays.
        let _ = store.apply(vec![write]).await;
    }
}
