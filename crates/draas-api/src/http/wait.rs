//! Wait-for-state: `GET /api/server/instances/{id}?wait=Running` and the
//! same on `start`, `stop` and `restart`, so a client (a script, the CLI,
//! the reconciler's user) needs no polling loop of its own.

use std::future::Future;
use std::time::Duration;

use axum::http::StatusCode;
use draas_core::instance::{ActualState, DesiredState, Instance, InstanceId};
use draas_core::messages::{Event, EVENT_CHANNELS};
use draas_core::ports::EventStream;
use futures::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;

use crate::error::{ApiError, ApiResult};
use crate::service::ControlPlane;

/// Default and longest wait.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const LONGEST_WAIT: Duration = draas_core::limits::LONGEST_WAIT;
/// A re-read now and then, in case an event was missed (a bus outage).
const REREAD_EVERY: Duration = Duration::from_secs(1);

/// `?wait=<state>&timeout=<seconds>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(schemars::JsonSchema)]
pub(super) struct WaitQuery {
    /// Answer once the instance is in this state.
    pub wait: Option<ActualState>,
    /// For at most this many seconds (default 30, at most 300).
    #[schemars(range(min = 1, max = 300))]
    pub timeout: Option<u64>,
}

impl WaitQuery {
    /// How long to wait.
    pub fn limit(&self) -> Duration {
        self.timeout
            .map_or(DEFAULT_WAIT, Duration::from_secs)
            .min(LONGEST_WAIT)
    }

    /// Refuses a timeout without a state, or outside 1-300 s.
    pub(super) fn check(&self) -> ApiResult<()> {
        if self.wait.is_none() && self.timeout.is_some() {
            return Err(ApiError::bad_request(
                "INVALID_QUERY",
                "timeout is how long to wait: give wait=<state> with it",
            ));
        }
        if self.timeout.is_some_and(|t| t > LONGEST_WAIT.as_secs()) {
            return Err(ApiError::bad_request(
                "INVALID_QUERY",
                format!("timeout must be at most {} seconds", LONGEST_WAIT.as_secs()),
            ));
        }
        if self.timeout == Some(0) {
            return Err(ApiError::bad_request(
                "INVALID_QUERY",
                "timeout must be at least 1 second",
            ));
        }
        Ok(())
    }
}

/// What a start, stop or restart answers.
pub(super) struct Mutated {
    /// The instance.
    pub instance: Instance,
    /// Why the command is pending (accepted, to be carried out later), if
    /// it is: nothing is waited for then.
    pub pending: Option<String>,
}

impl Mutated {
    /// A command carried out.
    pub fn done(instance: Instance) -> Self {
        Self {
            instance,
            pending: None,
        }
    }
}

/// Runs `command` (a start, stop or restart of `id`) and, with `?wait=`,
/// answers once the instance is in the state asked for; `504
/// STATE_NOT_REACHED` when it is not within the timeout, command included.
/// A pending command is answered at once.
pub(super) async fn mutation(
    cp: &ControlPlane,
    id: &InstanceId,
    query: WaitQuery,
    verb: &str,
    command: impl Future<Output = ApiResult<Mutated>>,
) -> ApiResult<Mutated> {
    query.check()?;
    let Some(wanted) = query.wait else {
        return command.await;
    };
    let limit = query.limit();
    let deadline = Instant::now() + limit;
    // Subscribe before the command, so no change it causes is missed.
    let mut events = cp.bus().subscribe(&EVENT_CHANNELS).await?;
    let done = match tokio::time::timeout_at(deadline, command).await {
        Ok(done) => done?,
        Err(_) => Mutated::done(cp.load(id).await?.value),
    };
    if done.instance.status.state == wanted || done.pending.is_some() {
        return Ok(done);
    }
    if !leads_to(done.instance.desired_state, wanted) {
        // Nothing but another request could bring it there: no point in
        // holding the caller for the whole timeout.
        return Err(ApiError::conflict(
            "STATE_NOT_EXPECTED",
            format!(
                "{verb} of instance '{}' leaves it {:?} with desired state {:?}: it does not become {wanted:?} unless asked to",
                done.instance.name, done.instance.status.state, done.instance.desired_state
            ),
        ));
    }
    match until_state(cp, id, wanted, deadline, &mut events).await? {
        Ok(instance) => Ok(Mutated::done(instance)),
        Err(seen) => Err(not_reached(&seen, wanted, verb, limit)),
    }
}

/// Whether an instance whose desired state is `desired` may come to
/// `state` by itself (its worker's work, the reconciler's, a crash).
fn leads_to(desired: DesiredState, state: ActualState) -> bool {
    match desired {
        DesiredState::Running => !matches!(state, ActualState::Stopped | ActualState::Created),
        DesiredState::Stopped => !matches!(
            state,
            ActualState::Pending
                | ActualState::Starting
                | ActualState::Running
                | ActualState::Degraded
        ),
    }
}

fn not_reached(seen: &Instance, wanted: ActualState, verb: &str, limit: Duration) -> ApiError {
    let status = &seen.status;
    let why = match (&status.reason, &status.message) {
        (Some(reason), Some(message)) => format!(" ({reason:?}: {message})"),
        (Some(reason), None) => format!(" ({reason:?})"),
        (None, Some(message)) => format!(" ({message})"),
        (None, None) => String::new(),
    };
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "STATE_NOT_REACHED",
        format!(
            "{verb} of instance '{}' was accepted, but it is {:?}{why}, not {wanted:?}, {} s later",
            seen.name,
            status.state,
            limit.as_secs()
        ),
    )
}

/// Waits until instance `id` is `wanted` (`Ok`) or `deadline` passes
/// (`Err` with the instance as last seen). `events` must have been
/// subscribed before whatever might change the state.
pub(super) async fn until_state(
    cp: &ControlPlane,
    id: &InstanceId,
    wanted: ActualState,
    deadline: Instant,
    events: &mut EventStream,
) -> ApiResult<Result<Instance, Instance>> {
    loop {
        let instance = cp.load(id).await?.value;
        if instance.status.state == wanted {
            return Ok(Ok(instance));
        }
        if Instant::now() >= deadline {
            return Ok(Err(instance));
        }
        let wake = deadline.min(Instant::now() + REREAD_EVERY);
        // Until an event names it (or the stream ends), or the re-read.
        let _ = tokio::time::timeout_at(wake, async {
            while let Some(published) = events.next().await {
                if matches!(&published.envelope.event, Event::InstanceStatusChanged(c) if &c.instance_id == id)
                {
                    return;
                }
            }
            // The stream ended: wait for the re-read.
            std::future::pending::<()>().await;
        })
        .await;
    }
}
