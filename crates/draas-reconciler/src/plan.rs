//! The planner: `(instance, now) → decision`, pure.
//!
//! Everything it needs is in the instance record (desired state,
//! generation, status with its restart bookkeeping, policies), so a
//! reconciler that restarts loses nothing: the next pass decides the same.
//! Commands in flight are left alone (`Pending`, `Starting`, `Stopping`,
//! `Deleting`): their outcome arrives as a status change and is planned
//! then.
//!
//! It converges both ways: what should run is started (or restarted by its
//! policy), and what should not run but may (a stop that never reached its
//! worker, a server re-adopted by a worker that came back, a Deployment
//! crash-looping under `desired: Stopped`) is stopped.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use chrono::{DateTime, Utc};
use draas_core::instance::{ActualState, DesiredState, Instance};
use draas_core::restart::{RestartMode, UpdateStrategy};

/// Settings of the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanSettings {
    /// How long a user's change (desired state, configuration) is left to
    /// the user's own command before the reconciler acts on it: a
    /// `PATCH` followed by the user's `restart`, or a `start` on its way
    /// to the worker, is not doubled.
    pub settle: Duration,
}

impl Default for PlanSettings {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(2),
        }
    }
}

/// What the reconciler does about an instance now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It is as asked, or a command is in flight.
    Nothing,
    /// Nothing now; look again at this time.
    WaitUntil(DateTime<Utc>),
    /// This.
    Act(Action),
}

/// A step towards what was asked. Each names the bookkeeping it expects
/// (restart count, generation): the control plane refuses a step planned
/// on a record that changed since, so two reconcilers, or one that
/// repeats itself, never restart twice for one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Record when the next restart is due, so the status shows it.
    ScheduleRetry {
        /// When.
        at: DateTime<Utc>,
        /// The restarts in a row so far.
        restarts: u32,
    },
    /// Start the failed server again; it becomes restart `restarts + 1`.
    Recover {
        /// The restarts in a row so far.
        restarts: u32,
    },
    /// Start a server that should run and was never started (`Created`),
    /// or whose worker is gone (`Unknown`: a live worker that can reach it
    /// adopts it).
    Start {
        /// The state the plan saw.
        from: ActualState,
    },
    /// Restart the server with its new configuration.
    ApplyConfiguration {
        /// The generation to run.
        generation: u64,
    },
    /// It has run long enough: restarts in a row start again from zero.
    ResetRestarts {
        /// The restarts in a row so far.
        restarts: u32,
    },
    /// Stop a server that should not run and may (see
    /// [`Instance::may_run`]).
    Stop {
        /// The state the plan saw.
        from: ActualState,
    },
    /// Finish the delete of a tombstoned instance (its server, files and
    /// records), which could not finish when it was asked for.
    FinishDelete,
}

/// What to do about `instance` at `now`.
pub fn plan(instance: &Instance, now: DateTime<Utc>, settings: &PlanSettings) -> Decision {
    if instance.deleted_at.is_some() {
        return plan_delete(instance, now, settings);
    }
    if instance.desired_state == DesiredState::Stopped {
        return plan_stop(instance, now, settings);
    }
    let status = &instance.status;
    let policy = &instance.restart_policy;
    match status.state {
        ActualState::Pending
        | ActualState::Starting
        | ActualState::Stopping
        | ActualState::Deleting => Decision::Nothing,
        // Its worker is gone: a live worker of the same reach adopts the
        // server (or starts it, if it is gone too). Whatever the restart
        // policy: this is not a restart.
        ActualState::Unknown => Decision::Act(Action::Start {
            from: ActualState::Unknown,
        }),
        ActualState::Created => after_settling(
            instance,
            now,
            settings,
            Action::Start {
                from: ActualState::Created,
            },
        ),
        ActualState::Stopped => match policy.policy {
            RestartMode::Always => recover(instance, now),
            // Stopped while it should run and not by failing: a user's
            // start is on its way, or the server stopped cleanly by itself.
            RestartMode::OnFailure | RestartMode::Never => Decision::Nothing,
        },
        ActualState::Failed => match policy.policy {
            RestartMode::Never => Decision::Nothing,
            RestartMode::OnFailure | RestartMode::Always => recover(instance, now),
        },
        ActualState::Running | ActualState::Degraded => {
            if instance.generation != status.observed_generation
                && instance.update_strategy == UpdateStrategy::Restart
            {
                return after_settling(
                    instance,
                    now,
                    settings,
                    Action::ApplyConfiguration {
                        generation: instance.generation,
                    },
                );
            }
            if status.restart_count == 0 {
                return Decision::Nothing;
            }
            // `updated_at` is when the server was last seen change state:
            // since then it has run.
            let stable_at = status.updated_at + seconds(policy.reset_after_seconds);
            if now >= stable_at {
                Decision::Act(Action::ResetRestarts {
                    restarts: status.restart_count,
                })
            } else {
                Decision::WaitUntil(stable_at)
            }
        }
    }
}

