//! Which cluster, and a client for it.
//!
//! The cluster is chosen like `kubectl` chooses it: an explicit kubeconfig
//! file (`--kubeconfig`), else `$KUBECONFIG` or `~/.kube/config`, else the
//! in-cluster service account. Its identity (the scope of this worker's
//! servers: every worker of the same cluster can reach them) is the uid of
//! its `kube-system` namespace, which lives as long as the cluster, unless
//! configured.
//!
//! Every request the client makes is counted ([`RequestCounter`]): the
//! tests and the benchmark check how many API requests a start, a re-apply
//! or a stop costs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use draas_core::instance::ImagePullPolicy;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tower::util::MapRequestLayer;

/// How long the cluster may take to answer when the worker connects, by
/// default.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// How a Kubernetes worker reaches its cluster and what it runs there.
#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    /// A kubeconfig file; default: `$KUBECONFIG`, `~/.kube/config`, or the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; default: its current context.
    pub context: Option<String>,
    /// The namespace of instances that name none; default: the context's
    /// namespace (in a cluster: the worker's own).
    pub namespace: Option<String>,
    /// The image of instances that name none: the bundled runtime, as the
    /// cluster's nodes can pull it.
    pub image: String,
    /// When nodes pull images, for instances that do not say.
    pub image_pull_policy: ImagePullPolicy,
    /// The cluster's identity; default: the uid of `kube-system`.
    pub cluster_id: Option<String>,
    /// How long the cluster may take to answer when connecting.
    pub connect_timeout: Duration,
}

impl KubernetesSettings {
    /// Defaults, with `image` as the bundled runtime's image.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            kubeconfig: None,
            context: None,
            namespace: None,
            image: image.into(),
            image_pull_policy: ImagePullPolicy::IfNotPresent,
            cluster_id: None,
            connect_timeout: CONNECT_WITHIN,
        }
    }
}

/// Why the cluster cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No usable configuration.
    #[error("no Kubernetes configuration: {0}")]
    Config(String),
    /// The API server did not answer (in time).
    #[error("the Kubernetes API server at {url} does not answer: {detail}")]
    Unreachable {
        /// Its URL.
        url: String,
        /// What happened.
        detail: String,
    },
    /// The cluster's identity cannot be read.
    #[error("cannot read the cluster's identity (the uid of namespace kube-system; set it with --kubernetes-cluster-id instead): {0}")]
    Identity(String),
}

/// API requests made, by kind.
#[derive(Debug, Default)]
struct Counts {
    reads: AtomicU64,
    writes: AtomicU64,
}

/// Counts the client's API requests. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(Arc<Counts>);

/// Requests counted so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestCount {
    /// `GET` (lists, gets, watches, logs, proxied calls).
    pub reads: u64,
    /// `POST`, `PUT`, `PATCH`, `DELETE`.
    pub writes: u64,
}

impl RequestCount {
    /// Requests of both kinds.
    pub fn total(self) -> u64 {
        self.reads + self.writes
    }
}

impl std::ops::Sub for RequestCount {
    type Output = RequestCount;
    fn sub(self, earlier: RequestCount) -> RequestCount {
        RequestCount {
            reads: self.reads.saturating_sub(earlier.reads),
            writes: self.writes.saturating_sub(earlier.writes),
        }
    }
}

impl RequestCounter {
    /// The requests counted so far.
    pub fn count(&self) -> RequestCount {
        RequestCount {
            reads: self.0.reads.load(Ordering::Relaxed),
            writes: self.0.writes.load(Ordering::Relaxed),
        }
    }

    fn record(&self, method: &http::Method) {
        let counter = if method == http::Method::GET || method == http::Method::HEAD {
            &self.0.reads
        } else {
            &self.0.writes
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connected cluster.
#[derive(Clone)]
pub struct Cluster {
    /// The client (requests counted by `requests`).
    pub client: Client,
    /// The namespace of instances that name none.
    pub default_namespace: String,
    /// The API server's version (`v1.20.2`).
    pub version: String,
    /// The cluster's identity.
    pub id: String,
    /// The API server's URL.
    pub url: String,
    /// Requests made through `client`.
    pub requests: RequestCounter,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.url)
            .field("version", &self.version)
            .field("id", &self.id)
            .finish()
    }
}

/// The client configuration `settings` choose.
pub async fn config(settings: &KubernetesSettings) -> Result<Config, ClusterError> {
    let options = KubeConfigOptions {
        context: settings.context.clone(),
        ..KubeConfigOptions::default()
    };
    match &settings.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))
        }
        None if settings.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| ClusterError::Config(e.to_string())),
        None => Config::infer()
            .await
            .map_err(|e| ClusterError::Config(e.to_string())),
    }
}

impl Cluster {
    /// Connects to the cluster `settings` choose and checks that it
    /// answers.
    pub async fn connect(settings: &KubernetesSettings) -> Result<Self, ClusterError> {
        let config = config(settings).await?;
        let url = config.cluster_url.to_string();
        let requests = RequestCounter::default();
        let counter = requests.clone();
        let client = ClientBuilder::try_from(config)
            .map_err(|e| ClusterError::Config(e.to_string()))?
            .with_layer(&MapRequestLayer::new(
                move |request: http::Request<kube::client::Body>| {
                    counter.record(request.method());
                    request
                },
            ))
            .build();
        let unreachable = |detail: String| ClusterError::Unreachable {
            url: url.clone(),
            detail,
        };
        let limit = settings.connect_timeout;
        let version = tokio::time::timeout(limit, client.apiserver_version())
            .await
            .map_err(|_| unreachable(format!("no answer within {limit:?}")))?
            .map_err(|e| unreachable(e.to_string()))?
            .git_version;
        let id = match &settings.cluster_id {
            Some(id) => id.clone(),
            None => Api::<Namespace>::all(client.clone())
                .get("kube-system")
                .await
                .map_err(|e| ClusterError::Identity(e.to_string()))?
                .metadata
                .uid
                .ok_or_else(|| ClusterError::Identity("kube-system has no uid".into()))?,
        };
        let default_namespace = settings
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        Ok(Self {
            client,
            default_namespace,
            version,
            id,
            url,
            requests,
        })
    }
}
