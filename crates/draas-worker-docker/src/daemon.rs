//! `draas docker-daemon`: the original design's status daemon. It watches a
//! Docker engine's DRaaS containers (label `draas.managed=true`) and pushes
//! what happens to them to a control plane's `POST /api/status/updates`. It
//! is the way to watch an engine that no Docker worker serves.
//!
//! - **What it reports**: at start, the current state of every container;
//!   then, from the Engine's event stream, `start` → `Running`, `die` →
//!   `Stopped` when a stop signal (SIGINT/SIGTERM) asked for it, else
//!   `Failed` with `ExitedWithCode`/`KilledBySignal`/`OomKilled` and the
//!   container's last log lines, `health_status` → `Running`/`Degraded`.
//! - **Order**: every update carries the engine's time of the event, and
//!   the control plane refuses an update older than what it recorded, so an
//!   old event never overwrites a newer state. Updates of one instance are
//!   sent one at a time, in order; while one waits for a retry, a newer one
//!   replaces it.
//! - **Retries**: a control plane that cannot be reached (or answers 5xx)
//!   is retried with backoff, without limit, for as long as the daemon
//!   runs; a refusal (404 unknown instance, 409 out of order, other 4xx) is
//!   final.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::EventMessage;
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder, LogsOptionsBuilder,
};
use chrono::{DateTime, TimeZone, Utc};
use draas_client::{Client, ClientError, ClientOptions};
use draas_core::instance::{ActualState, InstanceId, Reason};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::container::{GENERATION, INSTANCE, MANAGED};
use crate::engine::Engine;
use crate::events::Ended;
use crate::warm::in_standby;

/// How a daemon reports.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// The control plane's base URL (`http://host:5000`).
    pub control_plane: String,
    /// The name it reports as (`external:<source>`): letters, digits, `-_.`.
    pub source: String,
    /// The API key it sends (an agent's), when the control plane needs one.
    pub token: Option<String>,
    /// The certificates it trusts for an https:// control plane.
    pub trusted: Vec<draas_client::Certificate>,
}

/// One status update, as `POST /api/status/updates` takes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Update {
    /// The instance.
    pub instance_id: InstanceId,
    /// Its state.
    pub state: ActualState,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The daemon's name.
    pub source: String,
    /// When the engine saw it.
    pub observed_at: DateTime<Utc>,
    /// The configuration generation of the container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
}

/// One engine event about a DRaaS container, as the daemon reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerEvent {
    /// `start`, `kill`, `oom`, `die`, `health_status: healthy`, ...
    pub action: String,
    /// The container.
    pub container: String,
    /// Its instance.
    pub instance: InstanceId,
    /// Its generation label.
    pub generation: Option<u64>,
    /// The event's attributes (`exitCode`, `signal`, ...).
    pub attributes: HashMap<String, String>,
    /// When.
    pub at: DateTime<Utc>,
}

impl ContainerEvent {
    /// Reads an engine event; `None` when it is not about a DRaaS
    /// container, or about a warm one still in standby (what it does says
    /// nothing of its instance's server).
    pub fn from_engine(event: &EventMessage) -> Option<Self> {
        let actor = event.actor.as_ref()?;
        let attributes = actor.attributes.clone().unwrap_or_default();
        if attributes.get("name").is_some_and(|n| in_standby(n)) {
            return None;
        }
        let instance = attributes.get(INSTANCE)?.parse().ok()?;
        let at = event
            .time_nano
            .map(|n| Utc.timestamp_nanos(n))
            .or_else(|| event.time.and_then(|s| Utc.timestamp_opt(s, 0).single()))
            .unwrap_or_else(Utc::now);
        Some(Self {
            action: event.action.clone().unwrap_or_default(),
            container: actor.id.clone()?,
            instance,
            generation: attributes.get(GENERATION).and_then(|g| g.parse().ok()),
            attributes,
            at,
        })
    }
}

