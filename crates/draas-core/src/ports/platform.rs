//! The platform driver port: how one platform (processes, containers,
//! Kubernetes) starts, stops, inspects and watches Drasi servers.
//!
//! The generic worker (`draas-worker`) owns the command loop: it receives
//! commands, deduplicates them, calls the driver, records status changes and
//! replies. A driver only talks to its platform. Changes it notices on its
//! own (a server exited, a component failed) go to the [`StatusSink`] it was
//! given, at once.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::instance::{ActualState, InstanceId, PlatformType, Reason, RuntimeInfo};
use crate::messages::{ErrorCode, LogsSpec, StartSpec, StopSpec};

/// A failed driver operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DriverError {
    /// Machine-readable, sent back to the control plane.
    pub code: ErrorCode,
    /// For humans.
    pub message: String,
    /// The state the instance is in after the failure, when it changed
    /// (e.g. `Failed` after a start that exited).
    pub state: Option<(ActualState, Reason)>,
}

impl DriverError {
    /// An error that leaves the instance as it was.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            state: None,
        }
    }

    /// An error after which the instance is in `state` for `reason`.
    pub fn with_state(mut self, state: ActualState, reason: Reason) -> Self {
        self.state = Some((state, reason));
        self
    }
}

/// A server that became ready.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    /// Where it runs.
    pub runtime: RuntimeInfo,
    /// `Running`, or `Degraded` when a component is in `Error`.
    pub state: ActualState,
    /// Which component failed, when degraded.
    pub message: Option<String>,
}

/// What to do with an instance's runtime info when recording a change.
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeUpdate {
    /// Leave it.
    Keep,
    /// Replace it.
    Set(RuntimeInfo),
    /// Keep it but note the last exit code (the server is gone).
    Exited(Option<i32>),
    /// Remove it.
    Clear,
}

/// One observed change of an instance's actual state.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The instance.
    pub instance_id: InstanceId,
    /// Its new state.
    pub state: ActualState,
    /// Why.
    pub reason: Option<Reason>,
    /// Details for humans.
    pub message: Option<String>,
    /// The configuration generation now running, if it changed.
    pub observed_generation: Option<u64>,
    /// What happens to the runtime info.
    pub runtime: RuntimeUpdate,
    /// When it was observed.
    pub observed_at: DateTime<Utc>,
}

impl Observation {
    /// `instance_id` is now in `state`, observed now.
    pub fn now(instance_id: InstanceId, state: ActualState, reason: Option<Reason>) -> Self {
        Self {
            instance_id,
            state,
            reason,
            message: None,
            observed_generation: None,
            runtime: RuntimeUpdate::Keep,
            observed_at: Utc::now(),
        }
    }

    /// With a message.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// With a runtime update.
    pub fn runtime(mut self, runtime: RuntimeUpdate) -> Self {
        self.runtime = runtime;
        self
    }

    /// With the generation now running.
    pub fn generation(mut self, generation: u64) -> Self {
        self.observed_generation = Some(generation);
        self
    }
}

/// Where drivers report what they observe.
#[async_trait]
pub trait StatusSink: Send + Sync + 'static {
    /// Records `observation` (persisted, logged, published).
    async fn observe(&self, observation: Observation);
}

/// One platform's way of running Drasi servers.
#[async_trait]
pub trait PlatformDriver: Send + Sync + 'static {
    /// The platform served.
    fn platform(&self) -> PlatformType;

    /// Launches the server and waits for readiness (`spec` carries the
    /// deadline). Starting an instance that already runs the same
    /// generation returns its current info without relaunching.
    async fn start(&self, id: &InstanceId, spec: &StartSpec) -> Result<Started, DriverError>;

    /// Stops the server gracefully, then forcibly after the grace period.
    /// Stopping a server that is not running succeeds.
    async fn stop(&self, id: &InstanceId, spec: &StopSpec) -> Result<(), DriverError>;

    /// Stops the server and removes every file and resource of the instance.
    async fn delete(&self, id: &InstanceId, spec: &StopSpec) -> Result<(), DriverError>;

    /// The live status: the platform's view plus the Drasi components'.
    async fn status(&self, id: &InstanceId) -> Result<serde_json::Value, DriverError>;

    /// The last lines of the server's output.
    async fn logs(&self, id: &InstanceId, spec: &LogsSpec) -> Result<Vec<String>, DriverError>;

    /// After a worker restart: finds the servers still running from before,
    /// verifies they are the same ones, and watches them again. Returns how
    /// many were adopted; the ones found gone are reported to the sink.
    async fn recover(&self) -> Result<usize, DriverError>;

    /// How many servers the driver runs now.
    async fn running(&self) -> usize;

    /// Reports again the state of every server it runs. Called after the
    /// worker could not heartbeat for a while: the control plane may have
    /// marked its instances `Unknown` meanwhile.
    async fn reassert(&self) {}
}
