//! How an instance is stored: its spec and its status apart, one writer
//! each.
//!
//! - The **spec** ([`InstanceSpec`], `instances/<id>`) is what the control
//!   plane decided: name, platform, configuration, server configuration,
//!   policies, desired state, generation, the delete tombstone, and the
//!   reconciler's restart bookkeeping ([`Recovery`]: it decides restarts).
//!   Only the control plane's operations write it.
//! - The **status** ([`ObservedStatus`], `instance-status/<id>`) is what was
//!   observed of the server: state, reason, message, observed generation,
//!   where it runs. Only status recorders write it ([`crate::status`]): the
//!   worker that runs the server, the control plane's watchdog when that
//!   worker is gone, external daemons through the status route.
//!
//! Each has its own revision, so a status change never rewrites the
//! configuration (up to 1 MiB) and a configuration change never retries
//! because a status was recorded meanwhile. Readers see one [`Instance`]
//! (the API's shape, unchanged): [`Instance::from_parts`].
//!
//! Both records carry a `version` ([`RECORD_VERSION`]) and tolerate fields
//! they do not know (a newer peer's). Records written before the split (one
//! `instances/<id>` record with `status` and `runtime` inside, version 0)
//! still read: their status is taken from the old record until the first
//! write of either side stores it apart ([`migrate_legacy`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::DrasiServerConfig;
use crate::instance::{
    ActualState, DesiredState, Instance, InstanceId, InstanceStatus, PlatformType, Reason,
    RuntimeInfo, ServerConfiguration,
};
use crate::keys;
use crate::ports::store::{
    decode, encode, Precondition, Record, Revision, StateStore, StoreError, Write,
};
use crate::restart::{LastFailure, RestartPolicy, UpdateStrategy};

/// The format version this DRaaS writes on its instance records. 0 is the
/// record of before the split (spec and status in one).
pub const RECORD_VERSION: u32 = 1;

/// What the control plane decided about an instance (`instances/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSpec {
    /// The record's format version (0: before the split).
    #[serde(default)]
    pub version: u32,
    /// Server-generated id.
    pub id: InstanceId,
    /// Unique, DNS-label-like name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Where it runs.
    pub platform_type: PlatformType,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its desired side last changed.
    pub updated_at: DateTime<Utc>,
    /// Run or not.
    pub desired_state: DesiredState,
    /// Increases on every change of `configuration` or `server_configuration`.
    pub generation: u64,
    /// How the platform runs it.
    pub server_configuration: ServerConfiguration,
    /// What it does.
    pub configuration: DrasiServerConfig,
    /// When the reconciler restarts it.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// How a configuration change reaches it while it runs.
    #[serde(default)]
    pub update_strategy: UpdateStrategy,
    /// The reconciler's restart bookkeeping.
    #[serde(default)]
    pub recovery: Recovery,
    /// The delete tombstone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The reconciler's restart bookkeeping: how many automatic restarts in a
/// row, when the next is due, what the last one answered. The control plane
/// decides restarts, so it is part of the spec record; the API shows it in
/// `status` (`restartCount`, `nextRetryAt`, `lastFailure`), as before.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    /// Automatic restarts in a row.
    #[serde(default)]
    pub restart_count: u32,
    /// When the next automatic restart is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The failure the last automatic restart answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<LastFailure>,
}

/// What was observed of an instance's server (`instance-status/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedStatus {
    /// The record's format version.
    #[serde(default)]
    pub version: u32,
    /// The state.
    pub state: ActualState,
    /// Why, machine-readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Why, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The configuration generation the server runs with.
    #[serde(default)]
    pub observed_generation: u64,
    /// When this status was observed.
    pub updated_at: DateTime<Utc>,
    /// Where it runs, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeInfo>,
}

impl ObservedStatus {
    /// The status of a new instance.
    pub fn created(now: DateTime<Utc>) -> Self {
        Self {
            version: RECORD_VERSION,
            state: ActualState::Created,
            reason: None,
            message: None,
            observed_generation: 0,
            updated_at: now,
            runtime: None,
        }
    }

