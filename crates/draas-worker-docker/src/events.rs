//! Knowing the moment a container ends, from the Engine's event stream (no
//! polling).
//!
//! One stream per driver, filtered to this installation's containers
//! (`type=container`, its labels, `kill`/`oom`/`die`/`health_status`), feeds
//! the exit watch of each container the driver runs, and reports a watched
//! container's health check turning (an image's `HEALTHCHECK`): unhealthy →
//! `Degraded` (`Unhealthy`), healthy again → `Running`. A `die` event carries the exit code;
//! a `kill` or `oom` event before it says why: [`Ended`] turns the sequence
//! into an [`Exit`]. If the stream breaks, it is opened again from the time
//! of the last event seen (the engine replays what happened meanwhile), and
//! every watched container is inspected once, so no exit is missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::EventMessage;
use bollard::query_parameters::{EventsOptionsBuilder, InspectContainerOptions};
use bollard::Docker;
use draas_worker::driver::{exit_channel, signal_name, Exit, ExitNotifier, ExitWatch};
use futures::StreamExt;
use tracing::{debug, warn};

use crate::container::{INSTALLATION, MANAGED};

/// What is known of a container's end while its `die` event is awaited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ended {
    /// A `kill` event's signal.
    pub signal: Option<i32>,
    /// Whether an `oom` event came.
    pub oom: bool,
}

impl Ended {
    /// The exit of a container whose `die` said `code`. A process killed by
    /// signal `n` exits with `128 + n` in a container.
    pub fn exit(&self, code: i64) -> Exit {
        let code = i32::try_from(code).unwrap_or(i32::MAX);
        if self.oom {
            return Exit {
                code: Some(code),
                signal: None,
                oom_killed: true,
                description: format!("was killed for running out of memory (exit code {code})"),
                cause: None,
            };
        }
        let by_signal = self
            .signal
            .filter(|s| code == 128 + s)
            .or_else(|| (129..=128 + 64).contains(&code).then_some(code - 128));
        match by_signal {
            Some(signal) => Exit {
                code: Some(code),
                signal: Some(signal),
                oom_killed: false,
                description: format!("was killed by signal {signal}{}", signal_name(signal)),
                cause: None,
            },
            None => Exit::code(code),
        }
    }
}

struct Watched {
    notifier: ExitNotifier,
    ended: Ended,
}

/// Where health changes go: the worker's status recorder.
pub type HealthSink = Arc<dyn draas_core::ports::StatusSink>;

/// What a `health_status` event says of an instance.
pub fn health_observation(
    attributes: &HashMap<String, String>,
    action: &str,
) -> Option<draas_core::ports::Observation> {
    use draas_core::instance::{ActualState, InstanceId, Reason};
    use draas_core::ports::Observation;
    let id: InstanceId = attributes.get(crate::container::INSTANCE)?.parse().ok()?;
    let generation = attributes
        .get(crate::container::GENERATION)
        .and_then(|g| g.parse().ok());
    let status = action
        .strip_prefix("health_status")?
        .trim_start_matches(':')
        .trim();
    let mut observation = match status {
        "unhealthy" => Observation::now(id, ActualState::Degraded, Some(Reason::Unhealthy))
            .message("the container's health check fails"),
        "healthy" => Observation::now(id, ActualState::Running, Some(Reason::Ready)),
        _ => return None,
    };
    observation.observed_generation = generation;
    Some(observation)
}

/// The exits of the containers a driver runs. The event stream is followed
/// until every clone is dropped.
#[derive(Clone)]
pub struct ExitEvents {
    docker: Docker,
    watched: Arc<Mutex<HashMap<String, Watched>>>,
    _stop: Arc<tokio_util::sync::DropGuard>,
}

impl ExitEvents {
    /// Starts following the engine's events for `installation`'s containers
    /// (from now: an exit right after this call is not missed); health
    /// changes go to `health`.
    pub fn start(docker: Docker, installation: &str, health: Option<HealthSink>) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let watched = Arc::new(Mutex::new(HashMap::new()));
        let follower = Follower {
            docker: docker.clone(),
            watched: watched.clone(),
            health,
        };
        let since = chrono::Utc::now().timestamp();
        let token = stop.clone();
        let installation = installation.to_string();
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = follower.follow(installation, since) => {}
            }
        });
        Self {
            docker,
            watched,
            _stop: Arc::new(stop.drop_guard()),
        }
    }

    fn follower(&self) -> Follower {
        Follower {
            docker: self.docker.clone(),
            watched: self.watched.clone(),
            health: None,
        }
    }

    /// Watches container `id` (its full id) and returns its exit watch. The
    /// container is inspected once after registration, so an exit before
    /// the watch began is not missed.
    pub async fn watch(&self, id: &str) -> ExitWatch {
        let (notifier, exit) = exit_channel();
        let follower = self.follower();
        follower.watched().insert(
            id.to_string(),
            Watched {
                notifier,
                ended: Ended::default(),
            },
        );
        follower.check(id).await;
        exit
    }

    /// Stops watching container `id`.
    pub fn forget(&self, id: &str) {
        self.follower().watched().remove(id);
    }
}

/// The part that follows the stream (holds no stop guard, so the driver's
/// drop ends it).
struct Follower {
    docker: Docker,
    watched: Arc<Mutex<HashMap<String, Watched>>>,
    health: Option<HealthSink>,
}

