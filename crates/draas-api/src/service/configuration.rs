//! Configuration documents: read, and change with JSON Patch or whole.
//!
//! A configuration (created, patched or replaced) goes through one
//! [`ControlPlane::prepare`] step: DRaaS's decisions are settled
//! (`draas_core::config::settle`: the API's address, listened ports,
//! replication slots), the ports DRaaS chooses are allocated, and the
//! result is validated as a whole (schema, every plugin's fields, the
//! queries' syntax, references resolved in the instance's environment,
//! ports) for the runtime that will run it. Only then is it stored,
//! together with its port reservations, in one atomic write. Any failure
//! changes nothing. What DRaaS decided, and what the user should know, come
//! back as warnings. Each change increases the instance's `generation`,
//! which is also the documents' ETag.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use draas_core::config::{set_port, settle, ConfigIssue, DrasiServerConfig, SettleContext};
use draas_core::instance::{Instance, InstanceId, PlatformType, ServerConfiguration};
use draas_core::keys;
use draas_core::messages::{Event, EventEnvelope};
use draas_core::patch::{apply_json_patch, apply_json_patch_guarded, PatchError};
use draas_core::ports::store::CasError;
use draas_core::ports::{CheckTarget, Runtime, StoreError};

use super::ports::{ports_of, reservation_writes};
use super::ControlPlane;
use crate::error::{ApiError, ApiResult, FieldError};

/// The document of `/api/configuration/instances/{id}`: a drasi-server
/// configuration file, whole.
pub type ConfigurationDocument = DrasiServerConfig;

/// A configuration ready to be stored.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Settled, with its ports allocated and checked.
    pub config: DrasiServerConfig,
    /// What DRaaS decided, and what the user should know.
    pub warnings: Vec<ConfigIssue>,
    /// Ports allocated by this step (a conflict on one of them is a race
    /// with another change, retried; on any other, the user's to resolve).
    pub allocated: BTreeSet<u16>,
}

/// Which documents a PATCH addresses.
enum Target {
    Configuration,
    Server,
}

/// A change of a configuration, and what DRaaS says about it.
pub struct Changed<T> {
    /// The document as stored.
    pub document: T,
    /// Its generation.
    pub generation: u64,
    /// Warnings about it.
    pub warnings: Vec<ConfigIssue>,
}

impl ControlPlane {
    /// Who will run an instance of `platform` with `server`.
    fn runtime_of(platform: PlatformType, server: &ServerConfiguration) -> Runtime {
        if server.runs_bundled_runtime(platform) {
            Runtime::Bundled
        } else {
            Runtime::Other
        }
    }

    /// Settles `config` for instance `id` (see the module docs), allocates
    /// the ports DRaaS chooses (avoiding `reserved`) and checks the result;
    /// problems are reported with `prefix` before their paths.
    pub(crate) fn prepare(
        &self,
        id: &InstanceId,
        platform: PlatformType,
        server: &ServerConfiguration,
        config: DrasiServerConfig,
        reserved: &BTreeSet<u16>,
        prefix: &str,
    ) -> ApiResult<Prepared> {
        let lookup = |name: &str| server.environment.get(name).cloned();
        let settled = settle(
            config,
            &SettleContext {
                instance_id: id.as_str(),
                platform,
                process_host: &self.settings.process_host,
                lookup: &lookup,
            },
        );
        let mut config = settled.config;
        let mut warnings = settled.warnings;
        let mut avoid: BTreeSet<u16> = reserved
            .union(&ports_of(&config, server))
            .copied()
            .collect();
        let mut allocated = BTreeSet::new();
        for pointer in &settled.to_allocate {
            let port = self.allocate_port(platform, &avoid)?;
            avoid.insert(port);
            allocated.insert(port);
            set_port(&mut config, pointer, port);
            if pointer != "/port" {
                warnings.push(ConfigIssue::new(
                    pointer.clone(),
                    format!(
                        "set to {port}: a port the server listens on, chosen by DRaaS from its                          range (servers on this platform share their host's ports)"
                    ),
                ));
            }
        }
        let report = self.validator.validate(
            &config,
            &CheckTarget {
                instance_id: id.as_str(),
                environment: &server.environment,
                runtime: Self::runtime_of(platform, server),
            },
        );
        if !report.issues.is_empty() {
            return Err(invalid_configuration(report.issues, prefix));
        }
        warnings.extend(report.warnings);
        Ok(Prepared {
            config,
            warnings,
            allocated,
        })
    }

