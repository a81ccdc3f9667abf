//! The reconciler's loop: plans an instance whenever an event names it,
//! when a wait it planned ends, and on a periodic full pass that catches
//! anything an event missed; executes what the plan says, one step per
//! instance at a time, and only while it holds the lease.
//!
//! The loop itself never waits for I/O (the shape of kube-runtime's
//! controller runner): reads of instances, steps and cursor saves are
//! tasks whose results come back to it, so a slow full pass never holds up
//! a lease change, a timer or an event. It deduplicates (one read and one
//! step per instance at a time; a read asked for meanwhile follows the one
//! in flight) and delays (planned waits in a timer queue); its queues are
//! bounded (events), a step that panics is logged and planned again later,
//! and at shutdown the steps in flight are drained.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use draas_core::instance::{Instance, InstanceId};
use draas_core::messages::StatusChange;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{delay_queue, DelayQueue};
use tracing::{debug, error, info, warn};

use crate::cursor::{follow_events, CursorFile, Named};
use crate::lease::hold_lease;
use crate::plan::{plan, Action, Decision, PlanSettings};
use crate::port::ControlPlanePort;
use crate::port::PortError;

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

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepEnd {
    /// It returned (done, refused or failed: the record says).
    Done,
    /// It panicked (a bug): its instance is planned again after
    /// [`AFTER_PANIC`].
    Panicked,
}

/// How long an instance whose step panicked waits before it is planned
/// again.
const AFTER_PANIC: Duration = Duration::from_secs(5);

/// Events received and not yet planned, at most (the stream waits beyond).
const EVENTS_QUEUED: usize = 1024;

/// How often a changed cursor is written to its file, at most.
const SAVE_CURSOR_EVERY: Duration = Duration::from_millis(500);

/// How long shutdown waits for the steps in flight.
const DRAIN_STEPS: Duration = Duration::from_secs(10);

/// Saves the cursor whenever it changed, at most every
/// [`SAVE_CURSOR_EVERY`], until aborted.
async fn save_cursor(file: CursorFile, mut cursor: watch::Receiver<Option<String>>) {
    while cursor.changed().await.is_ok() {
        let at = cursor.borrow_and_update().clone();
        if let Some(at) = at {
            file.save(&at).await;
        }
        tokio::time::sleep(SAVE_CURSOR_EVERY).await;
    }
}

