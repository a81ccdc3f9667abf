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
