//! From what the watches show (an instance's Deployment and its Pods) to
//! what the instance is: a pure function, tested case by case.
//!
//! - no Deployment: [`Observed::Absent`] (deleted);
//! - scaled to zero: [`Observed::ScaledDown`], with the pods still
//!   terminating;
//! - otherwise the server's [`Condition`], from its newest live pod:
//!   - `Ready` when its container is ready and the Deployment available;
//!   - `Failing` with the container's waiting reason (`CrashLoopBackOff`,
//!     `ImagePullBackOff`/`ErrImagePull`, `ErrImageNeverPull`,
//!     `InvalidImageName`, `CreateContainerConfigError`, ...) or its
//!     termination (`OOMKilled`, killed by a signal, an exit code);
//!   - `Waiting`: `Pending` while unscheduled (`Unschedulable`) or not yet
//!     created, `Starting` while the container runs but `/health` does not
//!     answer yet (after a restart, the message says after what).

use draas_core::instance::{ActualState, Reason};
use draas_worker::driver::{signal_name, Condition};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};

use crate::manifests::CONTAINER;

/// What the watches show of one instance's server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Its Deployment does not exist.
    Absent,
    /// Its Deployment is scaled to zero; `pods` are still there
    /// (terminating).
    ScaledDown {
        /// Pods left.
        pods: usize,
    },
    /// Its Deployment wants a server: how that server is.
    Live(Condition),
}

/// See the module docs. `pods` are the instance's pods, terminating ones
/// included.
pub fn observe(deployment: Option<&Deployment>, pods: &[&Pod]) -> Observed {
    let Some(deployment) = deployment else {
        return Observed::Absent;
    };
    let replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    if replicas == 0 {
        return Observed::ScaledDown { pods: pods.len() };
    }
    Observed::Live(condition(deployment, pods))
}

/// Whether the Deployment has an available replica of its current spec.
pub fn is_available(deployment: &Deployment) -> bool {
    let Some(status) = &deployment.status else {
        return false;
    };
    let current = match (deployment.metadata.generation, status.observed_generation) {
        (Some(wanted), Some(observed)) => observed >= wanted,
        _ => false,
    };
    current && status.available_replicas.unwrap_or(0) >= 1
}

/// The newest pod that is not terminating.
fn live_pod<'a>(pods: &[&'a Pod]) -> Option<&'a Pod> {
    pods.iter()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .max_by_key(|p| p.metadata.creation_timestamp.clone())
}

/// The server's container status in `pod`.
fn server_status(pod: &Pod) -> Option<&ContainerStatus> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses
        .iter()
        .find(|s| s.name == CONTAINER)
        .or_else(|| statuses.first())
}

