//! What a DRaaS instance is: one managed Drasi server.
//!
//! An instance has a *desired* side (what the user asked for: run or not,
//! with which configuration) and an *actual* side (what its platform worker
//! last reported). The control plane owns the desired side; workers own the
//! actual side. Both live in one [`Instance`] record, written with a
//! revision check so neither overwrites the other.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::DrasiServerConfig;

// === ids and names ===

/// An instance id: server-generated, URL-safe (`[a-z0-9-]`, at most 64).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(String);

impl InstanceId {
    /// A new, time-ordered id (`i-` + UUIDv7 hex).
    pub fn generate() -> Self {
        Self(format!("i-{}", uuid::Uuid::now_v7().simple()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` has the form of a generated id (`i-` and 32 hex
    /// digits). Names never have it, so such a text is always an id.
    pub fn is_generated_form(text: &str) -> bool {
        text.strip_prefix("i-").is_some_and(|hex| {
            hex.len() == 32
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    }
}

/// Why a string is not a valid id or name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(pub String);

impl FromStr for InstanceId {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(InvalidName(format!(
                "invalid instance id '{}': ids are 1-64 characters of a-z, 0-9 and '-'",
                s.escape_debug()
            )))
        }
    }
}

impl TryFrom<String> for InstanceId {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<InstanceId> for String {
    fn from(id: InstanceId) -> String {
        id.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks an instance name: unique per DRaaS, DNS-label-like (it becomes a
/// container or Deployment name): 1-63 of `a-z 0-9 -`, starting and ending
/// alphanumeric, and not shaped like a generated id (names and ids are both
/// accepted wherever an instance is addressed).
pub fn validate_name(name: &str) -> Result<(), InvalidName> {
    if InstanceId::is_generated_form(name) {
        return Err(InvalidName(format!(
            "invalid name '{name}': it has the form of an instance id (i- and 32 hex digits)"
        )));
    }
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(InvalidName(format!(
            "invalid name '{}': names are 1-63 characters of a-z, 0-9 and '-', \
             starting and ending with a letter or digit",
            name.escape_debug()
        )))
    }
}

// === platform ===

/// Where an instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum PlatformType {
    /// An OS process on the worker's host.
    Process,
    /// A Docker container.
    Docker,
    /// A Deployment + Service + ConfigMap (the original design's "AKS").
    #[serde(alias = "AKS")]
    Kubernetes,
}

impl PlatformType {
    /// Every platform.
    pub const ALL: [PlatformType; 3] = [Self::Process, Self::Docker, Self::Kubernetes];

    /// The private command channel of one worker of this platform.
    /// Commands about an instance whose owning worker is alive go there:
    /// only that worker can reach the server (its process, its files).
    pub fn worker_channel(self, worker_id: &str) -> String {
        format!(
            "{}{}{worker_id}",
            self.command_channel(),
            crate::messages::WORKER_CHANNEL_INFIX
        )
    }

    /// The command channel of this platform (original names), shared by its
    /// workers as competing consumers.
    pub fn command_channel(self) -> &'static str {
        match self {
            Self::Process => "instance.commands.process",
            Self::Docker => "instance.commands.docker",
            Self::Kubernetes => "instance.commands.aks",
        }
    }
}

impl FromStr for PlatformType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "process" => Ok(Self::Process),
            "docker" => Ok(Self::Docker),
            "kubernetes" | "aks" | "k8s" => Ok(Self::Kubernetes),
            _ => Err(format!(
                "unknown platform '{s}': expected Process, Docker or Kubernetes"
            )),
        }
    }
}

impl fmt::Display for PlatformType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Process => "Process",
            Self::Docker => "Docker",
            Self::Kubernetes => "Kubernetes",
        })
    }
}

// === states ===

/// What the user wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum DesiredState {
    /// Keep it running.
    Running,
    /// Keep it stopped.
    Stopped,
}

/// What the worker last observed (one vocabulary for every platform).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ActualState {
    /// Recorded, never started.
    Created,
    /// Accepted by a worker, not yet launched.
    Pending,
    /// Launched, waiting for readiness.
    Starting,
    /// Up, every component running.
    Running,
    /// Up, but a Drasi component is in `Error`.
    Degraded,
    /// Being stopped.
    Stopping,
    /// Stopped on request.
    Stopped,
    /// Exited or could not start.
    Failed,
    /// Its worker is gone; nobody knows.
    Unknown,
    /// Being deleted.
    Deleting,
}

impl ActualState {
    /// Whether a server process/container may be up in this state.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Pending | Self::Starting | Self::Running | Self::Degraded | Self::Stopping
        )
    }
}

/// Machine-readable reason for the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Reason {
    /// The user asked for it.
    Requested,
    /// Readiness was reached.
    Ready,
    /// The server runs, and its continuous queries still load their
    /// sources' current state (the message says which, how far).
    Bootstrapping,
    /// The server exited on its own with an exit code.
    ExitedWithCode,
    /// The server was killed by a signal it did not ask for.
    KilledBySignal,
    /// The server was killed for running out of memory (Kubernetes's and
    /// Docker's own word for it).
    #[serde(rename = "OOMKilled", alias = "OomKilled")]
    OomKilled,
    /// Readiness was not reached within the start timeout.
    StartTimeout,
    /// A port the server needs is taken.
    PortInUse,
    /// The server rejected its configuration at startup.
    ConfigRejected,
    /// The configured executable is missing or not allowed.
    ExecutableMissing,
    /// The container image is missing.
    ImageMissing,
    /// Kubernetes restarts the server's container after crashes, waiting
    /// longer each time.
    CrashLoopBackOff,
    /// Kubernetes cannot pull the server's image (it keeps trying).
    ImagePullBackOff,
    /// The image is not on the node and the pull policy forbids pulling it.
    ErrImageNeverPull,
    /// No node can run the server (resources, node selector).
    Unschedulable,
    /// A Drasi component reported `Error`.
    ComponentError,
    /// The platform's health check of the server fails (a container's
    /// `HEALTHCHECK`).
    Unhealthy,
    /// The worker that owns the instance stopped heartbeating.
    WorkerUnavailable,
    /// The server was found gone when its worker came back.
    LostWhileWorkerDown,
    /// The platform refused or failed an operation.
    PlatformError,
    /// Reported by an external daemon.
    External,
    /// A reason this version does not know (sent by a newer peer).
    #[serde(other)]
    Other,
}

/// The actual side of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// The state.
    pub state: ActualState,
    /// Why, machine-readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Why, for humans (e.g. the server's last stderr lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The configuration generation the server runs with.
    pub observed_generation: u64,
    /// How many times the instance was restarted after failing.
    pub restart_count: u32,
    /// When the next automatic restart is due (reconciler backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The failure the last automatic restart answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<crate::restart::LastFailure>,
    /// When this status was observed.
    pub updated_at: DateTime<Utc>,
}

impl InstanceStatus {
    /// The status of a new instance.
    pub fn created(now: DateTime<Utc>) -> Self {
        Self {
            state: ActualState::Created,
            reason: None,
            message: None,
            observed_generation: 0,
            restart_count: 0,
            next_retry_at: None,
            last_failure: None,
            updated_at: now,
        }
    }
}

/// How a platform identifies a running server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum PlatformHandle {
    /// An OS process. The start time (clock ticks since boot, from
    /// `/proc/<pid>/stat`) tells a reused pid apart.
    #[serde(rename_all = "camelCase")]
    Process {
        /// Process id.
        pid: u32,
        /// Process start time in clock ticks since boot.
        start_time: u64,
    },
    /// A container.
    #[serde(rename_all = "camelCase")]
    Container {
        /// Container id.
        container_id: String,
    },
    /// A Kubernetes Deployment.
    #[serde(rename_all = "camelCase")]
    Deployment {
        /// Namespace.
        namespace: String,
        /// Deployment name.
        name: String,
        /// The Deployment's `metadata.generation` when this server was
        /// launched: every launch (a new configuration, a start after a
        /// stop) changes it, as a new pid or container id would.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revision: Option<i64>,
    },
}

impl fmt::Display for PlatformHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Process { pid, .. } => write!(f, "pid {pid}"),
            Self::Container { container_id } => {
                write!(
                    f,
                    "container {}",
                    &container_id[..container_id.len().min(12)]
                )
            }
            Self::Deployment {
                namespace,
                name,
                revision,
            } => {
                write!(f, "deployment {namespace}/{name}")?;
                match revision {
                    Some(revision) => write!(f, " (generation {revision})"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Where and how the server runs right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RuntimeInfo {
    /// The worker that runs it.
    pub worker_id: String,
    /// Which workers can reach the server besides its own: those of the
    /// same scope (Process: the host; Docker: the engine; Kubernetes: the
    /// cluster). See [`PlatformPolicy`](crate::policy::PlatformPolicy).
    #[serde(default)]
    pub scope: String,
    /// The platform's handle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<PlatformHandle>,
    /// Host the server's API is reachable on.
    pub host: String,
    /// The server's API port.
    pub port: u16,
    /// Base URL of the server's API.
    pub endpoint: String,
    /// When the current server started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Exit code of the previous server, if it exited with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i32>,
}

// === configuration ===

/// How the platform runs the server (not what the server does: that is
/// [`DrasiServerConfig`]). The settings every platform shares sit at the
/// top; each platform's own options sit in its section, and only the
/// section of the instance's platform may be set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServerConfiguration {
    /// Environment variables of the server (plugin fields may reference
    /// them as `${NAME}`). The worker's own environment is not inherited.
    /// They hold secrets: no response ever shows their values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Grace period between the stop signal (SIGINT) and SIGKILL.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_seconds: u32,
    /// How long the server may take to become ready.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_seconds: u32,
    /// Process platform options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessOptions>,
    /// Docker platform options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerOptions>,
    /// Kubernetes platform options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesOptions>,
}

/// How a Process worker runs the server.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ProcessOptions {
    /// The executable to run. Unset means the bundled runtime; another path
    /// (e.g. the official `drasi-server`) must be on the worker's allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable_path: Option<String>,
    /// Extra command-line arguments after `--config <file>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arguments: Vec<String>,
}

/// How a Docker worker runs the server.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct DockerOptions {
    /// The image (default: the bundled runtime image). Never pulled: it
    /// must exist on the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// How a Kubernetes worker runs the server.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct KubernetesOptions {
    /// The image (default: the bundled runtime image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The namespace (default: the worker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// CPU and memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Labels a node must carry to run the server.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// When the node pulls the image (default: the worker's setting,
    /// `IfNotPresent` unless configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Where the server's `./data` (its write-ahead logs, persistent indexes,
    /// state stores) lives: a PersistentVolumeClaim of this size, kept when
    /// its pod goes and when the instance stops, deleted with the instance;
    /// an `emptyDir` (lost with the pod) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume: Option<PersistentVolume>,
}

/// A PersistentVolumeClaim for a Kubernetes server's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolume {
    /// Its size, a Kubernetes quantity (`1Gi`).
    pub size: String,
    /// Its storage class (the cluster's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// When a Kubernetes node pulls a server's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ImagePullPolicy {
    /// On every start.
    Always,
    /// Only when the node does not have it.
    IfNotPresent,
    /// Never: the image must be on the node.
    Never,
}

impl ImagePullPolicy {
    /// Kubernetes's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Kubernetes resource requests and limits.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// What the scheduler reserves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceAmounts>,
    /// What the server may use at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
}

/// CPU and memory, as Kubernetes quantities (`500m`, `1`, `256Mi`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ResourceAmounts {
    /// CPU (`250m`, `1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory (`128Mi`, `1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// Default grace period before SIGKILL.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u32 = 10;
/// Default readiness deadline.
pub const DEFAULT_START_TIMEOUT_SECONDS: u32 = 20;

fn default_shutdown_timeout() -> u32 {
    DEFAULT_SHUTDOWN_TIMEOUT_SECONDS
}
fn default_start_timeout() -> u32 {
    DEFAULT_START_TIMEOUT_SECONDS
}

impl ServerConfiguration {
    /// The defaults for an instance of `platform`: its own section present
    /// (so a JSON Patch can `add /process/arguments` at once), no other.
    pub fn for_platform(platform: PlatformType) -> Self {
        Self {
            shutdown_timeout_seconds: DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
            start_timeout_seconds: DEFAULT_START_TIMEOUT_SECONDS,
            ..Self::default()
        }
        .with_section_of(platform)
    }

