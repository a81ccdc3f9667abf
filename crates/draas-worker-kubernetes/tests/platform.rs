//! What is particular to Kubernetes, against the test cluster's real
//! kube-apiserver and kube-controller-manager and the fake kubelet: how
//! many writes a start costs (none for unchanged objects), crash loops and
//! image problems reported with Kubernetes's reasons, start failures
//! judged from the pod's log, pods no node can take, the environment as a
//! Secret, component events through the API server's proxy, and adoption
//! of a dead worker's servers by another worker of the cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bollard::query_parameters::KillContainerOptionsBuilder;
use chrono::Utc;
use common::{is, start_spec, Setup};
use draas_core::instance::{ActualState, ImagePullPolicy, KubernetesOptions, Reason};
use draas_core::messages::{ErrorCode, StopSpec, WorkerInfo};
use draas_core::ports::store::{JsonStore, Precondition};
use draas_core::ports::PlatformDriver;
use draas_testkit::kubelet::KubeletOptions;
use draas_worker::drasi::ServerTransport;
use draas_worker_kubernetes::manifests::{self, SPEC_HASH};
use draas_worker_kubernetes::proxy::ServiceProxy;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, ListParams};
use kube::ResourceExt;

fn stop() -> StopSpec {
    StopSpec::grace(5)
}

