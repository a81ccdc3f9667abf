//! The Kubernetes platform end to end: the real `draas` binaries (`up`, and
//! `serve` + `worker --platform kubernetes` over a real redis-server)
//! against the test cluster's real kube-apiserver and
//! kube-controller-manager, with the fake kubelet running pods as Docker
//! containers of the bundled runtime's image.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bollard::query_parameters::KillContainerOptionsBuilder;
use bollard::Docker;
use common::{counter_pipeline, Draas};
use draas_testkit::kubelet::FakeKubelet;
use draas_testkit::kubernetes::{TestCluster, TestNamespace};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use reqwest::Method;
use serde_json::{json, Value};

/// The image the tests' pods run (the bundled runtime of this workspace).
const IMAGE: &str = "draas-runtime:k8s-test";

fn docker() -> Docker {
    Docker::connect_with_local_defaults().expect("the Docker engine")
}

/// The test cluster, a namespace of its own with a fake kubelet, and the
/// image.
async fn cluster(prefix: &str) -> (TestCluster, TestNamespace, FakeKubelet) {
    cluster_with(prefix, Default::default()).await
}

/// [`cluster`], with a kubelet that behaves as `options` say.
async fn cluster_with(
    prefix: &str,
    options: draas_testkit::kubelet::KubeletOptions,
) -> (TestCluster, TestNamespace, FakeKubelet) {
    draas_worker_docker::image::ensure_runtime_image(&docker(), &common::runtime_binary(), IMAGE)
        .await
        .expect("the runtime image");
    let cluster = draas_testkit::kubernetes::test_cluster().await;
    let namespace = cluster.namespace(prefix).await;
    let kubelet = FakeKubelet::start(cluster.client.clone(), &namespace.name, options)
        .await
        .expect("the fake kubelet");
    (cluster, namespace, kubelet)
}

/// The worker arguments that put it on the test cluster.
fn kubernetes_args<'a>(cluster: &'a TestCluster, namespace: &'a TestNamespace) -> Vec<&'a str> {
    vec![
        "--kubeconfig",
        cluster.kubeconfig.to_str().unwrap(),
        "--kubernetes-namespace",
        &namespace.name,
        "--kubernetes-image",
        IMAGE,
        "--kubernetes-image-pull-policy",
        "Never",
    ]
}

/// Waits until the API has a live Kubernetes worker; returns the entry.
async fn kubernetes_platform(api: &common::Api) -> Value {
    draas_testkit::wait_for(
        "a live Kubernetes worker",
        Duration::from_secs(60),
        || async {
            let (_, body) = api.get("/api/server/platforms").await;
            body["platforms"]
                .as_array()?
                .iter()
                .find(|p| p["platformType"] == "Kubernetes" && p["available"] == true)
                .cloned()
        },
    )
    .await
}

/// `GET path` on the server behind Service `service`, through the API
/// server's proxy (how a user outside the cluster reaches it).
async fn proxied(
    cluster: &TestCluster,
    namespace: &str,
    service: &str,
    path: &str,
) -> Option<Value> {
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{namespace}/services/{service}:api/proxy{path}"
    ))
    .body(Vec::new())
    .unwrap();
    let text = cluster.client.request_text(request).await.ok()?;
    serde_json::from_str(&text).ok()
}

/// Names of the objects of instance `id` in `namespace`.
async fn objects_of(cluster: &TestCluster, namespace: &str, id: &str) -> Vec<String> {
    let selector = ListParams::default().labels(&format!("draas.io/instance-id={id}"));
    let client = &cluster.client;
    let mut found = Vec::new();
    for d in Api::<Deployment>::namespaced(client.clone(), namespace)
        .list(&selector)
        .await
        .unwrap()
    {
        found.push(format!("Deployment {}", d.name_any()));
    }
    for r in Api::<ReplicaSet>::namespaced(client.clone(), namespace)
        .list(&selector)
        .await
        .unwrap()
    {
        found.push(format!("ReplicaSet {}", r.name_any()));
    }
    for p in Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&selector)
        .await
        .unwrap()
    {
        found.push(format!("Pod {}", p.name_any()));
    }
    for c in Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .list(&selector)
        .await
        .unwrap()
    {
        found.push(format!("ConfigMap {}", c.name_any()));
    }
    for s in Api::<Service>::namespaced(client.clone(), namespace)
        .list(&selector)
        .await
        .unwrap()
    {
        found.push(format!("Service {}", s.name_any()));
    }
    found
}

/// The running pod of instance `id`.
async fn pod_of(cluster: &TestCluster, namespace: &str, id: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let selector = ListParams::default().labels(&format!("draas.io/instance-id={id}"));
    pods.list(&selector)
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .expect("a pod")
}

