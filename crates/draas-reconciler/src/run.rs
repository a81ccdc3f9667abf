//! The reconciler's loop: plans an instance whenever an event names it,
//! when a wait it planned ends, and on a periodic full pass that catches
//! anything an event missed; executes what the plan says, one step per
//! instance at a time, and only while it holds the lease.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use draas_core::instance::{Instance, InstanceId};
use draas_core::messages::StatusChange;
use futures::StreamExt;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{delay_queue, DelayQueue};
use tracing::{debug, info, warn};

use crate::client::ClientError;
use crate::cursor::{follow_events, CursorFile, Named};
use crate::lease::hold_lease;
use crate::plan::{plan, Action, Decision, PlanSettings};
use crate::port::ControlPlanePort;

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
    /// This reconciler's name in the lease.
    pub holder: String,
    /// How long a lease term lasts unless renewed (renewed every third of
    /// it): the longest a dead holder blocks its successor.
    pub lease_ttl: Duration,
    /// Where the event cursor is kept across restarts (a reconciler run
    /// alone); `None` keeps it in memory.
    pub cursor_file: Option<PathBuf>,
}

impl Default for ReconcilerSettings {
    fn default() -> Self {
        Self {
            full_pass_every: Duration::from_secs(10),
            plan: PlanSettings::default(),
            concurrency: 16,
            reconnect_after: Duration::from_millis(500),
            holder: format!("reconciler-{}", std::process::id()),
            lease_ttl: Duration::from_secs(10),
            cursor_file: None,
        }
    }
}

/// How often a changed cursor is written to its file.
const SAVE_CURSOR_EVERY: Duration = Duration::from_millis(500);

/// Runs the reconciler against the control plane `client` until
/// `shutdown`.
pub async fn run(
    client: Arc<dyn ControlPlanePort>,
    settings: ReconcilerSettings,
    shutdown: CancellationToken,
) {
    let cursor_file = settings.cursor_file.clone().map(CursorFile::new);
    let saved = match &cursor_file {
        Some(file) => file.load().await,
        None => None,
    };
    if let Some(cursor) = &saved {
        info!(%cursor, "the reconciler resumes the event stream from its saved cursor");
    }
    let (lease_tx, mut lease) = watch::channel(None::<u64>);
    let lease_task = tokio::spawn(hold_lease(
        client.clone(),
        settings.holder.clone(),
        settings.lease_ttl,
        lease_tx,
        shutdown.clone(),
    ));
    let (named, mut names) = mpsc::unbounded_channel::<Named>();
    let events = tokio::spawn(follow_events(
        client.clone(),
        saved.clone(),
        named,
        settings.reconnect_after,
        shutdown.clone(),
    ));
    let mut state = Loop {
        client: client.clone(),
        settings: settings.clone(),
        permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
        timers: DelayQueue::new(),
        timer_keys: HashMap::new(),
        busy: HashSet::new(),
        steps: JoinSet::new(),
        fence: None,
        unplanned: HashSet::new(),
        known: HashMap::new(),
    };
    let every = settings.full_pass_every;
    let mut full_pass = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    full_pass.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut save = tokio::time::interval(SAVE_CURSOR_EVERY);
    save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cursor = saved.clone();
    let mut unsaved = false;
    // The first term after a start with a saved cursor needs no full pass:
    // the stream replays every change since (the periodic pass follows).
    let mut resume_from_cursor = saved.is_some();
    info!(every = ?every, holder = %settings.holder, "the reconciler runs");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Ok(()) = lease.changed() => {
                let fence = *lease.borrow_and_update();
                let was = std::mem::replace(&mut state.fence, fence);
                match (was, fence) {
                    (None, Some(token)) => {
                        info!(token, "this reconciler holds the lease: it acts");
                        let named = std::mem::take(&mut state.unplanned);
                        if std::mem::take(&mut resume_from_cursor) {
                            for id in named {
                                state.look_at(id).await;
                            }
                        } else {
                            state.full_pass().await;
                        }
                    }
                    (Some(_), None) => {
                        info!("this reconciler lost the lease: it only watches");
                        state.forget_all();
                    }
                    _ => {}
                }
            }
            _ = full_pass.tick() => state.full_pass().await,
            Some(Named { instance, cursor: seen, change }) = names.recv() => {
                state.on_event(instance, change).await;
                if seen.is_some() {
                    cursor = seen;
                    unsaved = true;
                }
            }
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
            _ = save.tick(), if unsaved => {
                if let (Some(file), Some(at)) = (&cursor_file, &cursor) {
                    file.save(at).await;
                }
                unsaved = false;
            }
        }
    }
    events.abort();
    state.steps.abort_all();
    if let (Some(file), Some(at)) = (&cursor_file, &cursor) {
        file.save(at).await;
    }
    lease_task.abort();
    if state.fence.is_some() {
        // Hand over at once rather than after the lease runs out.
        if let Err(e) = client.release_lease(&settings.holder).await {
            debug!("reconciler: could not release the lease: {e}");
        }
    }
}

struct Loop {
    client: Arc<dyn ControlPlanePort>,
    settings: ReconcilerSettings,
    permits: Arc<Semaphore>,
    timers: DelayQueue<String>,
    timer_keys: HashMap<String, delay_queue::Key>,
    /// Instances with a step in flight (planned again when it ends).
    busy: HashSet<String>,
    steps: JoinSet<String>,
    /// The lease's fencing token while this reconciler holds it.
    fence: Option<u64>,
    /// Instances events named while this reconciler did not hold the
    /// lease: planned when it gets it after resuming from a cursor (else a
    /// full pass covers them).
    unplanned: HashSet<String>,
    /// Each instance as last read (by a full pass or a look), so that a
    /// crash can be answered from its event without reading it again.
    known: HashMap<String, Instance>,
}