    /// The API's status: this, with the reconciler's bookkeeping.
    pub fn status(&self, recovery: &Recovery) -> InstanceStatus {
        InstanceStatus {
            state: self.state,
            reason: self.reason,
            message: self.message.clone(),
            observed_generation: self.observed_generation,
            restart_count: recovery.restart_count,
            next_retry_at: recovery.next_retry_at,
            last_failure: recovery.last_failure.clone(),
            updated_at: self.updated_at,
        }
    }
}

impl Instance {
    /// The instance as readers see it: its spec and its status together.
    pub fn from_parts(spec: InstanceSpec, observed: ObservedStatus) -> Self {
        let status = observed.status(&spec.recovery);
        Self {
            id: spec.id,
            name: spec.name,
            description: spec.description,
            platform_type: spec.platform_type,
            created_at: spec.created_at,
            updated_at: spec.updated_at,
            desired_state: spec.desired_state,
            generation: spec.generation,
            server_configuration: spec.server_configuration,
            configuration: spec.configuration,
            restart_policy: spec.restart_policy,
            update_strategy: spec.update_strategy,
            status,
            runtime: observed.runtime,
            deleted_at: spec.deleted_at,
        }
    }

    /// The spec part (what the control plane writes).
    pub fn spec(&self) -> InstanceSpec {
        InstanceSpec {
            version: RECORD_VERSION,
            id: self.id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            platform_type: self.platform_type,
            created_at: self.created_at,
            updated_at: self.updated_at,
            desired_state: self.desired_state,
            generation: self.generation,
            server_configuration: self.server_configuration.clone(),
            configuration: self.configuration.clone(),
            restart_policy: self.restart_policy,
            update_strategy: self.update_strategy,
            recovery: Recovery {
                restart_count: self.status.restart_count,
                next_retry_at: self.status.next_retry_at,
                last_failure: self.status.last_failure.clone(),
            },
            deleted_at: self.deleted_at,
        }
    }

    /// The status part (what status recorders write).
    pub fn observed(&self) -> ObservedStatus {
        ObservedStatus {
            version: RECORD_VERSION,
            state: self.status.state,
            reason: self.status.reason,
            message: self.status.message.clone(),
            observed_generation: self.status.observed_generation,
            updated_at: self.status.updated_at,
            runtime: self.runtime.clone(),
        }
    }

    /// Takes what a worker observed (its reply's status and runtime),
    /// keeping the reconciler's bookkeeping of this record.
    pub fn observe(&mut self, status: &InstanceStatus, runtime: Option<RuntimeInfo>) {
        self.status.state = status.state;
        self.status.reason = status.reason;
        self.status.message = status.message.clone();
        self.status.observed_generation = status.observed_generation;
        self.status.updated_at = status.updated_at;
        self.runtime = runtime;
    }
}

/// The status part of a record written before the split.
#[derive(Deserialize)]
struct Legacy {
    #[serde(default)]
    status: Option<InstanceStatus>,
    #[serde(default)]
    runtime: Option<RuntimeInfo>,
}

/// The status and bookkeeping a record of before the split held (a new
/// record, with no status inside, reads as just created).
fn legacy_parts(
    id: &InstanceId,
    spec_bytes: &[u8],
    created_at: DateTime<Utc>,
) -> Result<(ObservedStatus, Option<Recovery>), StoreError> {
    let legacy: Legacy = decode(keys::INSTANCES, id.as_str(), spec_bytes)?;
    Ok(match legacy.status {
        Some(status) => (
            ObservedStatus {
                version: RECORD_VERSION,
                state: status.state,
                reason: status.reason,
                message: status.message,
                observed_generation: status.observed_generation,
                updated_at: status.updated_at,
                runtime: legacy.runtime,
            },
            Some(Recovery {
                restart_count: status.restart_count,
                next_retry_at: status.next_retry_at,
                last_failure: status.last_failure,
            }),
        ),
        None => (ObservedStatus::created(created_at), None),
    })
}

/// An instance as stored: both records, each with its revision (`None`
/// for a status not yet stored apart: a record of before the split).
#[derive(Debug, Clone)]
pub struct Stored {
    /// The spec and its revision.
    pub spec: Record<InstanceSpec>,
    /// The status and its revision.
    pub observed: ObservedStatus,
    /// The status record's revision; `None` when it is not stored yet.
    pub observed_revision: Option<Revision>,
}

