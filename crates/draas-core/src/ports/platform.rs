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
use serde::{Deserialize, Serialize};

use crate::instance::{ActualState, InstanceId, PlatformHandle, PlatformType, Reason, RuntimeInfo};
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

// === live status ===

/// A worker's live view of one server: what its platform says, and what the
/// Drasi server itself says of its components.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveStatus {
    /// Whether the worker runs a server for the instance now.
    pub running: bool,
    /// The platform's handle of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<PlatformHandle>,
    /// The configuration generation it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Base URL of its API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Whether `/health` answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Every source, query and reaction with its status, when the server
    /// answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Components>,
    /// Every lib instance's components with their bootstraps and numbers,
    /// when the server answered (progress and numbers only from the bundled
    /// runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_plane: Option<crate::dataplane::DataPlane>,
}

impl LiveStatus {
    /// Nothing runs.
    pub fn not_running() -> Self {
        Self::default()
    }
}

/// The components of a Drasi server, by kind, as its API lists them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Components {
    /// Sources.
    #[serde(default)]
    pub sources: Vec<ComponentStatus>,
    /// Continuous queries.
    #[serde(default)]
    pub queries: Vec<ComponentStatus>,
    /// Reactions.
    #[serde(default)]
    pub reactions: Vec<ComponentStatus>,
}

/// One component and its status (`Running`, `Starting`, `Stopped`,
/// `Error`, ...), as drasi-server reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// The component's id.
    pub id: String,
    /// Its status.
    #[serde(default)]
    pub status: String,
    /// Why it is in `Error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// What a server's components add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Every component is `Running` (or deliberately `Stopped`).
    Ready,
    /// Some are still starting (sources, or reactions not yet started for
    /// another reason than their queries' bootstrap).
    Starting,
    /// Everything runs but queries still bootstrapping (and reactions that
    /// wait for them): which, with their progress.
    Bootstrapping(String),
    /// At least one is in `Error`: which, and why.
    Failed(String),
}

impl Components {
    /// Every component with the name of its kind.
    pub fn all(&self) -> impl Iterator<Item = (&'static str, &ComponentStatus)> {
        let tag = |kind: &'static str| move |c| (kind, c);
        self.sources
            .iter()
            .map(tag("source"))
            .chain(self.queries.iter().map(tag("query")))
            .chain(self.reactions.iter().map(tag("reaction")))
    }

    /// Any `Error` wins; then any component not yet settled.
    pub fn readiness(&self) -> Readiness {
        let mut starting = false;
        for (kind, component) in self.all() {
            match component.status.as_str() {
                "Error" => {
                    let why = component.error_message.as_deref().unwrap_or("no message");
                    return Readiness::Failed(format!(
                        "{kind} '{}' is in Error: {why}",
                        component.id
                    ));
                }
                "Running" | "Stopped" => {}
                _ => starting = true,
            }
        }
        if starting {
            Readiness::Starting
        } else {
            Readiness::Ready
        }
    }
}

// === observations ===

/// What to do with an instance's runtime info when recording a change.
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeUpdate {
    /// Leave it.
    Keep,
    /// Replace it.
    Set(RuntimeInfo),
    /// Keep it but note the last exit code (the server is gone).
    Exited(Option<i32>),
    /// Keep it, handle included, noting the exit code of the server's last
    /// run: the platform restarts the server itself (Kubernetes).
    Restarted(Option<i32>),
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

/// Where drivers report what they observe. A worker has one: its status
/// recorder, which the driver is given when it is built.
#[async_trait]
pub trait StatusSink: Send + Sync + 'static {
    /// Records `observation` (persisted, logged, published).
    async fn observe(&self, observation: Observation);

    /// Keeps what was last read of a running server's data plane (for
    /// `/metrics`). Default: nothing is kept.
    async fn data_plane(&self, _instance: &InstanceId, _plane: &crate::dataplane::DataPlane) {}
}

/// One platform's way of running Drasi servers.
#[async_trait]
pub trait PlatformDriver: Send + Sync + 'static {
    /// The platform served.
    fn platform(&self) -> PlatformType;

    /// Which workers can reach this driver's servers besides itself: those
    /// of the same scope (its host, its Docker engine, its cluster).
    fn scope(&self) -> String;

    /// What the platform says of itself (e.g. "Docker Engine 20.10.24, API
    /// 1.41"), shown with the worker in `/api/server/platforms`.
    fn platform_version(&self) -> Option<String> {
        None
    }

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
    async fn status(&self, id: &InstanceId) -> Result<LiveStatus, DriverError>;

    /// The generation of the server this worker runs for `id` now, if it
    /// runs one (from memory: no platform call).
    async fn running_generation(&self, id: &InstanceId) -> Option<u64>;

    /// The last lines of the server's output.
    async fn logs(&self, id: &InstanceId, spec: &LogsSpec) -> Result<Vec<String>, DriverError>;

    /// The current result rows of the server's query `query`.
    async fn query_results(
        &self,
        _id: &InstanceId,
        _query: &str,
    ) -> Result<Vec<serde_json::Value>, DriverError> {
        Err(DriverError::new(
            ErrorCode::Unsupported,
            "this driver cannot read query results",
        ))
    }

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

    /// Stops watching every server (the worker is stopping): the servers
    /// keep running, and the next worker of the scope adopts them.
    async fn detach(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(id: &str, status: &str, error: Option<&str>) -> ComponentStatus {
        ComponentStatus {
            id: id.into(),
            status: status.into(),
            error_message: error.map(str::to_string),
        }
    }

    #[test]
    fn errors_win_over_starting_and_stopped_counts_as_settled() {
        let mut components = Components {
            sources: vec![component("s", "Running", None)],
            queries: vec![
                component("q", "Starting", None),
                component("bad", "Error", Some("parse error")),
            ],
            reactions: vec![],
        };
        assert_eq!(
            components.readiness(),
            Readiness::Failed("query 'bad' is in Error: parse error".into())
        );
        components.queries.pop();
        assert_eq!(components.readiness(), Readiness::Starting);
        components.queries[0].status = "Stopped".into();
        assert_eq!(components.readiness(), Readiness::Ready);
    }

    #[test]
    fn components_read_drasi_servers_json() {
        let parsed: Components = serde_json::from_str(
            r#"{"sources": [{"id": "s", "status": "Running", "error_message": null, "extra": 1}],
                "queries": [{"id": "q", "status": "Error", "error_message": "boom"}]}"#,
        )
        .unwrap();
        assert_eq!(parsed.reactions, vec![]);
        assert_eq!(parsed.queries[0].error_message.as_deref(), Some("boom"));
    }
}