    /// The same, with `platform`'s section present.
    pub fn with_section_of(mut self, platform: PlatformType) -> Self {
        match platform {
            PlatformType::Process => {
                self.process.get_or_insert_with(ProcessOptions::default);
            }
            PlatformType::Docker => {
                self.docker.get_or_insert_with(DockerOptions::default);
            }
            PlatformType::Kubernetes => {
                self.kubernetes
                    .get_or_insert_with(KubernetesOptions::default);
            }
        }
        self
    }

    /// Whether the server is DRaaS's bundled runtime (no other executable
    /// or image named for `platform`): then its plugins are known.
    pub fn runs_bundled_runtime(&self, platform: PlatformType) -> bool {
        match platform {
            PlatformType::Process => self.process().executable_path.is_none(),
            PlatformType::Docker => self.docker().image.is_none(),
            PlatformType::Kubernetes => self.kubernetes().image.is_none(),
        }
    }

    /// The Process options (defaults when the section is absent).
    pub fn process(&self) -> ProcessOptions {
        self.process.clone().unwrap_or_default()
    }

    /// The Docker options (defaults when the section is absent).
    pub fn docker(&self) -> DockerOptions {
        self.docker.clone().unwrap_or_default()
    }

    /// The Kubernetes options (defaults when the section is absent).
    pub fn kubernetes(&self) -> KubernetesOptions {
        self.kubernetes.clone().unwrap_or_default()
    }

