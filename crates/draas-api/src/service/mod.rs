//! The control plane's operations, independent of HTTP. Handlers call these;
//! these call the ports (store, bus, validator).
//!
//! Writes are read-modify-write with a revision check ([`ControlPlane::update`]),
//! so control-plane replicas and workers never overwrite each other's
//! changes to one instance record.

mod configuration;
mod instances;
mod ports;
mod status;

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use draas_core::instance::{Instance, InstanceId, PlatformType};
use draas_core::keys;
use draas_core::messages::{Command, CommandEnvelope, Outcome, WorkerInfo};
use draas_core::ports::store::{encode, JsonStore, Precondition, Record};
use draas_core::ports::{ConfigValidator, MessageBus, StateStore, StoreError};
use draas_core::status::StatusRecorder;

pub use configuration::ConfigurationDocument;
pub use instances::{CreateInstance, InstanceList, ListQuery};
pub use status::{ExternalStatusUpdate, RecentChanges};

use crate::error::{ApiError, ApiResult};

/// Read-modify-write attempts before reporting a conflict.
const MAX_ATTEMPTS: usize = 16;

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneSettings {
    /// Deadline of a command sent to a worker (Start gets at least its
    /// start timeout plus a margin).
    pub command_timeout: Duration,
    /// Ports given to instances that do not choose one.
    pub port_range: RangeInclusive<u16>,
    /// API bind address of Process instances that do not choose one.
    pub process_host: String,
}

impl Default for ControlPlaneSettings {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(30),
            port_range: 21000..=21999,
            process_host: "127.0.0.1".to_string(),
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
        }
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

    /// The instance `id`, with its revision.
    pub async fn load(&self, id: &InstanceId) -> ApiResult<Record<Instance>> {
        self.store
            .get_json::<Instance>(keys::INSTANCES, id.as_str())
            .await?
            .ok_or_else(|| ApiError::not_found("instance", id.as_str()))
    }

    /// Applies `change` to instance `id` and stores it, retrying when the
    /// record changed meanwhile (a worker recorded a status, say). `change`
    /// runs again on each attempt, against the fresh record.
    pub async fn update<F>(&self, id: &InstanceId, mut change: F) -> ApiResult<Instance>
    where
        F: FnMut(&mut Instance) -> ApiResult<()> + Send,
    {
        for _ in 0..MAX_ATTEMPTS {
            let record = self.load(id).await?;
            let mut instance = record.value;
            change(&mut instance)?;
            instance.updated_at = Utc::now();
            match self
                .store
                .put(
                    keys::INSTANCES,
                    id.as_str(),
                    encode(&instance)?,
                    Precondition::Revision(record.revision),
                )
                .await
            {
                Ok(_) => return Ok(instance),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(
            "CONCURRENT_UPDATE",
            format!("instance {id} kept changing; retry"),
        ))
    }

    /// Workers of `platform` whose heartbeat has not expired.
    pub async fn live_workers(&self, platform: Option<PlatformType>) -> ApiResult<Vec<WorkerInfo>> {
        let now = Utc::now();
        Ok(self
            .store
            .list_json::<WorkerInfo>(keys::WORKERS)
            .await?
            .into_iter()
            .map(|(_, r)| r.value)
            .filter(|w| w.is_live(now) && platform.is_none_or(|p| w.platform == p))
            .collect())
    }

    /// Sends `command` about `instance` to a worker of its platform and
    /// waits for the reply. Fails fast (503) when no worker is alive.
    pub async fn send(
        &self,
        instance: &Instance,
        command: Command,
        timeout: Duration,
    ) -> ApiResult<Option<serde_json::Value>> {
        let workers = self.live_workers(Some(instance.platform_type)).await?;
        if workers.is_empty() {
            return Err(ApiError::no_worker(instance.platform_type));
        }
        // The worker that runs (or last ran) the instance gets it while it
        // lives; otherwise any worker of the platform, which adopts it.
        let platform = instance.platform_type;
        let channel = match instance.runtime.as_ref().map(|r| r.worker_id.as_str()) {
            Some(owner) if workers.iter().any(|w| w.worker_id == owner) => {
                platform.worker_channel(owner)
            }
            _ => platform.command_channel().to_string(),
        };
        let envelope = CommandEnvelope::new(instance.id.clone(), command, timeout);
        let reply = self.bus.request(&channel, envelope, timeout).await?;
        match reply.outcome {
            Outcome::Ok { detail, .. } => Ok(detail),
            Outcome::Error { code, message } => Err(ApiError::from_worker(code, message)),
        }
    }
}