impl Follower {
    fn watched(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        // Critical sections are single map operations.
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reports container `id`'s exit if it is not running (or is gone).
    async fn check(&self, id: &str) {
        let state = match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspected) => inspected.state,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                self.ended(id, Exit::unknown("was removed"));
                return;
            }
            Err(e) => {
                debug!(container = %id, "cannot inspect: {e}");
                return;
            }
        };
        let Some(state) = state else { return };
        if state.running == Some(true) {
            return;
        }
        let started = state
            .started_at
            .as_deref()
            .is_some_and(|t| !t.starts_with("0001-"));
        if !started {
            // Created, not started yet: nothing has ended.
            return;
        }
        let ended = Ended {
            signal: None,
            oom: state.oom_killed == Some(true),
        };
        self.ended(id, ended.exit(state.exit_code.unwrap_or(-1)));
    }

    fn ended(&self, id: &str, exit: Exit) {
        if let Some(watched) = self.watched().remove(id) {
            watched.notifier.exited(exit);
        }
    }

    /// Follows the event stream (until cancelled), from `since` (seconds).
    async fn follow(self, installation: String, since: i64) {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "label".to_string(),
                vec![
                    format!("{MANAGED}=true"),
                    format!("{INSTALLATION}={installation}"),
                ],
            ),
            (
                "event".to_string(),
                ["kill", "oom", "die", "health_status"]
                    .map(str::to_string)
                    .to_vec(),
            ),
        ]);
        let mut since = since;
        let mut reconnected = false;
        let mut backoff = Duration::from_millis(100);
        loop {
            let since_text = since.to_string();
            let options = EventsOptionsBuilder::default()
                .filters(&filters)
                .since(&since_text)
                .build();
            let mut stream = self.docker.events(Some(options));
            if reconnected {
                // What ended while the stream was down is replayed from
                // `since`; check every watched container directly too.
                let ids: Vec<String> = self.watched().keys().cloned().collect();
                for id in ids {
                    self.check(&id).await;
                }
            }
            reconnected = true;
            while let Some(next) = stream.next().await {
                match next {
                    Ok(event) => {
                        backoff = Duration::from_millis(100);
                        if let Some(time) = event.time {
                            since = since.max(time);
                        }
                        self.on_event(&event);
                    }
                    Err(e) => {
                        warn!("the Docker event stream failed: {e}; reconnecting");
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn on_event(&self, event: &EventMessage) {
        let Some(actor) = &event.actor else { return };
        let Some(id) = actor.id.as_deref() else {
            return;
        };
        let attributes = actor.attributes.clone().unwrap_or_default();
        let action = event.action.as_deref().unwrap_or_default();
        let mut watched = self.watched();
        let Some(entry) = watched.get_mut(id) else {
            return;
        };
        if action.starts_with("health_status") {
            if let (Some(sink), Some(observation)) =
                (&self.health, health_observation(&attributes, action))
            {
                let sink = sink.clone();
                tokio::spawn(async move { sink.observe(observation).await });
            }
            return;
        }
        match action {
            "kill" => entry.ended.signal = attributes.get("signal").and_then(|s| s.parse().ok()),
            "oom" => entry.ended.oom = true,
            "die" => {
                let code = attributes
                    .get("exitCode")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(-1);
                if let Some(done) = watched.remove(id) {
                    done.notifier.exited(done.ended.exit(code));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use draas_core::instance::Reason;

    #[test]
    fn health_events_become_degraded_or_running() {
        let attributes = HashMap::from([
            (
                "draas.instanceId".to_string(),
                "i-0123456789abcdef0123456789abcdef".to_string(),
            ),
            ("draas.generation".to_string(), "3".to_string()),
        ]);
        let sick = health_observation(&attributes, "health_status: unhealthy").unwrap();
        assert_eq!(sick.state, draas_core::instance::ActualState::Degraded);
        assert_eq!(sick.reason, Some(Reason::Unhealthy));
        assert_eq!(sick.observed_generation, Some(3));
        let well = health_observation(&attributes, "health_status: healthy").unwrap();
        assert_eq!(well.state, draas_core::instance::ActualState::Running);
        assert!(health_observation(&attributes, "health_status: starting").is_none());
        assert!(health_observation(&HashMap::new(), "health_status: healthy").is_none());
    }

    #[test]
    fn how_a_container_ended_follows_its_events() {
        // docker kill: kill(9) then die(137).
        let killed = Ended {
            signal: Some(9),
            oom: false,
        }
        .exit(137);
        assert_eq!(killed.reason(), Reason::KilledBySignal);
        assert_eq!(killed.signal, Some(9));
        assert!(killed.description.contains("SIGKILL"));
        // kill -9 of the process from the host: no kill event, die(137).
        assert_eq!(Ended::default().exit(137).signal, Some(9));
        // Out of memory.
        let oom = Ended {
            signal: None,
            oom: true,
        }
        .exit(137);
        assert_eq!(oom.reason(), Reason::OomKilled);
        // A plain exit.
        let exited = Ended::default().exit(1);
        assert_eq!(exited.reason(), Reason::ExitedWithCode);
        assert_eq!(exited.code, Some(1));
        // SIGINT asked, clean exit 0.
        let graceful = Ended {
            signal: Some(2),
            oom: false,
        }
        .exit(0);
        assert_eq!(graceful.reason(), Reason::ExitedWithCode);
        assert_eq!(graceful.code, Some(0));
    }
}