    /// Problems with the values for an instance of `platform`, as (JSON
    /// Pointer, message).
    pub fn issues(&self, platform: PlatformType) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        let mut issue =
            |path: &str, message: &str| issues.push((path.to_string(), message.to_string()));
        let (max_shutdown, max_start) = (
            crate::limits::MAX_SHUTDOWN_TIMEOUT_SECONDS,
            crate::limits::MAX_START_TIMEOUT_SECONDS,
        );
        if self.shutdown_timeout_seconds == 0 || self.shutdown_timeout_seconds > max_shutdown {
            issue(
                "/shutdownTimeoutSeconds",
                &format!("must be between 1 and {max_shutdown}"),
            );
        }
        if self.start_timeout_seconds == 0 || self.start_timeout_seconds > max_start {
            issue(
                "/startTimeoutSeconds",
                &format!("must be between 1 and {max_start}"),
            );
        }
        for name in self.environment.keys() {
            let valid = !name.is_empty()
                && name.len() <= 256
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                issue(
                    &format!("/environment/{}", escape_pointer(name)),
                    "environment variable names are letters, digits and '_', not starting with a digit",
                );
            } else if name.starts_with("DRAAS_") {
                issue(
                    &format!("/environment/{}", escape_pointer(name)),
                    "names starting with DRAAS_ are reserved for DRaaS",
                );
            }
        }
        for (section, present, owner) in [
            ("process", self.process.is_some(), PlatformType::Process),
            ("docker", self.docker.is_some(), PlatformType::Docker),
            (
                "kubernetes",
                self.kubernetes.is_some(),
                PlatformType::Kubernetes,
            ),
        ] {
            if present && owner != platform {
                issue(
                    &format!("/{section}"),
                    &format!("options of the {owner} platform; this instance runs on {platform}"),
                );
            }
        }
        if let Some(process) = &self.process {
            if let Some(path) = &process.executable_path {
                if !path.starts_with('/')
                    || path.split('/').any(|s| s == "..")
                    || path.contains('\0')
                {
                    issue(
                        "/process/executablePath",
                        "must be an absolute path without '..'",
                    );
                }
            }
            if process.arguments.len() > 64 {
                issue("/process/arguments", "at most 64 arguments");
            }
            for (i, argument) in process.arguments.iter().enumerate() {
                if argument.len() > 4096 || argument.contains('\0') {
                    issue(
                        &format!("/process/arguments/{i}"),
                        "at most 4096 bytes, no NUL",
                    );
                }
            }
        }
        if let Some(docker) = &self.docker {
            if let Some(image) = &docker.image {
                if let Err(e) = validate_image(image) {
                    issue("/docker/image", &e);
                }
            }
        }
        if let Some(kubernetes) = &self.kubernetes {
            if let Some(image) = &kubernetes.image {
                if let Err(e) = validate_image(image) {
                    issue("/kubernetes/image", &e);
                }
            }
            if let Some(namespace) = &kubernetes.namespace {
                if validate_name(namespace).is_err() {
                    issue("/kubernetes/namespace", "a namespace is 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit");
                }
            }
            if let Some(resources) = &kubernetes.resources {
                for (kind, amounts) in [
                    ("requests", &resources.requests),
                    ("limits", &resources.limits),
                ] {
                    let Some(amounts) = amounts else { continue };
                    for (what, value) in [("cpu", &amounts.cpu), ("memory", &amounts.memory)] {
                        if let Some(value) = value {
                            if !is_quantity(value) {
                                issue(
                                    &format!("/kubernetes/resources/{kind}/{what}"),
                                    "not a Kubernetes quantity (like 500m, 2, 256Mi, 1Gi)",
                                );
                            }
                        }
                    }
                }
            }
            if let Some(volume) = &kubernetes.persistent_volume {
                if !is_quantity(&volume.size) || volume.size == "0" {
                    issue(
                        "/kubernetes/persistentVolume/size",
                        "not a Kubernetes quantity of storage (like 1Gi, 500Mi)",
                    );
                }
                if let Some(class) = &volume.storage_class_name {
                    if class.is_empty()
                        || class.len() > 253
                        || !class.split('.').all(|part| validate_name(part).is_ok())
                    {
                        issue(
                            "/kubernetes/persistentVolume/storageClassName",
                            "a storage class name is a DNS subdomain (lowercase letters, digits, '-' and '.')",
                        );
                    }
                }
            }
            for (key, value) in &kubernetes.node_selector {
                if !is_label_key(key) {
                    issue(
                        &format!("/kubernetes/nodeSelector/{}", escape_pointer(key)),
                        "not a Kubernetes label key ([prefix/]name, name 1-63 of letters, digits, '-', '_', '.')",
                    );
                } else if !value.is_empty() && !is_label_name(value) {
                    issue(
                        &format!("/kubernetes/nodeSelector/{}", escape_pointer(key)),
                        "not a Kubernetes label value (0-63 of letters, digits, '-', '_', '.', starting and ending alphanumeric)",
                    );
                }
            }
        }
        issues
    }
}

