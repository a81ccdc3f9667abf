//! The driver conformance suite against the Kubernetes platform: the test
//! cluster's real kube-apiserver and kube-controller-manager, a namespace
//! of its own, and the fake kubelet running its pods as Docker containers
//! of the bundled runtime's image.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::query_parameters::{InspectContainerOptions, KillContainerOptionsBuilder};
use draas_core::instance::{
    ImagePullPolicy, InstanceId, PlatformHandle, PlatformType, RuntimeInfo,
};
use draas_core::messages::StartSpec;
use draas_core::ports::{PlatformDriver, StateStore};
use draas_testkit::conformance::driver::{DriverFixture, Impostor};
use draas_testkit::kubelet::FakeKubelet;
use draas_testkit::kubernetes::TestCluster;
use draas_worker::WorkerContext;
use draas_worker_kubernetes::{Cluster, KubernetesSettings};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::ResourceExt;

mod common;

struct Fixture {
    cluster: TestCluster,
    namespace: String,
    kubelet: FakeKubelet,
}

fn deployment_of(handle: &PlatformHandle) -> (&str, &str, Option<i64>) {
    match handle {
        PlatformHandle::Deployment {
            namespace,
            name,
            revision,
        } => (namespace, name, *revision),
        other => panic!("not a Deployment handle: {other:?}"),
    }
}

impl Fixture {
    fn settings(&self) -> KubernetesSettings {
        KubernetesSettings {
            kubeconfig: Some(self.cluster.kubeconfig.clone()),
            namespace: Some(self.namespace.clone()),
            image_pull_policy: ImagePullPolicy::Never,
            ..KubernetesSettings::new(common::IMAGE)
        }
    }

    /// The running pod of Deployment `name`.
    async fn pod_of(&self, name: &str) -> Option<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.cluster.client.clone(), &self.namespace);
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.owner_references()
                        .iter()
                        .any(|o| o.name.starts_with(&format!("{name}-")))
            })
    }
}

/// A Deployment of the same name that is not DRaaS's: what a recreated
/// Deployment looks like.
struct Stranger {
    api: Api<Deployment>,
    name: String,
    uid: String,
}

impl Impostor for Stranger {
    fn alive(&mut self) -> bool {
        let api = self.api.clone();
        let name = self.name.clone();
        let uid = self.uid.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                api.get_opt(&name)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|d| d.uid().as_deref() == Some(uid.as_str()))
            })
        })
    }
}

#[async_trait]
impl DriverFixture for Fixture {
    fn platform(&self) -> PlatformType {
        PlatformType::Kubernetes
    }

    async fn driver(&self, context: &WorkerContext) -> Arc<dyn PlatformDriver> {
        let settings = self.settings();
        let cluster = Cluster::connect(&settings).await.expect("the test cluster");
        Arc::new(
            draas_worker_kubernetes::driver(cluster, settings, context)
                .await
                .unwrap(),
        )
    }

    fn start_spec(&self, id: &InstanceId, generation: u64) -> StartSpec {
        let mut configuration = draas_testkit::counter_configuration(8080);
        configuration.host = Some("0.0.0.0".to_string().into());
        draas_testkit::start_spec(id, &configuration, PlatformType::Kubernetes, generation)
    }

    async fn crash(&self, handle: &PlatformHandle) {
        let (_, name, _) = deployment_of(handle);
        let pod = self.pod_of(name).await.expect("a pod");
        let container = self
            .kubelet
            .container_of(&pod.name_any())
            .expect("its container");
        common::docker()
            .kill_container(
                &container,
                Some(
                    KillContainerOptionsBuilder::default()
                        .signal("SIGKILL")
                        .build(),
                ),
            )
            .await
            .expect("docker kill");
    }

    async fn vanish(&self, handle: &PlatformHandle) {
        let (namespace, name, _) = deployment_of(handle);
        let api: Api<Deployment> = Api::namespaced(self.cluster.client.clone(), namespace);
        api.delete(name, &DeleteParams::background())
            .await
            .expect("delete the Deployment");
    }

    fn restarts_crashed_servers(&self) -> bool {
        true
    }

    fn output_outlives_the_server(&self) -> bool {
        false
    }

