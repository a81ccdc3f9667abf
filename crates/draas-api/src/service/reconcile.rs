//! The reconciler's steps (`POST /api/server/instances/{id}/reconcile`).
//!
//! The reconciler plans from a record it read a moment ago; each step names
//! the bookkeeping it was planned on (restart count, generation), and is
//! refused with `409 STALE_PLAN` when the record changed since. So two
//! reconcilers, or one that repeats itself after a lost reply, never
//! restart a server twice for one failure.

use chrono::{DateTime, Utc};
use draas_core::instance::{ActualState, DesiredState, Instance, InstanceId};
use draas_core::messages::{Command, StopSpec};
use draas_core::restart::{LastFailure, RestartMode};
use serde::Deserialize;

use super::ControlPlane;
use crate::error::{ApiError, ApiResult};

/// One step of the reconciler.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    tag = "action",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
#[derive(schemars::JsonSchema)]
pub enum ReconcileStep {
    /// Record when the next automatic restart is due.
    ScheduleRetry {
        /// When.
        at: DateTime<Utc>,
        /// The restarts in a row the plan saw.
        restart_count: u32,
    },
    /// Start the failed server again, counting one more restart in a row.
    Recover {
        /// The restarts in a row the plan saw.
        restart_count: u32,
    },
    /// Forget the restarts in a row of a server that has run long enough.
    ResetRestarts {
        /// The restarts in a row the plan saw.
        restart_count: u32,
    },
    /// Start a server that should run and was never started (`Created`),
    /// or whose worker is gone (`Unknown`: a live worker that can reach it
    /// adopts it, or starts it if it is gone too).
    Start {
        /// The state the plan saw.
        state: ActualState,
    },
    /// Restart the running server with its new configuration.
    ApplyConfiguration {
        /// The generation the plan saw.
        generation: u64,
    },
    /// Stop a server that should not run and may: a stop that never
    /// reached its worker, a server re-adopted by a worker that came back,
    /// a Deployment crash-looping under `desired: Stopped`.
    Stop {
        /// The state the plan saw.
        state: ActualState,
    },
    /// Finish the delete of a tombstoned instance that could not finish
    /// when it was asked for (no live worker could reach its server).
    FinishDelete,
}

fn stale(detail: String) -> ApiError {
    ApiError::conflict("STALE_PLAN", detail)
}

/// Whether `instance` is still as a restart step was planned: meant to run,
/// failed (or stopped), `restart_count` restarts in a row, and its restart
/// policy (as stored now: a reconciler may plan from a copy it keeps)
/// restarts it.
fn still_failed(instance: &Instance, restart_count: u32) -> ApiResult<()> {
    let status = &instance.status;
    if instance.desired_state != DesiredState::Running
        || !matches!(status.state, ActualState::Failed | ActualState::Stopped)
        || status.restart_count != restart_count
    {
        return Err(stale(format!(
            "the instance is now {:?} (desired {:?}) after {} restarts in a row; the plan saw it failed after {restart_count}",
            status.state, instance.desired_state, status.restart_count
        )));
    }
    let policy = &instance.restart_policy;
    let restarts = match (policy.policy, status.state) {
        (RestartMode::Never, _) => false,
        (RestartMode::OnFailure, ActualState::Stopped) => false,
        _ => !policy.exhausted(restart_count),
    };
    if !restarts {
        return Err(stale(format!(
            "its restart policy ({:?}, at most {} restarts in a row) does not restart it {:?} after {restart_count}",
            policy.policy, policy.max_restarts, status.state
        )));
    }
    Ok(())
}

