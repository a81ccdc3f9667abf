//! The control plane's operations, independent of HTTP. Handlers call these;
//! these call the ports (store, bus, validator).
//!
//! An instance is stored as two records (see `draas_core::records`): its
//! spec, which only these operations write (read-modify-write with a
//! revision check, [`ControlPlane::update`], so control-plane replicas never
//! overwrite each other's changes), and its status, which only status
//! recorders write. Operations read both; they never write the status
//! record, so they never retry because a status was recorded meanwhile.

pub mod audit;
mod configuration;
mod events;
mod instances;
mod lease;
mod ports;
mod reconcile;
mod status;

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use draas_core::instance::{
    validate_name, ActualState, Instance, InstanceId, InstanceStatus, PlatformType, RuntimeInfo,
};
use draas_core::keys;
use draas_core::messages::{Command, CommandEnvelope, Outcome, WorkerInfo};
use draas_core::policy::Reach;
use draas_core::ports::store::{
    read_modify_write_from, Applied, CasError, Change, Durability, Record, Write,
};
use draas_core::ports::{ConfigValidator, MessageBus, StateStore};
use draas_core::records::{self, InstanceSpec};
use draas_core::status::StatusRecorder;
use draas_core::workers::live_workers;

pub use configuration::ConfigurationDocument;
pub use instances::{CreateInstance, Deletion, InstanceList, ListQuery, Stopping};
pub use lease::LEASE_TTL;
pub use reconcile::ReconcileStep;
pub use status::{ExternalStatusUpdate, RecentChanges};

use crate::error::{ApiError, ApiResult};

/// Read-modify-write attempts before reporting a conflict.
const MAX_ATTEMPTS: usize = 16;

/// Tells whether a port is free on the host where a platform's workers run.
/// The control plane has one only when it shares that host with them (`draas
/// up`); in distributed mode the worker checks at launch, on its own host.
pub type PortProbe = Arc<dyn Fn(u16) -> bool + Send + Sync>;

/// Settings of the control plane.
#[derive(Clone)]
pub struct ControlPlaneSettings {
    /// Deadline of a command sent to a worker (Start gets at least its
    /// start timeout plus a margin).
    pub command_timeout: Duration,
    /// Ports given to instances that do not choose one, on platforms whose
    /// servers share their host's ports (Process).
    pub port_range: RangeInclusive<u16>,
    /// API bind address of Process instances that do not choose one.
    pub process_host: String,
    /// When set, port allocation also skips ports something else holds on
    /// the Process workers' host (see [`PortProbe`]).
    pub process_port_probe: Option<PortProbe>,
}

impl std::fmt::Debug for ControlPlaneSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneSettings")
            .field("command_timeout", &self.command_timeout)
            .field("port_range", &self.port_range)
            .field("process_host", &self.process_host)
            .field("process_port_probe", &self.process_port_probe.is_some())
            .finish()
    }
}

impl Default for ControlPlaneSettings {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(30),
            port_range: 21000..=21999,
            process_host: "127.0.0.1".to_string(),
            process_port_probe: None,
        }
    }
}

/// The control plane.
pub struct ControlPlane {
    store: Arc<dyn StateStore>,
    bus: Arc<dyn MessageBus>,
    validator: Arc<dyn ConfigValidator>,
    settings: ControlPlaneSettings,
    recorder: StatusRecorder,
    metrics: crate::metrics::Metrics,
}

impl ControlPlane {
    /// A control plane over the given ports.
    pub fn new(
        store: Arc<dyn StateStore>,
        bus: Arc<dyn MessageBus>,
        validator: Arc<dyn ConfigValidator>,
        settings: ControlPlaneSettings,
    ) -> Self {
        let recorder = StatusRecorder::new(store.clone(), bus.clone(), "control-plane");
        Self {
            store,
            bus,
            validator,
            settings,
            recorder,
            metrics: crate::metrics::Metrics::new(),
        }
    }

    /// The metrics (`/metrics`).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The bus (for event streams).
    pub fn bus(&self) -> &Arc<dyn MessageBus> {
        &self.bus
    }

    /// The recorder of the control plane's own status changes.
    pub fn recorder(&self) -> &StatusRecorder {
        &self.recorder
    }

    /// The store (for readiness checks).
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// The instance `id`, with its spec's revision.
    pub async fn load(&self, id: &InstanceId) -> ApiResult<Record<Instance>> {
        let stored = records::read(self.store.as_ref(), id)
            .await?
            .ok_or_else(|| ApiError::not_found("instance", id.as_str()))?;
        Ok(Record {
            value: stored.instance(),
            revision: stored.spec.revision,
        })
    }