/// What to do about `instance`, which should not run: nothing restarts it,
/// and a server that may still run is stopped, once the user's own stop
/// had its time. A command in flight is waited for.
fn plan_stop(instance: &Instance, now: DateTime<Utc>, settings: &PlanSettings) -> Decision {
    let state = instance.status.state;
    let in_flight = matches!(
        state,
        ActualState::Pending | ActualState::Starting | ActualState::Stopping
    );
    if in_flight || !instance.may_run() {
        return Decision::Nothing;
    }
    after_settling(instance, now, settings, Action::Stop { from: state })
}

/// How long a delete in flight (`Deleting`) is left to finish before the
/// reconciler repeats it (its worker may have died with it).
const DELETE_IN_FLIGHT: chrono::Duration = chrono::Duration::seconds(60);

/// What to do about a tombstoned `instance`: finish its delete, once the
/// delete that tombstoned it had its time (a command in flight is waited
/// for; a delete in flight, a while longer).
fn plan_delete(instance: &Instance, now: DateTime<Utc>, settings: &PlanSettings) -> Decision {
    match instance.status.state {
        ActualState::Pending | ActualState::Starting | ActualState::Stopping => Decision::Nothing,
        ActualState::Deleting => {
            let due = instance.status.updated_at + DELETE_IN_FLIGHT;
            if now >= due {
                Decision::Act(Action::FinishDelete)
            } else {
                Decision::WaitUntil(due)
            }
        }
        _ => after_settling(instance, now, settings, Action::FinishDelete),
    }
}

/// Restart the stopped or failed `instance` now, or when its backoff ends.
fn recover(instance: &Instance, now: DateTime<Utc>) -> Decision {
    let status = &instance.status;
    let policy = &instance.restart_policy;
    let restarts = status.restart_count;
    if policy.exhausted(restarts) {
        return Decision::Nothing;
    }
    match status.next_retry_at {
        Some(at) if at > now => Decision::WaitUntil(at),
        Some(_) => Decision::Act(Action::Recover { restarts }),
        None => {
            let wait = policy.backoff(restarts, jitter(instance, restarts));
            if wait.is_zero() {
                Decision::Act(Action::Recover { restarts })
            } else {
                Decision::Act(Action::ScheduleRetry {
                    at: now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX),
                    restarts,
                })
            }
        }
    }
}

/// `action` once the user's last change is `settle` old.
fn after_settling(
    instance: &Instance,
    now: DateTime<Utc>,
    settings: &PlanSettings,
    action: Action,
) -> Decision {
    let settle = chrono::Duration::from_std(settings.settle).unwrap_or(chrono::Duration::MAX);
    let last_change = instance.updated_at.max(instance.status.updated_at);
    let due = last_change + settle;
    if now >= due {
        Decision::Act(action)
    } else {
        Decision::WaitUntil(due)
    }
}

fn seconds(n: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX / 1000))
}

