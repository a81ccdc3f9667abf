//! Configuration documents: read, and change with JSON Patch.
//!
//! A patch is applied to a copy, the result is validated as a whole
//! (schema, every plugin's fields, the queries' syntax, ports), and only
//! then stored together with its port reservations, in one atomic write.
//! Any failure changes nothing. Each change increases the instance's
//! `generation`, which is also the documents' ETag.

use axum::http::StatusCode;
use draas_core::instance::{
    Instance, InstanceConfiguration, InstanceId, PlatformType, ServerConfiguration,
};
use draas_core::keys;
use draas_core::messages::{Event, EventEnvelope};
use draas_core::patch::{apply_json_patch, apply_json_patch_guarded, PatchError};
use draas_core::ports::store::{read_modify_write, CasError, Change, Record};
use draas_core::ports::StoreError;

use super::ports::{ports_of, reservation_writes};
use super::ControlPlane;
use crate::error::{ApiError, ApiResult, FieldError};

/// The document of `/api/configuration/instances/{id}`.
pub type ConfigurationDocument = InstanceConfiguration;

/// Which documents a PATCH addresses.
enum Target {
    Configuration,
    Server,
}

impl ControlPlane {
    /// Checks `config` as the configuration of instance `id`; issues are
    /// reported with `prefix` before their paths.
    pub(crate) fn check_configuration(
        &self,
        id: &InstanceId,
        config: &InstanceConfiguration,
        prefix: &str,
    ) -> ApiResult<()> {
        let issues = self.validator.validate(&config.to_server_config(id));
        if issues.is_empty() {
            return Ok(());
        }
        let detail = format!(
            "the configuration is not valid: {}",
            issues
                .iter()
                .map(|i| i.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
        Err(ApiError::invalid(
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
        ))
    }

    /// The configuration and its generation.
    pub async fn configuration(&self, id: &InstanceId) -> ApiResult<(InstanceConfiguration, u64)> {
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
    ) -> ApiResult<(InstanceConfiguration, u64)> {
        let instance = self
            .patch(id, patch, if_match, Target::Configuration)
            .await?;
        Ok((instance.configuration, instance.generation))
    }

    /// Applies a JSON Patch to the server configuration.
    pub async fn patch_server_configuration(
        &self,
        id: &InstanceId,
        patch: &[u8],
        if_match: Option<u64>,
    ) -> ApiResult<(ServerConfiguration, u64)> {
        let instance = self.patch(id, patch, if_match, Target::Server).await?;
        Ok((instance.server_configuration, instance.generation))
    }

    async fn patch(
        &self,
        id: &InstanceId,
        patch: &[u8],
        if_match: Option<u64>,
        target: Target,
    ) -> ApiResult<Instance> {
        // The configuration of the last attempt, to name a taken port in it.
        let mut attempted: Option<(PlatformType, InstanceConfiguration)> = None;
        let outcome = read_modify_write(
            self.store.as_ref(),
            keys::INSTANCES,
            id.as_str(),
            super::MAX_ATTEMPTS,
            |current: Option<Record<Instance>>| {
                let mut instance = current
                    .ok_or_else(|| ApiError::not_found("instance", id.as_str()))?
                    .value;
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
                let old_ports = ports_of(&instance.configuration, id);
                match target {
                    Target::Configuration => {
                        let patched = apply_json_patch(&instance.configuration, patch)
                            .map_err(patch_error)?;
                        self.check_configuration(id, &patched, "")?;
                        instance.configuration = patched;
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
                        instance.server_configuration = patched;
                    }
                }
                instance.generation += 1;
                instance.updated_at = chrono::Utc::now();
                let new_ports = ports_of(&instance.configuration, id);
                attempted = Some((instance.platform_type, instance.configuration.clone()));
                let also =
                    reservation_writes(instance.platform_type, id, &old_ports, &new_ports);
                Ok(Change::Put {
                    value: instance.clone(),
                    also,
                    output: instance,
                })
            },
        )
        .await;
        let instance = match outcome {
            Ok((instance, _)) => instance,
            // A port another instance holds.
            Err(CasError::Store(StoreError::Conflict { collection, key }))
                if collection != keys::INSTANCES =>
            {
                let port: u16 = key.parse().unwrap_or_default();
                let Some((platform, configuration)) = attempted else {
                    return Err(ApiError::conflict("CONCURRENT_UPDATE", "retry"));
                };
                return Err(self.port_taken(platform, &configuration, port).await);
            }
            Err(e) => return Err(super::cas_error(id, e)),
        };
        let event = Event::ConfigurationChanged {
            instance_id: id.clone(),
            generation: instance.generation,
        };
        let _ = self.bus.publish(&EventEnvelope::new(event)).await;
        Ok(instance)
    }
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
