//! The Kubernetes platform against a bare server-side apply of the same
//! objects, and the API requests DRaaS makes.
//!
//! Method (each figure is printed with its own description):
//! - the cluster is the test cluster (a real kube-apiserver and
//!   kube-controller-manager, `shared/tools/k8s-test-cluster.sh`), in a
//!   fresh namespace whose pods the fake kubelet of `draas-testkit` runs as
//!   Docker containers of the release runtime's image (`draas-runtime:bench`);
//!   it probes readiness every 50 ms until the first success;
//! - **start → Running**: `draas up` with its Kubernetes worker;
//!   `POST create` (the mock pipeline) then `POST start`, which returns when
//!   the Deployment is available and every query runs; against a bare
//!   server-side apply (field manager, `force`) of the same ConfigMap,
//!   Deployment and Service (built by the same code), then waiting (a watch)
//!   until the Deployment is available (an available replica of its current
//!   spec, as DRaaS judges it) and (polled through the API server's
//!   service proxy every 5 ms) every query runs;
//! - **apply**: the same, up to "the objects are applied" only: the
//!   platform's `launch` in process (what DRaaS writes before it waits)
//!   against the three bare applies;
//! - **requests**: the API requests the driver makes (counted by its
//!   client), for a first start, a stop, a start after the stop, and a start
//!   of the running generation by a restarted worker (an unchanged
//!   re-apply); reads include the readiness calls through the proxy.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use draas_core::instance::{ImagePullPolicy, InstanceId, PlatformType, ServerConfiguration};
use draas_core::messages::{StartSpec, StopSpec};
use draas_core::ports::PlatformDriver;
use draas_testkit::kubelet::FakeKubelet;
use draas_worker::driver::Platform;
use draas_worker::{WorkerContext, WorkerSettings};
use draas_worker_kubernetes::manifests::{self, Plan};
use draas_worker_kubernetes::{Cluster, KubernetesSettings, RequestCount};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::Client;
use serde_json::{json, Value};

use crate::control_plane::{pipeline, DraasUp};
use crate::stats::{ms, ratio, Summary};

/// The image the benchmark builds and its pods run.
const IMAGE: &str = "draas-runtime:bench";

fn spec_for(id: &InstanceId, name: &str) -> anyhow::Result<StartSpec> {
    let mut configuration = pipeline();
    configuration["host"] = json!("0.0.0.0");
    configuration["port"] = json!(8080);
    let configuration: draas_core::config::DrasiServerConfig =
        serde_json::from_value(configuration)?;
    StartSpec::render(
        id.as_str(),
        name,
        1,
        &configuration,
        ServerConfiguration::for_platform(PlatformType::Kubernetes),
    )
    .map_err(anyhow::Error::msg)
}

/// Whether every query of the server behind `service` runs, asked through
/// the API server's proxy.
async fn queries_running(client: &Client, namespace: &str, service: &str) -> bool {
    let Ok(request) = http::Request::get(format!(
        "/api/v1/namespaces/{namespace}/services/{service}:api/proxy/api/v1/queries"
    ))
    .body(Vec::new()) else {
        return false;
    };
    let Ok(text) = client.request_text(request).await else {
        return false;
    };
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    body["data"]
        .as_array()
        .is_some_and(|q| !q.is_empty() && q.iter().all(|q| q["status"] == "Running"))
}

/// The three objects of a bare instance, as DRaaS builds them (without the
/// Secret: no environment).
fn bare_objects(namespace: &str, name: &str) -> anyhow::Result<(ConfigMap, Deployment, Service)> {
    let id = InstanceId::generate();
    let spec = spec_for(&id, name)?;
    let plan = Plan {
        id: &id,
        spec: &spec,
        namespace,
        image: IMAGE,
        bundled: true,
        pull_policy: ImagePullPolicy::Never,
        installation: "bench-bare",
        fingerprint_key: b"bench",
    };
    let objects = manifests::objects(&plan, None);
    Ok((objects.config_map, objects.deployment, objects.service))
}

