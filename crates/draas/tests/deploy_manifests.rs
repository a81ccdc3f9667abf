//! DRaaS on Kubernetes: the manifests under `deploy/`, applied to the test
//! cluster's real API server (server-side dry-run first, then for real, in
//! the kustomization's order), and the worker's RBAC put to work: a
//! Kubernetes worker running with exactly the `draas-worker` service
//! account's rights (impersonated) starts, stops and deletes an instance.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{counter_pipeline, Draas};
use draas_testkit::kubelet::FakeKubelet;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use reqwest::Method;
use serde_json::{json, Value};

/// The service account the Kubernetes worker runs as.
const WORKER: &str = "system:serviceaccount:draas:draas-worker";
const IMAGE: &str = "draas-runtime:k8s-test";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// The files the kustomization lists, in its order.
fn kustomized_files() -> Vec<PathBuf> {
    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap();
    let kustomization: Value = serde_saphyr::from_str(&text).unwrap();
    kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| deploy_dir().join(r.as_str().unwrap()))
        .collect()
}

/// The objects of one manifest file.
fn objects(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// Applies `object` server-side (`dry_run`: the API server checks and
/// admits it, and stores nothing).
async fn apply(client: &Client, object: &Value, dry_run: bool) -> Result<DynamicObject, String> {
    let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
        Some((group, version)) => (group.to_string(), version.to_string()),
        None => (
            String::new(),
            object["apiVersion"].as_str().unwrap().to_string(),
        ),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, object["kind"].as_str().unwrap());
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("{gvk:?}: {e}"))?;
    let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
        Some(ns) if capabilities.scope == kube::discovery::Scope::Namespaced => {
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        _ => Api::all_with(client.clone(), &resource),
    };
    let name = object["metadata"]["name"].as_str().unwrap();
    let mut params = PatchParams::apply("draas-deploy-test").force();
    params.dry_run = dry_run;
    api.patch(name, &params, &Patch::Apply(object))
        .await
        .map_err(|e| format!("{} {name}: {e}", gvk.kind))
}

