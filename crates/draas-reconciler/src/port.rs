//! The control plane as the reconciler sees it: what it reads (instances,
//! the event stream), what it asks (its steps, the lease), nothing else.
//!
//! Two implementations: [`ControlPlaneClient`](crate::ControlPlaneClient)
//! speaks the REST API and the server-sent event stream, so `draas
//! reconcile` runs anywhere; the reconciler built into `draas up` and
//! `draas serve` calls its own control plane in-process (the `draas`
//! crate's adapter), which spares every step two trips through HTTP on the
//! way from a crash to its restart. Both go through the same checks on the
//! control plane's side: the lease's fencing token, the plan's staleness.

use std::time::Duration;

use async_trait::async_trait;
use draas_core::instance::{Instance, InstanceId};
use draas_core::lease::Lease;
use futures::stream::BoxStream;

use draas_core::problem::ProblemCode;

use crate::cursor::Named;
use crate::plan::Action;

/// What the reconciler needs of a control plane.
#[async_trait]
pub trait ControlPlanePort: Send + Sync + 'static {
    /// Every instance.
    async fn instances(&self) -> Result<Vec<Instance>, PortError>;

    /// One instance ([`PortError::Gone`] when it no longer exists).
    async fn instance(&self, id: &str) -> Result<Instance, PortError>;

    /// Carries out `action` on instance `id`, fenced with the lease's
    /// `fence` token when this reconciler holds one.
    async fn act(
        &self,
        id: &InstanceId,
        action: &Action,
        fence: Option<u64>,
    ) -> Result<(), PortError>;

    /// Claims or renews the reconciler lease for `holder`; `Ok(None)`
    /// while another holder has it.
    async fn claim_lease(&self, holder: &str, ttl: Duration) -> Result<Option<Lease>, PortError>;

    /// Gives the lease up (at shutdown), so another reconciler takes over
    /// at once.
    async fn release_lease(&self, holder: &str) -> Result<(), PortError>;

    /// The instances that events name, from the event stream (resumed
    /// after `last_event` when given: every kept event after it first,
    /// then the live ones). Ends when the stream does.
    async fn instance_events(
        &self,
        last_event: Option<&str>,
    ) -> Result<BoxStream<'static, Named>, PortError>;
}

/// Why the control plane did not do what the reconciler asked: the
/// refusals it acts on by kind, anything else with its problem code. Both
/// ports give these (the REST client from the problem answer, the
/// in-process one from the operation's error), through
/// [`PortError::from_problem`].
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// No answer (connection refused, timeout).
    #[error("the control plane did not answer: {0}")]
    Unreachable(String),
    /// The instance is gone.
    #[error("{0} no longer exists")]
    Gone(String),
    /// The record changed since the plan (someone else acted).
    #[error("the plan is stale: {0}")]
    Stale(String),
    /// This reconciler's lease moved on: its fencing token is old.
    #[error("the reconciler lease has moved on: {0}")]
    StaleFence(String),
    /// No live worker can reach the instance's server now.
    #[error("no live worker can reach the server: {0}")]
    NoLiveWorker(String),
    /// The worker refused a start the instance no longer asks for.
    #[error("superseded: {0}")]
    Superseded(String),
    /// The event cursor is not known (older than the kept history).
    #[error("unknown event cursor: {0}")]
    InvalidCursor(String),
    /// An answer the reconciler cannot read.
    #[error("unreadable answer: {0}")]
    Unreadable(String),
    /// Any other refusal.
    #[error("{status} {code}: {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem's code.
        code: ProblemCode,
        /// The problem's detail.
        detail: String,
    },
}

impl PortError {
    /// The error a problem answer (`status`, `code`, `detail`) about
    /// `what` stands for.
    pub fn from_problem(status: u16, code: ProblemCode, detail: String, what: &str) -> Self {
        match code {
            ProblemCode::NotFound => PortError::Gone(what.to_string()),
            ProblemCode::StalePlan => PortError::Stale(detail),
            ProblemCode::StaleFence => PortError::StaleFence(detail),
            ProblemCode::NoLiveWorker => PortError::NoLiveWorker(detail),
            ProblemCode::Superseded => PortError::Superseded(detail),
            ProblemCode::InvalidCursor => PortError::InvalidCursor(detail),
            code => PortError::Refused {
                status,
                code,
                detail,
            },
        }
    }
}
