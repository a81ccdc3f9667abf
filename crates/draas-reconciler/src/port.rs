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

use crate::client::ClientError;
use crate::cursor::Named;
use crate::plan::Action;

/// What the reconciler needs of a control plane.
#[async_trait]
pub trait ControlPlanePort: Send + Sync + 'static {
    /// Every instance.
    async fn instances(&self) -> Result<Vec<Instance>, ClientError>;

    /// One instance ([`ClientError::Gone`] when it no longer exists).
    async fn instance(&self, id: &str) -> Result<Instance, ClientError>;

    /// Carries out `action` on instance `id`, fenced with the lease's
    /// `fence` token when this reconciler holds one.
    async fn act(
        &self,
        id: &InstanceId,
        action: &Action,
        fence: Option<u64>,
    ) -> Result<(), ClientError>;

    /// Claims or renews the reconciler lease for `holder`; `Ok(None)`
    /// while another holder has it.
    async fn claim_lease(&self, holder: &str, ttl: Duration) -> Result<Option<Lease>, ClientError>;

    /// Gives the lease up (at shutdown), so another reconciler takes over
    /// at once.
    async fn release_lease(&self, holder: &str) -> Result<(), ClientError>;

    /// The instances that events name, from the event stream (resumed
    /// after `last_event` when given: every kept event after it first,
    /// then the live ones). Ends when the stream does.
    async fn instance_events(
        &self,
        last_event: Option<&str>,
    ) -> Result<BoxStream<'static, Named>, ClientError>;
}