/// Whether the worker's service account may `verb` `resource` (in
/// `namespace`, named `name`).
async fn worker_may(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r.to_string(), Some(s.to_string())),
        None => (resource.to_string(), None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(WORKER.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:draas".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource),
                subresource,
                namespace: namespace.map(str::to_string),
                name: name.map(str::to_string),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    answer.status.is_some_and(|s| s.allowed)
}

/// A kubeconfig like `admin`'s that acts as the worker's service account.
fn worker_kubeconfig(admin: &Path, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(admin).unwrap();
    let mut config: Value = serde_saphyr::from_str(&text).unwrap();
    for user in config["users"].as_array_mut().unwrap() {
        user["user"]["as"] = json!(WORKER);
        user["user"]["as-groups"] =
            json!(["system:serviceaccounts", "system:serviceaccounts:draas"]);
    }
    let path = dir.join("worker-kubeconfig");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path
}

async fn cleanup(client: &Client) {
    for ns in ["draas", "draas-instances"] {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(ns, &DeleteParams::background())
            .await;
    }
    for kind in ["clusterroles", "clusterrolebindings"] {
        let request = http::Request::delete(format!(
            "/apis/rbac.authorization.k8s.io/v1/{kind}/draas-cluster-identity"
        ))
        .body(Vec::new())
        .unwrap();
        let _ = client.request_text(request).await;
    }
    // Namespaces take a moment to go; the next run needs them gone.
    draas_testkit::wait_for("the namespaces to go", Duration::from_secs(60), || async {
        let api = Api::<Namespace>::all(client.clone());
        let left = api.get_opt("draas").await.ok()?.is_some()
            || api.get_opt("draas-instances").await.ok()?.is_some();
        (!left).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_apply_and_the_worker_needs_no_more_than_its_role() {
    draas_worker_docker::image::ensure_runtime_image(
        &bollard::Docker::connect_with_local_defaults().unwrap(),
        &common::runtime_binary(),
        IMAGE,
    )
    .await
    .unwrap();
    let cluster = draas_testkit::kubernetes::test_cluster().await;
    let client = cluster.client.clone();
    cleanup(&client).await;

    // Every manifest file is in the kustomization.
    let mut listed: Vec<PathBuf> = kustomized_files();
    let mut present: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    listed.sort();
    present.sort();
    assert_eq!(
        listed, present,
        "deploy/kustomization.yaml lists every manifest"
    );

    // Dry-run, then for real, file by file (namespaces first: objects in
    // a namespace that does not exist yet cannot even be dry-run).
    for file in kustomized_files() {
        for object in objects(&file) {
            apply(&client, &object, true)
                .await
                .unwrap_or_else(|e| panic!("dry-run of {}: {e}", file.display()));
        }
        for object in objects(&file) {
            apply(&client, &object, false)
                .await
                .unwrap_or_else(|e| panic!("apply of {}: {e}", file.display()));
        }
    }
    // Applying again changes nothing and fails nothing.
    for file in kustomized_files() {
        for object in objects(&file) {
            apply(&client, &object, false).await.unwrap();
        }
    }
    // The controllers took them up: control plane and workers have their
    // ReplicaSets.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "draas");
    let control = deployments.get("draas-control-plane").await.unwrap();
    assert_eq!(control.spec.as_ref().unwrap().replicas, Some(2));
    let probes = &control
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(
        probes
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probes
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    draas_testkit::wait_for("ReplicaSets of DRaaS", Duration::from_secs(30), || async {
        let sets = Api::<ReplicaSet>::namespaced(client.clone(), "draas")
            .list(&ListParams::default())
            .await
            .ok()?;
        (sets.items.len() >= 3).then_some(())
    })
    .await;

    // The worker's rights: what it needs in draas-instances, one read
    // cluster-wide, nothing else.
    let ns = Some("draas-instances");
    for (verb, group, resource) in [
        ("create", "apps", "deployments"),
        ("patch", "apps", "deployments"),
        ("watch", "apps", "deployments"),
        ("delete", "apps", "deployments"),
        ("patch", "apps", "deployments/scale"),
        ("watch", "", "pods"),
        ("delete", "", "pods"),
        ("get", "", "pods/log"),
        ("patch", "", "configmaps"),
        ("patch", "", "secrets"),
        ("patch", "", "services"),
        ("get", "", "services/proxy"),
        ("create", "", "persistentvolumeclaims"),
        ("get", "", "persistentvolumeclaims"),
    ] {
        assert!(
            worker_may(&client, verb, group, resource, ns, None).await,
            "the worker may {verb} {resource} in draas-instances"
        );
    }
    assert!(worker_may(&client, "get", "", "namespaces", None, Some("kube-system")).await);
    for (verb, group, resource, namespace, name) in [
        ("get", "", "secrets", Some("draas"), None),
        ("create", "apps", "deployments", Some("kube-system"), None),
        ("create", "apps", "deployments", Some("default"), None),
        ("list", "", "namespaces", None, None),
        ("get", "", "namespaces", None, Some("default")),
        ("list", "", "nodes", None, None),
        ("create", "", "pods/exec", ns, None),
        ("delete", "", "persistentvolumeclaims", ns, None),
        (
            "create",
            "",
            "persistentvolumeclaims",
            Some("default"),
            None,
        ),
        ("create", "rbac.authorization.k8s.io", "roles", ns, None),
    ] {
        assert!(
            !worker_may(&client, verb, group, resource, namespace, name).await,
            "the worker may not {verb} {resource} in {namespace:?}"
        );
    }

    // A worker with exactly those rights runs an instance's whole life.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = worker_kubeconfig(&cluster.kubeconfig, dir.path());
    // (The kubeconfig really acts as the service account.)
    let as_worker = Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let denied = Api::<Namespace>::all(as_worker)
        .list(&ListParams::default())
        .await
        .expect_err("the worker may not list namespaces");
    assert!(denied.to_string().contains("forbidden"), "{denied}");
    let kubelet = FakeKubelet::start(client.clone(), "draas-instances", Default::default())
        .await
        .unwrap();
    let draas = Draas::up_with_args(
        dir.path(),
        &[
            "--docker",
            "off",
            "--kubernetes",
            "on",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--kubernetes-namespace",
            "draas-instances",
            "--kubernetes-image",
            IMAGE,
            "--kubernetes-image-pull-policy",
            "Never",
        ],
    )
    .await;
    draas_testkit::wait_for(
        "a live Kubernetes worker",
        Duration::from_secs(60),
        || async {
            let (_, body) = draas.get("/api/server/platforms").await;
            body["platforms"]
                .as_array()?
                .iter()
                .any(|p| p["platformType"] == "Kubernetes" && p["available"] == true)
                .then_some(())
        },
    )
    .await;
    let (status, created) = draas
        .post(
            "/api/server/instances",
            Some(
                json!({"name": "least-privilege", "platformType": "Kubernetes",
                        "serverConfiguration": {"environment": {"TOKEN": "t0ken"}}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let (status, _, _) = draas
        .patch(
            &format!("/api/configuration/instances/{id}"),
            counter_pipeline(),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, started) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["status"]["state"], "Running", "{started}");
    let (status, logs) = draas
        .get(&format!("/api/server/instances/{id}/logs?tail=5"))
        .await;
    assert_eq!(status, 200, "pods/log: {logs}");
    let (status, stopped) = draas
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(status, 200, "{stopped}");
    let (status, body) = draas
        .call(Method::DELETE, &format!("/api/server/instances/{id}"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    let left = Api::<Deployment>::namespaced(client.clone(), "draas-instances")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        left.items
            .iter()
            .all(|d| !d.name_any().contains("least-privilege")),
        "deleted"
    );

    draas.stop().await;
    kubelet.shutdown().await;
    cleanup(&client).await;
}

/// The image the manifests run: `docker/draas/Dockerfile` over this
/// workspace's static binaries builds, and its entry point is `draas`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_draas_image_builds_from_the_static_binaries_and_runs() {
    use bollard::query_parameters::{
        BuildImageOptionsBuilder, CreateContainerOptionsBuilder, LogsOptionsBuilder,
        RemoveContainerOptionsBuilder, RemoveImageOptions, StartContainerOptions,
        WaitContainerOptions,
    };
    use futures::StreamExt;
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut context = tar::Builder::new(Vec::new());
    let mut add = |name: &str, path: &Path, mode: u32| {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        context
            .append_data(&mut header, name, data.as_slice())
            .unwrap();
    };
    add("Dockerfile", &root.join("docker/draas/Dockerfile"), 0o644);
    add("draas", Path::new(common::DRAAS), 0o755);
    add("draas-runtime", &common::runtime_binary(), 0o755);
    add(
        "ca-certificates.crt",
        Path::new("/etc/ssl/certs/ca-certificates.crt"),
        0o644,
    );
    let tag = format!(
        "draas:test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut build = docker.build_image(
        BuildImageOptionsBuilder::default().t(&tag).rm(true).build(),
        None,
        Some(bollard::body_full(context.into_inner().unwrap().into())),
    );
    while let Some(step) = build.next().await {
        step.expect("docker build");
    }
    let name = format!(
        "draas-image-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            bollard::models::ContainerCreateBody {
                image: Some(tag.clone()),
                cmd: Some(vec!["--version".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    docker
        .start_container(&created.id, None::<StartContainerOptions>)
        .await
        .unwrap();
    let _ = docker
        .wait_container(&created.id, None::<WaitContainerOptions>)
        .collect::<Vec<_>>()
        .await;
    let output: String = docker
        .logs(
            &created.id,
            Some(
                LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .build(),
            ),
        )
        .map(|chunk| chunk.map(|c| c.to_string()).unwrap_or_default())
        .collect::<Vec<_>>()
        .await
        .concat();
    let inspected = docker.inspect_image(&tag).await.unwrap();
    let _ = docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    let _ = docker
        .remove_image(&tag, None::<RemoveImageOptions>, None)
        .await;
    assert!(output.starts_with("draas "), "{output}");
    let config = inspected.config.unwrap();
    assert_eq!(config.user.as_deref(), Some("65532:65532"), "not root");
    assert_eq!(
        config.entrypoint,
        Some(vec!["/usr/local/bin/draas".to_string()])
    );
}