/// What the daemon remembers of each container between its events.
#[derive(Debug, Default)]
pub struct Memory {
    ended: HashMap<String, Ended>,
}

/// Signals that ask a server to stop gracefully.
const STOP_SIGNALS: [i32; 2] = [2, 15];

impl Memory {
    /// What `event` means for the instance, if anything: the state, the
    /// reason and a message (the caller adds the log tail of a failure).
    pub fn interpret(
        &mut self,
        event: &ContainerEvent,
    ) -> Option<(ActualState, Reason, Option<String>)> {
        let ended = self.ended.entry(event.container.clone()).or_default();
        match event.action.as_str() {
            "start" => {
                self.ended.remove(&event.container);
                Some((
                    ActualState::Running,
                    Reason::External,
                    Some("the container started".into()),
                ))
            }
            "kill" => {
                // The first signal is the one that says why (a stop sends
                // SIGINT, then SIGKILL if the grace period runs out).
                if ended.signal.is_none() {
                    ended.signal = event.attributes.get("signal").and_then(|s| s.parse().ok());
                }
                None
            }
            "oom" => {
                ended.oom = true;
                None
            }
            "die" => {
                let ended = self.ended.remove(&event.container).unwrap_or_default();
                let code = event
                    .attributes
                    .get("exitCode")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(-1);
                let asked_to_stop = ended.signal.is_some_and(|s| STOP_SIGNALS.contains(&s));
                if asked_to_stop && !ended.oom {
                    return Some((
                        ActualState::Stopped,
                        Reason::External,
                        Some(format!("the container was stopped (exit code {code})")),
                    ));
                }
                let exit = ended.exit(code);
                Some((
                    ActualState::Failed,
                    exit.reason(),
                    Some(format!("the container {}", exit.description)),
                ))
            }
            action if action.starts_with("health_status") => {
                if action.ends_with("unhealthy") {
                    Some((
                        ActualState::Degraded,
                        Reason::External,
                        Some("the container's health check fails".into()),
                    ))
                } else if action.ends_with("healthy") {
                    Some((ActualState::Running, Reason::Ready, None))
                } else {
                    None
                }
            }
            "destroy" => {
                self.ended.remove(&event.container);
                None
            }
            _ => None,
        }
    }
}

/// Updates waiting to be sent: the newest per instance.
#[derive(Default)]
struct Outbox {
    pending: Mutex<BTreeMap<InstanceId, Update>>,
    ready: Notify,
}

impl Outbox {
    fn put(&self, update: Update) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let newer = pending
            .get(&update.instance_id)
            .is_none_or(|queued| queued.observed_at <= update.observed_at);
        if newer {
            pending.insert(update.instance_id.clone(), update);
        }
        drop(pending);
        self.ready.notify_one();
    }

    /// The updates to send now (removed from the box).
    fn take(&self) -> Vec<Update> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
            .into_values()
            .collect()
    }

    /// Puts back an update that could not be sent, unless a newer one came.
    fn retry(&self, update: Update) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.entry(update.instance_id.clone()).or_insert(update);
    }
}

/// Why the daemon stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The settings are unusable.
    #[error("{0}")]
    Settings(String),
}

/// Runs the daemon until `shutdown`.
pub async fn run(
    engine: Engine,
    settings: DaemonSettings,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let valid_source = !settings.source.is_empty()
        && settings.source.len() <= 64
        && settings
            .source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid_source {
        return Err(DaemonError::Settings(
            "--source must be 1-64 letters, digits, '-', '_' or '.'".into(),
        ));
    }
    let base = settings.control_plane.trim_end_matches('/').to_string();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(DaemonError::Settings(format!(
            "--control-plane must be an http(s) URL, not {base:?}"
        )));
    }
    let outbox = Arc::new(Outbox::default());
    let client = Client::new(ClientOptions {
        token: settings.token.clone(),
        trusted: settings.trusted.clone(),
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::new(base.clone())
    })
    .map_err(|e| DaemonError::Settings(e.to_string()))?;
    let sender = tokio::spawn(send_forever(client, outbox.clone(), shutdown.clone()));
    info!(engine = %engine.address, control_plane = %base, "watching DRaaS containers");
    let since = Utc::now().timestamp();
    report_current(&engine, &settings.source, &outbox).await;
    watch(&engine, &settings.source, &outbox, since, &shutdown).await;
    let _ = sender.await;
    Ok(())
}

