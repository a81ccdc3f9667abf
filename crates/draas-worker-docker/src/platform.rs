//! The Docker platform as the generic driver sees it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, InspectContainerOptions,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListVolumesOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
    RenameContainerOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use draas_core::instance::{ActualState, InstanceId, PlatformHandle, PlatformType, Reason};
use draas_core::messages::{ErrorCode, LogStream, LogsSpec, StartSpec};
use draas_core::ports::DriverError;
use draas_worker::driver::{ExitWatch, Launched, Platform, ServerAddress};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::container::{self, Plan, INSTALLATION, INSTANCE};
use crate::engine::Engine;
use crate::events::ExitEvents;
use crate::image;
use crate::tail::Tails;
use crate::warm::{self, Recipe, Taken, Warm, WarmContainers};
use crate::DockerSettings;

/// How long a stopped container may take to report its `die`.
const DIE_WAIT: Duration = Duration::from_secs(10);

/// The Docker platform's part of a server record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    /// The container's full id.
    pub container_id: String,
    /// Its name.
    pub name: String,
    /// Its image.
    pub image: String,
}

/// Drasi servers as containers of one engine.
pub struct DockerPlatform {
    engine: Engine,
    settings: DockerSettings,
    installation: String,
    events: ExitEvents,
    /// The last words of the running containers, as they write them.
    tails: Tails,
    /// Serialises builds of the default image (many starts may find it
    /// missing at once).
    building: tokio::sync::Mutex<()>,
    /// Each running instance's next container, started ahead of need.
    warm: WarmContainers,
    /// Ends the driver's background tasks when it goes.
    closing: tokio_util::sync::CancellationToken,
}

fn engine_error(what: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::new(ErrorCode::PlatformError, format!("{what}: {e}"))
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Someone else (a user's `docker rm -f`, another worker) is removing the
/// container already.
fn is_removal_in_progress(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message,
        } if message.contains("already in progress")
    )
}

/// How long a removal someone else started may take.
const REMOVAL_WAIT: Duration = Duration::from_secs(10);

impl DockerPlatform {
    /// The platform of `engine`, for `installation`'s containers; health
    /// changes of its containers go to `health`.
    pub fn new(
        engine: Engine,
        settings: DockerSettings,
        installation: String,
        health: Option<crate::events::HealthSink>,
    ) -> Self {
        let events = ExitEvents::start(engine.docker.clone(), &installation, health);
        Self {
            engine,
            settings,
            installation,
            events,
            tails: Tails::default(),
            building: tokio::sync::Mutex::new(()),
            warm: WarmContainers::default(),
            closing: tokio_util::sync::CancellationToken::new(),
        }
    }

    fn docker(&self) -> &Docker {
        &self.engine.docker
    }

    /// The image to run, present on the engine: the default image is built
    /// from the bundled runtime when missing or built from another binary;
    /// any other must be there.
    async fn ensure_image(&self, image: &str) -> Result<image::ImageFacts, DriverError> {
        let missing = |message: String| {
            DriverError::new(ErrorCode::ImageMissing, message)
                .with_state(ActualState::Failed, Reason::ImageMissing)
        };
        let inspect = |docker: &Docker| {
            let docker = docker.clone();
            let image = image.to_string();
            async move { image::inspect(&docker, &image).await }
        };
        // The default image follows the bundled runtime it is built from.
        let wanted = (image == self.settings.default_image)
            .then_some(self.settings.runtime_binary.as_deref())
            .flatten()
            .and_then(image::fingerprint);
        let current = |facts: &image::ImageFacts| match &wanted {
            Some(fingerprint) => facts.labels.get(image::RUNTIME_LABEL) == Some(fingerprint),
            None => true,
        };
        let found = inspect(self.docker())
            .await
            .map_err(|e| engine_error("cannot inspect the image", e))?;
        if let Some(facts) = found.filter(&current) {
            return Ok(facts);
        }
        if wanted.is_none() {
            return Err(missing(format!(
                "image {image} is not on the Docker engine ({}), and nothing is pulled: \
                 build the bundled runtime's image with `draas image build --tag {image}` \
                 (or scripts/build-runtime-image.sh), or load yours with `docker load`",
                self.engine.address
            )));
        }
        let _one_build = self.building.lock().await;
        let found = inspect(self.docker())
            .await
            .map_err(|e| engine_error("cannot inspect the image", e))?;
        if let Some(facts) = found.filter(&current) {
            return Ok(facts);
        }
        let binary = self.settings.runtime_binary.clone().unwrap_or_default();
        info!(%image, binary = %binary.display(), "building the runtime image");
        image::build_runtime_image(self.docker(), &binary, image)
            .await
            .map_err(|e| {
                missing(format!(
                    "image {image} is missing and building it failed: {e}"
                ))
            })?;
        inspect(self.docker())
            .await
            .map_err(|e| engine_error("cannot inspect the image", e))?
            .ok_or_else(|| missing(format!("image {image} is still missing after its build")))
    }