/// `~` and `/` escaped for a JSON Pointer segment.
fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Checks a container image reference: `[registry/]name[:tag][@digest]`
/// in the characters references use; never an option (`-x`) or a path.
pub fn validate_image(image: &str) -> Result<(), String> {
    let ok = !image.is_empty()
        && image.len() <= 255
        && !image.starts_with(['-', '/', '.', ':', '@'])
        && !image.contains("..")
        && image.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@')
        });
    if ok {
        Ok(())
    } else {
        Err("not an image reference (like draas-runtime:latest or registry.example/drasi/server:1.0)".into())
    }
}

/// A Kubernetes quantity: a decimal number with an optional suffix.
fn is_quantity(text: &str) -> bool {
    const SUFFIXES: [&str; 14] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P",
    ];
    let number = SUFFIXES
        .iter()
        .find_map(|s| text.strip_suffix(s))
        .unwrap_or(text);
    let mut parts = number.splitn(2, '.');
    let whole = parts.next().unwrap_or_default();
    let fraction = parts.next();
    !number.is_empty()
        && text.len() <= 32
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
        && (!whole.is_empty() || fraction.is_some())
}

/// A label name or value: 1-63 of letters, digits, `-_.`, alphanumeric at
/// both ends.
fn is_label_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain.
fn is_label_key(text: &str) -> bool {
    match text.rsplit_once('/') {
        None => is_label_name(text),
        Some((prefix, name)) => {
            is_label_name(name)
                && !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|part| validate_name(part).is_ok())
        }
    }
}

