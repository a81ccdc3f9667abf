//! The Docker platform end to end: the real `draas up` binary with its
//! Docker worker, the real Docker engine of this machine, containers of the
//! bundled runtime's image (built by the worker from the workspace's static
//! runtime on first use).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
};
use bollard::Docker;
use common::{counter_pipeline, Draas};
use reqwest::Method;
use serde_json::{json, Value};

/// The image the tests' workers build and run.
pub const IMAGE: &str = "draas-runtime:e2e";

fn docker() -> Docker {
    Docker::connect_with_local_defaults().expect("the Docker engine")
}

/// Containers labelled for instance `id`, and whether each is a warm
/// container in standby.
async fn listed(docker: &Docker, id: &str) -> Vec<(String, bool)> {
    let filters = HashMap::from([("label", vec![format!("draas.instanceId={id}")])]);
    docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| {
            let standby = c
                .names
                .iter()
                .flatten()
                .any(|n| draas_worker_docker::warm::in_standby(n));
            Some((c.id?, standby))
        })
        .collect()
}

/// Containers labelled for instance `id`, warm ones included.
async fn containers_of(docker: &Docker, id: &str) -> Vec<String> {
    listed(docker, id)
        .await
        .into_iter()
        .map(|(c, _)| c)
        .collect()
}

/// Containers of instance `id` that are (or were) its servers: all but
/// warm containers still in standby.
async fn servers_of(docker: &Docker, id: &str) -> Vec<String> {
    listed(docker, id)
        .await
        .into_iter()
        .filter(|(_, standby)| !standby)
        .map(|(c, _)| c)
        .collect()
}

async fn volume_exists(docker: &Docker, id: &str) -> bool {
    docker
        .inspect_volume(&format!("draas-{id}-data"))
        .await
        .is_ok()
}

/// Removes every container and volume of `ids` when dropped, so a failing
/// test leaves nothing on the engine.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut self.0);
        // Drop cannot await: a thread with a runtime of its own does it.
        let done = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let docker = docker();
                for id in ids {
                    for container in containers_of(&docker, &id).await {
                        let _ = docker
                            .remove_container(
                                &container,
                                Some(
                                    bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                                        .force(true)
                                        .build(),
                                ),
                            )
                            .await;
                    }
                    let _ = docker
                        .remove_volume(
                            &format!("draas-{id}-data"),
                            None::<bollard::query_parameters::RemoveVolumeOptions>,
                        )
                        .await;
                }
            });
        });
        let _ = done.join();
    }
}

/// `draas up` with its Docker worker on.
async fn up(dir: &std::path::Path) -> Draas {
    Draas::up_with_args(dir, &["--docker", "on", "--docker-image", IMAGE]).await
}