async fn kill(kubelet: &FakeKubelet, pod: &Pod) {
    let container = kubelet
        .container_of(&pod.name_any())
        .expect("its container");
    docker()
        .kill_container(
            &container,
            Some(
                KillContainerOptionsBuilder::default()
                    .signal("SIGKILL")
                    .build(),
            ),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_instance_lives_its_whole_life_through_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, namespace, kubelet) = cluster("e2e").await;
    let mut args = vec!["--docker", "off", "--kubernetes", "on"];
    args.extend(kubernetes_args(&cluster, &namespace));
    let draas = Draas::up_with_args(dir.path(), &args).await;
    let platform = kubernetes_platform(&draas).await;
    assert_eq!(
        platform["workers"][0]["platformVersion"], "v1.20.2",
        "{platform}"
    );

    // Create (with the original design's name for the platform) and
    // configure: a pod's ports are its own.
    let (status, created) = draas
        .post(
            "/api/server/instances",
            Some(json!({"name": "kube", "platformType": "AKS"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["instance"]["platformType"], "Kubernetes");
    assert_eq!(created["instance"]["configuration"]["port"], 8080);
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let (status, body, _) = draas
        .patch(
            &format!("/api/configuration/instances/{id}"),
            counter_pipeline(),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Start: a Deployment, a Service, live results.
    let (status, instance) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    assert_eq!(instance["status"]["state"], "Running");
    let handle = &instance["runtime"]["handle"];
    assert_eq!(handle["namespace"], namespace.name.as_str(), "{instance}");
    let name = handle["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("draas-kube-"), "{name}");
    assert_eq!(
        instance["runtime"]["endpoint"],
        format!("http://{name}.{}.svc:8080", namespace.name),
        "the Service's DNS name"
    );
    let rows = draas_testkit::wait_for("rows", Duration::from_secs(30), || async {
        let body = proxied(
            &cluster,
            &namespace.name,
            &name,
            "/api/v1/queries/values/results",
        )
        .await?;
        let rows = body["data"].as_array()?.clone();
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert!(rows.iter().all(|r| r["value"].is_u64()), "{rows:?}");
    let (status, logs) = draas
        .get(&format!("/api/server/instances/{id}/logs?tail=20"))
        .await;
    assert_eq!(status, 200, "{logs}");
    assert!(!logs["lines"].as_array().unwrap().is_empty(), "{logs}");
    let (_, live) = draas
        .get(&format!("/api/server/instances/{id}/runtime-status"))
        .await;
    assert_eq!(live["live"]["healthy"], true, "{live}");
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &namespace.name);
    let uid = deployments.get(&name).await.unwrap().uid();

    // The pod crashes: Failed with Kubernetes's word for it, then Running
    // again once the kubelet restarted it.
    kill(&kubelet, &pod_of(&cluster, &namespace.name, &id).await).await;
    let failed = draas
        .wait_state(&id, "Failed", Duration::from_secs(2))
        .await;
    let reason = failed["status"]["reason"].as_str().unwrap_or_default();
    assert!(
        ["KilledBySignal", "CrashLoopBackOff"].contains(&reason),
        "{failed}"
    );
    draas
        .wait_state(&id, "Running", Duration::from_secs(20))
        .await;

    // A new configuration rolls the pod; the Deployment stays.
    let (status, _, _) = draas
        .patch(
            &format!("/api/configuration/instances/{id}"),
            json!([{"op": "replace", "path": "/sources/0/intervalMs", "value": 50}]),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, restarted) = draas
        .post(&format!("/api/server/instances/{id}/restart"), None)
        .await;
    assert_eq!(status, 200, "{restarted}");
    assert_eq!(restarted["status"]["observedGeneration"], 3, "{restarted}");
    let deployment = deployments.get(&name).await.unwrap();
    assert_eq!(deployment.uid(), uid, "the same Deployment");
    let template = deployment.spec.unwrap().template.metadata.unwrap();
    assert_eq!(template.annotations.unwrap()["draas.io/generation"], "3");

    // draas up restarts: the worker adopts the Deployment, nothing doubles.
    let draas = draas.restart().await;
    kubernetes_platform(&draas).await;
    draas
        .wait_state(&id, "Running", Duration::from_secs(20))
        .await;
    assert_eq!(deployments.get(&name).await.unwrap().uid(), uid);

    // Stop: scaled to zero, the pod gone.
    let (status, stopped) = draas
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"]["state"], "Stopped");
    assert_eq!(
        deployments.get(&name).await.unwrap().spec.unwrap().replicas,
        Some(0)
    );
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &namespace.name);
    let selector = ListParams::default().labels(&format!("draas.io/instance-id={id}"));
    assert!(pods.list(&selector).await.unwrap().items.is_empty());

    // Delete: everything of the instance goes, and the API waits for it.
    let (status, _) = draas
        .call(Method::DELETE, &format!("/api/server/instances/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let left = objects_of(&cluster, &namespace.name, &id).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    let (status, _) = draas.get(&format!("/api/server/instances/{id}")).await;
    assert_eq!(status, 404);

    draas.stop().await;
    kubelet.shutdown().await;
    namespace.delete().await;
}

/// A stop of an instance whose pod crash-loops (`Failed`, its Deployment
/// still restarting it) scales the Deployment down: the server does not
/// come back by itself after the user stopped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_kubernetes_instance_is_stopped_for_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A long back-off: the pod stays in CrashLoopBackOff while it is stopped.
    let options = draas_testkit::kubelet::KubeletOptions {
        restart_backoff: Duration::from_secs(120),
        ..Default::default()
    };
    let (cluster, namespace, kubelet) = cluster_with("loop", options).await;
    let mut args = vec!["--docker", "off", "--kubernetes", "on"];
    args.extend(kubernetes_args(&cluster, &namespace));
    let draas = Draas::up_with_args(dir.path(), &args).await;
    kubernetes_platform(&draas).await;
    let (status, created) = draas
        .post(
            "/api/server/instances",
            Some(json!({"name": "looping", "platformType": "Kubernetes"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let (status, instance) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    let name = instance["runtime"]["handle"]["name"]
        .as_str()
        .unwrap()
        .to_string();

    kill(&kubelet, &pod_of(&cluster, &namespace.name, &id).await).await;
    draas
        .wait_state(&id, "Failed", Duration::from_secs(10))
        .await;
    let (status, stopped) = draas
        .post(
            &format!("/api/server/instances/{id}/stop?wait=Stopped&timeout=60"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"]["state"], "Stopped", "{stopped}");
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &namespace.name);
    assert_eq!(
        deployments.get(&name).await.unwrap().spec.unwrap().replicas,
        Some(0),
        "scaled down"
    );

    draas.stop().await;
    kubelet.shutdown().await;
    namespace.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_workers_over_redis_take_over_a_dead_workers_servers() {
    use common::cluster::{serve, WorkerProcess};
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, namespace, kubelet) = cluster("redis").await;
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let redis = draas_testkit::redis_server::RedisServer::start(&redis_dir);
    let api = serve(dir.path(), "serve", &redis, &common::port_range()).await;
    let args = kubernetes_args(&cluster, &namespace);
    let mut first = WorkerProcess::start_platform(dir.path(), "k8s-1", &redis, "kubernetes", &args);
    let platform = kubernetes_platform(&api).await;
    assert_eq!(platform["workers"][0]["workerId"], first.id().as_str());
    let mut second =
        WorkerProcess::start_platform(dir.path(), "k8s-2", &redis, "kubernetes", &args);
    draas_testkit::wait_for(
        "two Kubernetes workers",
        Duration::from_secs(30),
        || async {
            let platform = kubernetes_platform(&api).await;
            (platform["workers"].as_array()?.len() == 2).then_some(())
        },
    )
    .await;

    let (status, created) = api
        .post(
            "/api/server/instances",
            Some(json!({"name": "shared", "platformType": "Kubernetes"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let (status, _, _) = api
        .patch(
            &format!("/api/configuration/instances/{id}"),
            counter_pipeline(),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, instance) = api
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    let owner = instance["runtime"]["workerId"]
        .as_str()
        .unwrap()
        .to_string();
    let (dead, alive) = if owner == first.id() {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };

    // Its worker dies. The server is a Deployment any worker of the
    // cluster watches: the instance is not Unknown, and the other worker
    // takes it over.
    dead.kill();
    let alive_id = alive.id();
    let adopted = draas_testkit::wait_for(
        "the other worker to adopt it",
        Duration::from_secs(30),
        || {
            let path = format!("/api/status/{id}/status");
            let api = &api;
            let alive_id = alive_id.clone();
            async move {
                let (_, body) = api.get(&path).await;
                // Never Unknown on the way: nobody lost sight of the server.
                assert_ne!(body["status"]["state"], "Unknown", "{body}");
                (body["runtime"]["workerId"] == alive_id.as_str()).then_some(body)
            }
        },
    )
    .await;
    assert_eq!(adopted["status"]["state"], "Running", "{adopted}");
    kill(&kubelet, &pod_of(&cluster, &namespace.name, &id).await).await;
    api.wait_state(&id, "Failed", Duration::from_secs(2)).await;
    api.wait_state(&id, "Running", Duration::from_secs(20))
        .await;
    let (status, stopped) = api
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"]["state"], "Stopped");
    let (status, _) = api
        .call(Method::DELETE, &format!("/api/server/instances/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert!(objects_of(&cluster, &namespace.name, &id).await.is_empty());

    kubelet.shutdown().await;
    namespace.delete().await;
}