    /// Every container of instance `id` (any state), by label.
    async fn containers_of(&self, id: &InstanceId) -> Result<Vec<String>, DriverError> {
        containers_of(self.docker(), &self.installation, id, &[]).await
    }

    /// Removes every container of instance `id`.
    async fn remove_containers(&self, id: &InstanceId) -> Result<(), DriverError> {
        for container in self.containers_of(id).await? {
            self.stop_watching(&container);
            remove_container(self.docker(), &container).await?;
        }
        Ok(())
    }

    /// Removes what earlier launches of `id` left (the container that just
    /// ended, or one of a launch that failed) once the next one, under a
    /// name of its own, has started: the engine may still be handling the
    /// old one's exit, and a restart must not wait for that, nor have its
    /// start slowed by a removal running beside it in the engine (traced:
    /// create → start took 240–460 ms with the removal beside it, 230–300
    /// ms after it). What is not removed now is by the next launch or the
    /// instance's deletion.
    fn remove_in_background(&self, id: &InstanceId, earlier: Vec<String>) {
        if earlier.is_empty() {
            return;
        }
        for container in &earlier {
            self.stop_watching(container);
        }
        let docker = self.docker().clone();
        let instance = id.clone();
        tokio::spawn(async move {
            for container in earlier {
                if let Err(e) = remove_container(&docker, &container).await {
                    warn!(instance = %instance, "cannot remove an earlier container: {}", e.message);
                }
            }
        });
    }

    /// Forgets `container`'s exit and output.
    fn stop_watching(&self, container: &str) {
        self.events.forget(container);
        self.tails.forget(container);
    }

    /// The key of what a warm container must have been made for to serve
    /// this launch of `spec` in `image` ([`warm::key`]): `None` when none
    /// is made for it (turned off, or not the default image of a known
    /// runtime binary).
    fn warm_made_for(&self, spec: &StartSpec, image: &str) -> Option<String> {
        if !self.settings.warm_containers || image != self.settings.default_image {
            return None;
        }
        let runtime = image::fingerprint(self.settings.runtime_binary.as_deref()?)?;
        let spec = serde_json::to_string(spec).ok()?;
        Some(warm::key(&format!("{image}\n{runtime}\n{spec}")))
    }

    /// Removes a warm container no launch will take, in the background.
    fn remove_warm(&self, warm: Warm) {
        self.events.forget(&warm.container);
        let docker = self.docker().clone();
        tokio::spawn(async move {
            if let Err(e) = remove_container(&docker, &warm.container).await {
                warn!("cannot remove a warm container: {}", e.message);
            }
        });
    }

    /// Turns `warm` into this launch of `id` (in `image`): its order is
    /// written, the containers before it go in the background. `None`: it
    /// could not take the order (a cold launch follows).
    async fn take_over(
        &self,
        id: &InstanceId,
        image: &str,
        mut warm: Warm,
    ) -> Option<Launched<ContainerRecord, String>> {
        // What came before it is listed now, while the order goes: later,
        // the list could hold the next warm container, or the container of
        // a cold restart of this one.
        let keep = self.warm.names(id);
        let (went, earlier) = tokio::join!(
            warm.go(),
            containers_of(self.docker(), &self.installation, id, &keep)
        );
        if let Err(e) = went {
            warn!(instance = %id, "the warm container did not take its order ({e}); starting cold");
            self.remove_warm(warm);
            return None;
        }
        let Warm {
            container,
            name,
            port,
            exit,
            ..
        } = warm;
        self.tails.follow(self.docker(), &container);
        match earlier {
            Ok(earlier) => self.remove_in_background(
                id,
                earlier.into_iter().filter(|c| *c != container).collect(),
            ),
            Err(e) => {
                warn!(instance = %id, "earlier containers stay until the next launch: {}", e.message)
            }
        }
        // Out of the way of the start: the name of a server.
        let docker = self.docker().clone();
        let instance = id.clone();
        let (current, new_name) = (container.clone(), name.clone());
        tokio::spawn(async move {
            let renamed = docker
                .rename_container(
                    &current,
                    RenameContainerOptionsBuilder::default()
                        .name(&new_name)
                        .build(),
                )
                .await;
            if let Err(e) = renamed {
                warn!(instance = %instance, "cannot rename the container that took over: {e}");
            }
        });
        info!(instance = %id, container = %&container[..12.min(container.len())], port, "the warm container took over");
        Some(self.launched(container, name, image.to_string(), exit, port))
    }

