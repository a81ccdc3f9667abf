//! Executing delivered commands: per-instance queues, deduplication,
//! deadlines, status recording, replies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use draas_core::instance::{ActualState, Instance, InstanceId, Reason};
use draas_core::keys;
use draas_core::messages::{
    Command, CommandEnvelope, CommandReply, ErrorCode, Outcome, StartSpec, StopSpec,
    MESSAGE_VERSION,
};
use draas_core::ports::store::{JsonStore, Precondition};
use draas_core::ports::{
    Delivery, DriverError, Observation, PlatformDriver, RuntimeUpdate, StateStore,
};
use draas_core::status::StatusRecorder;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{self, error::TryRecvError, UnboundedReceiver, UnboundedSender};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

/// A reply kept so that a redelivered command is answered, not re-executed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExecutedCommand {
    pub reply: CommandReply,
    pub executed_at: DateTime<Utc>,
}

/// How long executed-command records are kept (longer than any redelivery).
pub(crate) const EXECUTED_RETENTION: Duration = Duration::from_secs(3600);

pub(crate) struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    worker_id: String,
    driver: Arc<dyn PlatformDriver>,
    store: Arc<dyn StateStore>,
    recorder: StatusRecorder,
    /// One queue per instance with commands in flight; a queue's task ends
    /// (and removes it) when the queue runs empty.
    queues: Mutex<HashMap<InstanceId, UnboundedSender<Delivery>>>,
    tracker: TaskTracker,
    permits: Semaphore,
}