/// A number in `[0, 1)` fixed by the instance and the attempt: instances
/// failing together spread their restarts, and a replanned attempt waits
/// the same.
fn jitter(instance: &Instance, restarts: u32) -> f64 {
    let mut hasher = DefaultHasher::new();
    instance.id.hash(&mut hasher);
    restarts.hash(&mut hasher);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use draas_core::config::DrasiServerConfig;
    use draas_core::instance::{InstanceId, InstanceStatus, PlatformType, ServerConfiguration};
    use draas_core::restart::RestartPolicy;

    const ALL_STATES: [ActualState; 10] = [
        ActualState::Created,
        ActualState::Pending,
        ActualState::Starting,
        ActualState::Running,
        ActualState::Degraded,
        ActualState::Stopping,
        ActualState::Stopped,
        ActualState::Failed,
        ActualState::Unknown,
        ActualState::Deleting,
    ];
    const ALL_MODES: [RestartMode; 3] = [
        RestartMode::Never,
        RestartMode::OnFailure,
        RestartMode::Always,
    ];

    /// A fixed instant the fixtures start from.
    pub(crate) fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// An instance at generation 1, observed, `desired` and in `state`.
    pub(crate) fn instance(desired: DesiredState, state: ActualState) -> Instance {
        let mut status = InstanceStatus::created(t0());
        status.state = state;
        status.observed_generation = 1;
        Instance {
            id: InstanceId::generate(),
            name: "i".into(),
            description: String::new(),
            platform_type: PlatformType::Process,
            created_at: t0(),
            updated_at: t0(),
            desired_state: desired,
            generation: 1,
            server_configuration: ServerConfiguration::for_platform(PlatformType::Process),
            configuration: DrasiServerConfig::empty("127.0.0.1", 9000),
            restart_policy: RestartPolicy::default(),
            update_strategy: UpdateStrategy::default(),
            status,
            runtime: None,
            deleted_at: None,
        }
    }

    /// `ms` milliseconds after [`t0`].
    pub(crate) fn later(ms: i64) -> DateTime<Utc> {
        t0() + chrono::Duration::milliseconds(ms)
    }

    #[test]
    fn what_should_not_run_is_never_started_and_is_stopped_where_it_may_run() {
        for state in ALL_STATES {
            for mode in ALL_MODES {
                for restarts in [0, 3, 10] {
                    for handle in [false, true] {
                        let mut i = instance(DesiredState::Stopped, state);
                        i.restart_policy.policy = mode;
                        i.status.restart_count = restarts;
                        i.generation = 2;
                        if handle {
                            i.runtime = Some(runtime_with_handle());
                        }
                        let decision = plan(&i, later(3_600_000), &PlanSettings::default());
                        let case = format!("{state:?} {mode:?} {restarts} handle {handle}");
                        let stops = match state {
                            ActualState::Running | ActualState::Degraded | ActualState::Unknown => {
                                true
                            }
                            // A crash-looping Deployment: the platform
                            // restarts it until it is scaled down.
                            ActualState::Failed => handle,
                            _ => false,
                        };
                        if stops {
                            assert_eq!(
                                decision,
                                Decision::Act(Action::Stop { from: state }),
                                "{case}"
                            );
                        } else {
                            assert_eq!(decision, Decision::Nothing, "{case}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_users_own_stop_is_given_time_before_the_reconciler_stops_it() {
        let mut i = instance(DesiredState::Stopped, ActualState::Running);
        i.updated_at = later(1_000);
        let settings = PlanSettings::default();
        assert_eq!(
            plan(&i, later(1_500), &settings),
            Decision::WaitUntil(later(3_000))
        );
        assert_eq!(
            plan(&i, later(3_000), &settings),
            Decision::Act(Action::Stop {
                from: ActualState::Running
            })
        );
    }

    #[test]
    fn a_tombstoned_instance_is_deleted_whatever_its_state_once_nothing_is_in_flight() {
        let settings = PlanSettings::default();
        for state in ALL_STATES {
            for desired in [DesiredState::Running, DesiredState::Stopped] {
                let mut i = instance(desired, state);
                i.deleted_at = Some(later(0));
                i.updated_at = later(0);
                i.status.updated_at = later(0);
                let soon = plan(&i, later(1_000), &settings);
                let late = plan(&i, later(120_000), &settings);
                match state {
                    ActualState::Pending | ActualState::Starting | ActualState::Stopping => {
                        assert_eq!(
                            (soon, late),
                            (Decision::Nothing, Decision::Nothing),
                            "{state:?}"
                        );
                    }
                    ActualState::Deleting => {
                        assert_eq!(soon, Decision::WaitUntil(later(60_000)), "{state:?}");
                        assert_eq!(late, Decision::Act(Action::FinishDelete), "{state:?}");
                    }
                    _ => {
                        assert_eq!(soon, Decision::WaitUntil(later(2_000)), "{state:?}");
                        assert_eq!(late, Decision::Act(Action::FinishDelete), "{state:?}");
                    }
                }
            }
        }
    }

    fn runtime_with_handle() -> draas_core::instance::RuntimeInfo {
        serde_json::from_value(serde_json::json!({
            "workerId": "w",
            "scope": "cluster",
            "handle": {"kind": "deployment", "namespace": "ns", "name": "n"},
            "host": "h",
            "port": 1,
            "endpoint": "http://h:1"
        }))
        .expect("a runtime")
    }

    #[test]
    fn commands_in_flight_are_left_alone() {
        for state in [
            ActualState::Pending,
            ActualState::Starting,
            ActualState::Stopping,
            ActualState::Deleting,
        ] {
            for mode in ALL_MODES {
                let mut i = instance(DesiredState::Running, state);
                i.restart_policy.policy = mode;
                i.generation = 5;
                assert_eq!(
                    plan(&i, later(3_600_000), &PlanSettings::default()),
                    Decision::Nothing,
                    "{state:?} {mode:?}"
                );
            }
        }
    }

    #[test]
    fn a_crash_is_restarted_at_once_then_with_growing_backoff_until_the_limit() {
        let mut i = instance(DesiredState::Running, ActualState::Failed);
        i.restart_policy = RestartPolicy {
            max_restarts: 4,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 3_000,
            ..RestartPolicy::default()
        };
        let settings = PlanSettings::default();
        // First failure: immediately.
        assert_eq!(
            plan(&i, t0(), &settings),
            Decision::Act(Action::Recover { restarts: 0 })
        );
        // Later failures: scheduled, waited for, then recovered.
        let mut waits = Vec::new();
        for restarts in 1..4 {
            i.status.restart_count = restarts;
            i.status.next_retry_at = None;
            let Decision::Act(Action::ScheduleRetry { at, restarts: r }) =
                plan(&i, t0(), &settings)
            else {
                panic!("a retry is scheduled after {restarts} restarts");
            };
            assert_eq!(r, restarts);
            waits.push((at - t0()).num_milliseconds());
            i.status.next_retry_at = Some(at);
            assert_eq!(plan(&i, t0(), &settings), Decision::WaitUntil(at));
            assert_eq!(
                plan(&i, at, &settings),
                Decision::Act(Action::Recover { restarts })
            );
        }
        // 1 s, 2 s, 3 s (capped), each shortened by at most a fifth.
        for (wait, full) in waits.iter().zip([1_000, 2_000, 3_000]) {
            assert!(*wait <= full && *wait >= full * 4 / 5, "{waits:?}");
        }
        // Exhausted: it stays Failed.
        i.status.restart_count = 4;
        i.status.next_retry_at = None;
        assert_eq!(plan(&i, later(3_600_000), &settings), Decision::Nothing);
        // No limit: it keeps trying.
        i.restart_policy.max_restarts = 0;
        i.status.restart_count = 1_000;
        assert!(matches!(
            plan(&i, t0(), &settings),
            Decision::Act(Action::ScheduleRetry { .. })
        ));
    }

    #[test]
    fn restart_modes_decide_what_counts() {
        let settings = PlanSettings::default();
        for (mode, failed, stopped) in [
            (RestartMode::Never, false, false),
            (RestartMode::OnFailure, true, false),
            (RestartMode::Always, true, true),
        ] {
            for (state, expected) in [
                (ActualState::Failed, failed),
                (ActualState::Stopped, stopped),
            ] {
                let mut i = instance(DesiredState::Running, state);
                i.restart_policy.policy = mode;
                let acted = plan(&i, later(10_000), &settings)
                    == Decision::Act(Action::Recover { restarts: 0 });
                assert_eq!(acted, expected, "{mode:?} {state:?}");
            }
        }
    }

    #[test]
    fn an_unknown_instance_is_handed_to_a_live_worker_whatever_the_policy() {
        for mode in ALL_MODES {
            let mut i = instance(DesiredState::Running, ActualState::Unknown);
            i.restart_policy.policy = mode;
            i.status.restart_count = 99;
            assert_eq!(
                plan(&i, t0(), &PlanSettings::default()),
                Decision::Act(Action::Start {
                    from: ActualState::Unknown
                })
            );
        }
    }

    #[test]
    fn a_start_that_never_happened_is_made_after_the_settle_time() {
        let settings = PlanSettings {
            settle: Duration::from_secs(2),
        };
        let i = instance(DesiredState::Running, ActualState::Created);
        assert_eq!(
            plan(&i, later(500), &settings),
            Decision::WaitUntil(later(2_000))
        );
        assert_eq!(
            plan(&i, later(2_000), &settings),
            Decision::Act(Action::Start {
                from: ActualState::Created
            })
        );
    }

    #[test]
    fn configuration_drift_restarts_a_running_server_unless_manual() {
        let settings = PlanSettings {
            settle: Duration::from_secs(2),
        };
        for state in [ActualState::Running, ActualState::Degraded] {
            let mut i = instance(DesiredState::Running, state);
            assert_eq!(plan(&i, later(10_000), &settings), Decision::Nothing);
            i.generation = 3;
            i.updated_at = later(1_000);
            assert_eq!(
                plan(&i, later(1_500), &settings),
                Decision::WaitUntil(later(3_000)),
                "the user's own restart may be on its way"
            );
            assert_eq!(
                plan(&i, later(3_000), &settings),
                Decision::Act(Action::ApplyConfiguration { generation: 3 })
            );
            i.update_strategy = UpdateStrategy::Manual;
            assert_eq!(plan(&i, later(3_000), &settings), Decision::Nothing);
        }
    }

    #[test]
    fn restarts_in_a_row_are_forgotten_after_a_stable_period() {
        let settings = PlanSettings::default();
        let mut i = instance(DesiredState::Running, ActualState::Running);
        i.status.restart_count = 3;
        i.restart_policy.reset_after_seconds = 60;
        assert_eq!(
            plan(&i, later(59_000), &settings),
            Decision::WaitUntil(later(60_000))
        );
        assert_eq!(
            plan(&i, later(60_000), &settings),
            Decision::Act(Action::ResetRestarts { restarts: 3 })
        );
    }

    #[test]
    fn every_combination_gives_a_decision_that_makes_sense() {
        // Exhaustive over states, modes, desired states, generations,
        // restart counts and retry times: no action on what should not run,
        // a wait is always in the future, a recovery never exceeds the
        // limit, and planning twice gives the same answer.
        let settings = PlanSettings::default();
        let now = later(30_000);
        for desired in [DesiredState::Running, DesiredState::Stopped] {
            for state in ALL_STATES {
                for mode in ALL_MODES {
                    for strategy in [UpdateStrategy::Restart, UpdateStrategy::Manual] {
                        for generation in [1, 2] {
                            for restarts in [0, 1, 9, 10] {
                                for retry in [None, Some(later(0)), Some(later(60_000))] {
                                    let mut i = instance(desired, state);
                                    i.restart_policy.policy = mode;
                                    i.update_strategy = strategy;
                                    i.generation = generation;
                                    i.status.restart_count = restarts;
                                    i.status.next_retry_at = retry;
                                    let decision = plan(&i, now, &settings);
                                    assert_eq!(decision, plan(&i, now, &settings));
                                    let case = format!(
                                        "{desired:?} {state:?} {mode:?} {strategy:?} g{generation} r{restarts} {retry:?}: {decision:?}"
                                    );
                                    match &decision {
                                        Decision::Nothing => {}
                                        Decision::WaitUntil(at) => assert!(*at > now, "{case}"),
                                        Decision::Act(action) => {
                                            let stop = matches!(action, Action::Stop { .. });
                                            assert_eq!(
                                                desired == DesiredState::Stopped,
                                                stop,
                                                "{case}"
                                            );
                                            match action {
                                                Action::FinishDelete => {
                                                    unreachable!("{case}: no tombstone")
                                                }
                                                Action::Stop { from } => {
                                                    assert_eq!(*from, state, "{case}");
                                                    assert!(i.may_run(), "{case}");
                                                }
                                                Action::Recover { restarts: r }
                                                | Action::ScheduleRetry { restarts: r, .. } => {
                                                    assert_eq!(*r, restarts, "{case}");
                                                    assert!(r < &10, "{case}");
                                                    assert_ne!(mode, RestartMode::Never, "{case}");
                                                    assert!(
                                                        matches!(
                                                            state,
                                                            ActualState::Failed
                                                                | ActualState::Stopped
                                                        ),
                                                        "{case}"
                                                    );
                                                }
                                                Action::Start { from } => {
                                                    assert!(
                                                        matches!(
                                                            state,
                                                            ActualState::Unknown
                                                                | ActualState::Created
                                                        ),
                                                        "{case}"
                                                    );
                                                    assert_eq!(*from, state, "{case}");
                                                }
                                                Action::ApplyConfiguration { generation: g } => {
                                                    assert_eq!(*g, 2, "{case}");
                                                    assert_eq!(
                                                        strategy,
                                                        UpdateStrategy::Restart,
                                                        "{case}"
                                                    );
                                                }
                                                Action::ResetRestarts { .. } => {
                                                    assert!(restarts > 0, "{case}")
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
