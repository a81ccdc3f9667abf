//! The reconciler's loop: plans an instance whenever an event names it,
//! when a wait it planned ends, and on a periodic full pass that catches
//! anything an event missed; executes what the plan says, one step per
//! instance at a time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use draas_core::instance::{Instance, InstanceId};
use futures::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{delay_queue, DelayQueue};
use tracing::{debug, info, warn};

use crate::client::{ClientError, ControlPlaneClient};
use crate::plan::{plan, Action, Decision, PlanSettings};

/// Settings of a reconciler.
#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    /// How often every instance is planned, whatever the events said.
    pub full_pass_every: Duration,
    /// The planner's settings.
    pub plan: PlanSettings,
    /// Steps executed at once (starts wait for readiness).
    pub concurrency: usize,
    /// The wait before reconnecting a lost event stream.
    pub reconnect_after: Duration,
}

impl Default for ReconcilerSettings {
    fn default() -> Self {
        Self {
            full_pass_every: Duration::from_secs(10),
            plan: PlanSettings::default(),
            concurrency: 16,
            reconnect_after: Duration::from_millis(500),
        }
    }
}

/// Runs the reconciler against `client` until `shutdown`.
pub async fn run(
    client: ControlPlaneClient,
    settings: ReconcilerSettings,
    shutdown: CancellationToken,
) {
    let (named, mut names) = mpsc::unbounded_channel::<String>();
    let events = tokio::spawn(follow_events(
        client.clone(),
        named.clone(),
        settings.reconnect_after,
        shutdown.clone(),
    ));
    let mut state = Loop {
        client,
        settings: settings.clone(),
        permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
        timers: DelayQueue::new(),
        timer_keys: HashMap::new(),
        busy: HashSet::new(),
        steps: JoinSet::new(),
    };
    let mut full_pass = tokio::time::interval(settings.full_pass_every);
    full_pass.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        every = ?settings.full_pass_every,
        "the reconciler runs"
    );
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = full_pass.tick() => match state.client.instances().await {
                Ok(all) => {
                    for instance in all {
                        state.consider(instance);
                    }
                }
                Err(e) => warn!("reconciler: full pass skipped: {e}"),
            },
            Some(id) = names.recv() => state.look_at(id).await,
            Some(expired) = state.timers.next() => {
                let id = expired.into_inner();
                state.timer_keys.remove(&id);
                state.look_at(id).await;
            }
            Some(done) = state.steps.join_next() => {
                if let Ok(id) = done {
                    state.busy.remove(&id);
                    // Its outcome is planned at once (the next restart of a
                    // crash loop, say), and so are events that came meanwhile.
                    state.look_at(id).await;
                }
            }
        }
    }
    events.abort();
    state.steps.abort_all();
}

struct Loop {
    client: ControlPlaneClient,
    settings: ReconcilerSettings,
    permits: Arc<Semaphore>,
    timers: DelayQueue<String>,
    timer_keys: HashMap<String, delay_queue::Key>,
    /// Instances with a step in flight (planned again when it ends).
    busy: HashSet<String>,
    steps: JoinSet<String>,
}

impl Loop {
    /// Reads instance `id` and plans it.
    async fn look_at(&mut self, id: String) {
        if self.busy.contains(&id) {
            return;
        }
        match self.client.instance(&id).await {
            Ok(instance) => self.consider(instance),
            Err(ClientError::Gone(_)) => self.forget(&id),
            Err(e) => debug!(instance = %id, "reconciler: cannot read it: {e}"),
        }
    }

    fn forget(&mut self, id: &str) {
        if let Some(key) = self.timer_keys.remove(id) {
            self.timers.remove(&key);
        }
    }

    /// Plans `instance` and starts its step, or its wait.
    fn consider(&mut self, instance: Instance) {
        let id = instance.id.as_str().to_string();
        if self.busy.contains(&id) {
            return;
        }
        let now = Utc::now();
        match plan(&instance, now, &self.settings.plan) {
            Decision::Nothing => self.forget(&id),
            Decision::WaitUntil(at) => {
                let wait = (at - now).to_std().unwrap_or(Duration::ZERO);
                match self.timer_keys.get(&id) {
                    Some(key) => self.timers.reset(key, wait),
                    None => {
                        let key = self.timers.insert(id.clone(), wait);
                        self.timer_keys.insert(id, key);
                    }
                }
            }
            Decision::Act(action) => {
                self.forget(&id);
                self.busy.insert(id.clone());
                let client = self.client.clone();
                let permits = self.permits.clone();
                let instance_id = instance.id.clone();
                self.steps.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    execute(&client, &instance_id, &action).await;
                    id
                });
            }
        }
    }
}

async fn execute(client: &ControlPlaneClient, id: &InstanceId, action: &Action) {
    match client.act(id, action).await {
        Ok(()) => info!(instance = %id, ?action, "reconciled"),
        // Someone acted first: the next plan starts from what they did.
        Err(ClientError::Stale(detail)) => debug!(instance = %id, "plan overtaken: {detail}"),
        Err(ClientError::Gone(_)) => {}
        // The step failed (the server did not start, no live worker): the
        // record says so, and the next plan answers it.
        Err(e) => warn!(instance = %id, ?action, "reconcile step failed: {e}"),
    }
}

/// Feeds the ids of instances named by events into `named`, reconnecting
/// (from the last cursor seen) whenever the stream ends.
async fn follow_events(
    client: ControlPlaneClient,
    named: mpsc::UnboundedSender<String>,
    reconnect_after: Duration,
    shutdown: CancellationToken,
) {
    let mut cursor: Option<String> = None;
    while !shutdown.is_cancelled() {
        match client.instance_events(cursor.as_deref()).await {
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        next = stream.next() => match next {
                            Some((id, seen)) => {
                                if seen.is_some() {
                                    cursor = seen;
                                }
                                if named.send(id).is_err() {
                                    return;
                                }
                            }
                            None => break,
                        }
                    }
                }
            }
            Err(ClientError::Refused { code, .. }) if code == "INVALID_CURSOR" => {
                // The cursor is older than the kept history: start from now
                // (the full pass covers the gap).
                cursor = None;
            }
            Err(e) => debug!("reconciler: event stream: {e}"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(reconnect_after) => {}
        }
    }
}