/// A bare server-side apply of one instance's objects; the two times:
/// applied, and ready. Deletes them afterwards.
async fn bare_start(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let (config_map, deployment, service) = bare_objects(namespace, name)?;
    let params = PatchParams::apply("bench-bare").force();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment_name = deployment.metadata.name.clone().context("name")?;
    let started = Instant::now();
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .patch(
            config_map.metadata.name.as_deref().context("name")?,
            &params,
            &Patch::Apply(&config_map),
        )
        .await?;
    let uid = deployments
        .patch(&deployment_name, &params, &Patch::Apply(&deployment))
        .await?
        .metadata
        .uid
        .unwrap_or_default();
    Api::<Service>::namespaced(client.clone(), namespace)
        .patch(
            service.metadata.name.as_deref().context("name")?,
            &params,
            &Patch::Apply(&service),
        )
        .await?;
    let applied = started.elapsed();
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(
            deployments.clone(),
            &deployment_name,
            conditions::is_deployment_completed(),
        ),
    )
    .await
    .context("the bare Deployment was not available within 60 s")??;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !queries_running(client, namespace, &deployment_name).await {
        if Instant::now() > deadline {
            bail!("the bare server's queries did not run within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = started.elapsed();
    deployments
        .delete(&deployment_name, &DeleteParams::foreground())
        .await?;
    let _ = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .delete(
            config_map.metadata.name.as_deref().unwrap_or_default(),
            &DeleteParams::default(),
        )
        .await;
    let _ = Api::<Service>::namespaced(client.clone(), namespace)
        .delete(
            service.metadata.name.as_deref().unwrap_or_default(),
            &DeleteParams::default(),
        )
        .await;
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(deployments, &deployment_name, conditions::is_deleted(&uid)),
    )
    .await;
    Ok((applied, ready))
}

/// Puts the record of a running instance `id` in `store`.
async fn store_instance(
    store: &dyn draas_core::ports::StateStore,
    id: &InstanceId,
    name: &str,
) -> anyhow::Result<()> {
    use draas_core::config::DrasiServerConfig;
    use draas_core::instance::{DesiredState, Instance, InstanceStatus};

    let now = chrono::Utc::now();
    let instance = Instance {
        id: id.clone(),
        name: name.to_string(),
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
    store
        .apply(draas_core::records::create_writes(&instance)?)
        .await?;
    Ok(())
}

/// Runs the Kubernetes benchmarks and prints Markdown.
pub async fn run(
    draas: &Path,
    runtime: &Path,
    kubeconfig: &Path,
    runs: usize,
) -> anyhow::Result<()> {
    let docker = bollard::Docker::connect_with_local_defaults()?;
    draas_worker_docker::image::build_runtime_image(&docker, runtime, IMAGE).await?;
    let settings = KubernetesSettings {
        kubeconfig: Some(kubeconfig.to_path_buf()),
        image_pull_policy: ImagePullPolicy::Never,
        ..KubernetesSettings::new(IMAGE)
    };
    let admin = Cluster::connect(&settings).await?;
    let namespace = format!("draas-bench-{}", &uuid_suffix());
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.client.clone())
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}}))?,
        )
        .await?;
    let kubelet = FakeKubelet::start(admin.client.clone(), &namespace, Default::default()).await?;
    let outcome = measure(draas, runtime, kubeconfig, &namespace, &admin, runs).await;
    kubelet.shutdown().await;
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.client.clone())
        .delete(&namespace, &DeleteParams::background())
        .await;
    outcome
}

fn uuid_suffix() -> String {
    format!(
        "{:08x}",
        std::process::id() ^ (Instant::now().elapsed().subsec_nanos())
    )
}

