//! The driver conformance suite against the Docker platform: the real
//! Docker engine of this machine, containers of the bundled runtime's image
//! (built by the driver from the workspace's static binary on first use).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
};
use bollard::Docker;
use draas_core::instance::{InstanceId, PlatformHandle, PlatformType};
use draas_core::keys;
use draas_core::messages::StartSpec;
use draas_core::ports::store::{JsonStore, Precondition};
use draas_core::ports::{PlatformDriver, StateStore};
use draas_testkit::conformance::driver::{DriverFixture, Impostor};
use draas_worker::WorkerContext;
use draas_worker_docker::{DockerSettings, Engine};

/// The image tag the suite's driver builds and runs.
const IMAGE: &str = "draas-runtime:conformance";

struct Containers {
    engine: Engine,
    /// How the configuration reaches the containers.
    config_in_env: bool,
}

fn container_of(handle: &PlatformHandle) -> &str {
    match handle {
        PlatformHandle::Container { container_id } => container_id,
        other => panic!("not a container handle: {other:?}"),
    }
}

async fn running(docker: &Docker, id: &str) -> bool {
    docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state)
        .and_then(|s| s.running)
        == Some(true)
}

/// Another container (a runtime of the same image, labelled for nothing):
/// what a recycled container id would name.
struct Stranger {
    docker: Docker,
    id: String,
}

impl Impostor for Stranger {
    fn alive(&mut self) -> bool {
        let docker = self.docker.clone();
        let id = self.id.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(running(&docker, &id))
        })
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let id = self.id.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                let _ = docker
                    .remove_container(
                        &id,
                        Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                    )
                    .await;
            })
        });
    }
}

#[async_trait]
impl DriverFixture for Containers {
    fn platform(&self) -> PlatformType {
        PlatformType::Docker
    }

    async fn driver(&self, context: &WorkerContext) -> Arc<dyn PlatformDriver> {
        let settings = DockerSettings {
            default_image: IMAGE.into(),
            runtime_binary: Some(draas_testkit::workspace_binary("draas-runtime")),
            config_in_env: self.config_in_env,
            ..DockerSettings::default()
        };
        Arc::new(
            draas_worker_docker::driver(self.engine.clone(), settings, context)
                .await
                .unwrap(),
        )
    }

    fn start_spec(&self, id: &InstanceId, generation: u64) -> StartSpec {
        // Inside its container a server listens on every interface, on
        // drasi-server's default port: ports are private to containers.
        let mut configuration = draas_testkit::counter_configuration(8080);
        configuration.host = Some("0.0.0.0".to_string().into());
        draas_testkit::start_spec(id, &configuration, PlatformType::Docker, generation)
    }

    async fn crash(&self, handle: &PlatformHandle) {
        self.engine
            .docker
            .kill_container(
                container_of(handle),
                Some(
                    KillContainerOptionsBuilder::default()
                        .signal("SIGKILL")
                        .build(),
                ),
            )
            .await
            .expect("docker kill");
    }

    async fn is_running(&self, handle: &PlatformHandle) -> bool {
        running(&self.engine.docker, container_of(handle)).await
    }

    async fn leftovers(&self, id: &InstanceId) -> Vec<String> {
        let docker = &self.engine.docker;
        let filters = HashMap::from([("label", vec![format!("draas.instanceId={id}")])]);
        let mut left: Vec<String> = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap()
            .into_iter()
            .map(|c| format!("container {:?}", c.names.unwrap_or_default()))
            .collect();
        let volume = format!("draas-{id}-data");
        if docker.inspect_volume(&volume).await.is_ok() {
            left.push(format!("volume {volume}"));
        }
        left
    }

    async fn impersonate(&self, store: &dyn StateStore, id: &InstanceId) -> Box<dyn Impostor> {
        let docker = self.engine.docker.clone();
        let name = format!("draas-stranger-{}", uuid::Uuid::new_v4().simple());
        let created = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                ContainerCreateBody {
                    // An empty runtime server: it runs until stopped.
                    image: Some(IMAGE.into()),
                    cmd: Some(vec!["--config".into(), "/etc/drasi/server.yaml".into()]),
                    ..Default::default()
                },
            )
            .await
            .expect("create a stranger");
        let config = "id: stranger\nhost: 0.0.0.0\nport: 8080\n";
        let archive = draas_worker_docker::container::config_archive(config).unwrap();
        docker
            .upload_to_container(
                &created.id,
                Some(
                    bollard::query_parameters::UploadToContainerOptionsBuilder::default()
                        .path("/")
                        .build(),
                ),
                bollard::body_full(archive.into()),
            )
            .await
            .expect("upload");
        docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
            .expect("start the stranger");
        let mut stranger = Stranger {
            docker: docker.clone(),
            id: created.id.clone(),
        };
        assert!(stranger.alive(), "the stranger runs");
        let records = keys::worker_records(PlatformType::Docker, &self.engine.id);
        let mut record = store
            .get_json::<serde_json::Value>(&records, id.as_str())
            .await
            .expect("read")
            .expect("a record of the server")
            .value;
        record["platform"]["containerId"] = serde_json::json!(created.id);
        store
            .put_json(&records, id.as_str(), &record, Precondition::None)
            .await
            .expect("write");
        Box::new(stranger)
    }
}

async fn suite(config_in_env: bool) {
    let engine = Engine::connect(None, Duration::from_secs(10))
        .await
        .expect("the Docker engine (the test command starts it)");
    let store: Arc<dyn StateStore> = Arc::new(draas_store::EmbeddedStore::in_memory().unwrap());
    let bus = Arc::new(draas_bus::InProcessBus::new());
    let fixture = Containers {
        engine,
        config_in_env,
    };
    draas_testkit::conformance::driver::run_all(&fixture, store, bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_driver_passes_the_driver_conformance_suite() {
    suite(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_driver_passes_it_with_configurations_uploaded_as_files() {
    suite(false).await;
}

/// A container's last words are known the moment it ends: its error output
/// is followed while it runs (a crash report then needs no question to the
/// engine, which answers slowly while it is still handling the exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containers_last_words_are_kept_as_it_writes_them() {
    const TAILS_IMAGE: &str = "draas-runtime:tails-test";
    let engine = Engine::connect(None, Duration::from_secs(10))
        .await
        .expect("the Docker engine (the test command starts it)");
    let docker = engine.docker.clone();
    draas_worker_docker::image::build_runtime_image(
        &docker,
        &draas_testkit::workspace_binary("draas-runtime"),
        TAILS_IMAGE,
    )
    .await
    .expect("build the runtime image");
    let name = format!("draas-tails-test-{}", uuid::Uuid::new_v4().simple());
    // The runtime told to read a configuration that is not there: it says
    // so on its error output, then exits.
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            ContainerCreateBody {
                image: Some(TAILS_IMAGE.into()),
                cmd: Some(vec!["--config".into(), "/nowhere.yaml".into()]),
                ..Default::default()
            },
        )
        .await
        .expect("create");
    docker
        .start_container(&created.id, None::<StartContainerOptions>)
        .await
        .expect("start");
    let tails = draas_worker_docker::tail::Tails::default();
    tails.follow(&docker, &created.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let words = loop {
        let lines = tails.last_lines(&created.id).expect("followed");
        if lines.iter().any(|l| l.contains("/nowhere.yaml")) {
            break lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the error never came: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        words.iter().any(|l| l.contains("cannot read config file")),
        "{words:?}"
    );
    assert!(words.len() <= draas_worker_docker::tail::KEPT_LINES);
    tails.forget(&created.id);
    assert_eq!(tails.last_lines(&created.id), None, "forgotten");
    let _ = docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
}
