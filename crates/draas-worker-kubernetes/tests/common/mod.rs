//! What the Kubernetes tests share: the runtime image the fake kubelet
//! runs, and calls through the API server.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bollard::Docker;
use draas_testkit::kubernetes::TestCluster;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::Client;

/// The image the tests' servers run: the bundled runtime of this
/// workspace, built into the local engine (the fake kubelet's nodes "have"
/// it; nothing is pulled).
pub const IMAGE: &str = "draas-runtime:k8s-test";

/// The local Docker engine.
pub fn docker() -> Docker {
    Docker::connect_with_local_defaults().expect("the Docker engine")
}

/// Builds [`IMAGE`] from the workspace's runtime binary if needed.
pub async fn runtime_image() {
    draas_worker_docker::image::ensure_runtime_image(
        &docker(),
        &draas_testkit::workspace_binary("draas-runtime"),
        IMAGE,
    )
    .await
    .expect("the runtime image");
}

/// Whether the server behind Service `service` answers `/health`, through
/// the API server's service proxy (as a user outside the cluster would
/// reach it).
pub async fn proxied_health(client: &Client, namespace: &str, service: &str) -> bool {
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{namespace}/services/{service}:api/proxy/health"
    ))
    .body(Vec::new())
    .unwrap();
    client
        .request_text(request)
        .await
        .is_ok_and(|body| body.contains("ok"))
}

/// The cluster's identity, as the driver reads it.
pub async fn cluster_id(cluster: &TestCluster) -> String {
    Api::<Namespace>::all(cluster.client.clone())
        .get("kube-system")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap()
}

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use draas_core::config::DrasiServerConfig;
use draas_core::instance::{
    ActualState, DesiredState, ImagePullPolicy, Instance, InstanceId, InstanceStatus, PlatformType,
    ServerConfiguration,
};
use draas_core::keys;
use draas_core::messages::StartSpec;
use draas_core::ports::store::{JsonStore, Precondition};
use draas_core::ports::StateStore;
use draas_testkit::kubelet::{FakeKubelet, KubeletOptions};
use draas_testkit::kubernetes::TestNamespace;
use draas_worker::{WorkerContext, WorkerSettings};
use draas_worker_kubernetes::{Cluster, KubernetesDriver, KubernetesSettings};

/// A namespace of the test cluster with a fake kubelet, and a store and
/// bus for workers.
pub struct Setup {
    pub cluster: TestCluster,
    pub namespace: TestNamespace,
    pub kubelet: FakeKubelet,
    pub store: Arc<dyn StateStore>,
    pub bus: Arc<draas_bus::InProcessBus>,
}

impl Setup {
    pub async fn new(prefix: &str, options: KubeletOptions) -> Self {
        runtime_image().await;
        let cluster = draas_testkit::kubernetes::test_cluster().await;
        let namespace = cluster.namespace(prefix).await;
        let kubelet = FakeKubelet::start(cluster.client.clone(), &namespace.name, options)
            .await
            .expect("the fake kubelet");
        Self {
            cluster,
            namespace,
            kubelet,
            store: Arc::new(draas_store::EmbeddedStore::in_memory().unwrap()),
            bus: Arc::new(draas_bus::InProcessBus::new()),
        }
    }

    pub fn settings(&self) -> KubernetesSettings {
        KubernetesSettings {
            kubeconfig: Some(self.cluster.kubeconfig.clone()),
            namespace: Some(self.namespace.name.clone()),
            image_pull_policy: ImagePullPolicy::Never,
            ..KubernetesSettings::new(IMAGE)
        }
    }

    pub fn context(&self, worker_id: &str) -> WorkerContext {
        WorkerContext::new(
            WorkerSettings {
                worker_id: worker_id.into(),
                host: "test".into(),
                heartbeat_interval: Duration::from_secs(1),
                heartbeat_ttl: Duration::from_secs(3),
                concurrency: 8,
                capacity: None,
                orphan_sweep_every: std::time::Duration::from_secs(30),
            },
            self.store.clone(),
            self.bus.clone(),
        )
    }

    pub async fn driver(&self, worker_id: &str) -> KubernetesDriver {
        let settings = self.settings();
        let cluster = Cluster::connect(&settings).await.expect("the test cluster");
        draas_worker_kubernetes::driver(cluster, settings, &self.context(worker_id))
            .await
            .unwrap()
    }

    /// A new instance record (the status recorder updates it).
    pub async fn instance(&self) -> InstanceId {
        let id = InstanceId::generate();
        let now = Utc::now();
        let instance = Instance {
            id: id.clone(),
            name: format!("k-{}", &id.as_str()[id.as_str().len() - 6..]),
            description: String::new(),
            platform_type: PlatformType::Kubernetes,
            created_at: now,
            updated_at: now,
            desired_state: DesiredState::Running,
            generation: 1,
            server_configuration: ServerConfiguration::for_platform(PlatformType::Kubernetes),
            configuration: DrasiServerConfig::empty("0.0.0.0", 8080),
            restart_policy: Default::default(),
            update_strategy: Default::default(),
            status: InstanceStatus::created(now),
            runtime: None,
            deleted_at: None,
        };
        self.store
            .apply(draas_core::records::create_writes(&instance).unwrap())
            .await
            .unwrap();
        id
    }

    pub async fn recorded(&self, id: &InstanceId) -> Instance {
        draas_core::records::read(self.store.as_ref(), id)
            .await
            .unwrap()
            .unwrap()
            .instance()
    }

    /// Waits until the recorded status of `id` satisfies `check`.
    pub async fn wait_status(
        &self,
        id: &InstanceId,
        limit: Duration,
        what: &str,
        check: impl Fn(&Instance) -> bool,
    ) -> Instance {
        let deadline = Instant::now() + limit;
        loop {
            let instance = self.recorded(id).await;
            if check(&instance) {
                return instance;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: not {what} within {limit:?}: {:?}",
                instance.status
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn finish(self) {
        self.kubelet.shutdown().await;
        self.namespace.delete().await;
    }
}

/// A small real server (a mock source, a query, a log reaction).
pub fn start_spec(id: &InstanceId, generation: u64) -> StartSpec {
    let mut configuration = draas_testkit::counter_configuration(8080);
    configuration.host = Some("0.0.0.0".to_string().into());
    draas_testkit::start_spec(id, &configuration, PlatformType::Kubernetes, generation)
}

/// Whether `state` is `wanted`.
pub fn is(instance: &Instance, wanted: ActualState) -> bool {
    instance.status.state == wanted
}

impl Setup {
    /// Records `id` running with `runtime`, as the worker's executor does
    /// when a start succeeds.
    pub async fn record_running(
        &self,
        id: &InstanceId,
        runtime: &draas_core::instance::RuntimeInfo,
    ) {
        let mut instance = self.recorded(id).await;
        instance.status.state = ActualState::Running;
        instance.status.updated_at = Utc::now();
        instance.runtime = Some(runtime.clone());
        self.store
            .put_json(
                keys::INSTANCE_STATUS,
                id.as_str(),
                &instance.observed(),
                Precondition::None,
            )
            .await
            .unwrap();
    }
}
