//! Instance lifecycle: create, list, read, start, stop, restart, delete.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use draas_core::config::{ConfigIssue, DrasiServerConfig};
use draas_core::instance::{
    validate_name, ActualState, DesiredState, Instance, InstanceId, InstanceStatus, PlatformType,
    ServerConfiguration,
};
use draas_core::keys;
use draas_core::messages::{
    Command, Event, EventEnvelope, LogStream, LogsSpec, QueryResultsSpec, StartSpec, StatusChange,
    StopSpec,
};
use draas_core::ports::store::{encode, read_modify_write, Change, Precondition, Record, Write};
use draas_core::ports::StoreError;
use draas_core::records::{self, InstanceSpec};
use draas_core::restart::{RestartPolicy, UpdateStrategy};
use serde::{Deserialize, Serialize};

use super::ports::{ports_of, reservation_writes};
use super::{ControlPlane, Reply};
use crate::error::{ApiError, ApiResult, FieldError};

/// `POST /api/server/instances`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(schemars::JsonSchema)]
pub struct CreateInstance {
    /// Unique, DNS-label-like.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// `Process` (the default, as in the original design), `Docker` or
    /// `Kubernetes` (`AKS` accepted).
    #[serde(default = "default_platform")]
    pub platform_type: PlatformType,
    /// How to run it; defaults apply when absent.
    #[serde(default)]
    pub server_configuration: Option<ServerConfiguration>,
    /// What it does: a drasi-server configuration file, whole (an empty
    /// server on an allocated port when absent).
    #[serde(default)]
    pub configuration: Option<DrasiServerConfig>,
    /// When the reconciler restarts it (default: on failure, backoff
    /// from 1 s to 60 s, at most 10 in a row).
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// How a configuration change reaches it while it runs (default:
    /// `restart`).
    #[serde(default)]
    pub update_strategy: UpdateStrategy,
}

/// Refuses a change to an instance that is being deleted.
pub(super) fn refuse_deleted(instance: &Instance) -> ApiResult<()> {
    if instance.deleted_at.is_some() || instance.status.state == ActualState::Deleting {
        return Err(ApiError::conflict(
            "INVALID_STATE",
            format!("instance '{}' is being deleted", instance.name),
        ));
    }
    Ok(())
}

fn default_platform() -> PlatformType {
    PlatformType::Process
}

/// A created instance, and what DRaaS says about its configuration.
#[derive(Debug, Clone)]
pub struct Created {
    /// The instance.
    pub instance: Instance,
    /// What DRaaS decided in its configuration, and what its user should
    /// know (keys the runtime ignores, ...).
    pub warnings: Vec<ConfigIssue>,
}

