//! The control plane's REST API and event stream as a
//! [`ControlPlanePort`]: how a reconciler that runs alone (`draas
//! reconcile`) reaches it, from anywhere, through the one API client
//! (`draas-client`).

use std::time::Duration;

use async_trait::async_trait;
use draas_client::{Client, ClientError};
use draas_core::instance::{Instance, InstanceId};
use draas_core::lease::Lease;
use draas_core::messages::Event;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::cursor::Named;
use crate::plan::Action;
use crate::port::{ControlPlanePort, PortError};

/// The REST API of one control plane, as the reconciler's port.
#[derive(Debug, Clone)]
pub struct ControlPlaneClient {
    client: Client,
}

impl ControlPlaneClient {
    /// The port over `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

/// What a client error about `what` means to the reconciler.
fn port_error(e: ClientError, what: &str) -> PortError {
    match e {
        ClientError::Problem {
            status,
            code,
            detail,
            ..
        } => PortError::from_problem(status, code, detail, what),
        ClientError::Unreachable { .. } | ClientError::Settings(_) => {
            PortError::Unreachable(e.to_string())
        }
        ClientError::Unreadable { .. } => PortError::Unreadable(e.to_string()),
    }
}

#[async_trait]
impl ControlPlanePort for ControlPlaneClient {
    async fn instances(&self) -> Result<Vec<Instance>, PortError> {
        self.client
            .instances()
            .await
            .map_err(|e| port_error(e, "instances"))
    }

    async fn instance(&self, id: &str) -> Result<Instance, PortError> {
        self.client
            .instance(id)
            .await
            .map_err(|e| port_error(e, id))
    }

    async fn act(
        &self,
        id: &InstanceId,
        action: &Action,
        fence: Option<u64>,
    ) -> Result<(), PortError> {
        self.client
            .reconcile(id.as_str(), &step_body(action), fence)
            .await
            .map_err(|e| port_error(e, id.as_str()))
    }

    async fn claim_lease(&self, holder: &str, ttl: Duration) -> Result<Option<Lease>, PortError> {
        self.client
            .claim_lease(holder, ttl)
            .await
            .map_err(|e| port_error(e, "the reconciler lease"))
    }

    async fn release_lease(&self, holder: &str) -> Result<(), PortError> {
        self.client
            .release_lease(holder)
            .await
            .map_err(|e| port_error(e, "the reconciler lease"))
    }

    async fn instance_events(
        &self,
        last_event: Option<&str>,
    ) -> Result<BoxStream<'static, Named>, PortError> {
        let events = self
            .client
            .events("/api/events", last_event)
            .await
            .map_err(|e| port_error(e, "the event stream"))?;
        Ok(events
            .filter_map(|event| async move {
                let data: Value = serde_json::from_str(&event.data).ok()?;
                let instance = data["event"]["instanceId"].as_str()?.to_string();
                let change = match serde_json::from_value::<Event>(data["event"].clone()) {
                    Ok(Event::InstanceStatusChanged(change)) => Some(change),
                    _ => None,
                };
                Some(Named {
                    instance,
                    cursor: event.id,
                    change,
                })
            })
            .boxed())
    }
}

/// `action` as the control plane takes it: the body of `POST
/// /api/server/instances/{id}/reconcile` (the reconciler built into the
/// control plane hands the same step over in-process).
pub fn step_body(action: &Action) -> Value {
    match action {
        Action::Start { from } => json!({"action": "start", "state": from}),
        Action::ScheduleRetry { at, restarts } => {
            json!({"action": "scheduleRetry", "at": at, "restartCount": restarts})
        }
        Action::Recover { restarts } => json!({"action": "recover", "restartCount": restarts}),
        Action::ResetRestarts { restarts } => {
            json!({"action": "resetRestarts", "restartCount": restarts})
        }
        Action::ApplyConfiguration { generation } => {
            json!({"action": "applyConfiguration", "generation": generation})
        }
        Action::Stop { from } => json!({"action": "stop", "state": from}),
        Action::FinishDelete => json!({"action": "finishDelete"}),
    }
}