impl Loop {
    /// Plans every instance.
    async fn full_pass(&mut self) {
        if self.fence.is_none() {
            return;
        }
        self.unplanned.clear();
        match self.client.instances().await {
            Ok(all) => {
                // What is not listed any more is not kept either.
                self.known.clear();
                for instance in all {
                    self.consider(instance);
                }
            }
            Err(e) => warn!("reconciler: full pass skipped: {e}"),
        }
    }

    /// Plans the instance an event named. A crash of an instance read a
    /// moment ago is answered from the event (the copy read then, with the
    /// new status): that spares a read of the instance on the way to the
    /// restart. The control plane checks the step against the instance as
    /// stored (state, restarts in a row, restart policy), so a copy that is
    /// out of date only costs a refused step and a fresh read. Anything
    /// else is read first.
    async fn on_event(&mut self, id: String, change: Option<StatusChange>) {
        if self.fence.is_some() && !self.busy.contains(&id) {
            let known = self.known.get(&id).cloned();
            if let Some(instance) = known.zip(change).and_then(|(i, c)| with_change(i, &c)) {
                let restart = plan(&instance, Utc::now(), &self.settings.plan);
                if matches!(restart, Decision::Act(Action::Recover { .. })) {
                    self.consider(instance);
                    return;
                }
            }
        }
        self.look_at(id).await;
    }

    /// Reads instance `id` and plans it.
    async fn look_at(&mut self, id: String) {
        if self.fence.is_none() {
            self.unplanned.insert(id);
            return;
        }
        if self.busy.contains(&id) {
            return;
        }
        match self.client.instance(&id).await {
            Ok(instance) => self.consider(instance),
            Err(ClientError::Gone(_)) => {
                self.known.remove(&id);
                self.forget(&id);
            }
            Err(e) => debug!(instance = %id, "reconciler: cannot read it: {e}"),
        }
    }

    fn forget(&mut self, id: &str) {
        if let Some(key) = self.timer_keys.remove(id) {
            self.timers.remove(&key);
        }
    }

    fn forget_all(&mut self) {
        self.timers.clear();
        self.timer_keys.clear();
    }

    /// Plans `instance` and starts its step, or its wait.
    fn consider(&mut self, instance: Instance) {
        let id = instance.id.as_str().to_string();
        self.known.insert(id.clone(), instance.clone());
        let Some(fence) = self.fence else { return };
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
                    execute(client.as_ref(), &instance_id, &action, fence).await;
                    id
                });
            }
        }
    }
}

/// `instance` with its status as `change` says, if the change is not older
/// than what the copy saw.
fn with_change(mut instance: Instance, change: &StatusChange) -> Option<Instance> {
    if change.instance_id != instance.id || change.timestamp < instance.status.updated_at {
        return None;
    }
    let status = &mut instance.status;
    status.state = change.new;
    status.reason = change.reason;
    status.message.clone_from(&change.message);
    status.observed_generation = change.generation;
    status.updated_at = change.timestamp;
    Some(instance)
}

async fn execute(client: &dyn ControlPlanePort, id: &InstanceId, action: &Action, fence: u64) {
    match client.act(id, action, Some(fence)).await {
        Ok(()) => info!(instance = %id, ?action, fence, "reconciled"),
        // Someone acted first: the next plan starts from what they did.
        Err(ClientError::Stale(detail)) => debug!(instance = %id, "plan overtaken: {detail}"),
        Err(ClientError::Gone(_)) => {}
        // The lease moved on: the new holder acts.
        Err(ClientError::Refused { code, detail, .. }) if code == "STALE_FENCE" => {
            warn!(instance = %id, "step refused, this reconciler's lease has moved on: {detail}")
        }
        // The step failed (the server did not start, no live worker): the
        // record says so, and the next plan answers it.
        Err(e) => warn!(instance = %id, ?action, "reconcile step failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{instance, later as at};
    use chrono::DateTime;
    use draas_core::instance::{ActualState, DesiredState, Reason};

    fn running() -> Instance {
        instance(DesiredState::Running, ActualState::Running)
    }

    fn crash(instance: &Instance, when: DateTime<Utc>) -> StatusChange {
        StatusChange {
            cursor: 7,
            instance_id: instance.id.clone(),
            old: Some(ActualState::Running),
            new: ActualState::Failed,
            reason: Some(Reason::KilledBySignal),
            message: Some("the server was killed by signal 9 (SIGKILL)".into()),
            source: "w1".into(),
            generation: 1,
            timestamp: when,
        }
    }

    #[test]
    fn a_crash_event_turns_the_known_copy_into_one_the_planner_restarts() {
        let known = running();
        let settings = PlanSettings::default();
        assert_eq!(plan(&known, at(10), &settings), Decision::Nothing);
        let crashed = with_change(known.clone(), &crash(&known, at(5))).expect("newer");
        assert_eq!(crashed.status.state, ActualState::Failed);
        assert_eq!(crashed.status.reason, Some(Reason::KilledBySignal));
        assert_eq!(crashed.status.updated_at, at(5));
        assert_eq!(
            plan(&crashed, at(10), &settings),
            Decision::Act(Action::Recover { restarts: 0 })
        );
    }

    #[test]
    fn an_older_change_or_another_instances_is_not_applied() {
        let mut known = running();
        known.status.updated_at = at(100);
        assert!(with_change(known.clone(), &crash(&known, at(50))).is_none());
        let other = running();
        assert!(with_change(known, &crash(&other, at(200))).is_none());
    }
}
