//! The reconciler built into `draas up` and `draas serve` reaches its own
//! control plane in-process.
//!
//! It runs the same reconciler as `draas reconcile` (lease, fencing token,
//! plans checked for staleness: all of that is enforced by the control
//! plane's operations, which both reach), but calls those operations
//! directly instead of through loopback HTTP and the server-sent event
//! stream. On the way from a crash to its restart that spares two HTTP
//! trips (the event to the reconciler, its step back), each through the
//! API's middleware and JSON, so a crashed server is started again sooner.
//!
//! Its steps are audited as the API would audit them (`POST
//! .../reconcile` by `embedded-reconciler`), so the audit log tells who
//! restarted what whichever way the reconciler runs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use draas_api::error::ApiError;
use draas_api::service::audit::AuditEntry;
use draas_api::service::{ControlPlane, ReconcileStep};
use draas_core::auth::Role;
use draas_core::instance::{Instance, InstanceId};
use draas_core::lease::Lease;
use draas_core::messages::Event;
use draas_core::problem::ProblemCode;
use draas_reconciler::cursor::Named;
use draas_reconciler::{step_body, Action, ControlPlanePort, PortError};
use futures::stream::BoxStream;
use futures::StreamExt;
use tracing::warn;

/// The name the built-in reconciler's steps carry in the audit log.
const AUDITED_AS: &str = "embedded-reconciler";

/// A control plane, as its own reconciler sees it.
pub struct InProcess {
    control: Arc<ControlPlane>,
}

impl InProcess {
    /// The port of `control`, as the reconciler takes it.
    pub fn port(control: Arc<ControlPlane>) -> Arc<dyn ControlPlanePort> {
        Arc::new(Self { control })
    }
}

/// What an operation's refusal means to the reconciler: the same as the
/// problem the API would have answered with.
fn refusal(e: ApiError, what: &str) -> PortError {
    PortError::from_problem(
        e.status.as_u16(),
        ProblemCode::parse(e.code),
        e.detail,
        what,
    )
}

#[async_trait]
impl ControlPlanePort for InProcess {
    async fn instances(&self) -> Result<Vec<Instance>, PortError> {
        self.control
            .all_instances()
            .await
            .map_err(|e| refusal(e, "instances"))
    }

    async fn instance(&self, id: &str) -> Result<Instance, PortError> {
        let parsed: InstanceId = id.parse().map_err(|_| PortError::Gone(id.to_string()))?;
        self.control
            .load(&parsed)
            .await
            .map(|record| record.value)
            .map_err(|e| refusal(e, id))
    }

    async fn act(
        &self,
        id: &InstanceId,
        action: &Action,
        fence: Option<u64>,
    ) -> Result<(), PortError> {
        // The step as the API takes it: one mapping for both ways in.
        let step: ReconcileStep =
            serde_json::from_value(step_body(action)).map_err(|e| PortError::Refused {
                status: 400,
                code: ProblemCode::Other("INVALID_STEP".into()),
                detail: format!("a step the control plane does not take: {e}"),
            })?;
        let outcome = self.control.reconcile(id, step, fence).await;
        let status = match &outcome {
            Ok(_) => 200,
            Err(e) => e.status.as_u16(),
        };
        let entry = AuditEntry {
            at: Utc::now(),
            key: AUDITED_AS.into(),
            role: Some(Role::Operator),
            method: "POST".into(),
            path: format!("/api/server/instances/{id}/reconcile"),
            status,
            outcome: AuditEntry::outcome_of(status).into(),
        };
        if let Err(e) = self.control.audit(&entry).await {
            warn!(instance = %id, "cannot record the reconciler's step in the audit log: {}", e.detail);
        }
        outcome.map(|_| ()).map_err(|e| refusal(e, id.as_str()))
    }

    async fn claim_lease(&self, holder: &str, ttl: Duration) -> Result<Option<Lease>, PortError> {
        match self.control.claim_lease(holder, ttl).await {
            Ok(lease) => Ok(Some(lease)),
            Err(e) if ProblemCode::parse(e.code) == ProblemCode::LeaseHeld => Ok(None),
            Err(e) => Err(refusal(e, "the reconciler lease")),
        }
    }

    async fn release_lease(&self, holder: &str) -> Result<(), PortError> {
        self.control
            .release_lease(holder)
            .await
            .map(|_| ())
            .map_err(|e| refusal(e, "the reconciler lease"))
    }

    async fn instance_events(
        &self,
        last_event: Option<&str>,
    ) -> Result<BoxStream<'static, Named>, PortError> {
        let events = self
            .control
            .events_after(last_event)
            .await
            .map_err(|e| refusal(e, "the event stream"))?;
        Ok(events
            .filter_map(|published| async move {
                let event = published.envelope.event;
                let instance = event.instance_id()?.as_str().to_string();
                let change = match event {
                    Event::InstanceStatusChanged(change) => Some(change),
                    _ => None,
                };
                Some(Named {
                    instance,
                    cursor: Some(published.cursor),
                    change,
                })
            })
            .boxed())
    }
}