/// A read of the control plane, done.
enum Read {
    /// Every instance (a full pass).
    All(Result<Vec<Instance>, PortError>),
    /// One instance (boxed: a record is large).
    One(String, Result<Box<Instance>, PortError>),
}

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
    let (named, mut names) = mpsc::channel::<Named>(EVENTS_QUEUED);
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
        reads: JoinSet::new(),
        reading: HashSet::new(),
        read_again: HashSet::new(),
        reading_all: false,
        fence: None,
        unplanned: HashSet::new(),
        known: HashMap::new(),
    };
    let (cursor_tx, cursor_rx) = watch::channel(saved.clone());
    let saver = cursor_file
        .clone()
        .map(|file| tokio::spawn(save_cursor(file, cursor_rx)));
    let every = settings.full_pass_every;
    let mut full_pass = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    full_pass.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                                state.look_at(id);
                            }
                        } else {
                            state.full_pass();
                        }
                    }
                    (Some(_), None) => {
                        info!("this reconciler lost the lease: it only watches");
                        state.forget_all();
                    }
                    _ => {}
                }
            }
            _ = full_pass.tick() => state.full_pass(),
            Some(Named { instance, cursor: seen, change }) = names.recv() => {
                state.on_event(instance, change);
                if seen.is_some() {
                    cursor_tx.send_replace(seen);
                }
            }
            Some(expired) = state.timers.next() => {
                let id = expired.into_inner();
                state.timer_keys.remove(&id);
                state.look_at(id);
            }
            Some(read) = state.reads.join_next() => {
                if let Ok(read) = read {
                    state.on_read(read);
                }
            }
            Some(done) = state.steps.join_next() => {
                match done {
                    Ok((id, StepEnd::Done)) => {
                        state.busy.remove(&id);
                        // Its outcome is planned at once (the next restart of
                        // a crash loop, say), and so are events that came
                        // meanwhile.
                        state.look_at(id);
                    }
                    Ok((id, StepEnd::Panicked)) => {
                        state.busy.remove(&id);
                        state.wait(id, AFTER_PANIC);
                    }
                    // Aborted at shutdown.
                    Err(_) => {}
                }
            }
        }
    }
    events.abort();
    state.reads.abort_all();
    // Steps in flight are finished (each is one request, bounded by the
    // client's timeout), up to a limit.
    let drained = tokio::time::timeout(DRAIN_STEPS, async {
        while state.steps.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("reconciler: steps still in flight at shutdown were abandoned");
        state.steps.abort_all();
    }
    if let Some(saver) = saver {
        saver.abort();
    }
    let last = cursor_tx.borrow().clone();
    if let (Some(file), Some(at)) = (&cursor_file, last) {
        file.save(&at).await;
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
    steps: JoinSet<(String, StepEnd)>,
    /// Reads in flight.
    reads: JoinSet<Read>,
    /// Instances being read.
    reading: HashSet<String>,
    /// Instances asked for again while being read: read again after.
    read_again: HashSet<String>,
    /// Whether a full pass's read is in flight.
    reading_all: bool,
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
    /// Plans every instance (once they are read; one full read at a time).
    fn full_pass(&mut self) {
        if self.fence.is_none() || self.reading_all {
            return;
        }
        self.unplanned.clear();
        self.reading_all = true;
        let client = self.client.clone();
        self.reads
            .spawn(async move { Read::All(client.instances().await) });
    }

    /// Plans the instance an event named. A crash of an instance read a
    /// moment ago is answered from the event (the copy read then, with the
    /// new status): that spares a read of the instance on the way to the
    /// restart. The control plane checks the step against the instance as
    /// stored (state, restarts in a row, restart policy), so a copy that is
    /// out of date only costs a refused step and a fresh read. Anything
    /// else is read first.
    fn on_event(&mut self, id: String, change: Option<StatusChange>) {
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
        self.look_at(id);
    }

    /// Reads instance `id`, then plans it (a read already in flight is
    /// followed by another: what it returns may predate the change that
    /// asked for this one).
    fn look_at(&mut self, id: String) {
        if self.fence.is_none() {
            self.unplanned.insert(id);
            return;
        }
        if self.busy.contains(&id) {
            return;
        }
        if self.reading.contains(&id) {
            self.read_again.insert(id);
            return;
        }
        self.reading.insert(id.clone());
        let client = self.client.clone();
        self.reads.spawn(async move {
            let read = client.instance(&id).await.map(Box::new);
            Read::One(id, read)
        });
    }

    /// Plans what a read returned.
    fn on_read(&mut self, read: Read) {
        match read {
            Read::All(Ok(all)) => {
                self.reading_all = false;
                // What is not listed any more is not kept either.
                self.known.clear();
                for instance in all {
                    self.consider(instance);
                }
            }
            Read::All(Err(e)) => {
                self.reading_all = false;
                warn!("reconciler: full pass skipped: {e}");
            }
            Read::One(id, read) => {
                self.reading.remove(&id);
                match read {
                    Ok(instance) => self.consider(*instance),
                    Err(PortError::Gone(_)) => {
                        self.known.remove(&id);
                        self.forget(&id);
                    }
                    Err(e) => debug!(instance = %id, "reconciler: cannot read it: {e}"),
                }
                if self.read_again.remove(&id) {
                    self.look_at(id);
                }
            }
        }
    }

    fn forget(&mut self, id: &str) {
        if let Some(key) = self.timer_keys.remove(id) {
            self.timers.remove(&key);
        }
    }

    /// Plans instance `id` again after `wait` (replacing an earlier wait).
    fn wait(&mut self, id: String, wait: Duration) {
        match self.timer_keys.get(&id) {
            Some(key) => self.timers.reset(key, wait),
            None => {
                let key = self.timers.insert(id.clone(), wait);
                self.timer_keys.insert(id, key);
            }
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
                self.wait(id, (at - now).to_std().unwrap_or(Duration::ZERO));
            }
            Decision::Act(action) => {
                self.forget(&id);
                self.busy.insert(id.clone());
                let client = self.client.clone();
                let permits = self.permits.clone();
                let instance_id = instance.id.clone();
                self.steps.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let step = execute(client.as_ref(), &instance_id, &action, fence);
                    // A step that panics is a bug, logged; the instance is
                    // planned again a while later (not at once: a step that
                    // always panics must not spin).
                    match AssertUnwindSafe(step).catch_unwind().await {
                        Ok(()) => (id, StepEnd::Done),
                        Err(panic) => {
                            let what = panic
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            error!(instance = %instance_id, ?action, "a reconcile step panicked: {what}");
                            (id, StepEnd::Panicked)
                        }
                    }
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
        Err(PortError::Stale(detail)) => debug!(instance = %id, "plan overtaken: {detail}"),
        Err(PortError::Gone(_)) => {}
        // The lease moved on: the new holder acts.
        Err(PortError::StaleFence(detail)) => {
            warn!(instance = %id, "step refused, this reconciler's lease has moved on: {detail}")
        }
        // A stop or delete waiting for a worker of its scope to return (the
        // next full pass tries again): expected, not worth a warning each
        // time.
        Err(PortError::NoLiveWorker(detail)) => {
            debug!(instance = %id, ?action, "waiting for a live worker: {detail}")
        }
        // The worker refused a start the instance no longer asks for.
        Err(PortError::Superseded(detail)) => {
            debug!(instance = %id, "step superseded: {detail}")
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

    /// A control plane with one instance, scripted: its first step may
    /// panic, its full list may never come, an event may name it.
    struct Scripted {
        instance: std::sync::Mutex<Instance>,
        acts: std::sync::atomic::AtomicU32,
        panic_first: bool,
        list_hangs: bool,
        event: bool,
    }

    impl Scripted {
        /// An instance that should run and was never started, long ago.
        fn new() -> Self {
            let mut stale = instance(DesiredState::Running, ActualState::Created);
            stale.updated_at = Utc::now() - chrono::Duration::hours(1);
            stale.status.updated_at = stale.updated_at;
            Self {
                instance: std::sync::Mutex::new(stale),
                acts: Default::default(),
                panic_first: false,
                list_hangs: false,
                event: false,
            }
        }

        fn acts(&self) -> u32 {
            self.acts.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl ControlPlanePort for Scripted {
        async fn instances(&self) -> Result<Vec<Instance>, PortError> {
            if self.list_hangs {
                std::future::pending::<()>().await;
            }
            Ok(vec![self.instance.lock().unwrap().clone()])
        }

        async fn instance(&self, _: &str) -> Result<Instance, PortError> {
            Ok(self.instance.lock().unwrap().clone())
        }

        async fn act(&self, _: &InstanceId, _: &Action, _: Option<u64>) -> Result<(), PortError> {
            let n = self.acts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n == 1 && self.panic_first {
                panic!("a scripted bug");
            }
            self.instance.lock().unwrap().status.state = ActualState::Running;
            Ok(())
        }

        async fn claim_lease(
            &self,
            holder: &str,
            ttl: Duration,
        ) -> Result<Option<draas_core::lease::Lease>, PortError> {
            let now = Utc::now();
            Ok(Some(draas_core::lease::Lease {
                version: draas_core::records::RECORD_VERSION,
                holder: holder.to_string(),
                token: 1,
                acquired_at: now,
                expires_at: now + chrono::Duration::from_std(ttl).unwrap(),
            }))
        }

        async fn release_lease(&self, _: &str) -> Result<(), PortError> {
            Ok(())
        }

        async fn instance_events(
            &self,
            _: Option<&str>,
        ) -> Result<futures::stream::BoxStream<'static, Named>, PortError> {
            let named = Named {
                instance: self.instance.lock().unwrap().id.to_string(),
                cursor: Some("1-0".into()),
                change: None,
            };
            if !self.event {
                return Ok(futures::stream::pending().boxed());
            }
            // A second after the stream opens: once the lease is held and
            // the full pass has begun.
            let later = async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                named
            };
            Ok(futures::stream::once(later)
                .chain(futures::stream::pending())
                .boxed())
        }
    }

    fn quiet() -> ReconcilerSettings {
        ReconcilerSettings {
            full_pass_every: Duration::from_secs(3600),
            ..ReconcilerSettings::default()
        }
    }

    /// Waits (test time) until `port` acted `n` times, at most a minute.
    async fn until_acted(port: &Scripted, n: u32) -> Duration {
        let started = tokio::time::Instant::now();
        while port.acts() < n {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "acted {} times",
                port.acts()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_whose_step_panicked_is_planned_again_a_while_later() {
        let port = Arc::new(Scripted {
            panic_first: true,
            ..Scripted::new()
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(port.clone(), quiet(), shutdown.clone()));
        let took = until_acted(&port, 2).await;
        assert!(took >= AFTER_PANIC, "not at once after the panic: {took:?}");
        // Planned from the new state: nothing more to do.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(port.acts(), 2);
        shutdown.cancel();
        task.await.unwrap();
    }

    /// A full pass whose read never ends holds up nothing else: the event
    /// naming an instance is read, planned and acted on meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_full_pass_that_hangs_holds_up_no_event() {
        let port = Arc::new(Scripted {
            list_hangs: true,
            event: true,
            ..Scripted::new()
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(port.clone(), quiet(), shutdown.clone()));
        until_acted(&port, 1).await;
        shutdown.cancel();
        // Shutdown does not wait for the hanging read either.
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the loop ended")
            .unwrap();
    }
}
