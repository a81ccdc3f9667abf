//! # draas-worker-docker
//!
//! The Docker platform: each instance is a container of one Docker engine
//! (the one `DOCKER_HOST` names; the local socket by default), driven
//! through the Engine API (never the `docker` CLI). Readiness, the registry
//! of running servers, crash reports and takeover are the generic driver's
//! (`draas_worker::driver`); this crate holds only what is about Docker:
//!
//! - [`engine`]: reaching the engine, its id (the scope: workers of one
//!   engine can take over each other's containers) and version;
//! - [`container`]: what an instance's container looks like (labels,
//!   published ports, the data volume, SIGINT, no restart policy): pure;
//! - [`events`]: exits from the Engine's event stream, never polled;
//! - [`image`]: images present or missing, and building the runtime image
//!   from the static binary (nothing is pulled);
//! - [`platform`]: the `Platform` implementation;
//! - [`tail`]: the last words of running containers, kept as they come;
//! - [`warm`]: each running instance's next container, started ahead of
//!   need, so a restart skips the engine's create and start;
//! - [`daemon`]: `draas docker-daemon`, which reports an engine's DRaaS
//!   containers to a control plane that no worker of that engine serves.

pub mod container;
pub mod daemon;
pub mod engine;
pub mod events;
pub mod image;
pub mod platform;
pub mod tail;
pub mod warm;

use std::path::PathBuf;

use draas_worker::driver::ManagedDriver;
use draas_worker::WorkerContext;

pub use engine::{Engine, EngineError};
pub use platform::{ContainerRecord, DockerPlatform};

/// The Docker driver: the generic driver over the Docker platform.
pub type DockerDriver = ManagedDriver<DockerPlatform>;

/// The image instances run when they name none.
pub const DEFAULT_IMAGE: &str = "draas-runtime:latest";

/// Settings of the Docker platform.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// The image of instances that name none.
    pub default_image: String,
    /// The bundled runtime binary, to build the default image when the
    /// engine does not have it (`None`: never build).
    pub runtime_binary: Option<PathBuf>,
    /// The host address published ports bind to (`127.0.0.1`: reachable
    /// from this machine only; `0.0.0.0`: from everywhere).
    pub publish_address: String,
    /// The host put in endpoints (default: the engine's host as this worker
    /// reaches it).
    pub advertise_host: Option<String>,
    /// Give the bundled runtime its configuration in the environment (no
    /// upload); other images always get a file.
    pub config_in_env: bool,
    /// Keep each running instance's next container started ahead of need
    /// (the default image only; see [`warm`]).
    pub warm_containers: bool,
}

impl Default for DockerSettings {
    fn default() -> Self {
        Self {
            default_image: DEFAULT_IMAGE.to_string(),
            runtime_binary: None,
            publish_address: "127.0.0.1".to_string(),
            advertise_host: None,
            config_in_env: true,
            warm_containers: true,
        }
    }
}

/// A Docker driver for the worker of `context`, on `engine`.
pub async fn driver(
    engine: Engine,
    settings: DockerSettings,
    context: &WorkerContext,
) -> Result<DockerDriver, draas_core::ports::StoreError> {
    let installation = draas_core::installation::id(context.store.as_ref()).await?;
    Ok(ManagedDriver::new(
        DockerPlatform::new(engine, settings, installation, Some(context.sink())),
        context,
    ))
}