    async fn answers_health(&self, runtime: &RuntimeInfo) -> bool {
        let (namespace, name, _) = deployment_of(runtime.handle.as_ref().expect("a handle"));
        common::proxied_health(&self.cluster.client, namespace, name).await
    }

    async fn is_running(&self, handle: &PlatformHandle) -> bool {
        let (namespace, name, revision) = deployment_of(handle);
        let api: Api<Deployment> = Api::namespaced(self.cluster.client.clone(), namespace);
        let Some(deployment) = api.get_opt(name).await.unwrap() else {
            return false;
        };
        if revision.is_some() && deployment.metadata.generation != revision {
            // Launched again since (a new configuration, a stop).
            return false;
        }
        let Some(pod) = self.pod_of(name).await else {
            return false;
        };
        let Some(container) = self.kubelet.container_of(&pod.name_any()) else {
            return false;
        };
        common::docker()
            .inspect_container(&container, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.running)
            == Some(true)
    }

    async fn leftovers(&self, id: &InstanceId) -> Vec<String> {
        let client = &self.cluster.client;
        let ns = &self.namespace;
        let selector = ListParams::default().labels(&format!("draas.io/instance-id={id}"));
        let mut left = Vec::new();
        macro_rules! collect {
            ($kind:ty, $label:expr) => {
                for o in Api::<$kind>::namespaced(client.clone(), ns)
                    .list(&selector)
                    .await
                    .unwrap()
                    .items
                {
                    left.push(format!("{} {}", $label, o.name_any()));
                }
            };
        }
        collect!(Deployment, "Deployment");
        collect!(ReplicaSet, "ReplicaSet");
        collect!(Pod, "Pod");
        collect!(ConfigMap, "ConfigMap");
        collect!(Secret, "Secret");
        collect!(Service, "Service");
        left
    }

    async fn impersonate(&self, store: &dyn StateStore, id: &InstanceId) -> Box<dyn Impostor> {
        // The record names a Deployment that is gone; another one of the
        // same name appears, belonging to someone else.
        let _ = store;
        let records = draas_core::keys::worker_records(
            PlatformType::Kubernetes,
            &common::cluster_id(&self.cluster).await,
        );
        let record = draas_core::ports::store::JsonStore::get_json::<serde_json::Value>(
            store,
            &records,
            id.as_str(),
        )
        .await
        .expect("read")
        .expect("a record of the server")
        .value;
        let name = record["platform"]["name"]
            .as_str()
            .expect("a name")
            .to_string();
        let api: Api<Deployment> = Api::namespaced(self.cluster.client.clone(), &self.namespace);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while api.get_opt(&name).await.unwrap().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the old Deployment went away"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stranger: Deployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": name, "labels": { "app": "someone-else" } },
            "spec": {
                "replicas": 0,
                "selector": { "matchLabels": { "app": "someone-else" } },
                "template": {
                    "metadata": { "labels": { "app": "someone-else" } },
                    "spec": { "containers": [{ "name": "x", "image": common::IMAGE }] }
                }
            }
        }))
        .unwrap();
        let created = api
            .create(&PostParams::default(), &stranger)
            .await
            .expect("create");
        let mut stranger = Stranger {
            api,
            name,
            uid: created.uid().expect("a uid"),
        };
        assert!(stranger.alive());
        Box::new(stranger)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_driver_passes_the_driver_conformance_suite() {
    common::runtime_image().await;
    let cluster = draas_testkit::kubernetes::test_cluster().await;
    let namespace = cluster.namespace("conformance").await;
    let kubelet = FakeKubelet::start(cluster.client.clone(), &namespace.name, Default::default())
        .await
        .expect("the fake kubelet");
    let fixture = Fixture {
        cluster: cluster.clone(),
        namespace: namespace.name.clone(),
        kubelet,
    };
    let store: Arc<dyn StateStore> = Arc::new(draas_store::EmbeddedStore::in_memory().unwrap());
    let bus = Arc::new(draas_bus::InProcessBus::new());
    draas_testkit::conformance::driver::run_all(&fixture, store, bus).await;
    fixture.kubelet.shutdown().await;
    namespace.delete().await;
}