/// The server's condition (the Deployment wants one replica).
pub fn condition(deployment: &Deployment, pods: &[&Pod]) -> Condition {
    let available = is_available(deployment);
    let Some(pod) = live_pod(pods) else {
        if available {
            // The pod cache lags the Deployment's status.
            return Condition::Ready;
        }
        if let Some(failure) = replica_failure(deployment) {
            return Condition::Failing {
                reason: Reason::PlatformError,
                message: format!("Kubernetes cannot create the server's pod: {failure}"),
                exit_code: None,
                crashed: false,
            };
        }
        return waiting(
            ActualState::Pending,
            None,
            "waiting for Kubernetes to create the server's pod",
        );
    };
    let Some(container) = server_status(pod) else {
        if let Some(message) = unschedulable(pod) {
            return waiting(
                ActualState::Pending,
                Some(Reason::Unschedulable),
                &format!("no node can run the server: {message}"),
            );
        }
        return waiting(
            ActualState::Pending,
            None,
            "waiting for a node to start the server",
        );
    };
    let restarts = container.restart_count;
    let state = container.state.as_ref();
    if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
        let reason = w.reason.as_deref().unwrap_or_default();
        let detail = w.message.as_deref().unwrap_or_default();
        let image = container.image.as_str();
        let last = last_termination(container);
        return match reason {
            "CrashLoopBackOff" => Condition::Failing {
                reason: Reason::CrashLoopBackOff,
                message: format!(
                    "the server keeps crashing; Kubernetes restarts it with a growing delay \
                     ({restarts} restart{}){}",
                    if restarts == 1 { "" } else { "s" },
                    last.map(|t| format!("; it last {}", ended(t)))
                        .unwrap_or_default()
                ),
                exit_code: last.map(|t| t.exit_code),
                crashed: true,
            },
            "ImagePullBackOff" | "ErrImagePull" => Condition::Failing {
                reason: Reason::ImagePullBackOff,
                message: join(
                    &format!("Kubernetes cannot pull the image '{image}'"),
                    detail,
                ),
                exit_code: None,
                crashed: false,
            },
            "ErrImageNeverPull" => Condition::Failing {
                reason: Reason::ErrImageNeverPull,
                message: join(
                    &format!(
                        "the image '{image}' is not on the node, and its pull policy is Never"
                    ),
                    detail,
                ),
                exit_code: None,
                crashed: false,
            },
            "InvalidImageName" => Condition::Failing {
                reason: Reason::ImageMissing,
                message: join(&format!("the image name '{image}' is invalid"), detail),
                exit_code: None,
                crashed: false,
            },
            "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
                Condition::Failing {
                    reason: Reason::PlatformError,
                    message: join(
                        &format!("Kubernetes cannot run the server ({reason})"),
                        detail,
                    ),
                    exit_code: None,
                    crashed: false,
                }
            }
            _ => waiting(
                ActualState::Pending,
                None,
                &join(
                    &format!(
                        "the server's container is {}",
                        if reason.is_empty() { "waiting" } else { reason }
                    ),
                    detail,
                ),
            ),
        };
    }
    if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        return Condition::Failing {
            reason: termination_reason(t),
            message: format!("the server {}", ended(t)),
            exit_code: Some(t.exit_code),
            crashed: true,
        };
    }
    if state.and_then(|s| s.running.as_ref()).is_some() || container.ready {
        if container.ready && available {
            return Condition::Ready;
        }
        let message = match last_termination(container) {
            Some(t) if restarts > 0 => format!(
                "Kubernetes restarted the server after it {} ({restarts} restart{}); \
                 waiting for /health",
                ended(t),
                if restarts == 1 { "" } else { "s" }
            ),
            _ if container.ready => "waiting for the Deployment to become available".to_string(),
            _ => "waiting for /health to answer".to_string(),
        };
        return waiting(ActualState::Starting, None, &message);
    }
    waiting(
        ActualState::Pending,
        None,
        "waiting for a node to start the server",
    )
}

fn waiting(state: ActualState, reason: Option<Reason>, message: &str) -> Condition {
    Condition::Waiting {
        state,
        reason,
        message: message.to_string(),
    }
}

fn join(what: &str, detail: &str) -> String {
    if detail.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {detail}")
    }
}

/// How the container's previous run ended, if it ran before.
fn last_termination(container: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    container.last_state.as_ref()?.terminated.as_ref()
}

/// The reason a termination is reported with.
pub fn termination_reason(t: &ContainerStateTerminated) -> Reason {
    if t.reason.as_deref() == Some("OOMKilled") {
        Reason::OomKilled
    } else if signal_of(t).is_some() {
        Reason::KilledBySignal
    } else {
        Reason::ExitedWithCode
    }
}

/// The signal that killed the container: its own report, or an exit code
/// of 128 + n.
fn signal_of(t: &ContainerStateTerminated) -> Option<i32> {
    t.signal.filter(|s| *s > 0).or_else(|| {
        (129..=128 + 64)
            .contains(&t.exit_code)
            .then(|| t.exit_code - 128)
    })
}

/// "exited with code 1", "was killed by signal 9 (SIGKILL)", "was killed
/// for running out of memory (exit code 137)".
fn ended(t: &ContainerStateTerminated) -> String {
    let mut text = if t.reason.as_deref() == Some("OOMKilled") {
        format!(
            "was killed for running out of memory (exit code {})",
            t.exit_code
        )
    } else if let Some(signal) = signal_of(t) {
        format!("was killed by signal {signal}{}", signal_name(signal))
    } else {
        format!("exited with code {}", t.exit_code)
    };
    if let Some(message) = t.message.as_deref().filter(|m| !m.trim().is_empty()) {
        let last = message.trim().lines().last().unwrap_or_default();
        text.push_str(&format!(" ({last})"));
    }
    text
}

/// Why the pod cannot be scheduled, if it cannot.
fn unschedulable(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| c.message.clone().unwrap_or_else(|| "unschedulable".into()))
}

