//! Executing delivered commands: claims (once only), deadlines, per-instance
//! order, status recording, honest replies.
//!
//! - A **mutating** command (Start, Stop, Restart, Delete) is claimed first
//!   (`claims`) when the bus can deliver it twice (Redis): a command
//!   already executed is answered with its stored reply, whatever its
//!   deadline; one being executed elsewhere is waited for; only a fresh
//!   claim executes, and only before its deadline. Over a bus that never
//!   redelivers (in-process) nothing needs claiming.
//! - Mutating commands of one instance run one at a time, in arrival order;
//!   **read-only** commands (Status, Logs) never wait behind them.
//! - A reply says `Ok` only if the command's effect was recorded: when the
//!   status cannot be written, the reply is a `STORE_UNAVAILABLE` error
//!   saying what happened to the server.
//! - Every delivery carries the permit it was taken off the bus with; the
//!   permit is given back with the reply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use draas_core::instance::{ActualState, DesiredState, InstanceId, Reason};
use draas_core::keys;
use draas_core::lease::{Lease, RECONCILER_LEASE};
use draas_core::messages::{
    Command, CommandEnvelope, CommandReply, ErrorCode, Outcome, StartSpec, StopSpec,
    MESSAGE_VERSION,
};
use draas_core::ports::store::JsonStore;
use draas_core::ports::{
    Delivery, DriverError, Observation, PlatformDriver, RuntimeUpdate, StateStore,
};
use draas_core::records::{self, ObservedStatus};
use draas_core::status::{RecordError, StatusRecorder};
use tokio::sync::mpsc::{self, error::TryRecvError, UnboundedReceiver, UnboundedSender};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use crate::claims::{self, Claim, Claimant};
use crate::lock;

/// How long executed-command records are kept (longer than any redelivery).
pub(crate) const EXECUTED_RETENTION: Duration = Duration::from_secs(3600);
/// How often a duplicate delivery looks for the reply of a command another
/// worker is executing.
const AWAIT_REPLY_EVERY: Duration = Duration::from_millis(200);
/// Attempts to store a reply before giving up on recording it.
const FINISH_ATTEMPTS: u32 = 3;

pub(crate) struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    worker_id: String,
    incarnation: Uuid,
    driver: Arc<dyn PlatformDriver>,
    store: Arc<dyn StateStore>,
    recorder: StatusRecorder,
    /// Whether the bus can deliver a command twice: only then are commands
    /// claimed (a bus that never redelivers costs no claim writes).
    claim_commands: bool,
    /// One queue per instance with mutating commands in flight; a queue's
    /// task ends (and removes it) when the queue runs empty.
    queues: Mutex<HashMap<InstanceId, UnboundedSender<Delivery>>>,
    /// Replies of the commands this run is executing now, for duplicate
    /// deliveries of them to wait on.
    in_flight: Mutex<HashMap<Uuid, watch::Receiver<Option<CommandReply>>>>,
    tracker: TaskTracker,
}