/// Waits until `draas` has a live Docker worker; returns the platform entry.
async fn docker_platform(api: &common::Api) -> Value {
    draas_testkit::wait_for("a live Docker worker", Duration::from_secs(60), || async {
        let (_, body) = api.get("/api/server/platforms").await;
        body["platforms"]
            .as_array()?
            .iter()
            .find(|p| p["platformType"] == "Docker" && p["available"] == true)
            .cloned()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_instance_lives_its_whole_life_through_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = docker();
    let draas = up(dir.path()).await;
    let platform = docker_platform(&draas).await;
    let version = platform["workers"][0]["platformVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(version.starts_with("Docker Engine"), "{platform}");

    // Create and configure: a container's ports are its own (8080).
    let (status, created) = draas
        .post(
            "/api/server/instances",
            Some(json!({"name": "boxed", "platformType": "Docker"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let _cleanup = Cleanup(vec![id.clone()]);
    assert_eq!(created["instance"]["configuration"]["port"], 8080);
    assert_eq!(created["instance"]["configuration"]["host"], "0.0.0.0");
    let (status, body, _) = draas
        .patch(
            &format!("/api/configuration/instances/{id}"),
            counter_pipeline(),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Start: a running container, live results through the published port.
    let (status, instance) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    assert_eq!(instance["status"]["state"], "Running");
    let container = instance["runtime"]["handle"]["containerId"]
        .as_str()
        .expect("a container handle")
        .to_string();
    let endpoint = instance["runtime"]["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    assert_ne!(
        endpoint, "http://127.0.0.1:8080",
        "the published port, not the container's"
    );
    let rows = draas.rows(&endpoint, "values").await;
    assert!(rows.iter().all(|r| r["value"].is_u64()), "{rows:?}");
    let inspected = docker
        .inspect_container(&container, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let config = inspected.config.unwrap();
    let labels = config.labels.unwrap();
    assert_eq!(labels["draas.managed"], "true");
    assert_eq!(labels["draas.instanceId"], id.as_str());
    assert_eq!(labels["draas.generation"], "2");
    assert_eq!(config.stop_signal.as_deref(), Some("SIGINT"));
    let host_config = inspected.host_config.unwrap();
    assert_eq!(
        host_config.restart_policy.and_then(|p| p.name),
        Some(bollard::models::RestartPolicyNameEnum::NO),
        "restarts are DRaaS's decision"
    );
    assert!(volume_exists(&docker, &id).await, "a volume for ./data");

    // Logs and the live view come from the engine.
    let (status, logs) = draas
        .get(&format!("/api/server/instances/{id}/logs?tail=20"))
        .await;
    assert_eq!(status, 200);
    assert!(!logs["lines"].as_array().unwrap().is_empty(), "{logs}");
    let (_, live) = draas
        .get(&format!("/api/server/instances/{id}/runtime-status"))
        .await;
    assert_eq!(live["live"]["healthy"], true, "{live}");

    // docker kill: Failed within a second, with the reason.
    let killed = Instant::now();
    docker
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
    let failed = draas
        .wait_state(&id, "Failed", Duration::from_secs(1))
        .await;
    println!("docker kill → Failed in {:?}", killed.elapsed());
    assert_eq!(failed["status"]["reason"], "KilledBySignal", "{failed}");

    // Start again; restart draas up: the container is adopted, not doubled.
    let (status, instance) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    let container = instance["runtime"]["handle"]["containerId"]
        .as_str()
        .unwrap()
        .to_string();
    let draas = draas.restart().await;
    docker_platform(&draas).await;
    let running = draas
        .wait_state(&id, "Running", Duration::from_secs(20))
        .await;
    assert_eq!(
        running["runtime"]["handle"]["containerId"],
        container.as_str(),
        "the same container"
    );
    assert_eq!(servers_of(&docker, &id).await, vec![container.clone()]);
    let (status, instance) = draas
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    assert_eq!(instance["status"]["state"], "Stopped");
    let state = docker
        .inspect_container(&container, None::<InspectContainerOptions>)
        .await
        .unwrap()
        .state
        .unwrap();
    assert_eq!(state.running, Some(false));
    assert_eq!(state.exit_code, Some(0), "a graceful stop (SIGINT)");

    // Delete: no container, no volume.
    let (status, _) = draas
        .call(Method::DELETE, &format!("/api/server/instances/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert!(containers_of(&docker, &id).await.is_empty());
    assert!(!volume_exists(&docker, &id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_fails_the_start_and_says_how_to_build_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let draas = up(dir.path()).await;
    docker_platform(&draas).await;
    let (status, created) = draas
        .post(
            "/api/server/instances",
            Some(json!({"name": "imageless", "platformType": "Docker",
                        "serverConfiguration": {"docker": {"image": "drasi/nowhere:0.0"}}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let _cleanup = Cleanup(vec![id.clone()]);
    let (status, body) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "IMAGE_MISSING");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("drasi/nowhere:0.0")
            && detail.contains("draas image build")
            && detail.contains("docker load"),
        "{detail}"
    );
    let (_, status_doc) = draas.get(&format!("/api/status/{id}/status")).await;
    assert_eq!(status_doc["status"]["state"], "Failed");
    assert_eq!(status_doc["status"]["reason"], "ImageMissing");
    assert!(containers_of(&docker(), &id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_worker_over_redis_runs_containers_and_adopts_them_after_a_crash() {
    use common::cluster::{serve, WorkerProcess};
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = docker();
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let redis = draas_testkit::redis_server::RedisServer::start(&redis_dir);
    let api = serve(dir.path(), "serve", &redis, &common::port_range()).await;
    let mut worker = WorkerProcess::start_platform(
        dir.path(),
        "docker-worker",
        &redis,
        "docker",
        &["--docker-image", IMAGE],
    );
    let platform = docker_platform(&api).await;
    assert_eq!(platform["workers"][0]["workerId"], worker.id().as_str());

    let (status, created) = api
        .post(
            "/api/server/instances",
            Some(json!({"name": "shipped", "platformType": "Docker"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let _cleanup = Cleanup(vec![id.clone()]);
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
    assert_eq!(instance["runtime"]["workerId"], worker.id().as_str());
    let container = instance["runtime"]["handle"]["containerId"]
        .as_str()
        .unwrap()
        .to_string();
    let endpoint = instance["runtime"]["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!api.rows(&endpoint, "values").await.is_empty());
    // Two more: one to be deleted, one whose container vanishes, while the
    // worker is down.
    let mut others = Vec::new();
    for name in ["orphaned", "vanishing"] {
        let (status, created) = api
            .post(
                "/api/server/instances",
                Some(json!({"name": name, "platformType": "Docker"})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let other = created["instance"]["id"].as_str().unwrap().to_string();
        let (status, started) = api
            .post(&format!("/api/server/instances/{other}/start"), None)
            .await;
        assert_eq!(status, 200, "{started}");
        others.push(other);
    }
    let _cleanup_others = Cleanup(others.clone());
    let (orphaned, vanishing) = (others[0].clone(), others[1].clone());

    // The worker dies: its instances are Unknown (nobody else watches that
    // engine), the containers keep running.
    worker.kill();
    let unknown = api
        .wait_state(&id, "Unknown", Duration::from_secs(15))
        .await;
    assert_eq!(unknown["status"]["reason"], "WorkerUnavailable");
    assert!(
        !api.rows(&endpoint, "values").await.is_empty(),
        "still serving"
    );
    let (status, _) = api
        .call(
            Method::DELETE,
            &format!("/api/server/instances/{orphaned}?force=true"),
            None,
        )
        .await;
    assert_eq!(status, 204, "deleted without its worker");
    assert_eq!(
        servers_of(&docker, &orphaned).await.len(),
        1,
        "left on the engine"
    );
    for gone in containers_of(&docker, &vanishing).await {
        docker
            .remove_container(
                &gone,
                Some(
                    bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .build(),
                ),
            )
            .await
            .unwrap();
    }

    // Back: it adopts the same container (no second one appears), removes
    // the deleted instance's, and reports the vanished one gone.
    worker.restart();
    let running = api
        .wait_state(&id, "Running", Duration::from_secs(30))
        .await;
    assert_eq!(
        running["runtime"]["handle"]["containerId"],
        container.as_str()
    );
    assert_eq!(servers_of(&docker, &id).await, vec![container.clone()]);
    draas_testkit::wait_for(
        "the deleted instance's container to go",
        Duration::from_secs(10),
        || {
            let docker = docker.clone();
            let orphaned = orphaned.clone();
            async move {
                (containers_of(&docker, &orphaned).await.is_empty()
                    && !volume_exists(&docker, &orphaned).await)
                    .then_some(())
            }
        },
    )
    .await;
    let gone = api
        .wait_state(&vanishing, "Failed", Duration::from_secs(10))
        .await;
    assert_eq!(gone["status"]["reason"], "LostWhileWorkerDown", "{gone}");
    // Adopted for real: its crash is seen.
    docker
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
    let failed = api.wait_state(&id, "Failed", Duration::from_secs(2)).await;
    assert_eq!(failed["status"]["reason"], "KilledBySignal");

    let (status, _) = api
        .call(Method::DELETE, &format!("/api/server/instances/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert!(containers_of(&docker, &id).await.is_empty());
    assert!(!volume_exists(&docker, &id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_daemon_reports_an_engine_no_worker_serves() {
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::{
        CreateContainerOptionsBuilder, StartContainerOptions, UploadToContainerOptionsBuilder,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = docker();
    // A control plane without a Docker worker.
    // It requires keys: the daemon sends an agent's.
    let draas = Draas::up_with_args(dir.path(), &["--docker", "off", "--require-auth"]).await;
    let data = draas.data.display().to_string();
    let agent_key = common::create_key(&["--data-dir", &data], "agent", "dd-agent");
    let (status, created) = draas
        .post(
            "/api/server/instances",
            Some(json!({"name": "watched", "platformType": "Docker"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let _cleanup = Cleanup(vec![id.clone()]);

    // Make sure the image exists (the build a worker would do).
    let image = std::process::Command::new(common::DRAAS)
        .args(["image", "build", "--tag", IMAGE, "--runtime"])
        .arg(common::runtime_binary())
        .output()
        .expect("draas image build");
    assert!(
        image.status.success(),
        "{}",
        String::from_utf8_lossy(&image.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&image.stdout).trim(), IMAGE);

    // The daemon watches the engine.
    let mut command = std::process::Command::new(common::DRAAS);
    command
        .args([
            "docker-daemon",
            "--control-plane",
            &draas.url(""),
            "--source",
            "dd-test",
        ])
        .env("DRAAS_TOKEN", &agent_key)
        .env("RUST_LOG", "info,draas_worker_docker=debug");
    let _daemon = draas_testkit::process::TestProcess::spawn(command, "daemon", dir.path())
        .expect("spawn the daemon");

    // A DRaaS container of this instance runs on the engine (as a worker
    // that went away would have left it).
    let labels = HashMap::from([
        ("draas.managed".to_string(), "true".to_string()),
        ("draas.instanceId".to_string(), id.clone()),
        ("draas.generation".to_string(), "1".to_string()),
    ]);
    let container = docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name(&format!("draas-watched-{}", &id[id.len() - 8..]))
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(IMAGE.into()),
                labels: Some(labels),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id;
    let archive =
        draas_worker_docker::container::config_archive("id: watched\nhost: 0.0.0.0\nport: 8080\n")
            .unwrap();
    docker
        .upload_to_container(
            &container,
            Some(UploadToContainerOptionsBuilder::default().path("/").build()),
            bollard::body_full(archive.into()),
        )
        .await
        .unwrap();
    docker
        .start_container(&container, None::<StartContainerOptions>)
        .await
        .unwrap();
    let running = draas
        .wait_state(&id, "Running", Duration::from_secs(20))
        .await;
    assert_eq!(running["status"]["reason"], "External", "{running}");

    docker
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
    let failed = draas
        .wait_state(&id, "Failed", Duration::from_secs(20))
        .await;
    assert_eq!(failed["status"]["reason"], "KilledBySignal", "{failed}");

    // Both reached the status buffer, signed by the daemon, in order.
    let (_, changes) = draas.get("/api/status/recent-changes?since=0").await;
    let pushed: Vec<(String, String)> = changes["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["instanceId"] == id.as_str() && c["source"] == "external:dd-test")
        .map(|c| {
            (
                c["new"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        pushed,
        vec![
            ("Running".to_string(), "External".to_string()),
            ("Failed".to_string(), "KilledBySignal".to_string())
        ],
        "{changes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_makes_the_instance_degraded() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = docker();
    // An image of the runtime whose HEALTHCHECK always fails.
    let base = std::process::Command::new(common::DRAAS)
        .args(["image", "build", "--tag", IMAGE, "--runtime"])
        .arg(common::runtime_binary())
        .output()
        .expect("draas image build");
    assert!(
        base.status.success(),
        "{}",
        String::from_utf8_lossy(&base.stderr)
    );
    let tag = format!("draas-runtime:e2e-unhealthy-{}", std::process::id());
    let dockerfile = format!(
        "FROM {IMAGE}\nHEALTHCHECK --interval=1s --timeout=1s --retries=1 \
         CMD [\"/usr/local/bin/draas-runtime\", \"validate\", \"--config\", \"/nonexistent.yaml\"]\n"
    );
    let mut context = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    context
        .append_data(&mut header, "Dockerfile", dockerfile.as_bytes())
        .unwrap();
    let mut build = docker.build_image(
        bollard::query_parameters::BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(&tag)
            .rm(true)
            .build(),
        None,
        Some(bollard::body_full(context.into_inner().unwrap().into())),
    );
    while let Some(step) = build.next().await {
        step.expect("the unhealthy image builds");
    }

    let draas = up(dir.path()).await;
    docker_platform(&draas).await;
    let (status, created) = draas
        .post(
            "/api/server/instances",
            Some(json!({"name": "sickly", "platformType": "Docker",
                        "serverConfiguration": {"docker": {"image": tag}}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let _cleanup = Cleanup(vec![id.clone()]);
    let (status, instance) = draas
        .post(&format!("/api/server/instances/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{instance}");
    let degraded = draas
        .wait_state(&id, "Degraded", Duration::from_secs(30))
        .await;
    assert_eq!(degraded["status"]["reason"], "Unhealthy", "{degraded}");
    let (status, _) = draas
        .call(Method::DELETE, &format!("/api/server/instances/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let _ = docker
        .remove_image(
            &tag,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_container_is_recreated_and_an_orphan_container_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = docker();
    let draas = Draas::up_with_args(
        dir.path(),
        &[
            "--docker",
            "on",
            "--docker-image",
            IMAGE,
            "--reconcile",
            "on",
            "--reconcile-interval",
            "1",
            "--orphan-sweep-seconds",
            "1",
        ],
    )
    .await;
    docker_platform(&draas).await;
    let (status, created) = draas
        .post(
            "/api/server/instances",
            Some(json!({"name": "vanishing", "platformType": "Docker"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["instance"]["id"].as_str().unwrap().to_string();
    let orphan = draas_core::instance::InstanceId::generate().to_string();
    let _cleanup = Cleanup(vec![id.clone(), orphan.clone()]);
    let (status, instance) = draas
        .post(
            &format!("/api/server/instances/{id}/start?wait=Running&timeout=60"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{instance}");
    let first = instance["runtime"]["handle"]["containerId"]
        .as_str()
        .unwrap()
        .to_string();

    // Someone removes the container: the instance should run, so it is
    // created again.
    docker
        .remove_container(
            &first,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .build(),
            ),
        )
        .await
        .unwrap();
    let again = running_elsewhere(&draas, &id, &first).await;
    assert_eq!(again["status"]["restartCount"], 1, "{again}");
    let second = again["runtime"]["handle"]["containerId"].as_str().unwrap();
    // (A warm container that took over is renamed right after.)
    draas_testkit::wait_for(
        "the new server alone among the instance's servers",
        Duration::from_secs(10),
        || async { (servers_of(&docker, &id).await == vec![second.to_string()]).then_some(()) },
    )
    .await;

    // A container labelled as this installation's, of no instance: removed
    // by the worker's periodic sweep.
    let labels = docker
        .inspect_container(second, None::<InspectContainerOptions>)
        .await
        .unwrap()
        .config
        .and_then(|c| c.labels)
        .unwrap();
    let installation = labels["draas.installation"].clone();
    docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            bollard::models::ContainerCreateBody {
                image: Some(IMAGE.into()),
                labels: Some(HashMap::from([
                    ("draas.managed".to_string(), "true".to_string()),
                    ("draas.installation".to_string(), installation),
                    ("draas.instanceId".to_string(), orphan.clone()),
                ])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(containers_of(&docker, &orphan).await.len(), 1);
    draas_testkit::wait_for(
        "the orphan to be removed",
        Duration::from_secs(20),
        || async {
            containers_of(&docker, &orphan)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    // The instance's own container is left alone.
    assert_eq!(servers_of(&docker, &id).await, vec![second.to_string()]);
    let (status, _) = draas
        .call(Method::DELETE, &format!("/api/server/instances/{id}"), None)
        .await;
    assert_eq!(status, 204);
}

/// The running warm container (in standby) of instance `id`, if any.
async fn warm_of(docker: &Docker, id: &str) -> Option<String> {
    let filters = HashMap::from([("label", vec![format!("draas.instanceId={id}")])]);
    docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap()
        .into_iter()
        .find(|c| {
            c.names
                .iter()
                .flatten()
                .any(|n| draas_worker_docker::warm::in_standby(n))
        })
        .and_then(|c| c.id)
}

async fn running(docker: &Docker, container: &str) -> bool {
    docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|i| i.state)
        .and_then(|s| s.running)
        == Some(true)
}

/// Creates a Docker instance of the counter pipeline that restarts on
/// failure, and starts it.
async fn running_instance(draas: &Draas, name: &str) -> (String, Value) {
    draas
        .running_pipeline(json!({
            "name": name,
            "platformType": "Docker",
            "restartPolicy": {"policy": "on-failure", "resetAfterSeconds": 300, "maxRestarts": 0},
        }))
        .await
}

/// Waits (30 s at most) until instance `id` is Running in a container other
/// than `first`; returns the instance.
async fn running_elsewhere(draas: &Draas, id: &str, first: &str) -> Value {
    draas_testkit::wait_for(
        "Running in another container",
        Duration::from_secs(30),
        || async {
            let (_, i) = draas.get(&format!("/api/server/instances/{id}")).await;
            (i["status"]["state"] == "Running"
                && i["runtime"]["handle"]["containerId"].as_str() != Some(first))
            .then_some(i)
        },
    )
    .await
}

async fn kill_container(docker: &Docker, container: &str) {
    docker
        .kill_container(
            container,
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
async fn a_crash_is_healed_by_the_warm_container_which_never_outlives_its_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = docker();
    let args = [
        "--docker",
        "on",
        "--docker-image",
        IMAGE,
        "--reconcile",
        "on",
    ];
    let draas = Draas::up_with_args(dir.path(), &args).await;
    docker_platform(&draas).await;
    let (id, instance) = running_instance(&draas, "warm").await;
    let _cleanup = Cleanup(vec![id.clone()]);
    let first = instance["runtime"]["handle"]["containerId"]
        .as_str()
        .unwrap()
        .to_string();

    // Beside the running server: its next container, waiting.
    let warm = draas_testkit::wait_for("a warm container", Duration::from_secs(30), || {
        warm_of(&docker, &id)
    })
    .await;
    assert_ne!(warm, first);
    // Running, it is the worker's a moment later (once its port is read).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let standby = docker
        .inspect_container(&warm, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let config = standby.config.unwrap();
    assert_eq!(config.cmd, Some(vec!["--standby".to_string()]));
    assert_eq!(config.labels.unwrap()["draas.instanceId"], id.as_str());

    // A crash: the warm container takes over, and serves the pipeline.
    kill_container(&docker, &first).await;
    let healed = running_elsewhere(&draas, &id, &first).await;
    assert_eq!(
        healed["runtime"]["handle"]["containerId"],
        warm.as_str(),
        "the warm container took over: {healed}"
    );
    assert_eq!(healed["status"]["restartCount"], 1, "{healed}");
    let endpoint = healed["runtime"]["endpoint"].as_str().unwrap().to_string();
    let rows = draas.rows(&endpoint, "values").await;
    assert!(rows.iter().all(|r| r["value"].is_u64()), "{rows:?}");
    // It goes by a server's name now; the crashed container is removed;
    // and the next warm container waits.
    draas_testkit::wait_for(
        "the crashed container removed, the new server renamed",
        Duration::from_secs(20),
        || async { (servers_of(&docker, &id).await == vec![warm.clone()]).then_some(()) },
    )
    .await;
    let next = draas_testkit::wait_for("the next warm container", Duration::from_secs(30), || {
        warm_of(&docker, &id)
    })
    .await;
    assert_ne!(next, warm);

    // Stopped, the instance keeps no warm container.
    let (status, stopped) = draas
        .post(&format!("/api/server/instances/{id}/stop"), None)
        .await;
    assert_eq!(status, 200, "{stopped}");
    draas_testkit::wait_for(
        "the warm container removed",
        Duration::from_secs(20),
        || async { (!containers_of(&docker, &id).await.contains(&next)).then_some(()) },
    )
    .await;

    // Started again, then its worker crashes: the warm container ends with
    // it (its stdin was the worker's), the server runs on and is adopted.
    let (status, instance) = draas
        .post(
            &format!("/api/server/instances/{id}/start?wait=Running&timeout=60"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{instance}");
    let server = instance["runtime"]["handle"]["containerId"]
        .as_str()
        .unwrap()
        .to_string();
    let warm = draas_testkit::wait_for("a warm container", Duration::from_secs(30), || {
        warm_of(&docker, &id)
    })
    .await;
    let draas = draas
        .crash_and_restart_after(&args, async {
            draas_testkit::wait_for(
                "the warm container to end with its worker",
                Duration::from_secs(15),
                || async { (!running(&docker, &warm).await).then_some(()) },
            )
            .await;
            assert!(running(&docker, &server).await, "the server runs on");
        })
        .await;
    let adopted = draas
        .wait_state(&id, "Running", Duration::from_secs(20))
        .await;
    assert_eq!(adopted["runtime"]["handle"]["containerId"], server.as_str());
    assert!(running(&docker, &server).await, "the server runs on");

    // The adopted server gets a warm container of its own (made from its
    // container as the engine shows it), which takes over at its crash.
    let warm = draas_testkit::wait_for(
        "a warm container for the adopted server",
        Duration::from_secs(30),
        || warm_of(&docker, &id),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill_container(&docker, &server).await;
    let healed = running_elsewhere(&draas, &id, &server).await;
    assert_eq!(
        healed["runtime"]["handle"]["containerId"],
        warm.as_str(),
        "the adopted server's warm container took over: {healed}"
    );
    let endpoint = healed["runtime"]["endpoint"].as_str().unwrap().to_string();
    let rows = draas.rows(&endpoint, "values").await;
    assert!(!rows.is_empty());

    // Deleted: nothing of it is left, warm containers included.
    let (status, _) = draas
        .call(Method::DELETE, &format!("/api/server/instances/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert!(containers_of(&docker, &id).await.is_empty());
    assert!(!volume_exists(&docker, &id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_warm_containers_off_a_restart_creates_its_container() {
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = docker();
    let draas = Draas::up_with_args(
        dir.path(),
        &[
            "--docker",
            "on",
            "--docker-image",
            IMAGE,
            "--reconcile",
            "on",
            "--warm-containers",
            "off",
        ],
    )
    .await;
    docker_platform(&draas).await;
    let (id, instance) = running_instance(&draas, "cold").await;
    let _cleanup = Cleanup(vec![id.clone()]);
    let first = instance["runtime"]["handle"]["containerId"]
        .as_str()
        .unwrap()
        .to_string();
    // Past the time a warm container is made (1 s after the start).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(containers_of(&docker, &id).await, vec![first.clone()]);
    kill_container(&docker, &first).await;
    let healed = running_elsewhere(&draas, &id, &first).await;
    let second = healed["runtime"]["handle"]["containerId"]
        .as_str()
        .unwrap()
        .to_string();
    let created = docker
        .inspect_container(&second, None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_ne!(
        created.config.and_then(|c| c.cmd),
        Some(vec!["--standby".to_string()]),
        "a container created for the restart"
    );
    let (status, _) = draas
        .call(Method::DELETE, &format!("/api/server/instances/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert!(containers_of(&docker, &id).await.is_empty());
}