impl Executor {
    pub(crate) fn new(
        worker_id: String,
        driver: Arc<dyn PlatformDriver>,
        store: Arc<dyn StateStore>,
        recorder: StatusRecorder,
        concurrency: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                worker_id,
                driver,
                store,
                recorder,
                queues: Mutex::new(HashMap::new()),
                tracker: TaskTracker::new(),
                permits: Semaphore::new(concurrency.max(1)),
            }),
        }
    }

    /// Queues `delivery` behind the commands of the same instance.
    pub(crate) fn dispatch(&self, delivery: Delivery) {
        let id = delivery.envelope.instance_id.clone();
        let mut queues = self.inner.queues();
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

impl Inner {
    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, UnboundedSender<Delivery>>> {
        // Critical sections are single map operations; a poisoned lock
        // still holds a consistent map.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

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
                    let mut queues = self.queues();
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
            let span = tracing::info_span!(
                "command",
                id = %delivery.envelope.id,
                kind = delivery.envelope.command.name(),
                instance = %delivery.envelope.instance_id,
            );
            let Ok(_permit) = self.permits.acquire().await else {
                return;
            };
            self.handle(delivery).instrument(span).await;
        }
    }

    async fn handle(&self, delivery: Delivery) {
        let envelope = delivery.envelope.clone();
        let mutating = matches!(
            envelope.command,
            Command::Start(_) | Command::Stop(_) | Command::Restart(_) | Command::Delete(_)
        );
        let outcome = if Utc::now() > envelope.deadline {
            warn!("deadline passed before execution; skipped");
            error(
                ErrorCode::DeadlineExceeded,
                "the command's deadline passed before a worker could execute it",
            )
        } else if let Some(previous) = self.already_executed(&envelope, mutating).await {
            info!(
                delivery = delivery.delivery_count,
                "already executed; answering from the record"
            );
            if let Err(e) = delivery.reply(previous.reply).await {
                warn!("reply failed: {e}");
            }
            return;
        } else {
            self.execute(&envelope).await
        };
        let reply = CommandReply {
            version: MESSAGE_VERSION,
            command_id: envelope.id,
            worker_id: self.worker_id.clone(),
            outcome,
        };
        if mutating {
            let record = ExecutedCommand {
                reply: reply.clone(),
                executed_at: Utc::now(),
            };
            let key = envelope.id.to_string();
            if let Err(e) = self
                .store
                .put_json(keys::EXECUTED_COMMANDS, &key, &record, Precondition::None)
                .await
            {
                warn!("could not record the executed command: {e}");
            }
        }
        if let Err(e) = delivery.reply(reply).await {
            warn!("reply failed: {e}");
        }
    }

    async fn already_executed(
        &self,
        envelope: &CommandEnvelope,
        mutating: bool,
    ) -> Option<ExecutedCommand> {
        if !mutating {
            return None;
        }
        match self
            .store
            .get_json::<ExecutedCommand>(keys::EXECUTED_COMMANDS, &envelope.id.to_string())
            .await
        {
            Ok(record) => record.map(|r| r.value),
            Err(e) => {
                warn!("cannot check for an earlier execution: {e}");
                None
            }
        }
    }

    async fn execute(&self, envelope: &CommandEnvelope) -> Outcome {
        let id = &envelope.instance_id;
        match &envelope.command {
            Command::Start(spec) => self.start(id, spec).await,
            Command::Stop(spec) => self.stop(id, spec).await,
            Command::Restart(spec) => {
                let stop = StopSpec {
                    shutdown_timeout_seconds: spec.server_configuration.shutdown_timeout_seconds,
                };
                match self.stop(id, &stop).await {
                    Outcome::Ok { .. } => self.start(id, spec).await,
                    failed => failed,
                }
            }
            Command::Delete(spec) => {
                self.observe(Observation::now(
                    id.clone(),
                    ActualState::Deleting,
                    Some(Reason::Requested),
                ))
                .await;
                match self.driver.delete(id, spec).await {
                    Ok(()) => self.ok(id, None).await,
                    Err(e) => self.failed(id, e).await,
                }
            }
            Command::Status => match self.driver.status(id).await {
                Ok(detail) => self.ok(id, Some(detail)).await,
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
        let already = self.instance(id).await.is_some_and(|i| {
            matches!(i.status.state, ActualState::Running | ActualState::Degraded)
                && i.status.observed_generation == spec.generation
                && i.runtime
                    .as_ref()
                    .is_some_and(|r| r.worker_id == self.worker_id)
        });
        if !already {
            self.observe(
                Observation::now(id.clone(), ActualState::Starting, Some(Reason::Requested))
                    .generation(spec.generation),
            )
            .await;
        }
        match self.driver.start(id, spec).await {
            Ok(started) => {
                let reason = if started.state == ActualState::Degraded {
                    Reason::ComponentError
                } else {
                    Reason::Ready
                };
                let mut observation = Observation::now(id.clone(), started.state, Some(reason))
                    .generation(spec.generation)
                    .runtime(RuntimeUpdate::Set(started.runtime));
                observation.message = started.message;
                self.observe(observation).await;
                self.ok(id, None).await
            }
            Err(e) => self.failed(id, e).await,
        }
    }

    async fn stop(&self, id: &InstanceId, spec: &StopSpec) -> Outcome {
        self.observe(Observation::now(
            id.clone(),
            ActualState::Stopping,
            Some(Reason::Requested),
        ))
        .await;
        match self.driver.stop(id, spec).await {
            Ok(()) => {
                // The runtime info stays (without a handle): it names the
                // worker that holds the instance's files.
                self.observe(
                    Observation::now(id.clone(), ActualState::Stopped, Some(Reason::Requested))
                        .runtime(RuntimeUpdate::Exited(None)),
                )
                .await;
                self.ok(id, None).await
            }
            Err(e) => self.failed(id, e).await,
        }
    }

    /// Records the state a failed operation left, and builds the error reply.
    async fn failed(&self, id: &InstanceId, e: DriverError) -> Outcome {
        warn!(code = ?e.code, "{}", e.message);
        if let Some((state, reason)) = e.state {
            self.observe(
                Observation::now(id.clone(), state, Some(reason))
                    .message(e.message.clone())
                    .runtime(RuntimeUpdate::Exited(None)),
            )
            .await;
        }
        error(e.code, e.message)
    }

    async fn ok(&self, id: &InstanceId, detail: Option<serde_json::Value>) -> Outcome {
        let instance = self.instance(id).await;
        Outcome::Ok {
            status: instance.as_ref().map(|i| i.status.clone()),
            runtime: instance.and_then(|i| i.runtime).map(Box::new),
            detail,
        }
    }

    async fn observe(&self, observation: Observation) {
        use draas_core::ports::StatusSink;
        self.recorder.observe(observation).await;
    }

    async fn instance(&self, id: &InstanceId) -> Option<Instance> {
        self.store
            .get_json::<Instance>(keys::INSTANCES, id.as_str())
            .await
            .ok()
            .flatten()
            .map(|r| r.value)
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Outcome {
    Outcome::Error {
        code,
        message: message.into(),
    }
}
