//! Noticing dead workers: an instance whose worker stopped heartbeating is
//! marked `Unknown` with reason `WorkerUnavailable` where its platform's
//! policy says nobody else can see its server (Process, Docker: only a
//! worker of the same host or engine can). The worker's return (it
//! re-adopts and confirms its servers) or a peer's adoption sets it right
//! again. On Kubernetes a silent worker changes nothing: the Deployment is
//! still there, and any worker of the cluster watches it.
//!
//! Every control-plane replica may run this: recording is idempotent (an
//! observation that changes nothing records nothing).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use draas_core::instance::{ActualState, Reason};
use draas_core::policy::SilentWorker;
use draas_core::ports::Observation;
use draas_core::status::Recorded;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::ApiResult;
use crate::service::ControlPlane;

/// How long after a store outage workers get to heartbeat again.
const OUTAGE_GRACE: Duration = Duration::from_secs(10);

/// States in which a server may be running on its worker.
const ON_A_WORKER: [ActualState; 5] = [
    ActualState::Pending,
    ActualState::Starting,
    ActualState::Running,
    ActualState::Degraded,
    ActualState::Stopping,
];

/// Checks every `every` until `shutdown`.
pub async fn run(control: Arc<ControlPlane>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After the store was unreachable, heartbeats written meanwhile failed
    // too: give workers time to beat again before judging them.
    let mut blind_until = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if tokio::time::Instant::now() < blind_until {
            continue;
        }
        match control.mark_orphans().await {
            Ok(0) => {}
            Ok(n) => info!(instances = n, "marked instances of silent workers Unknown"),
            Err(e) => {
                warn!("worker watchdog: {}", e.detail);
                blind_until = tokio::time::Instant::now() + OUTAGE_GRACE;
            }
        }
    }
}

impl ControlPlane {
    /// Marks the instances of workers that stopped heartbeating; returns
    /// how many changed.
    pub async fn mark_orphans(&self) -> ApiResult<usize> {
        let live: Vec<String> = self
            .live_workers(None)
            .await?
            .into_iter()
            .map(|w| w.worker_id)
            .collect();
        let instances = draas_core::records::list(self.store().as_ref()).await?;
        let mut marked = 0;
        for instance in instances {
            let Some(owner) = instance.runtime.as_ref().map(|r| r.worker_id.clone()) else {
                continue;
            };
            if !ON_A_WORKER.contains(&instance.status.state)
                || live.contains(&owner)
                || instance.platform_type.policy().silent_worker
                    == SilentWorker::LeavesInstancesAlone
            {
                continue;
            }
            let observation = Observation::now(
                instance.id.clone(),
                ActualState::Unknown,
                Some(Reason::WorkerUnavailable),
            )
            .message(format!(
                "worker {owner} stopped heartbeating (checked at {})",
                Utc::now().to_rfc3339()
            ));
            if let Ok(Recorded {
                change: Some(_), ..
            }) = self.recorder().record(observation).await
            {
                marked += 1;
            }
        }
        Ok(marked)
    }
}