    /// What a launch started.
    fn launched(
        &self,
        container: String,
        name: String,
        image: String,
        exit: ExitWatch,
        port: u16,
    ) -> Launched<ContainerRecord, String> {
        let published = &self.engine.published_host;
        let advertised = self.settings.advertise_host.as_deref().unwrap_or(published);
        Launched {
            record: ContainerRecord {
                container_id: container.clone(),
                name,
                image,
            },
            handle: container,
            exit,
            address: ServerAddress {
                api_url: format!("http://{published}:{port}"),
                endpoint: format!("http://{advertised}:{port}"),
                host: advertised.to_string(),
                port,
            },
        }
    }

    /// Makes, [`warm::MAKE_AFTER`] from now, the warm container of `id`'s
    /// next launch from `recipe`, unless the server that `exit` watches
    /// has ended by then or the instance launched, stopped or went
    /// meanwhile (`epoch`); removes it [`warm::LINGER`] after that server
    /// ended without a launch taking it.
    fn make_warm_later(&self, id: &InstanceId, epoch: u64, recipe: Arc<Recipe>, exit: ExitWatch) {
        let docker = self.docker().clone();
        let events = self.events.clone();
        let slots = self.warm.clone();
        let closing = self.closing.clone();
        let id = id.clone();
        let work = async move {
            tokio::time::sleep(warm::MAKE_AFTER).await;
            if exit.has_exited() {
                return;
            }
            {
                let _one_at_a_time = slots.making.lock().await;
                if exit.has_exited() {
                    return;
                }
                let name =
                    container::container_name(&recipe.instance_name, &id, &container::new_launch());
                let standby = warm::standby_name(&name);
                if !slots.begin(&id, epoch, &standby) {
                    return;
                }
                let made = match make_warm(&docker, &events, recipe, name, &standby).await {
                    Ok(made) => Some(made),
                    Err(e) => {
                        warn!(instance = %id, "cannot make a warm container: {}", e.message);
                        None
                    }
                };
                if let Some(unkept) = slots.finish(&id, epoch, made) {
                    events.forget(&unkept.container);
                    let _ = remove_container(&docker, &unkept.container).await;
                }
            }
            exit.wait().await;
            tokio::time::sleep(warm::LINGER).await;
            if let Some(unused) = slots.expire(&id, epoch) {
                events.forget(&unused.container);
                let _ = remove_container(&docker, &unused.container).await;
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                () = closing.cancelled() => {}
                () = work => {}
            }
        });
    }

    /// The volume of `id`'s `./data`, created if missing.
    async fn ensure_volume(&self, id: &InstanceId) -> Result<String, DriverError> {
        let name = container::volume_name(id);
        self.docker()
            .create_volume(VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(container::labels(id, None, &self.installation)),
                ..Default::default()
            })
            .await
            .map_err(|e| engine_error("cannot create the data volume", e))?;
        Ok(name)
    }

    /// The lines of `stream` of `container`, the last `tail`.
    async fn log_lines(
        &self,
        container: &str,
        stream: LogStream,
        tail: usize,
    ) -> Result<Vec<String>, bollard::errors::Error> {
        let options = LogsOptionsBuilder::default()
            .stdout(stream == LogStream::Stdout)
            .stderr(stream == LogStream::Stderr)
            .tail(&tail.to_string())
            .build();
        let chunks: Vec<LogOutput> = self
            .docker()
            .logs(container, Some(options))
            .try_collect()
            .await?;
        Ok(chunks
            .iter()
            .flat_map(|chunk| {
                String::from_utf8_lossy(chunk.as_ref())
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    /// The published host port of container `id`'s `port`.
    async fn published_port(&self, container: &str, port: u16) -> Result<u16, DriverError> {
        published_port(self.docker(), container, port).await
    }

    /// Whether the configuration goes in the environment: the bundled
    /// runtime (an image DRaaS built) reads it there, which spares the
    /// upload (about 60 ms).
    fn config_in_env(&self, spec: &StartSpec, facts: &image::ImageFacts) -> bool {
        self.settings.config_in_env
            && facts.labels.contains_key(image::RUNTIME_LABEL)
            && spec.configuration_yaml.len() <= container::MAX_CONFIG_IN_ENV
    }

    /// The definition of `id`'s container for `spec`; labelled with the
    /// key of its warm containers, when they are made.
    fn create_body(
        &self,
        id: &InstanceId,
        spec: &StartSpec,
        image: &str,
        facts: &image::ImageFacts,
        warm_key: Option<&str>,
    ) -> bollard::models::ContainerCreateBody {
        let mut body = container::create_body(&Plan {
            id,
            spec,
            image,
            workdir: &facts.workdir,
            installation: &self.installation,
            publish_address: &self.settings.publish_address,
            config_in_env: self.config_in_env(spec, facts),
        });
        if let (Some(key), Some(labels)) = (warm_key, body.labels.as_mut()) {
            labels.insert(container::WARM_KEY.to_string(), key.to_string());
        }
        body
    }

    /// How `id`'s warm containers for `spec` are made.
    fn recipe(
        &self,
        made_for: String,
        id: &InstanceId,
        spec: &StartSpec,
        image: &str,
        facts: &image::ImageFacts,
    ) -> Result<Recipe, DriverError> {
        let archive = if self.config_in_env(spec, facts) {
            None
        } else {
            Some(
                container::config_archive(&spec.configuration_yaml)
                    .map_err(|e| engine_error("cannot pack the configuration", e))?,
            )
        };
        let body = self.create_body(id, spec, image, facts, Some(&made_for));
        Ok(Recipe::new(
            made_for,
            spec.name.clone(),
            body,
            archive,
            &facts.workdir,
            spec.api_port,
        ))
    }

    /// How the warm containers of an adopted server are made: from its
    /// container as the engine shows it (the same definition), when the
    /// worker that launched it made warm containers for it ([`container::WARM_KEY`]
    /// label) and it reads its configuration from the environment (an
    /// uploaded file is not on the engine to copy).
    fn recipe_of_running(
        &self,
        id: &InstanceId,
        record: &ContainerRecord,
        inspected: &bollard::models::ContainerInspectResponse,
    ) -> Option<Recipe> {
        if !self.settings.warm_containers || record.image != self.settings.default_image {
            return None;
        }
        let config = inspected.config.as_ref()?;
        let labels = config.labels.as_ref()?;
        let key = labels.get(container::WARM_KEY)?;
        let api_port: u16 = labels.get(container::API_PORT)?.parse().ok()?;
        let cmd = config.cmd.clone()?;
        if cmd.first().map(String::as_str) != Some("--config-env") {
            return None;
        }
        let host = inspected.host_config.as_ref()?;
        let body = bollard::models::ContainerCreateBody {
            image: Some(record.image.clone()),
            cmd: Some(cmd),
            env: config.env.clone(),
            labels: Some(labels.clone()),
            exposed_ports: config.exposed_ports.clone(),
            stop_signal: config.stop_signal.clone(),
            stop_timeout: config.stop_timeout,
            host_config: Some(bollard::models::HostConfig {
                port_bindings: host.port_bindings.clone(),
                mounts: host.mounts.clone(),
                restart_policy: host.restart_policy.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let workdir = config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string());
        Some(Recipe::new(
            key.clone(),
            container::instance_name_of(&record.name, id)?.to_string(),
            body,
            None,
            &workdir,
            api_port,
        ))
    }

    /// Creates, configures and starts the container; on any failure what
    /// was created is removed.
    async fn create_and_start(
        &self,
        id: &InstanceId,
        spec: &StartSpec,
        image: &str,
        facts: &image::ImageFacts,
        name: &str,
        warm_key: Option<&str>,
    ) -> Result<(String, ExitWatch), DriverError> {
        let config_in_env = self.config_in_env(spec, facts);
        let body = self.create_body(id, spec, image, facts, warm_key);
        let created = self
            .docker()
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(name).build()),
                body,
            )
            .await
            .map_err(|e| {
                engine_error("cannot create the container", e)
                    .with_state(ActualState::Failed, Reason::PlatformError)
            })?;
        let container = created.id;
        let configured = async {
            if !config_in_env {
                let archive = container::config_archive(&spec.configuration_yaml)
                    .map_err(|e| engine_error("cannot pack the configuration", e))?;
                self.docker()
                    .upload_to_container(
                        &container,
                        Some(UploadToContainerOptionsBuilder::default().path("/").build()),
                        bollard::body_full(archive.into()),
                    )
                    .await
                    .map_err(|e| engine_error("cannot upload the configuration", e))?;
            }
            // Watched before it starts: an immediate exit is not missed.
            let exit = self.events.watch(&container).await;
            self.docker()
                .start_container(&container, None::<StartContainerOptions>)
                .await
                .map_err(|e| engine_error("cannot start the container", e))?;
            Ok::<_, DriverError>(exit)
        }
        .await;
        match configured {
            Ok(exit) => Ok((container, exit)),
            Err(e) => {
                let _ = self.remove_containers(id).await;
                Err(e.with_state(ActualState::Failed, Reason::PlatformError))
            }
        }
    }
}

/// Every container of `installation`'s instance `id` (any state), by
/// label, but those named in `except`.
async fn containers_of(
    docker: &Docker,
    installation: &str,
    id: &InstanceId,
    except: &[String],
) -> Result<Vec<String>, DriverError> {
    let filters = container::label_filter(installation, Some(id));
    let listed = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| engine_error("cannot list containers", e))?;
    let excepted = |names: &Option<Vec<String>>| {
        names.iter().flatten().any(|name| {
            except
                .iter()
                .any(|e| name.trim_start_matches('/') == e.as_str())
        })
    };
    Ok(listed
        .into_iter()
        .filter(|c| !excepted(&c.names))
        .filter_map(|c| c.id)
        .collect())
}

/// The published host port of `container`'s `port`.
async fn published_port(docker: &Docker, container: &str, port: u16) -> Result<u16, DriverError> {
    let inspected = docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
        .map_err(|e| engine_error("cannot inspect the container", e))?;
    inspected
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|ports| ports.get(&container::port_key(port)).cloned().flatten())
        .and_then(|bindings| bindings.into_iter().find_map(|b| b.host_port))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| {
            engine_error(
                "the engine published no host port",
                format!("for port {port} of {container}"),
            )
        })
}