impl ControlPlane {
    /// Executes one step of the reconciler, if the record is still as the
    /// step was planned on and, with a `fence` token, if that is the live
    /// reconciler lease's (`409 STALE_FENCE` otherwise; the command sent
    /// carries it, so workers refuse it too once the lease moves on).
    pub async fn reconcile(
        &self,
        id: &InstanceId,
        step: ReconcileStep,
        fence: Option<u64>,
    ) -> ApiResult<Instance> {
        if let Some(token) = fence {
            self.check_fence(token).await?;
        }
        match step {
            ReconcileStep::Start { state } => {
                let instance = self.load(id).await?.value;
                if instance.desired_state != DesiredState::Running
                    || instance.status.state != state
                    || !matches!(state, ActualState::Created | ActualState::Unknown)
                {
                    return Err(stale(format!(
                        "the instance is now {:?} (desired {:?}); the plan saw it {state:?}",
                        instance.status.state, instance.desired_state
                    )));
                }
                tracing::info!(instance = %id, "starting an instance that should run ({state:?})");
                let spec = self.start_spec(&instance)?;
                let timeout = self.start_timeout(&instance);
                let reply = self
                    .send_fenced(&instance, Command::Start(spec), timeout, fence)
                    .await?;
                self.after(instance, reply).await
            }
            ReconcileStep::ScheduleRetry { at, restart_count } => {
                self.modify(id, false, |instance| {
                    still_failed(instance, restart_count)?;
                    instance.status.next_retry_at = Some(at);
                    Ok(())
                })
                .await
            }
            ReconcileStep::ResetRestarts { restart_count } => {
                self.modify(id, false, |instance| {
                    let status = &mut instance.status;
                    if !matches!(status.state, ActualState::Running | ActualState::Degraded)
                        || status.restart_count != restart_count
                    {
                        return Err(stale(format!(
                            "the instance is now {:?} after {} restarts in a row",
                            status.state, status.restart_count
                        )));
                    }
                    status.restart_count = 0;
                    status.next_retry_at = None;
                    Ok(())
                })
                .await
            }
            ReconcileStep::Recover { restart_count } => {
                let instance = self
                    .modify(id, false, |instance| {
                        still_failed(instance, restart_count)?;
                        let status = &mut instance.status;
                        status.last_failure = Some(LastFailure {
                            reason: status.reason,
                            message: status.message.clone(),
                            at: status.updated_at,
                        });
                        status.restart_count = restart_count + 1;
                        status.next_retry_at = None;
                        Ok(())
                    })
                    .await?;
                self.metrics().restart(instance.platform_type);
                tracing::info!(
                    instance = %id,
                    restarts = restart_count + 1,
                    "restarting a failed instance (restart policy {:?})",
                    instance.restart_policy.policy
                );
                let spec = self.start_spec(&instance)?;
                let timeout = self.start_timeout(&instance);
                let reply = self
                    .send_fenced(&instance, Command::Start(spec), timeout, fence)
                    .await?;
                self.after(instance, reply).await
            }
            ReconcileStep::ApplyConfiguration { generation } => {
                let instance = self.load(id).await?.value;
                if instance.desired_state != DesiredState::Running
                    || !matches!(
                        instance.status.state,
                        ActualState::Running | ActualState::Degraded
                    )
                    || instance.generation != generation
                    || instance.status.observed_generation == generation
                {
                    return Err(stale(format!(
                        "the instance is now {:?} at generation {} running {}; the plan saw generation {generation} to apply",
                        instance.status.state,
                        instance.generation,
                        instance.status.observed_generation
                    )));
                }
                tracing::info!(instance = %id, generation, "applying a new configuration (update strategy restart)");
                let spec = self.start_spec(&instance)?;
                let timeout = self.restart_timeout(&instance);
                let reply = self
                    .send_fenced(&instance, Command::Restart(spec), timeout, fence)
                    .await?;
                self.after(instance, reply).await
            }
            ReconcileStep::FinishDelete => {
                let instance = self.load(id).await?.value;
                if instance.deleted_at.is_none() {
                    return Err(stale(format!(
                        "instance '{}' is not being deleted",
                        instance.name
                    )));
                }
                tracing::info!(instance = %id, "finishing a delete");
                match self.delete(id, false).await? {
                    super::Deletion::Done => Ok(instance),
                    super::Deletion::Pending(why) => Err(ApiError::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "NO_LIVE_WORKER",
                        why,
                    )),
                }
            }
            ReconcileStep::Stop { state } => {
                let instance = self.load(id).await?.value;
                if instance.desired_state != DesiredState::Stopped
                    || instance.status.state != state
                    || !instance.may_run()
                {
                    return Err(stale(format!(
                        "the instance is now {:?} (desired {:?}); the plan saw it {state:?} and meant to stop it",
                        instance.status.state, instance.desired_state
                    )));
                }
                tracing::info!(instance = %id, "stopping an instance that should not run ({state:?})");
                let spec = StopSpec::grace(instance.server_configuration.shutdown_timeout_seconds);
                let timeout = self.stop_timeout(&instance);
                let reply = self
                    .send_fenced(&instance, Command::Stop(spec), timeout, fence)
                    .await?;
                self.after(instance, reply).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_from_their_json_shape_and_refuse_anything_else() {
        let step: ReconcileStep =
            serde_json::from_str(r#"{"action": "recover", "restartCount": 2}"#).unwrap();
        assert_eq!(step, ReconcileStep::Recover { restart_count: 2 });
        let step: ReconcileStep = serde_json::from_str(
            r#"{"action": "scheduleRetry", "at": "2026-11-24T12:00:00Z", "restartCount": 1}"#,
        )
        .unwrap();
        let stop: ReconcileStep =
            serde_json::from_str(r#"{"action": "stop", "state": "Running"}"#).unwrap();
        assert_eq!(
            stop,
            ReconcileStep::Stop {
                state: ActualState::Running
            }
        );
        let start: ReconcileStep =
            serde_json::from_str(r#"{"action": "start", "state": "Unknown"}"#).unwrap();
        assert_eq!(
            start,
            ReconcileStep::Start {
                state: ActualState::Unknown
            }
        );
        assert!(matches!(
            step,
            ReconcileStep::ScheduleRetry {
                restart_count: 1,
                ..
            }
        ));
        for bad in [
            r#"{"action": "explode"}"#,
            r#"{"action": "recover"}"#,
            r#"{"action": "recover", "restartCount": 1, "extra": true}"#,
            r#"{"action": "start"}"#,
            r#"{"action": "start", "state": "Exploded"}"#,
            r#"{"restartCount": 1}"#,
        ] {
            assert!(serde_json::from_str::<ReconcileStep>(bad).is_err(), "{bad}");
        }
    }
}