    /// Checks the stored `config` against a new server configuration (its
    /// environment, its runtime): references must still resolve.
    fn recheck(
        &self,
        id: &InstanceId,
        platform: PlatformType,
        server: &ServerConfiguration,
        config: &DrasiServerConfig,
    ) -> ApiResult<Vec<ConfigIssue>> {
        let report = self.validator.validate(
            config,
            &CheckTarget {
                instance_id: id.as_str(),
                environment: &server.environment,
                runtime: Self::runtime_of(platform, server),
            },
        );
        if report.issues.is_empty() {
            return Ok(report.warnings);
        }
        let mut error = invalid_configuration(report.issues, "/configuration");
        error.code = "INVALID_SERVER_CONFIGURATION";
        error.detail =
            format!(
            "with this server configuration, the instance's configuration would not be valid: {}",
            error.detail.trim_start_matches("the configuration is not valid: ")
        );
        Err(error)
    }

    /// The configuration and its generation.
    pub async fn configuration(&self, id: &InstanceId) -> ApiResult<(DrasiServerConfig, u64)> {
        let instance = self.load(id).await?.value;
        Ok((instance.configuration, instance.generation))
    }

    /// The server configuration and the generation.
    pub async fn server_configuration(
        &self,
        id: &InstanceId,
    ) -> ApiResult<(ServerConfiguration, u64)> {
        let instance = self.load(id).await?.value;
        Ok((instance.server_configuration, instance.generation))
    }

    /// Applies a JSON Patch to the configuration. `if_match` is the
    /// generation the client last saw (412 when it is stale).
    pub async fn patch_configuration(
        &self,
        id: &InstanceId,
        patch: &[u8],
        if_match: Option<u64>,
    ) -> ApiResult<Changed<DrasiServerConfig>> {
        let (instance, warnings) = self
            .patch(id, patch, if_match, Target::Configuration)
            .await?;
        Ok(Changed {
            document: instance.configuration,
            generation: instance.generation,
            warnings,
        })
    }

    /// Applies a JSON Patch to the server configuration.
    pub async fn patch_server_configuration(
        &self,
        id: &InstanceId,
        patch: &[u8],
        if_match: Option<u64>,
    ) -> ApiResult<Changed<ServerConfiguration>> {
        let (instance, warnings) = self.patch(id, patch, if_match, Target::Server).await?;
        Ok(Changed {
            document: instance.server_configuration,
            generation: instance.generation,
            warnings,
        })
    }

