//! Status: the status buffer, pushes from external daemons, platforms.

use chrono::{DateTime, Utc};
use draas_core::instance::{ActualState, InstanceId, PlatformType, Reason};
use draas_core::keys;
use draas_core::messages::StatusChange;
use draas_core::ports::store::decode;
use draas_core::ports::Observation;
use draas_core::status::{RecordError, Recorded};
use serde::{Deserialize, Serialize};

use super::ControlPlane;
use crate::error::{ApiError, ApiResult, FieldError};

/// `POST /api/status/updates`: a status observed by an external daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[derive(schemars::JsonSchema)]
pub struct ExternalStatusUpdate {
    /// The instance.
    pub instance_id: InstanceId,
    /// Its state as observed.
    pub state: ActualState,
    /// Why.
    #[serde(default)]
    pub reason: Option<Reason>,
    /// Details.
    #[serde(default)]
    pub message: Option<String>,
    /// The daemon's name (recorded as `external:<source>`).
    pub source: String,
    /// When it was observed; updates older than the recorded status are
    /// refused as out of order.
    pub observed_at: DateTime<Utc>,
    /// The configuration generation observed, if known.
    #[serde(default)]
    pub observed_generation: Option<u64>,
}

/// `GET /api/status/recent-changes`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(schemars::JsonSchema)]
pub struct RecentChanges {
    /// Changes after the requested cursor, oldest first.
    pub changes: Vec<StatusChange>,
    /// Pass this as `since` to get what comes next.
    pub cursor: u64,
    /// The oldest cursor still in the buffer.
    pub oldest: u64,
    /// Whether changes after `since` were already dropped from the buffer.
    pub truncated: bool,
}

/// Longest `message` accepted from an external daemon.
const MAX_MESSAGE: usize = 8192;

impl ControlPlane {
    /// Records an external daemon's status update.
    pub async fn external_status(&self, update: ExternalStatusUpdate) -> ApiResult<StatusChange> {
        let source_ok = !update.source.is_empty()
            && update.source.len() <= 64
            && update
                .source
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let mut errors = Vec::new();
        if !source_ok {
            errors.push(FieldError {
                path: "/source".into(),
                message: "1-64 characters of letters, digits, '-', '_' and '.'".into(),
                line: None,
            });
        }
        if update
            .message
            .as_ref()
            .is_some_and(|m| m.len() > MAX_MESSAGE)
        {
            errors.push(FieldError {
                path: "/message".into(),
                message: format!("at most {MAX_MESSAGE} bytes"),
                line: None,
            });
        }
        if update.observed_at > Utc::now() + chrono::Duration::minutes(5) {
            errors.push(FieldError {
                path: "/observedAt".into(),
                message: "lies in the future".into(),
                line: None,
            });
        }
        if !errors.is_empty() {
            return Err(ApiError::invalid(
                "INVALID_STATUS_UPDATE",
                "the status update is not valid",
                errors,
            ));
        }
        let mut observation = Observation::now(
            update.instance_id.clone(),
            update.state,
            Some(update.reason.unwrap_or(Reason::External)),
        );
        observation.message = update.message;
        observation.observed_at = update.observed_at;
        observation.observed_generation = update.observed_generation;
        let recorder = self
            .recorder
            .with_source(format!("external:{}", update.source));
        match recorder.record(observation).await {
            Ok(Recorded {
                change: Some(change),
                ..
            }) => Ok(change),
            Ok(Recorded {
                change: None,
                observed,
            }) => {
                // Nothing changed: report the current status as the change.
                Ok(StatusChange {
                    cursor: 0,
                    instance_id: update.instance_id.clone(),
                    old: Some(observed.state),
                    new: observed.state,
                    reason: observed.reason,
                    message: observed.message,
                    source: format!("external:{}", update.source),
                    generation: observed.observed_generation,
                    timestamp: observed.updated_at,
                })
            }
            Err(RecordError::NotFound(id)) => Err(ApiError::not_found("instance", id.as_str())),
            Err(e @ RecordError::Stale { .. }) => {
                Err(ApiError::conflict("OUT_OF_ORDER", e.to_string()))
            }
            Err(RecordError::Store(e)) => Err(e.into()),
        }
    }

    /// Changes after `since`, at most `limit`.
    pub async fn recent_changes(&self, since: u64, limit: usize) -> ApiResult<RecentChanges> {
        if limit == 0 || limit > 1000 {
            return Err(ApiError::bad_request(
                "INVALID_QUERY",
                "limit must be between 1 and 1000",
            ));
        }
        let page = self.store.read_log(keys::STATUS_LOG, since, limit).await?;
        let changes = page
            .entries
            .iter()
            .map(|(cursor, bytes)| {
                let mut change: StatusChange =
                    decode(keys::STATUS_LOG, &cursor.to_string(), bytes)?;
                change.cursor = *cursor;
                Ok(change)
            })
            .collect::<Result<Vec<_>, draas_core::ports::StoreError>>()?;
        let cursor = changes.last().map_or(since.min(page.newest), |c| c.cursor);
        Ok(RecentChanges {
            truncated: page.oldest > since.saturating_add(1) && page.newest > since,
            cursor,
            oldest: page.oldest,
            changes,
        })
    }

    /// Platforms with their live workers.
    pub async fn platforms(&self) -> ApiResult<serde_json::Value> {
        let workers = self.live_workers(None).await?;
        let bundled = self.validator.catalog();
        let platforms: Vec<serde_json::Value> = PlatformType::ALL
            .iter()
            .map(|platform| {
                let live: Vec<_> = workers.iter().filter(|w| w.platform == *platform).collect();
                let capacity: Option<u32> = live.iter().map(|w| w.capacity).sum();
                serde_json::json!({
                    "platformType": platform,
                    "available": !live.is_empty(),
                    "instances": live.iter().map(|w| w.instances).sum::<u32>(),
                    "capacity": capacity,
                    "workers": live,
                    // What a configuration may use, by the runtime that
                    // runs it: checked at create (the bundled runtime's
                    // kinds), or by the server itself (another runtime).
                    "runtimes": [
                        {
                            "runtime": "bundled",
                            "when": "no executablePath or image is named (the default)",
                            "catalog": bundled,
                        },
                        {
                            "runtime": "other",
                            "when": match platform {
                                PlatformType::Process => "serverConfiguration.process.executablePath names another executable (e.g. drasi-server)",
                                PlatformType::Docker => "serverConfiguration.docker.image names another image",
                                PlatformType::Kubernetes => "serverConfiguration.kubernetes.image names another image",
                            },
                            "catalog": serde_json::Value::Null,
                            "note": "its plugins are its own: kinds and plugin fields are checked when it starts",
                        }
                    ],
                })
            })
            .collect();
        Ok(serde_json::json!({ "platforms": platforms }))
    }
}