/// Reports the state every DRaaS container is in now.
async fn report_current(engine: &Engine, source: &str, outbox: &Outbox) {
    let filters = HashMap::from([("label".to_string(), vec![format!("{MANAGED}=true")])]);
    let listed = match engine
        .docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
    {
        Ok(listed) => listed,
        Err(e) => {
            warn!("cannot list the engine's containers: {e}");
            return;
        }
    };
    for summary in listed {
        let Some(id) = summary.id else { continue };
        if summary.names.iter().flatten().any(|n| in_standby(n)) {
            continue;
        }
        let Ok(inspected) = engine
            .docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
        else {
            continue;
        };
        let labels = inspected.config.and_then(|c| c.labels).unwrap_or_default();
        let Some(instance) = labels.get(INSTANCE).and_then(|i| i.parse().ok()) else {
            continue;
        };
        let Some(state) = inspected.state else {
            continue;
        };
        let Some((actual, reason, message)) = snapshot_state(&state) else {
            continue;
        };
        outbox.put(Update {
            instance_id: instance,
            state: actual,
            reason: Some(reason),
            message,
            source: source.to_string(),
            observed_at: Utc::now(),
            observed_generation: labels.get(GENERATION).and_then(|g| g.parse().ok()),
        });
    }
}

/// What a container's inspected state says of its instance; `None` for a
/// container created and never started (nothing happened yet). A snapshot
/// cannot tell who stopped a container: a clean exit (code 0) is what a
/// stop produces, anything else a failure.
pub fn snapshot_state(
    state: &bollard::models::ContainerState,
) -> Option<(ActualState, Reason, Option<String>)> {
    if state.running == Some(true) {
        return Some((
            ActualState::Running,
            Reason::External,
            Some("the container runs".to_string()),
        ));
    }
    let started = state
        .started_at
        .as_deref()
        .is_some_and(|t| !t.starts_with("0001-"));
    if !started {
        return None;
    }
    let oom = state.oom_killed == Some(true);
    let code = state.exit_code.unwrap_or(-1);
    if code == 0 && !oom {
        return Some((
            ActualState::Stopped,
            Reason::External,
            Some("the container exited cleanly".to_string()),
        ));
    }
    let exit = Ended { signal: None, oom }.exit(code);
    Some((
        ActualState::Failed,
        exit.reason(),
        Some(format!("the container {}", exit.description)),
    ))
}

/// Follows the event stream (reconnecting from the last event's time).
async fn watch(
    engine: &Engine,
    source: &str,
    outbox: &Outbox,
    since: i64,
    shutdown: &CancellationToken,
) {
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("label".to_string(), vec![format!("{MANAGED}=true")]),
        (
            "event".to_string(),
            ["start", "kill", "oom", "die", "health_status", "destroy"]
                .map(str::to_string)
                .to_vec(),
        ),
    ]);
    let mut memory = Memory::default();
    let mut since = since;
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let since_text = since.to_string();
        let mut stream = engine.docker.events(Some(
            EventsOptionsBuilder::default()
                .filters(&filters)
                .since(&since_text)
                .build(),
        ));
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(event)) => {
                    backoff = Duration::from_millis(100);
                    if let Some(time) = event.time {
                        since = since.max(time);
                    }
                    let Some(event) = ContainerEvent::from_engine(&event) else {
                        continue;
                    };
                    let Some((state, reason, mut message)) = memory.interpret(&event) else {
                        continue;
                    };
                    if state == ActualState::Failed {
                        if let Some(words) = last_words(engine, &event.container).await {
                            message = Some(format!("{}: {words}", message.unwrap_or_default()));
                        }
                    }
                    debug!(instance = %event.instance, action = %event.action, ?state, "container event");
                    outbox.put(Update {
                        instance_id: event.instance.clone(),
                        state,
                        reason: Some(reason),
                        message,
                        source: source.to_string(),
                        observed_at: event.at,
                        observed_generation: event.generation,
                    });
                }
                Some(Err(e)) => {
                    warn!("the Docker event stream failed: {e}; reconnecting");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The container's last log lines, if any.
async fn last_words(engine: &Engine, container: &str) -> Option<String> {
    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail("10")
        .build();
    let chunks: Vec<bollard::container::LogOutput> = engine
        .docker
        .logs(container, Some(options))
        .try_collect()
        .await
        .ok()?;
    let text: String = chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c.as_ref()).to_string())
        .collect();
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(4000).collect())
}