// === the record ===

/// One managed Drasi server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Server-generated id.
    pub id: InstanceId,
    /// Unique, DNS-label-like name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Where it runs.
    pub platform_type: PlatformType,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its desired side last changed.
    pub updated_at: DateTime<Utc>,
    /// Run or not.
    pub desired_state: DesiredState,
    /// Increases on every change of `configuration` or `server_configuration`.
    pub generation: u64,
    /// How the platform runs it.
    pub server_configuration: ServerConfiguration,
    /// What it does: a drasi-server configuration file, whole (what the
    /// user gave, with DRaaS's decisions filled in: the API's host and port,
    /// ports it allocated, replication slot names).
    pub configuration: DrasiServerConfig,
    /// When the reconciler restarts it (not part of `generation`).
    #[serde(default)]
    pub restart_policy: crate::restart::RestartPolicy,
    /// How a configuration change reaches it while it runs.
    #[serde(default)]
    pub update_strategy: crate::restart::UpdateStrategy,
    /// What its worker last reported.
    pub status: InstanceStatus,
    /// Where it runs, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeInfo>,
    /// When its deletion was asked for: a tombstone. From then on nothing
    /// starts it (its desired state is `Stopped`, and starts are refused),
    /// and what is left of it is removed: by the delete itself, or by the
    /// reconciler when the delete could not finish (no live worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