fn deployment_name(
    spec: &draas_core::messages::StartSpec,
    id: &draas_core::instance::InstanceId,
) -> String {
    manifests::object_name(&spec.name, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_objects_are_never_applied_again() {
    let setup = Setup::new("reapply", KubeletOptions::default()).await;
    let driver = setup.driver("w-reapply").await;
    let requests = driver.platform().cluster().requests.clone();
    let id = setup.instance().await;
    let spec = start_spec(&id, 1);
    let name = deployment_name(&spec, &id);

    let before = requests.count();
    driver.start(&id, &spec).await.expect("start");
    let first = requests.count() - before;
    // ConfigMap, Deployment, Service, and the ConfigMap again once it can
    // be owned by the Deployment.
    assert_eq!(first.writes, 4, "a first start: {first:?}");

    let maps: Api<ConfigMap> = Api::namespaced(setup.cluster.client.clone(), &setup.namespace.name);
    let services: Api<Service> =
        Api::namespaced(setup.cluster.client.clone(), &setup.namespace.name);
    let versions = |m: ConfigMap, s: Service| (m.resource_version(), s.resource_version());
    let applied = versions(
        maps.get(&manifests::config_map_name(&name)).await.unwrap(),
        services.get(&name).await.unwrap(),
    );

    driver.stop(&id, &stop()).await.expect("stop");
    let before = requests.count();
    let again = driver.start(&id, &spec).await.expect("start again");
    assert_eq!(again.state, ActualState::Running);
    let restart = requests.count() - before;
    assert_eq!(
        restart.writes, 1,
        "only the Deployment is scaled up again: {restart:?}"
    );
    assert_eq!(
        versions(
            maps.get(&manifests::config_map_name(&name)).await.unwrap(),
            services.get(&name).await.unwrap(),
        ),
        applied,
        "the ConfigMap and the Service were not written"
    );

    // A restarted worker adopts the running server; a start of the same
    // generation then writes nothing at all.
    driver.detach().await;
    drop(driver);
    let restarted = setup.driver("w-reapply").await;
    assert_eq!(restarted.recover().await.unwrap(), 1);
    let requests = restarted.platform().cluster().requests.clone();
    let before = requests.count();
    restarted
        .start(&id, &spec)
        .await
        .expect("start while running");
    assert_eq!((requests.count() - before).writes, 0);

    // The objects carry what the issue asks for.
    let deployments: Api<Deployment> =
        Api::namespaced(setup.cluster.client.clone(), &setup.namespace.name);
    let deployment = deployments.get(&name).await.unwrap();
    let labels = deployment.labels();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "draas");
    assert_eq!(labels["draas.io/instance-id"], id.as_str());
    assert!(deployment.annotations().contains_key(SPEC_HASH));
    let map = maps.get(&manifests::config_map_name(&name)).await.unwrap();
    assert_eq!(map.owner_references()[0].uid, deployment.uid().unwrap());
    assert!(map.data.unwrap()["server.yaml"].contains("persistConfig: false"));

    restarted.delete(&id, &stop()).await.expect("delete");
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_is_failed_with_its_reason_and_the_server_comes_back() {
    let setup = Setup::new(
        "crashloop",
        KubeletOptions {
            restart_backoff: Duration::from_secs(3),
            ..KubeletOptions::default()
        },
    )
    .await;
    let driver = setup.driver("w-crash").await;
    let id = setup.instance().await;
    let spec = start_spec(&id, 1);
    let started = driver.start(&id, &spec).await.expect("start");
    setup.record_running(&id, &started.runtime).await;
    let pods: Api<Pod> = Api::namespaced(setup.cluster.client.clone(), &setup.namespace.name);
    let pod = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .remove(0);
    let container = setup
        .kubelet
        .container_of(&pod.name_any())
        .expect("a container");
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
        .unwrap();

    let looping = setup
        .wait_status(&id, Duration::from_secs(5), "crash-looping", |i| {
            is(i, ActualState::Failed) && i.status.reason == Some(Reason::CrashLoopBackOff)
        })
        .await;
    let message = looping.status.message.unwrap_or_default();
    assert!(
        message.contains("1 restart") && message.contains("SIGKILL"),
        "{message}"
    );
    let runtime = looping.runtime.expect("runtime info is kept");
    assert_eq!(runtime.last_exit_code, Some(137));
    assert!(runtime.handle.is_some(), "the Deployment is still there");

    let back = setup
        .wait_status(&id, Duration::from_secs(20), "running again", |i| {
            is(i, ActualState::Running)
        })
        .await;
    assert_eq!(back.status.reason, Some(Reason::Ready));
    assert_eq!(driver.running_generation(&id).await, Some(1));
    driver.delete(&id, &stop()).await.expect("delete");
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_problems_fail_the_start_at_once_with_kubernetes_reasons() {
    let setup = Setup::new("images", KubeletOptions::default()).await;
    let driver = setup.driver("w-images").await;
    let deployments: Api<Deployment> =
        Api::namespaced(setup.cluster.client.clone(), &setup.namespace.name);
    for (policy, reason) in [
        (ImagePullPolicy::Never, Reason::ErrImageNeverPull),
        (ImagePullPolicy::IfNotPresent, Reason::ImagePullBackOff),
    ] {
        let id = setup.instance().await;
        let mut spec = start_spec(&id, 1);
        spec.server_configuration.kubernetes = Some(KubernetesOptions {
            image: Some("draas-runtime:not-on-any-node".into()),
            image_pull_policy: Some(policy),
            ..KubernetesOptions::default()
        });
        let started = Instant::now();
        let error = driver.start(&id, &spec).await.expect_err("no image");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "failed at once, not at the start timeout: {:?}",
            started.elapsed()
        );
        assert_eq!(error.code, ErrorCode::ImageMissing, "{error:?}");
        assert_eq!(
            error.state,
            Some((ActualState::Failed, reason)),
            "{error:?}"
        );
        assert!(
            error.message.contains("not-on-any-node"),
            "{}",
            error.message
        );
        let name = deployment_name(&spec, &id);
        let scaled = deployments.get(&name).await.unwrap();
        assert_eq!(
            scaled.spec.unwrap().replicas,
            Some(0),
            "a failed start leaves nothing trying to run"
        );
        driver.delete(&id, &stop()).await.expect("delete");
    }
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_the_server_rejects_fails_the_start_as_config_rejected() {
    let setup = Setup::new("rejected", KubeletOptions::default()).await;
    let driver = setup.driver("w-rejected").await;
    let id = setup.instance().await;
    let mut spec = start_spec(&id, 1);
    spec.configuration_yaml = format!("{}bogusSetting: 1\n", spec.configuration_yaml);
    let error = driver.start(&id, &spec).await.expect_err("rejected");
    assert_eq!(error.code, ErrorCode::ConfigRejected, "{error:?}");
    assert_eq!(
        error.state,
        Some((ActualState::Failed, Reason::ConfigRejected))
    );
    assert!(
        error.message.contains("bogusSetting"),
        "the pod's log says why: {}",
        error.message
    );
    driver.delete(&id, &stop()).await.expect("delete");
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_no_node_can_take_times_out_saying_why() {
    let setup = Setup::new("unschedulable", KubeletOptions::default()).await;
    let driver = setup.driver("w-unsched").await;
    let id = setup.instance().await;
    let mut spec = start_spec(&id, 1);
    spec.server_configuration.start_timeout_seconds = 3;
    spec.server_configuration.kubernetes = Some(KubernetesOptions {
        node_selector: BTreeMap::from([("disk".into(), "ssd".into())]),
        ..KubernetesOptions::default()
    });
    let error = driver.start(&id, &spec).await.expect_err("unschedulable");
    assert_eq!(error.code, ErrorCode::StartTimeout, "{error:?}");
    assert!(
        error.message.contains("no node can run the server")
            && error.message.contains("node selector"),
        "{}",
        error.message
    );
    driver.delete(&id, &stop()).await.expect("delete");
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_keeps_data_gets_a_claim_and_the_status_says_where_its_data_is() {
    let setup = Setup::new("claim", KubeletOptions::default()).await;
    let driver = setup.driver("w-claim").await;
    let id = setup.instance().await;
    let mut configuration = draas_testkit::counter_configuration(8080);
    configuration.host = Some("0.0.0.0".to_string().into());
    configuration.persist_index = true;
    let spec_with = |volume: Option<draas_core::instance::PersistentVolume>| {
        let mut spec = draas_testkit::start_spec(
            &id,
            &configuration,
            draas_core::instance::PlatformType::Kubernetes,
            1,
        );
        spec.server_configuration.kubernetes = Some(KubernetesOptions {
            persistent_volume: volume,
            ..KubernetesOptions::default()
        });
        spec
    };

    // Without a claim: an emptyDir, and the status says the data goes with
    // the pod.
    let started = driver.start(&id, &spec_with(None)).await.expect("start");
    assert_eq!(started.state, ActualState::Running);
    assert!(
        started
            .message
            .as_deref()
            .unwrap_or("")
            .contains("emptyDir"),
        "{started:?}"
    );
    driver.stop(&id, &stop()).await.expect("stop");

    // With one: the claim, owned by the Deployment (deleted with it), and
    // the status names it.
    let spec = spec_with(Some(draas_core::instance::PersistentVolume {
        size: "1Gi".into(),
        storage_class_name: None,
    }));
    let started = driver.start(&id, &spec).await.expect("start with a claim");
    assert_eq!(started.state, ActualState::Running);
    let base = deployment_name(&spec, &id);
    let claim_name = manifests::claim_name(&base);
    let message = started.message.clone().unwrap_or_default();
    assert!(
        message.contains(&claim_name) && message.contains("1Gi"),
        "{started:?}"
    );
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(setup.cluster.client.clone(), &setup.namespace.name);
    let claim = claims.get(&claim_name).await.expect("the claim");
    let owner = &claim.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Deployment", base.as_str())
    );
    let deployments: Api<Deployment> =
        Api::namespaced(setup.cluster.client.clone(), &setup.namespace.name);
    let volumes = deployments
        .get(&base)
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .volumes
        .unwrap();
    assert!(volumes.iter().any(|v| v
        .persistent_volume_claim
        .as_ref()
        .is_some_and(|c| c.claim_name == claim_name)));
    driver.delete(&id, &stop()).await.expect("delete");
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_is_a_secret_that_goes_when_the_variables_go() {
    let setup = Setup::new("secret", KubeletOptions::default()).await;
    let driver = setup.driver("w-secret").await;
    let secrets: Api<Secret> = Api::namespaced(setup.cluster.client.clone(), &setup.namespace.name);
    let id = setup.instance().await;
    let mut spec = start_spec(&id, 1);
    spec.server_configuration
        .environment
        .insert("PG_PASSWORD".into(), "s3cret".into());
    driver.start(&id, &spec).await.expect("start");
    let name = manifests::secret_name(&deployment_name(&spec, &id));
    let secret = secrets.get(&name).await.expect("the Secret");
    assert_eq!(secret.data.as_ref().unwrap()["PG_PASSWORD"].0, b"s3cret");
    let hash = secret.annotations()[SPEC_HASH].clone();
    assert!(!hash.contains("s3cret"));
    let deployments: Api<Deployment> =
        Api::namespaced(setup.cluster.client.clone(), &setup.namespace.name);
    let pod_spec = serde_json::to_string(
        &deployments
            .get(&deployment_name(&spec, &id))
            .await
            .unwrap()
            .spec,
    )
    .unwrap();
    assert!(!pod_spec.contains("s3cret"), "no value in the Deployment");

    let mut next = start_spec(&id, 2);
    next.server_configuration.environment.clear();
    driver.start(&id, &next).await.expect("start generation 2");
    assert!(
        secrets.get_opt(&name).await.unwrap().is_none(),
        "the Secret went with its variables"
    );
    driver.delete(&id, &stop()).await.expect("delete");
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_events_reach_the_worker_through_the_api_server() {
    let setup = Setup::new("events", KubeletOptions::default()).await;
    let driver = setup.driver("w-events").await;
    let id = setup.instance().await;
    let spec = start_spec(&id, 1);
    driver.start(&id, &spec).await.expect("start");
    let proxy = ServiceProxy::new(
        setup.cluster.client.clone(),
        &setup.namespace.name,
        &deployment_name(&spec, &id),
    );
    let (status, body) = proxy.get("/api/v1/queries").await.expect("queries");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("values"));
    let mut events = proxy
        .stream("/api/v1/events")
        .await
        .expect("the event stream");
    // Stopping the server makes its components report as they stop; the
    // stream carries each event as it happens (no buffering in between).
    let stopping = {
        let driver = driver.clone();
        let id = id.clone();
        tokio::spawn(async move { driver.stop(&id, &stop()).await })
    };
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen.contains("Stop") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(Ok(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("no stop event through the proxy: {other:?} after {seen:?}"),
        }
    }
    assert!(seen.contains("componentId"), "{seen}");
    stopping.await.unwrap().expect("stop");
    driver.delete(&id, &stop()).await.expect("delete");
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_worker_of_the_cluster_adopts_the_servers_of_a_dead_worker() {
    let setup = Setup::new("adopt", KubeletOptions::default()).await;
    // Worker B runs already; worker A starts a server, then dies.
    let b = setup.driver("w-b").await;
    b.recover().await.unwrap();
    let a = setup.driver("w-a").await;
    let id = setup.instance().await;
    a.start(&id, &start_spec(&id, 1)).await.expect("start on A");
    let now = Utc::now();
    let heartbeat = WorkerInfo {
        worker_id: "w-a".into(),
        platform: draas_core::instance::PlatformType::Kubernetes,
        host: "test".into(),
        scope: a.scope(),
        version: "test".into(),
        platform_version: None,
        started_at: now,
        last_heartbeat: now,
        ttl_seconds: 2,
        instances: 1,
        capacity: None,
    };
    setup
        .store
        .put_json(
            draas_core::keys::WORKERS,
            "w-a",
            &heartbeat,
            Precondition::None,
        )
        .await
        .unwrap();
    a.detach().await;
    drop(a);
    assert_eq!(b.running_generation(&id).await, None, "A's, while A lives");

    let deadline = Instant::now() + Duration::from_secs(15);
    while b.running_generation(&id).await != Some(1) {
        assert!(Instant::now() < deadline, "B did not adopt the server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // B watches it now: a crash is B's to report.
    let pods: Api<Pod> = Api::namespaced(setup.cluster.client.clone(), &setup.namespace.name);
    let pod = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .remove(0);
    let container = setup
        .kubelet
        .container_of(&pod.name_any())
        .expect("a container");
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
        .unwrap();
    setup
        .wait_status(&id, Duration::from_secs(5), "failed", |i| {
            is(i, ActualState::Failed)
        })
        .await;
    b.delete(&id, &stop()).await.expect("delete on B");
    setup.finish().await;
}