    /// The instance named or identified by `name_or_id` (the original
    /// design addresses instances by name). A generated id is taken as it is
    /// (no read: whoever uses it finds out whether it exists); anything else
    /// is looked up as a name.
    pub async fn resolve(&self, name_or_id: &str) -> ApiResult<InstanceId> {
        if InstanceId::is_generated_form(name_or_id) {
            if let Ok(id) = name_or_id.parse::<InstanceId>() {
                return Ok(id);
            }
        }
        if validate_name(name_or_id).is_ok() {
            if let Some(found) = self.store.get(keys::INSTANCE_NAMES, name_or_id).await? {
                if let Ok(id) = String::from_utf8_lossy(&found.value).parse::<InstanceId>() {
                    return Ok(id);
                }
            }
        }
        Err(ApiError::not_found("instance", name_or_id))
    }

    /// Applies `change` to instance `id` and stores it, retrying when the
    /// record changed meanwhile (a worker recorded a status, say). `change`
    /// runs again on each attempt, against the fresh record.
    pub async fn update<F>(&self, id: &InstanceId, change: F) -> ApiResult<Instance>
    where
        F: FnMut(&mut Instance) -> ApiResult<()> + Send,
    {
        self.modify(id, true, change).await
    }

    /// [`Self::update`], saying with `desired` whether the change is of the
    /// desired side (which moves `updatedAt`) or only bookkeeping. A change
    /// that leaves the spec as it was writes nothing.
    pub(crate) async fn modify<F>(
        &self,
        id: &InstanceId,
        desired: bool,
        mut change: F,
    ) -> ApiResult<Instance>
    where
        F: FnMut(&mut Instance) -> ApiResult<()> + Send,
    {
        self.write_spec(id, |instance| {
            let before = instance.spec();
            change(instance)?;
            if instance.spec() == before {
                return Ok(None);
            }
            if desired {
                instance.updated_at = Utc::now();
            }
            Ok(Some((Vec::new(), instance.clone())))
        })
        .await
        .map(|(instance, _)| instance)
        .map_err(|e| cas_error(id, e))
    }

    /// The one read-modify-write of an instance's spec. `change` is given
    /// the instance (its spec as read in this round, its status as read
    /// with the first round's spec) and returns the writes to make with the spec in one
    /// batch and its output, or `None` to write nothing (the output is then
    /// the instance as read). Only the spec is written: a status recorded
    /// meanwhile never makes it retry, and what `change` does to the status
    /// is not stored. Returns the output and what the batch's other writes
    /// did.
    pub(crate) async fn write_spec<O, F>(
        &self,
        id: &InstanceId,
        mut change: F,
    ) -> Result<(O, Vec<Applied>), CasError<ApiError>>
    where
        O: Send + From<Instance>,
        F: FnMut(&mut Instance) -> ApiResult<Option<(Vec<Write>, O)>> + Send,
    {
        let not_found = || ApiError::not_found("instance", id.as_str());
        // Spec and status in one round trip; the first round starts from
        // this spec. (A record of before the split has its status stored
        // apart first.)
        let mut stored = records::read(self.store.as_ref(), id)
            .await
            .map_err(CasError::Store)?;
        if stored
            .as_ref()
            .is_some_and(|s| s.observed_revision.is_none())
        {
            records::migrate_legacy(self.store.as_ref(), id)
                .await
                .map_err(CasError::Store)?;
            stored = records::read(self.store.as_ref(), id)
                .await
                .map_err(CasError::Store)?;
        }
        let stored = stored.ok_or_else(|| CasError::Rejected(not_found()))?;
        let observed = stored.observed;
        read_modify_write_from(
            self.store.as_ref(),
            Durability::Immediate,
            keys::INSTANCES,
            id.as_str(),
            MAX_ATTEMPTS,
            Some(Some(stored.spec)),
            |current: Option<Record<InstanceSpec>>| {
                let spec = current.ok_or_else(not_found)?.value;
                let mut instance = Instance::from_parts(spec, observed.clone());
                match change(&mut instance)? {
                    None => Ok(Change::Keep(O::from(instance))),
                    Some((also, output)) => Ok(Change::Put {
                        value: instance.spec(),
                        also,
                        output,
                    }),
                }
            },
        )
        .await
    }