impl Instance {
    /// Whether a server (or a platform object that restarts one: a
    /// crash-looping Deployment) may exist that a stop must reach: a
    /// command may be running it, it was last seen up, its worker is gone
    /// (`Unknown`), or it failed with its platform handle still held.
    pub fn may_run(&self) -> bool {
        match self.status.state {
            ActualState::Pending
            | ActualState::Starting
            | ActualState::Running
            | ActualState::Degraded
            | ActualState::Stopping
            | ActualState::Unknown => true,
            ActualState::Failed => self
                .runtime
                .as_ref()
                .is_some_and(|runtime| runtime.handle.is_some()),
            ActualState::Created | ActualState::Stopped | ActualState::Deleting => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = InstanceId::generate();
        let b = InstanceId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().parse::<InstanceId>().unwrap(), a);
        assert!(a.as_str().len() <= 64);
    }

    #[test]
    fn path_like_ids_and_names_are_refused() {
        for bad in ["../etc", "a/b", "", "A", "x y", "-x", &"a".repeat(65)] {
            assert!(bad.parse::<InstanceId>().is_err(), "{bad:?}");
        }
        for bad in [
            "../etc",
            "a/b",
            "",
            "Name",
            "x_y",
            "-x",
            "x-",
            &"a".repeat(64),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name("orders-eu-1").is_ok());
        let id = InstanceId::generate();
        assert!(InstanceId::is_generated_form(id.as_str()));
        assert!(
            validate_name(id.as_str()).is_err(),
            "a name never looks like an id"
        );
        assert!(!InstanceId::is_generated_form("i-orders"));
    }