/// Sends what the outbox holds, retrying what the control plane could not
/// take, until `shutdown` (then once more, briefly).
async fn send_forever(client: Client, outbox: Arc<Outbox>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let batch = outbox.take();
        let mut failed = false;
        for update in batch {
            match client.report_status(&update).await {
                Ok(()) => {}
                Err(ClientError::Problem { status, .. }) if status >= 500 || status == 429 => {
                    failed = true;
                    outbox.retry(update);
                }
                Err(ClientError::Problem { status, .. }) if status == 401 || status == 403 => {
                    warn!(status, "the control plane refused this daemon's API key (give it an agent key: --token)");
                }
                Err(ClientError::Problem { status, code, .. }) => {
                    // 404 (not this control plane's instance), 409 (older
                    // than what it knows), other refusals: final.
                    debug!(instance = %update.instance_id, status, %code, "update refused");
                }
                Err(e) => {
                    if !failed {
                        warn!("the control plane cannot be reached ({e}); retrying");
                    }
                    failed = true;
                    outbox.retry(update);
                }
            }
        }
        let wait = if failed {
            let wait = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            wait
        } else {
            backoff = Duration::from_millis(200);
            Duration::from_secs(3600)
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = outbox.ready.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str, attributes: &[(&str, &str)]) -> ContainerEvent {
        ContainerEvent {
            action: action.into(),
            container: "c1".into(),
            instance: "i-0123456789abcdef0123456789abcdef".parse().unwrap(),
            generation: Some(3),
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            at: Utc::now(),
        }
    }

    #[test]
    fn what_a_warm_container_in_standby_does_is_not_read_as_its_instances() {
        let event_of = |name: &str| EventMessage {
            action: Some("die".into()),
            actor: Some(bollard::models::EventActor {
                id: Some("c1".into()),
                attributes: Some(HashMap::from([
                    (
                        INSTANCE.to_string(),
                        "i-0123456789abcdef0123456789abcdef".to_string(),
                    ),
                    ("name".to_string(), name.to_string()),
                    ("exitCode".to_string(), "0".to_string()),
                ])),
            }),
            ..Default::default()
        };
        assert!(ContainerEvent::from_engine(&event_of("draas-a-89abcdef-1a2b3c")).is_some());
        assert!(
            ContainerEvent::from_engine(&event_of("draas-a-89abcdef-1a2b3c-standby")).is_none()
        );
    }

    #[test]
    fn engine_events_become_instance_states() {
        let mut memory = Memory::default();
        assert_eq!(
            memory.interpret(&event("start", &[])).map(|s| s.0),
            Some(ActualState::Running)
        );
        // docker stop: kill(SIGINT), die(0): stopped, not failed.
        assert_eq!(memory.interpret(&event("kill", &[("signal", "2")])), None);
        assert_eq!(
            memory
                .interpret(&event("die", &[("exitCode", "0")]))
                .map(|s| s.0),
            Some(ActualState::Stopped)
        );
        // A stop whose grace period ran out: SIGINT, then SIGKILL: stopped.
        memory.interpret(&event("start", &[]));
        memory.interpret(&event("kill", &[("signal", "2")]));
        memory.interpret(&event("kill", &[("signal", "9")]));
        assert_eq!(
            memory
                .interpret(&event("die", &[("exitCode", "137")]))
                .map(|s| s.0),
            Some(ActualState::Stopped)
        );
        // docker kill: SIGKILL first: a failure.
        memory.interpret(&event("start", &[]));
        memory.interpret(&event("kill", &[("signal", "9")]));
        let killed = memory
            .interpret(&event("die", &[("exitCode", "137")]))
            .unwrap();
        assert_eq!(
            (killed.0, killed.1),
            (ActualState::Failed, Reason::KilledBySignal)
        );
        // Out of memory.
        memory.interpret(&event("start", &[]));
        memory.interpret(&event("oom", &[]));
        let oom = memory
            .interpret(&event("die", &[("exitCode", "137")]))
            .unwrap();
        assert_eq!(oom.1, Reason::OomKilled);
        // A crash on its own.
        memory.interpret(&event("start", &[]));
        let crashed = memory
            .interpret(&event("die", &[("exitCode", "1")]))
            .unwrap();
        assert_eq!(
            (crashed.0, crashed.1),
            (ActualState::Failed, Reason::ExitedWithCode)
        );
        // Health.
        assert_eq!(
            memory
                .interpret(&event("health_status: unhealthy", &[]))
                .map(|s| s.0),
            Some(ActualState::Degraded)
        );
        assert_eq!(
            memory
                .interpret(&event("health_status: healthy", &[]))
                .map(|s| s.0),
            Some(ActualState::Running)
        );
        assert_eq!(memory.interpret(&event("destroy", &[])), None);
    }

    #[test]
    fn a_snapshot_reports_only_containers_that_ran() {
        use bollard::models::ContainerState;
        let created = ContainerState {
            running: Some(false),
            started_at: Some("0001-01-01T00:00:00Z".into()),
            exit_code: Some(0),
            ..Default::default()
        };
        assert_eq!(snapshot_state(&created), None);
        let running = ContainerState {
            running: Some(true),
            started_at: Some("2026-11-24T07:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(
            snapshot_state(&running).map(|s| s.0),
            Some(ActualState::Running)
        );
        let stopped = ContainerState {
            running: Some(false),
            exit_code: Some(0),
            ..running.clone()
        };
        assert_eq!(
            snapshot_state(&stopped).map(|s| s.0),
            Some(ActualState::Stopped)
        );
        let killed = ContainerState {
            exit_code: Some(137),
            ..stopped.clone()
        };
        assert_eq!(
            snapshot_state(&killed).map(|s| s.1),
            Some(Reason::KilledBySignal)
        );
        let oom = ContainerState {
            oom_killed: Some(true),
            ..killed
        };
        assert_eq!(snapshot_state(&oom).map(|s| s.1), Some(Reason::OomKilled));
    }

    #[test]
    fn the_outbox_keeps_the_newest_update_of_each_instance() {
        let outbox = Outbox::default();
        let update = |state, seconds| Update {
            instance_id: "i-0123456789abcdef0123456789abcdef".parse().unwrap(),
            state,
            reason: None,
            message: None,
            source: "d".into(),
            observed_at: Utc.timestamp_opt(seconds, 0).unwrap(),
            observed_generation: None,
        };
        outbox.put(update(ActualState::Running, 10));
        outbox.put(update(ActualState::Failed, 12));
        outbox.put(update(ActualState::Stopped, 11));
        let taken = outbox.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].state, ActualState::Failed, "the newest wins");
        // A retry does not replace something newer that came meanwhile.
        outbox.put(update(ActualState::Running, 20));
        outbox.retry(update(ActualState::Failed, 12));
        assert_eq!(outbox.take()[0].state, ActualState::Running);
    }
}