impl Executor {
    pub(crate) fn new(context: &crate::WorkerContext, driver: Arc<dyn PlatformDriver>) -> Self {
        Self {
            inner: Arc::new(Inner {
                worker_id: context.settings.worker_id.clone(),
                incarnation: context.incarnation,
                driver,
                store: context.store.clone(),
                recorder: context.recorder.clone(),
                claim_commands: context.bus.redelivers(),
                queues: Mutex::new(HashMap::new()),
                in_flight: Mutex::new(HashMap::new()),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// Runs `delivery`: a read-only command at once, a mutating one behind
    /// the commands of the same instance.
    pub(crate) fn dispatch(&self, delivery: Delivery) {
        if !is_mutating(&delivery.envelope.command) {
            let inner = self.inner.clone();
            let span = span_of(&delivery.envelope);
            self.inner
                .tracker
                .spawn(async move { inner.handle(delivery).await }.instrument(span));
            return;
        }
        let id = delivery.envelope.instance_id.clone();
        let mut queues = lock(&self.inner.queues);
        let delivery = match queues.get(&id) {
            Some(queue) => match queue.send(delivery) {
                Ok(()) => return,
                Err(mpsc::error::SendError(d)) => d,
            },
            None => delivery,
        };
        let (queue, receiver) = mpsc::unbounded_channel();
        // The receiver is alive: this cannot fail.
        let _ = queue.send(delivery);
        queues.insert(id.clone(), queue);
        let inner = self.inner.clone();
        self.inner.tracker.spawn(inner.work_through(id, receiver));
    }

    /// Stops taking work and waits up to `limit` for queued commands.
    /// Returns whether everything finished.
    pub(crate) async fn drain(&self, limit: Duration) -> bool {
        self.inner.tracker.close();
        tokio::time::timeout(limit, self.inner.tracker.wait())
            .await
            .is_ok()
    }
}

fn is_mutating(command: &Command) -> bool {
    matches!(
        command,
        Command::Start(_) | Command::Stop(_) | Command::Restart(_) | Command::Delete(_)
    )
}

fn span_of(envelope: &CommandEnvelope) -> tracing::Span {
    tracing::info_span!(
        "command",
        id = %envelope.id,
        kind = envelope.command.name(),
        instance = %envelope.instance_id,
        trace_id = envelope.trace_id().unwrap_or_default(),
    )
}

fn error(code: ErrorCode, message: impl Into<String>) -> Outcome {
    Outcome::Error {
        code,
        message: message.into(),
    }
}

impl Inner {
    async fn work_through(
        self: Arc<Self>,
        id: InstanceId,
        mut receiver: UnboundedReceiver<Delivery>,
    ) {
        loop {
            let delivery = match receiver.try_recv() {
                Ok(d) => d,
                Err(TryRecvError::Empty) => {
                    // Remove the queue only if nothing arrived meanwhile;
                    // the map lock orders this against `dispatch`.
                    let mut queues = lock(&self.queues);
                    match receiver.try_recv() {
                        Ok(d) => d,
                        Err(_) => {
                            queues.remove(&id);
                            return;
                        }
                    }
                }
                Err(TryRecvError::Disconnected) => return,
            };
            let span = span_of(&delivery.envelope);
            self.handle(delivery).instrument(span).await;
        }
    }

    fn reply_to(&self, envelope: &CommandEnvelope, outcome: Outcome) -> CommandReply {
        CommandReply {
            version: MESSAGE_VERSION,
            command_id: envelope.id,
            worker_id: self.worker_id.clone(),
            outcome,
        }
    }

    async fn handle(&self, delivery: Delivery) {
        let envelope = delivery.envelope.clone();
        let reply = if is_mutating(&envelope.command) {
            self.handle_mutating(&envelope, delivery.delivery_count)
                .await
        } else if Utc::now() > envelope.deadline {
            self.reply_to(&envelope, past_deadline())
        } else {
            let outcome = self.execute(&envelope).await;
            self.reply_to(&envelope, outcome)
        };
        if let Err(e) = delivery.reply(reply).await {
            warn!("reply failed: {e}");
        }
    }

    async fn handle_mutating(&self, envelope: &CommandEnvelope, delivery: u32) -> CommandReply {
        if !self.claim_commands {
            let outcome = if Utc::now() > envelope.deadline {
                past_deadline()
            } else {
                self.execute(envelope).await
            };
            return self.reply_to(envelope, outcome);
        }
        let me = Claimant {
            worker_id: &self.worker_id,
            incarnation: self.incarnation,
        };
        match claims::claim(self.store.as_ref(), envelope, &me).await {
            Err(e) => {
                warn!("cannot claim the command: {e}");
                self.reply_to(
                    envelope,
                    error(
                        ErrorCode::StoreUnavailable,
                        format!("the command was not executed: it could not be recorded ({e})"),
                    ),
                )
            }
            Ok(Claim::Answered(reply)) => {
                info!(delivery, "already executed; answering from the record");
                reply
            }
            Ok(Claim::InProgress {
                worker_id,
                incarnation,
            }) => {
                info!(delivery, executor = %worker_id, "being executed; waiting for its reply");
                self.await_reply(envelope, &worker_id, incarnation).await
            }
            Ok(Claim::Execute) => {
                let (done, waiters) = watch::channel(None);
                lock(&self.in_flight).insert(envelope.id, waiters);
                let outcome = if Utc::now() > envelope.deadline {
                    warn!("deadline passed before execution; skipped");
                    past_deadline()
                } else {
                    self.execute(envelope).await
                };
                let reply = self.reply_to(envelope, outcome);
                self.finish(envelope, &me, &reply).await;
                let _ = done.send(Some(reply.clone()));
                lock(&self.in_flight).remove(&envelope.id);
                reply
            }
        }
    }

    /// Stores the reply, so a redelivery is answered from it.
    async fn finish(&self, envelope: &CommandEnvelope, me: &Claimant<'_>, reply: &CommandReply) {
        for attempt in 1..=FINISH_ATTEMPTS {
            match claims::finish(self.store.as_ref(), envelope, me, reply).await {
                Ok(claims::Finished::Stored) => return,
                Ok(claims::Finished::TakenOver(by)) => {
                    warn!(%by, "the command was taken over by another worker while this one executed it; its reply is theirs");
                    return;
                }
                Err(e) if attempt == FINISH_ATTEMPTS => {
                    warn!("the reply could not be recorded (a redelivery will wait for its deadline): {e}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await,
            }
        }
    }

    /// Waits for the reply of a command someone else (or this run, for a
    /// duplicate delivery) is executing; takes it over if its executor dies.
    async fn await_reply(
        &self,
        envelope: &CommandEnvelope,
        worker_id: &str,
        incarnation: Uuid,
    ) -> CommandReply {
        let deadline = tokio::time::Instant::now()
            + (envelope.deadline - Utc::now())
                .to_std()
                .unwrap_or_default();
        if worker_id == self.worker_id && incarnation == self.incarnation {
            let waiter = lock(&self.in_flight).get(&envelope.id).cloned();
            if let Some(mut waiter) = waiter {
                if let Ok(Ok(reply)) =
                    tokio::time::timeout_at(deadline, waiter.wait_for(Option::is_some)).await
                {
                    if let Some(reply) = reply.clone() {
                        return reply;
                    }
                }
            }
        }
        loop {
            match claims::stored_reply(self.store.as_ref(), envelope).await {
                Ok(Some(record)) => {
                    if let Some(reply) = record.reply {
                        return reply;
                    }
                    let alive = draas_core::workers::is_live(
                        self.store.as_ref(),
                        &record.worker_id,
                        Utc::now(),
                    )
                    .await
                    .unwrap_or(true);
                    if !alive && record.worker_id != self.worker_id {
                        // Its executor died: claim it again (and execute).
                        return Box::pin(self.handle_mutating(envelope, 0)).await;
                    }
                }
                Ok(None) => return Box::pin(self.handle_mutating(envelope, 0)).await,
                Err(e) => warn!("cannot read the command's record: {e}"),
            }
            if tokio::time::Instant::now() >= deadline {
                return self.reply_to(
                    envelope,
                    error(
                        ErrorCode::DeadlineExceeded,
                        format!(
                            "worker {worker_id} was still executing the command at its deadline"
                        ),
                    ),
                );
            }
            tokio::time::sleep(AWAIT_REPLY_EVERY).await;
        }
    }

    async fn execute(&self, envelope: &CommandEnvelope) -> Outcome {
        if let Some(refused) = self.stale_fence(envelope).await {
            return refused;
        }
        let id = &envelope.instance_id;
        if let Command::Start(spec) | Command::Restart(spec) = &envelope.command {
            if let Some(refused) = self.superseded(id, spec).await {
                return refused;
            }
        }
        match &envelope.command {
            Command::Start(spec) => self.start(id, spec).await,
            Command::Stop(spec) => self.stop(id, spec).await,
            Command::Restart(spec) => {
                let stop = StopSpec::grace(spec.server_configuration.shutdown_timeout_seconds);
                match self.stop(id, &stop).await {
                    Outcome::Ok { .. } => self.start(id, spec).await,
                    failed => failed,
                }
            }
            Command::Delete(spec) => {
                if let Err(e) = self
                    .record(Observation::now(
                        id.clone(),
                        ActualState::Deleting,
                        Some(Reason::Requested),
                    ))
                    .await
                {
                    return not_recorded("the instance was not deleted", &e);
                }
                match self.driver.delete(id, spec).await {
                    Ok(()) => Outcome::Ok {
                        status: None,
                        runtime: None,
                        detail: None,
                    },
                    Err(e) => self.failed(id, e).await,
                }
            }
            Command::Status => match self.driver.status(id).await {
                Ok(live) => Outcome::Ok {
                    status: None,
                    runtime: None,
                    detail: serde_json::to_value(live).ok(),
                },
                Err(e) => error(e.code, e.message),
            },
            Command::Logs(spec) => match self.driver.logs(id, spec).await {
                Ok(lines) => Outcome::Ok {
                    status: None,
                    runtime: None,
                    detail: Some(serde_json::json!({ "lines": lines })),
                },
                Err(e) => error(e.code, e.message),
            },
            Command::QueryResults(spec) => match self.driver.query_results(id, &spec.query).await {
                Ok(rows) => Outcome::Ok {
                    status: None,
                    runtime: None,
                    detail: Some(serde_json::json!({ "rows": rows })),
                },
                Err(e) => error(e.code, e.message),
            },
            Command::Unknown => {
                warn!("unknown command type; acknowledged and ignored");
                error(
                    ErrorCode::Unsupported,
                    "this worker does not know the command",
                )
            }
        }
    }

    async fn start(&self, id: &InstanceId, spec: &StartSpec) -> Outcome {
        let already = self.driver.running_generation(id).await == Some(spec.generation);
        // `Starting` is recorded while the server launches, not before: its
        // commit would otherwise add to every (re)start's time to health.
        // Stamped now, it is older than whatever the start ends in, so it
        // can never overwrite that (the recorder refuses older observations).
        // It is a passing state, recorded with deferred durability: the
        // start's outcome, recorded durably, makes it durable too, and on
        // the way to the spawn it costs no fsync competing for the CPU. (A
        // crash before the outcome loses it with the worker, which finds
        // the launched server when it starts again.)
        let starting = async {
            if already {
                return Ok(());
            }
            let observation =
                Observation::now(id.clone(), ActualState::Starting, Some(Reason::Requested))
                    .generation(spec.generation);
            self.record_with(&self.recorder.deferring(), observation)
                .await
                .map(|_| ())
        };
        let (recorded, started) = tokio::join!(starting, self.driver.start(id, spec));
        if let Err(e) = recorded {
            // Nobody could tell it was starting: it must not run.
            if started.is_ok() {
                let stop = StopSpec::grace(spec.server_configuration.shutdown_timeout_seconds);
                if let Err(stop) = self.driver.stop(id, &stop).await {
                    warn!("stopping the server again failed: {}", stop.message);
                }
            }
            return not_recorded("the server was stopped again", &e);
        }
        match started {
            Ok(started) => {
                let reason = match started.state {
                    ActualState::Degraded => Reason::ComponentError,
                    ActualState::Starting => Reason::Bootstrapping,
                    _ => Reason::Ready,
                };
                let mut observation = Observation::now(id.clone(), started.state, Some(reason))
                    .generation(spec.generation)
                    .runtime(RuntimeUpdate::Set(started.runtime));
                observation.message = started.message;
                match self.record(observation).await {
                    Ok(instance) => ok(instance),
                    Err(e) => not_recorded("the server runs", &e),
                }
            }
            Err(mut e) => {
                if !already && e.state.is_none() && e.code == ErrorCode::PlatformError {
                    // Recorded `Starting` above: the platform failed it.
                    e.state = Some((ActualState::Failed, Reason::PlatformError));
                }
                self.failed(id, e).await
            }
        }
    }

    async fn stop(&self, id: &InstanceId, spec: &StopSpec) -> Outcome {
        if let Err(e) = self
            .record(Observation::now(
                id.clone(),
                ActualState::Stopping,
                Some(Reason::Requested),
            ))
            .await
        {
            return not_recorded("the server was not stopped", &e);
        }
        match self.driver.stop(id, spec).await {
            Ok(()) => {
                // The runtime info stays (without a handle): it names the
                // worker that holds the instance's files.
                match self
                    .record(
                        Observation::now(id.clone(), ActualState::Stopped, Some(Reason::Requested))
                            .runtime(RuntimeUpdate::Exited(None)),
                    )
                    .await
                {
                    Ok(instance) => ok(instance),
                    Err(e) => not_recorded("the server was stopped", &e),
                }
            }
            Err(e) => self.failed(id, e).await,
        }
    }

    /// Records the state a failed operation left, and builds the error reply.
    async fn failed(&self, id: &InstanceId, e: DriverError) -> Outcome {
        warn!(code = ?e.code, "{}", e.message);
        if let Some((state, reason)) = e.state {
            let recorded = self
                .record(
                    Observation::now(id.clone(), state, Some(reason))
                        .message(e.message.clone())
                        .runtime(RuntimeUpdate::Exited(None)),
                )
                .await;
            if let Err(store) = recorded {
                return error(
                    e.code,
                    format!(
                        "{} (and the instance's state, {state:?}, could not be recorded: {store})",
                        e.message
                    ),
                );
            }
        }
        error(e.code, e.message)
    }

    /// Records `observation`; returns the instance as now recorded (`None`
    /// when it was deleted meanwhile). Only a store failure is an error: an
    /// observation refused as older than the recorded status is not.
    async fn record(
        &self,
        observation: Observation,
    ) -> Result<Option<ObservedStatus>, draas_core::ports::StoreError> {
        self.record_with(&self.recorder, observation).await
    }

    /// [`record`](Self::record) through `recorder`.
    async fn record_with(
        &self,
        recorder: &StatusRecorder,
        observation: Observation,
    ) -> Result<Option<ObservedStatus>, draas_core::ports::StoreError> {
        let id = observation.instance_id.clone();
        match recorder.record(observation).await {
            Ok(recorded) => Ok(Some(recorded.observed)),
            Err(RecordError::NotFound(_)) => Ok(None),
            Err(RecordError::Stale { .. }) => {
                records::read_observed(self.store.as_ref(), &id).await
            }
            Err(RecordError::Store(e)) => Err(e),
        }
    }
}

impl Inner {
    /// The refusal of a start (or restart) that is no longer what its
    /// instance asks for: it should not run any more (a stop or a delete
    /// came after the command was sent: the start queued behind it must
    /// not bring the server back), or its configuration moved on to
    /// another generation (a newer start follows). `None` when it may run.
    /// The instance's record is the control plane's word; one that cannot
    /// be read refuses too (the caller retries).
    async fn superseded(&self, id: &InstanceId, spec: &StartSpec) -> Option<Outcome> {
        // The spec alone: the control plane's word.
        let instance = match records::read_spec(self.store.as_ref(), id).await {
            Ok(Some(record)) => record.value,
            Ok(None) => {
                return Some(error(
                    ErrorCode::NotFound,
                    format!("instance {id} does not exist (any more)"),
                ))
            }
            Err(e) => {
                return Some(error(
                    ErrorCode::StoreUnavailable,
                    format!("the start was not executed: its instance could not be read ({e})"),
                ))
            }
        };
        let why = if instance.desired_state != DesiredState::Running {
            format!(
                "the instance should not run any more (desired {:?})",
                instance.desired_state
            )
        } else if instance.generation != spec.generation {
            format!(
                "the start is of generation {}, the instance is now at {}",
                spec.generation, instance.generation
            )
        } else {
            return None;
        };
        warn!(instance = %id, "refused a superseded start: {why}");
        Some(error(
            ErrorCode::Superseded,
            format!("the start was not executed: {why}"),
        ))
    }

    /// The refusal of a command fenced with a token older than the
    /// reconciler lease's current term (see `draas_core::lease`); `None`
    /// when it may run. A lease that cannot be read refuses too: the
    /// command is the reconciler's, which retries.
    async fn stale_fence(&self, envelope: &CommandEnvelope) -> Option<Outcome> {
        let token = envelope.fence?;
        match self
            .store
            .get_json::<Lease>(keys::LEASES, RECONCILER_LEASE)
            .await
        {
            Ok(Some(lease)) if lease.value.token > token => {
                warn!(
                    token,
                    current = lease.value.token,
                    holder = %lease.value.holder,
                    "refused a command of a reconciler whose lease has moved on"
                );
                Some(error(
                    ErrorCode::StaleFence,
                    format!(
                        "fencing token {token} is stale: the reconciler lease is in term {} (held by {})",
                        lease.value.token, lease.value.holder
                    ),
                ))
            }
            Ok(_) => None,
            Err(e) => Some(error(
                ErrorCode::StoreUnavailable,
                format!(
                    "the command was not executed: its fencing token could not be checked ({e})"
                ),
            )),
        }
    }
}

fn past_deadline() -> Outcome {
    error(
        ErrorCode::DeadlineExceeded,
        "the command's deadline passed before a worker could execute it",
    )
}

/// The reply to a command that changed what runs: the status as recorded
/// (the control plane keeps its own restart bookkeeping).
fn ok(observed: Option<ObservedStatus>) -> Outcome {
    Outcome::Ok {
        status: observed
            .as_ref()
            .map(|o| o.status(&records::Recovery::default())),
        runtime: observed.and_then(|o| o.runtime).map(Box::new),
        detail: None,
    }
}

/// The reply when a status could not be written: says what happened to the
/// server, and that its state is not recorded.
fn not_recorded(what_happened: &str, e: &draas_core::ports::StoreError) -> Outcome {
    error(
        ErrorCode::StoreUnavailable,
        format!("{what_happened}, but its state could not be recorded: {e}"),
    )
}