    #[test]
    fn aks_is_an_alias_of_kubernetes() {
        let p: PlatformType = serde_json::from_str("\"AKS\"").unwrap();
        assert_eq!(p, PlatformType::Kubernetes);
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"Kubernetes\"");
        assert_eq!(
            "aks".parse::<PlatformType>().unwrap(),
            PlatformType::Kubernetes
        );
        assert_eq!(
            PlatformType::Kubernetes.command_channel(),
            "instance.commands.aks"
        );
    }

    #[test]
    fn unknown_reasons_from_newer_peers_still_parse() {
        let r: Reason = serde_json::from_str("\"SomethingNew\"").unwrap();
        assert_eq!(r, Reason::Other);
    }

    #[test]
    fn out_of_memory_is_named_as_kubernetes_and_docker_name_it() {
        assert_eq!(
            serde_json::to_string(&Reason::OomKilled).unwrap(),
            "\"OOMKilled\""
        );
        // Statuses stored by earlier versions still read.
        let old: Reason = serde_json::from_str("\"OomKilled\"").unwrap();
        assert_eq!(old, Reason::OomKilled);
        let crash: Reason = serde_json::from_str("\"CrashLoopBackOff\"").unwrap();
        assert_eq!(crash, Reason::CrashLoopBackOff);
    }

    #[test]
    fn server_configuration_rejects_unknown_fields_and_bad_values() {
        // From a user (the API's edge): unknown keys are named.
        let strict = |text: &str| {
            crate::strict::from_value::<ServerConfiguration>(serde_json::from_str(text).unwrap())
        };
        let err = strict(r#"{"process": {"executablePth": "/x"}}"#).unwrap_err();
        assert_eq!(err.path, "/process/executablePth");
        let legacy = strict(r#"{"executablePath": "/x"}"#).unwrap_err();
        assert_eq!(legacy.path, "/executablePath");
        let sc: ServerConfiguration = serde_json::from_str(
            r#"{"process": {"executablePath": "../bin/sh"}, "shutdownTimeoutSeconds": 0,
                "environment": {"A B": "1"}, "docker": {"image": "-x"}}"#,
        )
        .unwrap();
        let paths: Vec<String> = sc
            .issues(PlatformType::Process)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(
            paths,
            vec![
                "/shutdownTimeoutSeconds",
                "/environment/A B",
                "/docker",
                "/process/executablePath",
                "/docker/image",
            ]
        );
    }

    #[test]
    fn each_platform_validates_its_own_options() {
        let defaults = ServerConfiguration::for_platform(PlatformType::Kubernetes);
        assert!(defaults.kubernetes.is_some() && defaults.process.is_none());
        assert!(defaults.issues(PlatformType::Kubernetes).is_empty());
        assert_eq!(
            defaults.issues(PlatformType::Process)[0].0,
            "/kubernetes",
            "a section of another platform is refused"
        );
        let k8s: ServerConfiguration = serde_json::from_str(
            r#"{"kubernetes": {"image": "drasi/server:1.2", "namespace": "Team_A",
                "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "x", "memory": "1.5Gi"}},
                "nodeSelector": {"kubernetes.io/os": "linux", "bad key!": "v", "zone": "-eu"}}}"#,
        )
        .unwrap();
        let paths: Vec<String> = k8s
            .issues(PlatformType::Kubernetes)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(
            paths,
            vec![
                "/kubernetes/namespace",
                "/kubernetes/resources/limits/cpu",
                "/kubernetes/nodeSelector/bad key!",
                "/kubernetes/nodeSelector/zone",
            ]
        );
        for good in [
            "draas-runtime:latest",
            "registry.example:5000/drasi/server@sha256:abc",
        ] {
            assert!(validate_image(good).is_ok(), "{good}");
        }
        for bad in ["", "-rm", "/etc/passwd", "a b", "x;rm", "../up"] {
            assert!(validate_image(bad).is_err(), "{bad:?}");
        }
        for good in ["1", "0.5", "250m", "1Gi", "128Mi"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "m", "1.", "one", "1Xi", "-1"] {
            assert!(!is_quantity(bad), "{bad:?}");
        }
    }

    #[test]
    fn rendered_config_carries_the_instance_id_and_no_persistence() {
        let id: InstanceId = "i-1".parse().unwrap();
        let config = DrasiServerConfig::empty("127.0.0.1", 20001).for_server(id.as_str());
        assert_eq!(
            config.id,
            Some(crate::config::ConfigValue::Static("i-1".to_string()))
        );
        assert_eq!(config.persist_config, Some(false));
        let yaml = crate::config::render_yaml(&config).unwrap();
        assert!(yaml.contains("persistConfig: false"), "{yaml}");
    }
}