/// Makes a warm container from `recipe`, named `standby` until it takes
/// over as `name`: created, its configuration uploaded if it is a file,
/// watched, its stdin attached, started. What was created is removed on
/// any failure.
async fn make_warm(
    docker: &Docker,
    events: &ExitEvents,
    recipe: Arc<Recipe>,
    name: String,
    standby: &str,
) -> Result<Warm, DriverError> {
    let container = docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name(standby)
                    .build(),
            ),
            recipe.body.clone(),
        )
        .await
        .map_err(|e| engine_error("cannot create the container", e))?
        .id;
    let made = async {
        if let Some(archive) = &recipe.archive {
            docker
                .upload_to_container(
                    &container,
                    Some(UploadToContainerOptionsBuilder::default().path("/").build()),
                    bollard::body_full(archive.clone().into()),
                )
                .await
                .map_err(|e| engine_error("cannot upload the configuration", e))?;
        }
        let exit = events.watch(&container).await;
        let attached = docker
            .attach_container(
                &container,
                Some(
                    AttachContainerOptionsBuilder::default()
                        .stdin(true)
                        .stream(true)
                        .build(),
                ),
            )
            .await
            .map_err(|e| engine_error("cannot attach to the container", e))?;
        docker
            .start_container(&container, None::<StartContainerOptions>)
            .await
            .map_err(|e| engine_error("cannot start the container", e))?;
        let port = published_port(docker, &container, recipe.api_port).await?;
        Ok::<_, DriverError>(Warm {
            container: container.clone(),
            name,
            recipe,
            port,
            exit,
            input: attached.input,
            output: attached.output,
        })
    }
    .await;
    if made.is_err() {
        events.forget(&container);
        let _ = remove_container(docker, &container).await;
    }
    made
}