impl Stored {
    /// The instance as readers see it.
    pub fn instance(&self) -> Instance {
        Instance::from_parts(self.spec.value.clone(), self.observed.clone())
    }

    /// The write that stores the status apart when it is not yet (in the
    /// same batch as a spec write, so the old record's status is not lost).
    pub fn migration(&self) -> Option<Write> {
        if self.observed_revision.is_some() {
            return None;
        }
        Some(Write::Put {
            collection: keys::INSTANCE_STATUS.into(),
            key: self.spec.value.id.to_string(),
            value: encode(&self.observed).ok()?,
            precondition: Precondition::Absent,
        })
    }
}

/// Reads instance `id`: both records in one round trip.
pub async fn read<S: StateStore + ?Sized>(
    store: &S,
    id: &InstanceId,
) -> Result<Option<Stored>, StoreError> {
    let mut found = store
        .get_many(&[
            (keys::INSTANCES, id.as_str()),
            (keys::INSTANCE_STATUS, id.as_str()),
        ])
        .await?;
    let observed = found.pop().flatten();
    let Some(spec) = found.pop().flatten() else {
        return Ok(None);
    };
    Ok(Some(assemble(id, spec, observed)?))
}

/// Both records decoded; a legacy status when the status is not stored
/// apart.
fn assemble(
    id: &InstanceId,
    spec: crate::ports::store::Versioned,
    observed: Option<crate::ports::store::Versioned>,
) -> Result<Stored, StoreError> {
    let mut value: InstanceSpec = decode(keys::INSTANCES, id.as_str(), &spec.value)?;
    let (observed, observed_revision) = match observed {
        Some(o) => (
            decode(keys::INSTANCE_STATUS, id.as_str(), &o.value)?,
            Some(o.revision),
        ),
        None => {
            let (observed, recovery) = legacy_parts(id, &spec.value, value.created_at)?;
            if let Some(recovery) = recovery {
                value.recovery = recovery;
            }
            (observed, None)
        }
    };
    Ok(Stored {
        spec: Record {
            value,
            revision: spec.revision,
        },
        observed,
        observed_revision,
    })
}

/// Reads the spec alone (what a worker checks before it starts a server).
pub async fn read_spec<S: StateStore + ?Sized>(
    store: &S,
    id: &InstanceId,
) -> Result<Option<Record<InstanceSpec>>, StoreError> {
    use crate::ports::store::JsonStore;
    store.get_json(keys::INSTANCES, id.as_str()).await
}

/// Reads instance `id`'s status alone, storing it apart first when its
/// record is of before the split; `None` when the instance does not exist.
pub async fn read_observed<S: StateStore + ?Sized>(
    store: &S,
    id: &InstanceId,
) -> Result<Option<ObservedStatus>, StoreError> {
    use crate::ports::store::JsonStore;
    for _ in 0..2 {
        if let Some(found) = store
            .get_json::<ObservedStatus>(keys::INSTANCE_STATUS, id.as_str())
            .await?
        {
            return Ok(Some(found.value));
        }
        if !migrate_legacy(store, id).await? {
            return Ok(None);
        }
    }
    Err(StoreError::Conflict {
        collection: keys::INSTANCE_STATUS.into(),
        key: id.to_string(),
    })
}

/// Every instance, in id order (both collections, joined).
pub async fn list<S: StateStore + ?Sized>(store: &S) -> Result<Vec<Instance>, StoreError> {
    let specs = store.list(keys::INSTANCES).await?;
    let mut observed: std::collections::HashMap<String, crate::ports::store::Versioned> = store
        .list(keys::INSTANCE_STATUS)
        .await?
        .into_iter()
        .collect();
    specs
        .into_iter()
        .map(|(key, spec)| {
            let id: InstanceId = key.parse().map_err(|_| StoreError::Corrupt {
                collection: keys::INSTANCES.into(),
                key: key.clone(),
                message: "not an instance id".into(),
            })?;
            let status = observed.remove(&key);
            Ok(assemble(&id, spec, status)?.instance())
        })
        .collect()
}

