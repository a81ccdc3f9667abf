//! # draas-worker-kubernetes
//!
//! The Kubernetes platform: each instance is a Deployment (plus its
//! ConfigMap, Secret and Service) in a cluster, driven through the
//! Kubernetes API with kube-rs. Readiness, the registry of running
//! servers, crash reports and takeover are the generic driver's
//! (`draas_worker::driver`); this crate holds only what is about
//! Kubernetes:
//!
//! - [`cluster`]: which cluster (kubeconfig, in-cluster), its identity (the
//!   scope: every worker of a cluster can take over its servers) and
//!   version, and a client whose requests are counted;
//! - [`manifests`]: what an instance's objects look like: pure;
//! - [`observe`]: from a Deployment and its Pods to the server's
//!   condition (`Running`, `CrashLoopBackOff`, `ImagePullBackOff`, ...):
//!   pure;
//! - [`watch`]: watches and reflector stores of this installation's
//!   objects, and the tracker of each server (no polling);
//! - [`proxy`]: the server's API through the API server's service proxy;
//! - [`platform`]: the `Platform` implementation.

pub mod cluster;
pub mod manifests;
pub mod observe;
pub mod platform;
pub mod proxy;
pub mod watch;

use draas_worker::driver::ManagedDriver;
use draas_worker::WorkerContext;

pub use cluster::{Cluster, ClusterError, KubernetesSettings, RequestCount, RequestCounter};
pub use platform::{DeploymentRecord, KubernetesPlatform};

/// The Kubernetes driver: the generic driver over the Kubernetes platform.
pub type KubernetesDriver = ManagedDriver<KubernetesPlatform>;

/// A Kubernetes driver for the worker of `context`, on `cluster`.
pub async fn driver(
    cluster: Cluster,
    settings: KubernetesSettings,
    context: &WorkerContext,
) -> Result<KubernetesDriver, draas_core::ports::StoreError> {
    let store = context.store.as_ref();
    let installation = draas_core::installation::id(store).await?;
    let key = draas_core::installation::fingerprint_key(store).await?;
    Ok(ManagedDriver::new(
        KubernetesPlatform::new(cluster, settings, installation, key.into_bytes()),
        context,
    ))
}