/// Removes `container` (running or not), waiting for a removal someone
/// else started.
async fn remove_container(docker: &Docker, container: &str) -> Result<(), DriverError> {
    match docker
        .remove_container(
            container,
            Some(
                RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .v(true)
                    .build(),
            ),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) if is_removal_in_progress(&e) => until_gone(docker, container).await,
        Err(e) => Err(engine_error("cannot remove a container", e)),
    }
}

/// Waits (bounded) until `container` no longer exists.
async fn until_gone(docker: &Docker, container: &str) -> Result<(), DriverError> {
    let deadline = tokio::time::Instant::now() + REMOVAL_WAIT;
    loop {
        match docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
        {
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(engine_error("cannot inspect a container being removed", e)),
            Ok(_) if tokio::time::Instant::now() >= deadline => {
                return Err(DriverError::new(
                    ErrorCode::PlatformError,
                    format!("container {container} was still being removed after {REMOVAL_WAIT:?}"),
                ))
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

impl Drop for DockerPlatform {
    fn drop(&mut self) {
        self.tails.forget_all();
        self.closing.cancel();
        // Their stdin closes: the runtimes in standby end.
        drop(self.warm.drain());
    }
}

#[async_trait]
impl Platform for DockerPlatform {
    type Record = ContainerRecord;
    type Handle = String;

    fn platform(&self) -> PlatformType {
        PlatformType::Docker
    }

    fn scope(&self) -> String {
        self.engine.id.clone()
    }

    fn version(&self) -> Option<String> {
        Some(self.engine.version.clone())
    }

    async fn launch(
        &self,
        id: &InstanceId,
        spec: &StartSpec,
    ) -> Result<Launched<ContainerRecord, String>, DriverError> {
        let image = spec
            .server_configuration
            .docker()
            .image
            .unwrap_or_else(|| self.settings.default_image.clone());
        let made_for = self.warm_made_for(spec, &image);
        let (taken, epoch) = self.warm.take(id, made_for.as_deref().unwrap_or_default());
        match taken {
            Taken::Fit(warm) => {
                let recipe = warm.recipe.clone();
                if let Some(launched) = self.take_over(id, &image, warm).await {
                    self.make_warm_later(id, epoch, recipe, launched.exit.clone());
                    return Ok(launched);
                }
            }
            Taken::Unfit(warm) => self.remove_warm(warm),
            Taken::None => {}
        }
        let warm_ones = self.warm.names(id);
        let (facts, earlier, _volume) = tokio::try_join!(
            self.ensure_image(&image),
            containers_of(self.docker(), &self.installation, id, &warm_ones),
            self.ensure_volume(id),
        )?;
        let name = container::container_name(&spec.name, id, &container::new_launch());
        let (container, exit) = self
            .create_and_start(id, spec, &image, &facts, &name, made_for.as_deref())
            .await?;
        self.remove_in_background(id, earlier);
        let port = match self.published_port(&container, spec.api_port).await {
            Ok(port) => port,
            Err(e) => {
                let _ = self.remove_containers(id).await;
                return Err(e.with_state(ActualState::Failed, Reason::PlatformError));
            }
        };
        self.tails.follow(self.docker(), &container);
        info!(instance = %id, container = %&container[..12.min(container.len())], port, "container started");
        let launched = self.launched(container, name, image.clone(), exit, port);
        if let Some(made_for) = made_for.filter(|_| facts.labels.contains_key(image::RUNTIME_LABEL))
        {
            match self.recipe(made_for, id, spec, &image, &facts) {
                Ok(recipe) => {
                    self.make_warm_later(id, epoch, Arc::new(recipe), launched.exit.clone())
                }
                Err(e) => warn!(instance = %id, "no warm container: {}", e.message),
            }
        }
        Ok(launched)
    }

    async fn attach(
        &self,
        id: &InstanceId,
        record: &ContainerRecord,
    ) -> Option<(String, ExitWatch)> {
        let inspected = self
            .docker()
            .inspect_container(&record.container_id, None::<InspectContainerOptions>)
            .await
            .ok()?;
        let labels = inspected
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let ours = labels.get(INSTANCE).map(String::as_str) == Some(id.as_str())
            && labels.get(INSTALLATION) == Some(&self.installation);
        let running = inspected.state.as_ref().and_then(|s| s.running) == Some(true);
        if !ours || !running {
            return None;
        }
        if inspected.name.as_deref().is_some_and(warm::in_standby) {
            // A warm container took over, and its worker ended before it
            // was renamed.
            let renamed = self
                .docker()
                .rename_container(
                    &record.container_id,
                    RenameContainerOptionsBuilder::default()
                        .name(&record.name)
                        .build(),
                )
                .await;
            if let Err(e) = renamed {
                warn!(instance = %id, "cannot rename the container that took over: {e}");
            }
        }
        let exit = self.events.watch(&record.container_id).await;
        self.tails.follow(self.docker(), &record.container_id);
        // What else of the instance is left (warm containers of the worker
        // before, which ended with it; earlier servers) goes.
        let keep = self.warm.names(id);
        match containers_of(self.docker(), &self.installation, id, &keep).await {
            Ok(others) => self.remove_in_background(
                id,
                others
                    .into_iter()
                    .filter(|c| *c != record.container_id)
                    .collect(),
            ),
            Err(e) => warn!(instance = %id, "{}", e.message),
        }
        if let Some(recipe) = self.recipe_of_running(id, record, &inspected) {
            let (unfit, epoch) = self.warm.take(id, &recipe.made_for);
            if let Taken::Unfit(warm) | Taken::Fit(warm) = unfit {
                self.remove_warm(warm);
            }
            self.make_warm_later(id, epoch, Arc::new(recipe), exit.clone());
        }
        Some((record.container_id.clone(), exit))
    }

    async fn stop(
        &self,
        id: &InstanceId,
        handle: &String,
        exit: &ExitWatch,
        grace: Duration,
    ) -> Result<(), DriverError> {
        if let Some(warm) = self.warm.discard(id) {
            self.remove_warm(warm);
        }
        let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        // The engine sends the stop signal (SIGINT), waits, then SIGKILL.
        match self
            .docker()
            .stop_container(
                handle,
                Some(StopContainerOptionsBuilder::default().t(seconds).build()),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) => return Err(engine_error("cannot stop the container", e)),
        }
        if tokio::time::timeout(DIE_WAIT, exit.wait()).await.is_err() {
            warn!(instance = %id, "the container stopped but no exit was seen within {DIE_WAIT:?}");
            self.events.forget(handle);
        }
        Ok(())
    }

    async fn kill(&self, id: &InstanceId, handle: &String) {
        if let Err(e) = self
            .docker()
            .kill_container(
                handle,
                Some(
                    KillContainerOptionsBuilder::default()
                        .signal("SIGKILL")
                        .build(),
                ),
            )
            .await
        {
            if !is_not_found(&e) {
                warn!(instance = %id, "cannot kill the container: {e}");
            }
        }
    }

    async fn last_words(
        &self,
        _id: &InstanceId,
        record: &ContainerRecord,
        starting: bool,
    ) -> String {
        if !starting {
            // A crash: the words were kept as they came (see `tail`).
            if let Some(lines) = self.tails.last_lines(&record.container_id) {
                return lines.join("\n").trim().to_string();
            }
        }
        let stderr = self
            .log_lines(&record.container_id, LogStream::Stderr, 10)
            .await
            .unwrap_or_default();
        let lines = if stderr.iter().any(|l| !l.trim().is_empty()) || !starting {
            stderr
        } else {
            // drasi-server logs its errors to stdout.
            self.log_lines(&record.container_id, LogStream::Stdout, 5)
                .await
                .unwrap_or_default()
        };
        lines.join("\n").trim().to_string()
    }

    async fn logs(
        &self,
        _id: &InstanceId,
        record: Option<&ContainerRecord>,
        spec: &LogsSpec,
    ) -> Result<Vec<String>, DriverError> {
        let Some(record) = record else {
            return Ok(Vec::new());
        };
        match self
            .log_lines(&record.container_id, spec.stream, spec.tail)
            .await
        {
            Ok(lines) => Ok(lines),
            // Its container is gone (deleted behind DRaaS's back).
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(engine_error("cannot read the container's output", e)),
        }
    }

    async fn remove(
        &self,
        id: &InstanceId,
        _record: Option<&ContainerRecord>,
    ) -> Result<(), DriverError> {
        if let Some(warm) = self.warm.discard(id) {
            self.events.forget(&warm.container);
        }
        // A warm container being made for it goes first (its making sees
        // the instance gone), then the rest and the volume it mounts.
        self.warm.until_made(id).await;
        self.remove_containers(id).await?;
        match self
            .docker()
            .remove_volume(
                &container::volume_name(id),
                Some(RemoveVolumeOptionsBuilder::default().force(true).build()),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(engine_error("cannot remove the data volume", e)),
        }
    }

    async fn release_slots(
        &self,
        id: &InstanceId,
        start: &StartSpec,
    ) -> Result<Vec<String>, String> {
        // The bundled runtime's image only: another image's entrypoint
        // knows no such command.
        if start.server_configuration.docker().image.is_some() {
            return Err("the instance runs another image than the bundled runtime's".into());
        }
        let image = self.settings.default_image.clone();
        self.ensure_image(&image).await.map_err(|e| e.message)?;
        let mut env: Vec<String> = start
            .server_configuration
            .environment
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        env.push(format!(
            "{}={}",
            container::CONFIG_VARIABLE,
            start.configuration_yaml
        ));
        let body = bollard::models::ContainerCreateBody {
            image: Some(image),
            cmd: Some(vec![
                "release-replication-slots".into(),
                "--config-env".into(),
                container::CONFIG_VARIABLE.into(),
            ]),
            env: Some(env),
            // The instance's labels: a sweep finds it if the worker dies
            // meanwhile.
            labels: Some(container::labels(id, None, &self.installation)),
            ..Default::default()
        };
        let docker = self.docker();
        let created = docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .map_err(|e| format!("cannot create the container: {e}"))?
            .id;
        let ran = async {
            docker
                .start_container(&created, None::<StartContainerOptions>)
                .await
                .map_err(|e| format!("cannot start the container: {e}"))?;
            let waited: Vec<bollard::models::ContainerWaitResponse> = tokio::time::timeout(
                Duration::from_secs(60),
                docker
                    .wait_container(
                        &created,
                        None::<bollard::query_parameters::WaitContainerOptions>,
                    )
                    .try_collect(),
            )
            .await
            .map_err(|_| "it did not finish within 60 s".to_string())?
            .unwrap_or_default();
            let code = waited.last().map(|w| w.status_code).unwrap_or(-1);
            let stdout = self
                .log_lines(&created, LogStream::Stdout, 50)
                .await
                .unwrap_or_default();
            if code != 0 {
                let stderr = self
                    .log_lines(&created, LogStream::Stderr, 20)
                    .await
                    .unwrap_or_default();
                return Err(stderr.join("\n"));
            }
            Ok(stdout
                .iter()
                .filter_map(|l| l.strip_prefix("released: "))
                .flat_map(|l| l.split(", "))
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect())
        }
        .await;
        let _ = remove_container(docker, &created).await;
        ran
    }

    fn handle_of(&self, record: &ContainerRecord) -> PlatformHandle {
        PlatformHandle::Container {
            container_id: record.container_id.clone(),
        }
    }

    async fn labelled_instances(&self) -> Vec<InstanceId> {
        let filters = container::label_filter(&self.installation, None);
        let mut found = BTreeSet::new();
        let instance_of = |labels: Option<HashMap<String, String>>| {
            labels
                .and_then(|l| l.get(INSTANCE).cloned())
                .and_then(|id| id.parse::<InstanceId>().ok())
        };
        match self
            .docker()
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
        {
            Ok(containers) => {
                found.extend(containers.into_iter().filter_map(|c| instance_of(c.labels)))
            }
            Err(e) => warn!("cannot list containers: {e}"),
        }
        match self
            .docker()
            .list_volumes(Some(
                ListVolumesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
        {
            Ok(listed) => found.extend(
                listed
                    .volumes
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|v| instance_of(Some(v.labels))),
            ),
            Err(e) => warn!("cannot list volumes: {e}"),
        }
        found.into_iter().collect()
    }
}