/// The writes that create instance `instance`: its spec and its status,
/// both new.
pub fn create_writes(instance: &Instance) -> Result<Vec<Write>, StoreError> {
    Ok(vec![
        Write::Put {
            collection: keys::INSTANCES.into(),
            key: instance.id.to_string(),
            value: encode(&instance.spec())?,
            precondition: Precondition::Absent,
        },
        Write::Put {
            collection: keys::INSTANCE_STATUS.into(),
            key: instance.id.to_string(),
            value: encode(&instance.observed())?,
            precondition: Precondition::Absent,
        },
    ])
}

/// Stores the status of a record of before the split apart, if it is not
/// yet (a status recorder calls it when it finds no status record). Returns
/// `false` when the instance does not exist.
pub async fn migrate_legacy<S: StateStore + ?Sized>(
    store: &S,
    id: &InstanceId,
) -> Result<bool, StoreError> {
    let Some(stored) = read(store, id).await? else {
        return Ok(false);
    };
    let Some(migration) = stored.migration() else {
        return Ok(true);
    };
    // The spec is written back without the old status inside, at the
    // revision read: both or neither.
    let spec = Write::Put {
        collection: keys::INSTANCES.into(),
        key: id.to_string(),
        value: encode(&InstanceSpec {
            version: RECORD_VERSION,
            ..stored.spec.value.clone()
        })?,
        precondition: Precondition::Revision(stored.spec.revision),
    };
    match store.apply(vec![spec, migration]).await {
        // Someone else migrated it (or changed it) meanwhile: the status
        // record is there now, or the next read finds it.
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(true),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy_record() -> serde_json::Value {
        serde_json::json!({
            "id": "i-legacy", "name": "legacy", "platformType": "Process",
            "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z",
            "desiredState": "Running", "generation": 3,
            "serverConfiguration": {}, "configuration": {},
            "status": {"state": "Failed", "reason": "ProcessExited", "observedGeneration": 2,
                       "restartCount": 4, "updatedAt": "2026-01-01T00:01:00Z"},
            "runtime": {"workerId": "w1", "host": "h", "port": 8080, "endpoint": "http://h:8080"}
        })
    }

    #[test]
    fn a_record_of_before_the_split_reads_with_its_status_and_bookkeeping() {
        let id: InstanceId = "i-legacy".parse().unwrap_or_else(|e| panic!("{e:?}"));
        let bytes = serde_json::to_vec(&legacy_record()).unwrap_or_default();
        let stored = assemble(
            &id,
            crate::ports::store::Versioned {
                value: bytes,
                revision: Revision(7),
            },
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let instance = stored.instance();
        assert_eq!(instance.status.state, ActualState::Failed);
        assert_eq!(instance.status.restart_count, 4);
        assert_eq!(instance.status.observed_generation, 2);
        assert_eq!(
            instance.runtime.as_ref().map(|r| r.worker_id.as_str()),
            Some("w1")
        );
        assert_eq!(stored.spec.value.version, 0);
        assert!(
            stored.migration().is_some(),
            "its status is not stored apart yet"
        );
    }

    #[test]
    fn spec_and_status_make_the_same_instance_they_were_taken_from() {
        let id: InstanceId = "i-legacy".parse().unwrap_or_else(|e| panic!("{e:?}"));
        let bytes = serde_json::to_vec(&legacy_record()).unwrap_or_default();
        let instance = assemble(
            &id,
            crate::ports::store::Versioned {
                value: bytes,
                revision: Revision(1),
            },
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .instance();
        let again = Instance::from_parts(instance.spec(), instance.observed());
        assert_eq!(again, instance);
        // The spec carries no status, the status no configuration.
        let spec = serde_json::to_value(instance.spec()).unwrap_or_default();
        assert!(spec.get("status").is_none() && spec.get("runtime").is_none());
        let observed = serde_json::to_value(instance.observed()).unwrap_or_default();
        assert!(observed.get("configuration").is_none());
        assert_eq!(observed["version"], RECORD_VERSION);
    }
}