    /// Workers of `platform` whose heartbeat has not expired.
    pub async fn live_workers(&self, platform: Option<PlatformType>) -> ApiResult<Vec<WorkerInfo>> {
        Ok(live_workers(self.store.as_ref(), platform, Utc::now()).await?)
    }

    /// Where a command about `instance` goes, given the live workers of its
    /// platform: to the worker that runs (or last ran) it while that worker
    /// lives; else, for a server that may still be running somewhere
    /// (`Unknown`, or active), to a live worker that can reach it (its
    /// platform's [`Reach`]: the same scope, or any worker); else to the
    /// platform's shared channel, where any worker takes it.
    fn route(&self, instance: &Instance, workers: &[WorkerInfo]) -> ApiResult<String> {
        let platform = instance.platform_type;
        let Some(runtime) = instance.runtime.as_ref() else {
            return Ok(platform.command_channel().to_string());
        };
        if workers.iter().any(|w| w.worker_id == runtime.worker_id) {
            return Ok(platform.worker_channel(&runtime.worker_id));
        }
        let may_run =
            instance.status.state.is_active() || instance.status.state == ActualState::Unknown;
        if platform.policy().reach == Reach::AnyWorker || !may_run || runtime.scope.is_empty() {
            return Ok(platform.command_channel().to_string());
        }
        match workers.iter().find(|w| w.scope == runtime.scope) {
            Some(peer) => Ok(platform.worker_channel(&peer.worker_id)),
            None => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "NO_LIVE_WORKER",
                format!(
                    "the server of instance '{}' may still run in {} (its worker {} is gone), and no live worker there can reach it; start a {platform} worker there and retry",
                    instance.name, runtime.scope, runtime.worker_id
                ),
            )),
        }
    }

    /// Sends `command` about `instance` to a worker of its platform and
    /// waits for the reply. Fails fast (503) when no worker is alive.
    pub async fn send(
        &self,
        instance: &Instance,
        command: Command,
        timeout: Duration,
    ) -> ApiResult<Reply> {
        self.send_fenced(instance, command, timeout, None).await
    }

    /// [`Self::send`], fenced with the reconciler lease's `fence` token
    /// (workers refuse it once the lease has moved on).
    pub async fn send_fenced(
        &self,
        instance: &Instance,
        command: Command,
        timeout: Duration,
        fence: Option<u64>,
    ) -> ApiResult<Reply> {
        let workers = self.live_workers(Some(instance.platform_type)).await?;
        if workers.is_empty() {
            return Err(ApiError::no_worker(instance.platform_type));
        }
        let channel = self.route(instance, &workers)?;
        let kind = command.name();
        let envelope = CommandEnvelope::new(instance.id.clone(), command, timeout)
            .fenced(fence)
            .traced(crate::trace::current());
        let sent = std::time::Instant::now();
        let reply = match self.bus.request(&channel, envelope, timeout).await {
            Ok(reply) => reply,
            Err(e) => {
                let e = ApiError::from(e);
                self.metrics.command(kind, e.code, sent.elapsed());
                return Err(e);
            }
        };
        let outcome = match &reply.outcome {
            Outcome::Ok { .. } => "ok".to_string(),
            Outcome::Error { code, .. } => format!("{code:?}"),
        };
        self.metrics.command(kind, &outcome, sent.elapsed());
        match reply.outcome {
            Outcome::Ok {
                status,
                runtime,
                detail,
            } => Ok(Reply {
                status,
                runtime: runtime.map(|r| *r),
                detail,
            }),
            Outcome::Error { code, message } => Err(ApiError::from_worker(code, message)),
        }
    }
}

/// What a worker answered.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// The instance's status after the command, when it changed it.
    pub status: Option<InstanceStatus>,
    /// Its runtime info after the command.
    pub runtime: Option<RuntimeInfo>,
    /// Command-specific data.
    pub detail: Option<serde_json::Value>,
}

/// The API error of a failed read-modify-write of instance `id`.
pub(crate) fn cas_error(id: &InstanceId, e: CasError<ApiError>) -> ApiError {
    cas_error_of(&format!("instance {id}"), e)
}

/// The API error of a failed read-modify-write of `what`.
pub(crate) fn cas_error_of(what: &str, e: CasError<ApiError>) -> ApiError {
    match e {
        CasError::Rejected(e) => e,
        CasError::Store(e) => e.into(),
        CasError::Exhausted { .. } => {
            ApiError::conflict("CONCURRENT_UPDATE", format!("{what} kept changing; retry"))
        }
    }
}