/// `GET /api/server/instances` query.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(schemars::JsonSchema)]
pub struct ListQuery {
    /// Only this platform.
    pub platform_type: Option<PlatformType>,
    /// Only this actual state.
    pub state: Option<ActualState>,
    /// Only names containing this.
    pub name: Option<String>,
    /// Skip this many (after filtering).
    #[serde(default)]
    pub offset: usize,
    /// Return at most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// A page of instances.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(schemars::JsonSchema)]
pub struct InstanceList {
    /// The page.
    pub items: Vec<Instance>,
    /// Matching instances in all pages.
    pub total: usize,
    /// Offset of this page.
    pub offset: usize,
    /// Page size asked for.
    pub limit: usize,
}

/// What a user's stop did.
#[derive(Debug, Clone)]
pub enum Stopping {
    /// The server is stopped (or nothing ran).
    Done(Instance),
    /// No live worker can reach the server now; the reconciler stops it
    /// when one returns.
    Pending {
        /// The instance (desired: `Stopped`).
        instance: Instance,
        /// Why it is pending.
        why: String,
    },
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// The server, its files and its records are gone.
    Done,
    /// Tombstoned, but no live worker can reach the server now: the
    /// reconciler finishes the delete when one returns. Why.
    Pending(String),
}

/// Longest description accepted.
const MAX_DESCRIPTION: usize = 4096;

impl ControlPlane {
    /// Creates an instance (desired: Stopped; actual: Created).
    pub async fn create(&self, request: CreateInstance) -> ApiResult<Created> {
        let mut errors = Vec::new();
        if let Err(e) = validate_name(&request.name) {
            errors.push(FieldError {
                path: "/name".into(),
                message: e.0,
                line: None,
            });
        }
        if request.description.len() > MAX_DESCRIPTION {
            errors.push(FieldError {
                path: "/description".into(),
                message: format!("at most {MAX_DESCRIPTION} bytes"),
                line: None,
            });
        }
        let platform = request.platform_type;
        let server_configuration = request.server_configuration.map_or_else(
            || ServerConfiguration::for_platform(platform),
            |given| given.with_section_of(platform),
        );
        errors.extend(
            server_configuration
                .issues(platform)
                .into_iter()
                .map(|(path, message)| FieldError {
                    path: format!("/serverConfiguration{path}"),
                    message,
                    line: None,
                }),
        );
        errors.extend(
            request
                .restart_policy
                .issues()
                .into_iter()
                .map(|(path, message)| FieldError {
                    path: format!("/restartPolicy{path}"),
                    message,
                    line: None,
                }),
        );
        if !errors.is_empty() {
            return Err(ApiError::invalid(
                "INVALID_INSTANCE",
                "the instance is not valid",
                errors,
            ));
        }

        let id = InstanceId::generate();
        let mut given = request.configuration.unwrap_or_default();
        // An empty host (the original create body's way of saying "any")
        // is the platform's choice.
        if given.static_host() == Some("") {
            given.host = None;
        }
        for _ in 0..super::MAX_ATTEMPTS {
            let reserved = self.reserved_ports(platform).await?;
            let prepared = self.prepare(
                &id,
                platform,
                &server_configuration,
                given.clone(),
                &reserved,
                "/configuration",
            )?;
            let configuration = prepared.config;
            let now = Utc::now();
            let instance = Instance {
                id: id.clone(),
                name: request.name.clone(),
                description: request.description.clone(),
                platform_type: platform,
                created_at: now,
                updated_at: now,
                desired_state: DesiredState::Stopped,
                generation: 1,
                server_configuration: server_configuration.clone(),
                configuration: configuration.clone(),
                restart_policy: request.restart_policy,
                update_strategy: request.update_strategy,
                status: InstanceStatus::created(now),
                runtime: None,
                deleted_at: None,
            };
            // The spec and the status, both new.
            let mut writes = records::create_writes(&instance)?;
            writes.extend([Write::Put {
                collection: keys::INSTANCE_NAMES.into(),
                key: instance.name.clone(),
                value: id.as_str().as_bytes().to_vec(),
                precondition: Precondition::Absent,
            }]);
            writes.extend(reservation_writes(
                platform,
                &id,
                &BTreeSet::new(),
                &ports_of(&configuration, &server_configuration),
            ));
            let (created, entry) = Self::own_change(&instance, None, ActualState::Created)?;
            writes.push(entry);
            match self.store.apply(writes).await {
                Ok(applied) => {
                    let cursor = applied.last().and_then(|a| a.cursor());
                    self.announce_change(created, cursor).await;
                    return Ok(Created {
                        instance,
                        warnings: prepared.warnings,
                    });
                }
                Err(StoreError::Conflict { collection, key })
                    if collection == keys::INSTANCE_NAMES =>
                {
                    return Err(ApiError::conflict(
                        "NAME_TAKEN",
                        format!("an instance named '{key}' already exists"),
                    ));
                }
                Err(StoreError::Conflict { collection, key })
                    if collection == keys::port_reservations(platform) =>
                {
                    let port: u16 = key.parse().unwrap_or_default();
                    if prepared.allocated.contains(&port) {
                        // Another creation took the allocated port first.
                        continue;
                    }
                    let mut error = self
                        .port_taken(platform, &configuration, &server_configuration, port)
                        .await;
                    for e in &mut error.errors {
                        e.path = format!("/configuration{}", e.path);
                    }
                    return Err(error);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(
            "CONCURRENT_UPDATE",
            "could not reserve a port; retry",
        ))
    }

    /// Every instance, oldest first.
    pub async fn all_instances(&self) -> ApiResult<Vec<Instance>> {
        Ok(records::list(self.store.as_ref()).await?)
    }

    /// Instances matching `query`, oldest first.
    pub async fn list(&self, query: ListQuery) -> ApiResult<InstanceList> {
        let limit = query.limit.unwrap_or(100);
        if limit == 0 || limit > 1000 {
            return Err(ApiError::bad_request(
                "INVALID_QUERY",
                "limit must be between 1 and 1000",
            ));
        }
        let matching: Vec<Instance> = self
            .all_instances()
            .await?
            .into_iter()
            .filter(|i| query.platform_type.is_none_or(|p| i.platform_type == p))
            .filter(|i| query.state.is_none_or(|s| i.status.state == s))
            .filter(|i| query.name.as_deref().is_none_or(|n| i.name.contains(n)))
            .collect();
        let total = matching.len();
        let items = matching
            .into_iter()
            .skip(query.offset)
            .take(limit)
            .collect();
        Ok(InstanceList {
            items,
            total,
            offset: query.offset,
            limit,
        })
    }

    /// Starts the instance and waits for the worker's result.
    pub async fn start(&self, id: &InstanceId) -> ApiResult<Instance> {
        let instance = self.run_by_request(id).await?;
        let spec = self.start_spec(&instance)?;
        let timeout = self.start_timeout(&instance);
        let reply = self.send(&instance, Command::Start(spec), timeout).await?;
        self.after(instance, reply).await
    }

    /// The instance as a worker's reply left it: the status and runtime
    /// info the worker recorded, on the record read before the command (no
    /// second read when the reply carries them).
    pub(super) async fn after(&self, mut instance: Instance, reply: Reply) -> ApiResult<Instance> {
        match reply.status {
            Some(status) => {
                instance.observe(&status, reply.runtime);
                Ok(instance)
            }
            None => Ok(self.load(&instance.id).await?.value),
        }
    }

    /// Stops the instance and waits for the worker's result. When no live
    /// worker can reach its server now (its worker is gone, and no other
    /// of its scope lives), the stop is pending: desired is `Stopped`, and
    /// the reconciler stops the server as soon as a worker that can reach
    /// it returns (and re-adopts it).
    pub async fn stop(&self, id: &InstanceId) -> ApiResult<Stopping> {
        let instance = self.set_desired(id, DesiredState::Stopped).await?;
        if !instance.may_run() {
            // Nothing runs: nothing to ask a worker.
            return Ok(Stopping::Done(instance));
        }
        let spec = StopSpec::grace(instance.server_configuration.shutdown_timeout_seconds);
        let timeout = self.stop_timeout(&instance);
        match self.send(&instance, Command::Stop(spec), timeout).await {
            Ok(reply) => Ok(Stopping::Done(self.after(instance, reply).await?)),
            Err(e) if e.code == "NO_LIVE_WORKER" => {
                tracing::info!(instance = %id, "stop pending: {}", e.detail);
                Ok(Stopping::Pending {
                    instance,
                    why: format!(
                        "no live worker can reach the server now ({}); it is stopped when one returns",
                        e.detail
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Restarts the instance with its current configuration.
    pub async fn restart(&self, id: &InstanceId) -> ApiResult<Instance> {
        let instance = self.run_by_request(id).await?;
        let spec = self.start_spec(&instance)?;
        let timeout = self.restart_timeout(&instance);
        let reply = self
            .send(&instance, Command::Restart(spec), timeout)
            .await?;
        self.after(instance, reply).await
    }

    /// Deletes the instance, in three phases:
    /// 1. a tombstone in its record (`deletedAt`, desired `Stopped`): from
    ///    then on no start is admitted (the control plane refuses them, and
    ///    a worker refuses a start queued behind the delete);
    /// 2. the worker removes the server and its files (replication slots
    ///    included);
    /// 3. the record, its name and its ports are released.
    ///
    /// When no live worker can reach the server now, the delete is pending
    /// after phase 1: the reconciler finishes it when one returns. With
    /// `force`, a record whose worker is gone is removed anyway.
    pub async fn delete(&self, id: &InstanceId, force: bool) -> ApiResult<Deletion> {
        let instance = self
            .update(id, |instance| {
                instance.desired_state = DesiredState::Stopped;
                instance.deleted_at.get_or_insert_with(Utc::now);
                Ok(())
            })
            .await?;
        if instance.status.state != ActualState::Created {
            let mut spec = StopSpec::grace(instance.server_configuration.shutdown_timeout_seconds);
            // Replication slots of its postgres sources go with it.
            let has_slots = instance
                .configuration
                .all_sources()
                .iter()
                .any(|(_, s)| s.kind == "postgres");
            if has_slots {
                spec.release_slots = self.start_spec(&instance).ok().map(Box::new);
            }
            match self
                .send(
                    &instance,
                    Command::Delete(spec),
                    self.stop_timeout(&instance),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if force && e.status == StatusCode::SERVICE_UNAVAILABLE => {
                    tracing::warn!(instance = %id, "deleting without its worker (force): {}", e.detail);
                }
                Err(e) if e.code == "NO_LIVE_WORKER" => {
                    tracing::info!(instance = %id, "delete pending: {}", e.detail);
                    return Ok(Deletion::Pending(format!(
                        "no live worker can reach the server now ({}); it is deleted when one returns, or with ?force=true",
                        e.detail
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        // Removed meanwhile (the reconciler finished the delete)?
        let Some(observed) = records::read_observed(self.store.as_ref(), id).await? else {
            return Ok(Deletion::Done);
        };
        let (removed, applied) = read_modify_write(
            self.store.as_ref(),
            keys::INSTANCES,
            id.as_str(),
            super::MAX_ATTEMPTS,
            |current: Option<Record<InstanceSpec>>| {
                let Some(current) = current else {
                    return Ok(Change::Keep(None));
                };
                let instance = Instance::from_parts(current.value, observed.clone());
                let mut also = vec![
                    Write::Delete {
                        collection: keys::INSTANCE_STATUS.into(),
                        key: id.to_string(),
                        precondition: Precondition::None,
                    },
                    Write::Delete {
                        collection: keys::INSTANCE_NAMES.into(),
                        key: instance.name.clone(),
                        precondition: Precondition::None,
                    },
                    Write::Delete {
                        collection: keys::DATA_PLANE.into(),
                        key: id.to_string(),
                        precondition: Precondition::None,
                    },
                ];
                also.extend(reservation_writes(
                    instance.platform_type,
                    id,
                    &ports_of(&instance.configuration, &instance.server_configuration),
                    &BTreeSet::new(),
                ));
                let (deleting, entry) = Self::own_change(
                    &instance,
                    Some(instance.status.state),
                    ActualState::Deleting,
                )?;
                also.push(entry);
                Ok(Change::Delete {
                    also,
                    output: Some(deleting),
                })
            },
        )
        .await
        .map_err(|e| super::cas_error(id, e))?;
        let Some(removed) = removed else {
            return Ok(Deletion::Done);
        };
        let cursor = applied.last().and_then(|a| a.cursor());
        self.announce_change(removed, cursor).await;
        let _ = self
            .bus
            .publish(&EventEnvelope::new(Event::InstanceDeleted {
                instance_id: id.clone(),
            }))
            .await;
        Ok(Deletion::Done)
    }

    /// The instance's status and runtime info, plus the worker's live view
    /// (process and Drasi components) when it runs.
    pub async fn runtime_status(&self, id: &InstanceId) -> ApiResult<serde_json::Value> {
        let instance = self.load(id).await?.value;
        let live = if instance.status.state.is_active() {
            match self
                .send(&instance, Command::Status, self.settings.command_timeout)
                .await
            {
                Ok(reply) => reply.detail,
                Err(e) => Some(serde_json::json!({ "error": e.detail, "code": e.code })),
            }
        } else {
            None
        };
        Ok(serde_json::json!({
            "instanceId": instance.id,
            "desiredState": instance.desired_state,
            "generation": instance.generation,
            "status": instance.status,
            "runtime": instance.runtime,
            "live": live,
        }))
    }

    /// The current result rows of the instance's query `query`, read by
    /// its worker from the server.
    pub async fn query_results(
        &self,
        id: &InstanceId,
        query: &str,
    ) -> ApiResult<Vec<serde_json::Value>> {
        let instance = self.load(id).await?.value;
        if !instance
            .configuration
            .all_queries()
            .iter()
            .any(|(_, q)| q.id == query)
        {
            return Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "NO_SUCH_QUERY",
                format!(
                    "the configuration of '{}' has no query '{}'",
                    instance.name,
                    query.escape_debug()
                ),
            ));
        }
        if !instance.status.state.is_active() {
            return Err(ApiError::conflict(
                "INVALID_STATE",
                format!(
                    "'{}' is {:?}: its server does not run",
                    instance.name, instance.status.state
                ),
            ));
        }
        let reply = self
            .send(
                &instance,
                Command::QueryResults(QueryResultsSpec {
                    query: query.to_string(),
                }),
                self.settings.command_timeout,
            )
            .await?;
        Ok(reply
            .detail
            .and_then(|d| serde_json::from_value(d["rows"].clone()).ok())
            .unwrap_or_default())
    }

    /// The last `tail` lines of the server's output.
    pub async fn logs(
        &self,
        id: &InstanceId,
        tail: usize,
        stream: LogStream,
    ) -> ApiResult<Vec<String>> {
        let instance = self.load(id).await?.value;
        if instance.status.state == ActualState::Created {
            return Ok(Vec::new());
        }
        let reply = self
            .send(
                &instance,
                Command::Logs(LogsSpec { tail, stream }),
                self.settings.command_timeout,
            )
            .await?;
        Ok(reply
            .detail
            .and_then(|d| serde_json::from_value(d["lines"].clone()).ok())
            .unwrap_or_default())
    }

    /// Desired: Running, by a user's request: restarts in a row start again
    /// from zero (the user has looked at it), and no automatic restart is
    /// pending any more.
    async fn run_by_request(&self, id: &InstanceId) -> ApiResult<Instance> {
        self.update(id, |instance| {
            refuse_deleted(instance)?;
            instance.desired_state = DesiredState::Running;
            instance.status.restart_count = 0;
            instance.status.next_retry_at = None;
            Ok(())
        })
        .await
    }

    async fn set_desired(&self, id: &InstanceId, desired: DesiredState) -> ApiResult<Instance> {
        self.update(id, |instance| {
            refuse_deleted(instance)?;
            instance.desired_state = desired;
            Ok(())
        })
        .await
    }

    /// What a worker needs to launch `instance`.
    pub(crate) fn start_spec(&self, instance: &Instance) -> ApiResult<StartSpec> {
        StartSpec::render(
            instance.id.as_str(),
            &instance.name,
            instance.generation,
            &instance.configuration,
            instance.server_configuration.clone(),
        )
        .map_err(|e| {
            ApiError::invalid(
                "INVALID_CONFIGURATION",
                format!("the configuration cannot be started: {e}"),
                Vec::new(),
            )
        })
    }

    pub(super) fn start_timeout(&self, instance: &Instance) -> Duration {
        draas_core::limits::start_deadline(
            instance.server_configuration.start_timeout_seconds,
            self.settings.command_timeout,
        )
    }

    pub(super) fn stop_timeout(&self, instance: &Instance) -> Duration {
        draas_core::limits::stop_deadline(
            instance.server_configuration.shutdown_timeout_seconds,
            self.settings.command_timeout,
        )
    }

    pub(super) fn restart_timeout(&self, instance: &Instance) -> Duration {
        draas_core::limits::restart_deadline(
            instance.server_configuration.start_timeout_seconds,
            instance.server_configuration.shutdown_timeout_seconds,
            self.settings.command_timeout,
        )
    }

    /// A change made by the control plane itself (created, deleted), and
    /// the write that puts it in the status buffer, for the batch that makes
    /// the change: the two are stored together or not at all.
    fn own_change(
        instance: &Instance,
        old: Option<ActualState>,
        new: ActualState,
    ) -> ApiResult<(StatusChange, Write)> {
        let change = StatusChange {
            cursor: 0,
            instance_id: instance.id.clone(),
            old,
            new,
            reason: Some(draas_core::instance::Reason::Requested),
            message: None,
            source: "control-plane".into(),
            generation: instance.status.observed_generation,
            timestamp: Utc::now(),
        };
        let entry = Write::Append {
            log: keys::STATUS_LOG.to_string(),
            value: encode(&change)?,
            capacity: keys::STATUS_LOG_CAPACITY,
        };
        Ok((change, entry))
    }

    /// Announces a change stored with its buffer entry at `cursor`.
    async fn announce_change(&self, mut change: StatusChange, cursor: Option<u64>) {
        change.cursor = cursor.unwrap_or_default();
        let _ = self
            .bus
            .publish(&EventEnvelope::new(Event::InstanceStatusChanged(change)))
            .await;
    }
}
