//! The test Kubernetes cluster: a real kube-apiserver and
//! kube-controller-manager (built from Debian's source package by
//! `shared/tools/k8s-test-cluster.sh`, started by the test command), and a
//! namespace per test.
//!
//! Tests find it through `DRAAS_TEST_KUBECONFIG`, never `KUBECONFIG`: a
//! developer's own cluster is never touched by accident. A test that needs
//! the cluster and does not find it fails, saying how to start it: a
//! skipped run cannot pass silently.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The variable naming the test cluster's kubeconfig.
pub const KUBECONFIG_VARIABLE: &str = "DRAAS_TEST_KUBECONFIG";

/// The test cluster.
#[derive(Clone)]
pub struct TestCluster {
    /// Its kubeconfig file.
    pub kubeconfig: PathBuf,
    /// A client (admin).
    pub client: Client,
}

/// The test cluster, or a failed test that says how to start one.
pub async fn test_cluster() -> TestCluster {
    let Some(path) = std::env::var_os(KUBECONFIG_VARIABLE).map(PathBuf::from) else {
        panic!(
            "{KUBECONFIG_VARIABLE} is not set: run the tests with scripts/test.sh, or start the \
             test cluster (`shared/tools/k8s-test-cluster.sh build && \
             shared/tools/k8s-test-cluster.sh start`) and set {KUBECONFIG_VARIABLE} to the \
             kubeconfig it prints"
        );
    };
    let file = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("{KUBECONFIG_VARIABLE}={}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{KUBECONFIG_VARIABLE}={}: {e}", path.display()));
    let client = Client::try_from(config).expect("a client of the test cluster");
    let version = tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
        .await
        .unwrap_or_else(|_| panic!("the test cluster of {} does not answer", path.display()))
        .unwrap_or_else(|e| panic!("the test cluster of {}: {e}", path.display()));
    assert!(!version.git_version.is_empty());
    TestCluster {
        kubeconfig: path,
        client,
    }
}

/// A namespace created for one test.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    client: Client,
}

impl TestCluster {
    /// A fresh namespace `draas-<prefix>-<random>`.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let name = format!(
            "draas-{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        Api::<Namespace>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        ..ObjectMeta::default()
                    },
                    ..Namespace::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        TestNamespace {
            name,
            client: self.client.clone(),
        }
    }
}

impl TestNamespace {
    /// Deletes the namespace (what is left in it goes with it).
    pub async fn delete(self) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await;
    }
}