/// Why the Deployment's ReplicaSet cannot create pods (quota, admission),
/// if it cannot.
fn replica_failure(deployment: &Deployment) -> Option<String> {
    deployment
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        .map(|c| {
            c.message
                .clone()
                .or_else(|| c.reason.clone())
                .unwrap_or_default()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateWaiting, PodCondition, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn deployment(replicas: i32, available: i32, observed: i64) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("draas-x-12345678".into()),
                generation: Some(3),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                available_replicas: Some(available),
                observed_generation: Some(observed),
                ..DeploymentStatus::default()
            }),
        }
    }

    fn pod(status: Option<ContainerStatus>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("draas-x-12345678-abc".into()),
                creation_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                container_statuses: status.map(|s| vec![s]),
                ..PodStatus::default()
            }),
        }
    }

    fn container(state: ContainerState, ready: bool, restarts: i32) -> ContainerStatus {
        ContainerStatus {
            name: CONTAINER.into(),
            image: "draas-runtime:e2e".into(),
            ready,
            restart_count: restarts,
            state: Some(state),
            ..ContainerStatus::default()
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..ContainerState::default()
        }
    }

    fn waiting_for(reason: &str, message: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some(message.into()),
            }),
            ..ContainerState::default()
        }
    }

    fn terminated(reason: &str, code: i32) -> ContainerStateTerminated {
        ContainerStateTerminated {
            reason: Some(reason.into()),
            exit_code: code,
            ..ContainerStateTerminated::default()
        }
    }

    fn live(d: &Deployment, pods: &[&Pod]) -> Condition {
        match observe(Some(d), pods) {
            Observed::Live(c) => c,
            other => panic!("not live: {other:?}"),
        }
    }

    #[test]
    fn a_missing_or_scaled_down_deployment_is_not_live() {
        assert_eq!(observe(None, &[]), Observed::Absent);
        let p = pod(None);
        assert_eq!(
            observe(Some(&deployment(0, 0, 3)), &[&p]),
            Observed::ScaledDown { pods: 1 }
        );
        assert_eq!(
            observe(Some(&deployment(0, 0, 3)), &[]),
            Observed::ScaledDown { pods: 0 }
        );
    }

    #[test]
    fn ready_needs_a_ready_container_and_an_available_deployment() {
        let ready = pod(Some(container(running(), true, 0)));
        assert_eq!(live(&deployment(1, 1, 3), &[&ready]), Condition::Ready);
        // The Deployment controller has not caught up with the spec yet.
        assert!(matches!(
            live(&deployment(1, 1, 2), &[&ready]),
            Condition::Waiting {
                state: ActualState::Starting,
                ..
            }
        ));
        let unready = pod(Some(container(running(), false, 0)));
        let Condition::Waiting { state, message, .. } = live(&deployment(1, 0, 3), &[&unready])
        else {
            panic!("not waiting")
        };
        assert_eq!(state, ActualState::Starting);
        assert!(message.contains("/health"), "{message}");
        // No pod in the cache yet, but the Deployment says available.
        assert_eq!(live(&deployment(1, 1, 3), &[]), Condition::Ready);
    }

    #[test]
    fn crash_loops_report_the_restarts_and_the_last_exit() {
        let mut status = container(waiting_for("CrashLoopBackOff", "back-off 10s"), false, 3);
        status.last_state = Some(ContainerState {
            terminated: Some(terminated("Error", 1)),
            ..ContainerState::default()
        });
        let p = pod(Some(status));
        let Condition::Failing {
            reason,
            message,
            exit_code,
            crashed,
        } = live(&deployment(1, 0, 3), &[&p])
        else {
            panic!("not failing")
        };
        assert_eq!(reason, Reason::CrashLoopBackOff);
        assert_eq!(exit_code, Some(1));
        assert!(crashed);
        assert!(
            message.contains("3 restarts") && message.contains("exited with code 1"),
            "{message}"
        );
    }

    #[test]
    fn image_problems_fail_without_a_crash() {
        for (waiting, reason) in [
            ("ImagePullBackOff", Reason::ImagePullBackOff),
            ("ErrImagePull", Reason::ImagePullBackOff),
            ("ErrImageNeverPull", Reason::ErrImageNeverPull),
            ("InvalidImageName", Reason::ImageMissing),
            ("CreateContainerConfigError", Reason::PlatformError),
        ] {
            let p = pod(Some(container(
                waiting_for(waiting, "something specific"),
                false,
                0,
            )));
            let Condition::Failing {
                reason: got,
                message,
                crashed,
                exit_code,
            } = live(&deployment(1, 0, 3), &[&p])
            else {
                panic!("{waiting}: not failing")
            };
            assert_eq!(got, reason, "{waiting}");
            assert!(!crashed && exit_code.is_none(), "{waiting}");
            assert!(
                message.contains("something specific"),
                "{waiting}: {message}"
            );
        }
        // Creating the container is just waiting.
        let creating = pod(Some(container(
            waiting_for("ContainerCreating", ""),
            false,
            0,
        )));
        assert!(matches!(
            live(&deployment(1, 0, 3), &[&creating]),
            Condition::Waiting {
                state: ActualState::Pending,
                ..
            }
        ));
    }

    #[test]
    fn terminations_name_out_of_memory_signals_and_exit_codes() {
        for (reason, code, expected, words) in [
            ("OOMKilled", 137, Reason::OomKilled, "out of memory"),
            ("Error", 137, Reason::KilledBySignal, "SIGKILL"),
            ("Error", 2, Reason::ExitedWithCode, "exited with code 2"),
            ("Completed", 0, Reason::ExitedWithCode, "exited with code 0"),
        ] {
            let p = pod(Some(container(
                ContainerState {
                    terminated: Some(terminated(reason, code)),
                    ..ContainerState::default()
                },
                false,
                0,
            )));
            let Condition::Failing {
                reason: got,
                message,
                exit_code,
                crashed,
            } = live(&deployment(1, 0, 3), &[&p])
            else {
                panic!("{reason}: not failing")
            };
            assert_eq!(got, expected, "{reason} {code}");
            assert_eq!(exit_code, Some(code));
            assert!(crashed);
            assert!(message.contains(words), "{message}");
        }
    }

    #[test]
    fn a_restarted_server_is_starting_and_says_after_what() {
        let mut status = container(running(), false, 1);
        status.last_state = Some(ContainerState {
            terminated: Some(terminated("OOMKilled", 137)),
            ..ContainerState::default()
        });
        let p = pod(Some(status));
        let Condition::Waiting { state, message, .. } = live(&deployment(1, 0, 3), &[&p]) else {
            panic!("not waiting")
        };
        assert_eq!(state, ActualState::Starting);
        assert!(
            message.contains("out of memory") && message.contains("(1 restart)"),
            "{message}"
        );
    }

    #[test]
    fn unscheduled_and_uncreated_pods_are_pending() {
        let mut p = pod(None);
        if let Some(status) = p.status.as_mut() {
            status.conditions = Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some(
                    "0/1 nodes are available: 1 node(s) didn't match node selector.".into(),
                ),
                ..PodCondition::default()
            }]);
        }
        let Condition::Waiting {
            state,
            reason,
            message,
        } = live(&deployment(1, 0, 3), &[&p])
        else {
            panic!("not waiting")
        };
        assert_eq!(
            (state, reason),
            (ActualState::Pending, Some(Reason::Unschedulable))
        );
        assert!(message.contains("node selector"), "{message}");

        assert!(matches!(
            live(&deployment(1, 0, 3), &[&pod(None)]),
            Condition::Waiting {
                state: ActualState::Pending,
                reason: None,
                ..
            }
        ));
        assert!(matches!(
            live(&deployment(1, 0, 3), &[]),
            Condition::Waiting {
                state: ActualState::Pending,
                ..
            }
        ));
        let mut quota = deployment(1, 0, 3);
        if let Some(status) = quota.status.as_mut() {
            status.conditions = Some(vec![DeploymentCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                message: Some("exceeded quota: pods".into()),
                ..DeploymentCondition::default()
            }]);
        }
        let Condition::Failing { message, .. } = live(&quota, &[]) else {
            panic!("not failing")
        };
        assert!(message.contains("exceeded quota"), "{message}");
    }

    #[test]
    fn terminating_pods_are_not_the_server() {
        let mut old = pod(Some(container(running(), true, 0)));
        old.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        // Only a terminating pod: no live pod, Deployment not available.
        assert!(matches!(
            live(&deployment(1, 0, 3), &[&old]),
            Condition::Waiting {
                state: ActualState::Pending,
                ..
            }
        ));
    }
}