async fn measure(
    draas: &Path,
    runtime: &Path,
    kubeconfig: &Path,
    namespace: &str,
    admin: &Cluster,
    runs: usize,
) -> anyhow::Result<()> {
    // DRaaS, end to end through its API.
    let kubeconfig_arg = kubeconfig.to_string_lossy().to_string();
    let up = DraasUp::start_with(
        draas,
        runtime,
        "27000-27999",
        &[
            "--docker",
            "off",
            "--kubernetes",
            "on",
            "--kubeconfig",
            &kubeconfig_arg,
            "--kubernetes-namespace",
            namespace,
            "--kubernetes-image",
            IMAGE,
            "--kubernetes-image-pull-policy",
            "Never",
        ],
    )
    .await?;
    let mut configuration = pipeline();
    configuration["host"] = json!("0.0.0.0");
    configuration["port"] = json!(8080);
    // The worker announces itself a moment after the API answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let platforms: Value = up
            .client
            .get(up.url("/api/server/platforms"))
            .send()
            .await?
            .json()
            .await?;
        let live = platforms["platforms"].as_array().is_some_and(|all| {
            all.iter()
                .any(|p| p["platformType"] == "Kubernetes" && p["available"] == true)
        });
        if live {
            break;
        }
        if Instant::now() > deadline {
            bail!("no live Kubernetes worker");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut managed = Vec::new();
    for i in 0..runs {
        let (id, took) = up
            .create_and_start(json!({"name": format!("bench-{i}"), "platformType": "Kubernetes", "configuration": configuration}))
            .await?;
        managed.push(took);
        up.delete(&id).await?;
    }
    drop(up);

    // Bare server-side apply of the same objects.
    let mut bare_applied = Vec::new();
    let mut bare_ready = Vec::new();
    for i in 0..runs {
        let (applied, ready) = bare_start(&admin.client, namespace, &format!("bare-{i}")).await?;
        bare_applied.push(applied);
        bare_ready.push(ready);
    }

    // The driver in process: the apply phase, and the requests it makes.
    let store: Arc<dyn draas_core::ports::StateStore> =
        Arc::new(draas_store::EmbeddedStore::in_memory()?);
    let bus: Arc<dyn draas_core::ports::MessageBus> = Arc::new(draas_bus::InProcessBus::new());
    let context = |worker: &str| {
        WorkerContext::new(
            WorkerSettings {
                worker_id: worker.into(),
                host: "bench".into(),
                heartbeat_interval: Duration::from_secs(1),
                heartbeat_ttl: Duration::from_secs(3),
                concurrency: 8,
                capacity: None,
                orphan_sweep_every: std::time::Duration::from_secs(30),
            },
            store.clone(),
            bus.clone(),
        )
    };
    let settings = KubernetesSettings {
        kubeconfig: Some(kubeconfig.to_path_buf()),
        namespace: Some(namespace.to_string()),
        image_pull_policy: ImagePullPolicy::Never,
        ..KubernetesSettings::new(IMAGE)
    };
    let mut launches = Vec::new();
    {
        let cluster = Cluster::connect(&settings).await?;
        let driver =
            draas_worker_kubernetes::driver(cluster, settings.clone(), &context("bench-apply"))
                .await?;
        let platform = driver.platform();
        for i in 0..runs {
            let id = InstanceId::generate();
            let spec = spec_for(&id, &format!("apply-{i}"))?;
            let started = Instant::now();
            platform
                .launch(&id, &spec)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            launches.push(started.elapsed());
            platform
                .remove(&id, None)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        }
    }
    let stop = StopSpec::grace(10);
    let id = InstanceId::generate();
    let spec = spec_for(&id, "counted")?;
    // The instance exists, as the control plane would have it: a restarted
    // worker adopts only servers of instances it knows.
    store_instance(store.as_ref(), &id, "counted").await?;
    let cluster = Cluster::connect(&settings).await?;
    let driver =
        draas_worker_kubernetes::driver(cluster, settings.clone(), &context("bench-count")).await?;
    let requests = driver.platform().cluster().requests.clone();
    // Let the namespace's watches start first: they are the worker's, not
    // the start's.
    driver
        .recover()
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let count = |f: RequestCount| (f.writes, f.reads);
    let before = requests.count();
    driver
        .start(&id, &spec)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let first = count(requests.count() - before);
    let before = requests.count();
    driver
        .stop(&id, &stop)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let stopping = count(requests.count() - before);
    let before = requests.count();
    driver
        .start(&id, &spec)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let again = count(requests.count() - before);
    driver.detach().await;
    drop(driver);
    let cluster = Cluster::connect(&settings).await?;
    let restarted =
        draas_worker_kubernetes::driver(cluster, settings.clone(), &context("bench-count")).await?;
    let adopted = restarted
        .recover()
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    if adopted != 1 {
        bail!("the restarted worker adopted {adopted} servers, not the running one");
    }
    let requests = restarted.platform().cluster().requests.clone();
    let before = requests.count();
    restarted
        .start(&id, &spec)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let unchanged = count(requests.count() - before);
    let before = requests.count();
    restarted
        .delete(&id, &stop)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let deleting = count(requests.count() - before);

    let (m, br, ba, l) = (
        Summary::of(&managed),
        Summary::of(&bare_ready),
        Summary::of(&bare_applied),
        Summary::of(&launches),
    );
    println!("### Start → Running (Kubernetes platform, {runs} runs)\n");
    println!("| operation | p50 | p95 | max |");
    println!("|---|---|---|---|");
    println!(
        "| DRaaS: POST create + POST start (returns when the Deployment is available and every query runs) | {} ms | {} ms | {} ms |",
        ms(m.p50),
        ms(m.p95),
        ms(m.max)
    );
    println!(
        "| bare: server-side apply of the same ConfigMap, Deployment and Service, then a watch until available and every query runs | {} ms | {} ms | {} ms |",
        ms(br.p50),
        ms(br.p95),
        ms(br.max)
    );
    println!(
        "\nRatio (p50): **{}** the bare apply-and-wait.\n",
        ratio(m.p50, br.p50)
    );
    println!("### Applying the objects (Kubernetes platform, {runs} runs)\n");
    println!("| operation | p50 | p95 | max |");
    println!("|---|---|---|---|");
    println!(
        "| DRaaS: the platform's launch in process (ConfigMap, Deployment, Service, ConfigMap again with its owner) | {} ms | {} ms | {} ms |",
        ms(l.p50),
        ms(l.p95),
        ms(l.max)
    );
    println!(
        "| bare: three server-side applies | {} ms | {} ms | {} ms |",
        ms(ba.p50),
        ms(ba.p95),
        ms(ba.max)
    );
    println!(
        "\nRatio (p50): **{}** the bare applies.\n",
        ratio(l.p50, ba.p50)
    );
    println!("### API requests of the Kubernetes driver\n");
    println!("| operation | writes | reads (incl. proxied readiness calls) |");
    println!("|---|---|---|");
    for (what, (writes, reads)) in [
        ("first start", first),
        ("stop (scale to zero, wait for the pod to go)", stopping),
        ("start after the stop (only the Deployment changes)", again),
        (
            "start of the running generation by a restarted worker (unchanged re-apply)",
            unchanged,
        ),
        ("delete", deleting),
    ] {
        println!("| {what} | {writes} | {reads} |");
    }
    println!("\nA bare start is 3 writes (one apply per object).\n");
    Ok(())
}