    async fn patch(
        &self,
        id: &InstanceId,
        patch: &[u8],
        if_match: Option<u64>,
        target: Target,
    ) -> ApiResult<(Instance, Vec<ConfigIssue>)> {
        let platform = self.load(id).await?.value.platform_type;
        for _ in 0..super::MAX_ATTEMPTS {
            let reserved = self.reserved_ports(platform).await?;
            // What the last attempt tried to store, to name a taken port.
            let mut attempted: Option<(DrasiServerConfig, ServerConfiguration, BTreeSet<u16>)> =
                None;
            let mut warnings = Vec::new();
            let outcome = self
                .write_spec(id, |instance: &mut Instance| {
                    super::instances::refuse_deleted(instance)?;
                    // Checked on every attempt: a retry after a concurrent
                    // change must not apply a patch meant for the old document.
                    if let Some(expected) = if_match {
                        if expected != instance.generation {
                            return Err(ApiError::new(
                                StatusCode::PRECONDITION_FAILED,
                                "STALE_GENERATION",
                                format!(
                                    "If-Match names generation {expected}, but the instance is at generation {}; \
                                     GET it again and reapply your change",
                                    instance.generation
                                ),
                            ));
                        }
                    }
                    let old_ports = ports_of(&instance.configuration, &instance.server_configuration);
                    match target {
                        Target::Configuration => {
                            let patched = apply_json_patch(&instance.configuration, patch)
                                .map_err(patch_error)?;
                            let prepared = self.prepare(
                                id,
                                instance.platform_type,
                                &instance.server_configuration,
                                patched,
                                &reserved,
                                "",
                            )?;
                            instance.configuration = prepared.config;
                            warnings = prepared.warnings;
                            attempted = Some((
                                instance.configuration.clone(),
                                instance.server_configuration.clone(),
                                prepared.allocated,
                            ));
                        }
                        Target::Server => {
                            let patched = apply_json_patch_guarded(
                                &instance.server_configuration,
                                patch,
                                &SECRETS,
                            )
                            .map_err(patch_error)?;
                            let errors: Vec<FieldError> = patched
                                .issues(instance.platform_type)
                                .into_iter()
                                .map(|(path, message)| FieldError { path, message, line: None })
                                .collect();
                            if !errors.is_empty() {
                                return Err(ApiError::invalid(
                                    "INVALID_SERVER_CONFIGURATION",
                                    "the server configuration is not valid",
                                    errors,
                                ));
                            }
                            warnings = self.recheck(
                                id,
                                instance.platform_type,
                                &patched,
                                &instance.configuration,
                            )?;
                            instance.server_configuration = patched;
                        }
                    }
                    instance.generation += 1;
                    instance.updated_at = chrono::Utc::now();
                    let new_ports = ports_of(&instance.configuration, &instance.server_configuration);
                    let also =
                        reservation_writes(instance.platform_type, id, &old_ports, &new_ports);
                    Ok(Some((also, instance.clone())))
                })
                .await;
            let instance = match outcome {
                Ok((instance, _)) => instance,
                // A port another instance holds.
                Err(CasError::Store(StoreError::Conflict { collection, key }))
                    if collection != keys::INSTANCES =>
                {
                    let port: u16 = key.parse().unwrap_or_default();
                    let Some((configuration, server, allocated)) = attempted else {
                        return Err(ApiError::conflict("CONCURRENT_UPDATE", "retry"));
                    };
                    if allocated.contains(&port) {
                        // Another change took the port DRaaS chose: choose again.
                        continue;
                    }
                    return Err(self
                        .port_taken(platform, &configuration, &server, port)
                        .await);
                }
                Err(e) => return Err(super::cas_error(id, e)),
            };
            let event = Event::ConfigurationChanged {
                instance_id: id.clone(),
                generation: instance.generation,
            };
            let _ = self.bus.publish(&EventEnvelope::new(event)).await;
            return Ok((instance, warnings));
        }
        Err(ApiError::conflict(
            "CONCURRENT_UPDATE",
            "could not reserve a port; retry",
        ))
    }
}

/// The 422 of a configuration with `issues`, their paths after `prefix`.
pub(crate) fn invalid_configuration(issues: Vec<ConfigIssue>, prefix: &str) -> ApiError {
    let detail = format!(
        "the configuration is not valid: {}",
        issues
            .iter()
            .map(|i| i.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );
    ApiError::invalid(
        "INVALID_CONFIGURATION",
        detail,
        issues
            .into_iter()
            .map(|i| FieldError {
                path: format!("{prefix}{}", i.path),
                message: i.message,
                line: None,
            })
            .collect(),
    )
}

/// Where the server configuration keeps secrets.
const SECRETS: [&str; 1] = ["/environment"];

fn patch_error(e: PatchError) -> ApiError {
    match &e {
        PatchError::Malformed(_) => ApiError::bad_request("INVALID_PATCH", e.to_string()),
        PatchError::TestFailed { path, .. } => ApiError {
            errors: vec![FieldError {
                path: path.clone(),
                message: "test failed: the value did not match".into(),
                line: None,
            }],
            ..ApiError::conflict("PATCH_TEST_FAILED", e.to_string())
        },
        PatchError::NotApplicable { path, message, .. } => ApiError::invalid(
            "PATCH_NOT_APPLICABLE",
            e.to_string(),
            vec![FieldError {
                path: path.clone(),
                message: message.clone(),
                line: None,
            }],
        ),
        PatchError::SecretAccess { member, .. } => {
            ApiError::invalid(
                "SECRET_NOT_READABLE",
                e.to_string(),
                vec![FieldError {
                path: member.clone(),
                message:
                    "secrets can be replaced or removed, never read, tested, copied or moved out"
                        .into(), line: None }],
            )
        }
        PatchError::Invalid { path, message } => ApiError::invalid(
            "INVALID_CONFIGURATION",
            e.to_string(),
            vec![FieldError {
                path: path.clone(),
                message: message.clone(),
                line: None,
            }],
        ),
    }
}
