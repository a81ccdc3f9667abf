//! The command line: one typed configuration per mode. Every option also
//! reads a `DRAAS_*` environment variable; flags win over the environment.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// DRaaS: run and watch many Drasi servers.
#[derive(Parser)]
#[command(name = "draas", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub mode: Mode,
    /// How log lines look: `text` for people, `json` (one object a line,
    /// with the spans' fields such as `trace_id`) for log pipelines.
    #[arg(
        long = "log-format",
        env = "DRAAS_LOG_FORMAT",
        global = true,
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// The shape of log lines.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// How to run.
#[derive(Subcommand)]
pub enum Mode {
    /// Everything in one process: REST API, Process worker, in-process bus,
    /// embedded store (one file in the data directory).
    Up(UpArgs),
    /// The control plane alone (distributed mode): REST API over a shared
    /// Redis; run several for availability.
    Serve(ServeArgs),
    /// A platform worker alone (distributed mode), joined to the control
    /// plane through Redis.
    Worker(WorkerArgs),
    /// The reconciler alone (distributed mode): restarts failed instances,
    /// applies configuration changes and hands instances of dead workers
    /// to live ones, through a control plane's REST API and event stream.
    /// Run several: only the holder of the control plane's lease acts.
    Reconcile(ReconcileArgs),
    /// Watches a Docker engine's DRaaS containers and reports their state to
    /// a control plane (`POST /api/status/updates`): for an engine that no
    /// Docker worker serves.
    DockerDaemon(DockerDaemonArgs),
    /// API keys: create, list and revoke the bearer tokens the REST API
    /// takes (in the data directory for `draas up`, in Redis for `draas
    /// serve`).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Instances on a control plane: create, list, get, start, stop,
    /// restart, delete, logs, wait (a client of the REST API).
    Instance {
        #[command(subcommand)]
        command: crate::cli::InstanceCommand,
        #[command(flatten)]
        target: crate::cli::Target,
    },
    /// An instance's drasi-server configuration: get, patch, apply, edit.
    Config {
        #[command(subcommand)]
        command: crate::cli::ConfigCommand,
        #[command(flatten)]
        target: crate::cli::Target,
    },
    /// Status changes of every instance (`changes [--follow]`).
    Status {
        #[command(subcommand)]
        command: crate::cli::StatusCommand,
        #[command(flatten)]
        target: crate::cli::Target,
    },
    /// The control plane's events, one JSON object a line.
    Events {
        /// Keep printing them as they happen.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        target: crate::cli::Target,
    },
    /// Results of continuous queries (`results NAME QUERY [--watch]`).
    Query {
        #[command(subcommand)]
        command: crate::cli::QueryCommand,
        #[command(flatten)]
        target: crate::cli::Target,
    },
    /// The platforms a control plane serves and their live workers.
    Platforms {
        #[command(flatten)]
        target: crate::cli::Target,
    },
    /// Saved control planes (server URL and API key), like kubectl's
    /// contexts.
    Context {
        #[command(subcommand)]
        command: crate::cli::ContextCommand,
    },
    /// Prints a shell completion script: bash, zsh, fish, elvish or
    /// powershell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Container images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

/// `draas image ...`.
#[derive(Subcommand)]
pub enum ImageCommand {
    /// Builds the bundled runtime's image on the Docker engine, from the
    /// static `draas-runtime` binary (nothing is pulled).
    Build(ImageBuildArgs),
}

/// `draas keys ...`.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Makes a key and prints it, once, on the last line of the output
    /// (only a hash is kept).
    Create(KeysCreateArgs),
    /// Lists the keys (never their secrets).
    List(KeyRingArgs),
    /// Revokes a key by id or name: it stops working at once.
    Revoke(KeysRevokeArgs),
}

/// Where keys are kept.
#[derive(Args, Clone)]
pub struct KeyRingArgs {
    /// The keys of a distributed installation, in this Redis (as `draas
    /// serve --redis`) [default: the data directory's key file].
    #[arg(long = "redis", env = "DRAAS_REDIS_URL", hide_env_values = true)]
    pub redis: Option<String>,
    /// PEM file of the CA that signed the Redis server's certificate.
    #[arg(long = "redis-ca", env = "DRAAS_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// Prefix of the installation's Redis keys.
    #[arg(
        long = "redis-prefix",
        env = "DRAAS_REDIS_PREFIX",
        default_value = "draas"
    )]
    pub redis_prefix: String,
    #[command(flatten)]
    pub data: DataArgs,
}

impl KeyRingArgs {
    /// The Redis settings, when keys are kept in Redis.
    pub fn redis(&self) -> Option<RedisArgs> {
        self.redis.clone().map(|url| RedisArgs {
            url,
            ca: self.redis_ca.clone(),
            prefix: self.redis_prefix.clone(),
        })
    }
}

/// `draas keys create`.
#[derive(Args, Clone)]
pub struct KeysCreateArgs {
    /// What the key may do: admin (everything), operator (lifecycle and
    /// configuration), viewer (read), agent (status push only).
    #[arg(long)]
    pub role: draas_core::auth::Role,
    /// Its name in listings and the audit log [default: <role>-<id>].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub ring: KeyRingArgs,
}

/// `draas keys revoke`.
#[derive(Args, Clone)]
pub struct KeysRevokeArgs {
    /// The key's id or name.
    pub key: String,
    #[command(flatten)]
    pub ring: KeyRingArgs,
}

/// How a client of the control plane's API identifies itself and checks
/// the control plane's certificate.
#[derive(Args, Clone, Default)]
pub struct TokenArgs {
    /// The API key to send (`draas keys create`); needed when the control
    /// plane requires keys.
    #[arg(long, env = "DRAAS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For an https:// control plane: a PEM file of the CA (or the
    /// self-signed certificate) to trust besides the system's roots.
    #[arg(long, env = "DRAAS_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
}

impl TokenArgs {
    /// The certificates a client of `url` trusts: none for plain HTTP; the
    /// system's roots plus `--ca-cert` for HTTPS.
    pub fn trusted(&self, url: &str) -> anyhow::Result<Vec<reqwest::Certificate>> {
        trusted_roots(url, self.ca_cert.as_deref())
    }
}

/// The certificates a client of `url` trusts: none for plain HTTP (nothing
/// is loaded); for HTTPS the system's roots and, when given, the PEM file
/// `ca_cert` (a private CA or a self-signed certificate).
pub fn trusted_roots(
    url: &str,
    ca_cert: Option<&std::path::Path>,
) -> anyhow::Result<Vec<reqwest::Certificate>> {
    if !url.starts_with("https://") {
        return Ok(Vec::new());
    }
    let mut roots: Vec<reqwest::Certificate> = rustls_native_certs::load_native_certs()
        .certs
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
        .collect();
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).map_err(|e| {
            anyhow::anyhow!("cannot read the CA certificate {}: {e}", path.display())
        })?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("{} holds no PEM certificate: {e}", path.display()))?;
        anyhow::ensure!(
            !certificates.is_empty(),
            "{} holds no PEM certificate",
            path.display()
        );
        roots.extend(certificates);
    }
    Ok(roots)
}

impl std::fmt::Debug for TokenArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenArgs")
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

/// `draas image build`.
#[derive(Args, Debug, Clone)]
pub struct ImageBuildArgs {
    /// The image's tag.
    #[arg(long, default_value = draas_worker_docker::DEFAULT_IMAGE)]
    pub tag: String,
    /// The runtime binary [default: draas-runtime next to this binary].
    #[arg(long, env = "DRAAS_RUNTIME")]
    pub runtime: Option<PathBuf>,
    /// The Docker engine: `unix:///path/docker.sock` or `tcp://host:port`
    /// [default: the local socket].
    #[arg(long = "docker-host", env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
}

/// `draas docker-daemon`.
#[derive(Args, Debug, Clone)]
pub struct DockerDaemonArgs {
    /// The control plane's base URL.
    #[arg(long = "control-plane", env = "DRAAS_CONTROL_PLANE")]
    pub control_plane: String,
    /// The name the daemon reports as (recorded as `external:<source>`).
    #[arg(long, env = "DRAAS_DAEMON_SOURCE", default_value = "docker-daemon")]
    pub source: String,
    /// An agent key, when the control plane requires keys.
    #[command(flatten)]
    pub token: TokenArgs,
    /// The Docker engine: `unix:///path/docker.sock` or `tcp://host:port`
    /// [default: the local socket].
    #[arg(long = "docker-host", env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
}

/// `draas reconcile`.
#[derive(Args, Debug, Clone)]
pub struct ReconcileArgs {
    /// The control plane's base URL (e.g. http://127.0.0.1:5000).
    #[arg(long = "control-plane", env = "DRAAS_CONTROL_PLANE", value_parser = parse_base_url)]
    pub control_plane: String,
    /// Seconds between full passes (events trigger it at once in between).
    #[arg(long = "reconcile-interval", env = "DRAAS_RECONCILE_INTERVAL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// This reconciler's name in the lease [default: reconciler-<pid>].
    #[arg(long = "reconciler-id", env = "DRAAS_RECONCILER_ID", value_parser = parse_holder)]
    pub reconciler_id: Option<String>,
    /// Seconds a lease term lasts unless renewed: how long a dead holder
    /// keeps the others waiting.
    #[arg(long = "lease-ttl", env = "DRAAS_LEASE_TTL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub lease_ttl: u64,
    /// The file keeping the event cursor across restarts
    /// [default: <data dir>/reconciler.cursor].
    #[arg(long = "cursor-file", env = "DRAAS_RECONCILER_CURSOR")]
    pub cursor_file: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// An operator key, when the control plane requires keys.
    #[command(flatten)]
    pub token: TokenArgs,
}

impl ReconcileArgs {
    /// The reconciler's settings.
    pub fn settings(&self) -> draas_reconciler::ReconcilerSettings {
        let defaults = draas_reconciler::ReconcilerSettings::default();
        draas_reconciler::ReconcilerSettings {
            full_pass_every: Duration::from_secs(self.interval),
            holder: self
                .reconciler_id
                .clone()
                .unwrap_or(defaults.holder.clone()),
            lease_ttl: Duration::from_secs(self.lease_ttl),
            cursor_file: Some(
                self.cursor_file
                    .clone()
                    .unwrap_or_else(|| self.data.resolve().join("reconciler.cursor")),
            ),
            ..defaults
        }
    }
}

fn parse_base_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .ok_or_else(|| format!("expected an http:// or https:// URL, got {text:?}"))?;
    if rest.trim_end_matches('/').is_empty() || rest.contains(char::is_whitespace) {
        return Err(format!("{text:?} names no host"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

fn parse_holder(text: &str) -> Result<String, String> {
    draas_core::lease::validate_holder(text)?;
    Ok(text.to_string())
}

/// Whether `draas up` runs a platform's worker (Docker, Kubernetes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlatformSwitch {
    /// When the platform answers (an engine, a cluster).
    Auto,
    /// Always (fail to start without it).
    On,
    /// Never.
    Off,
}

/// Settings of a Kubernetes worker.
#[derive(Args, Debug, Clone)]
pub struct KubernetesArgs {
    /// A kubeconfig file [default: $KUBECONFIG, ~/.kube/config, or the
    /// in-cluster service account].
    #[arg(long = "kubeconfig")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context [default: its current context].
    #[arg(long = "kube-context", env = "DRAAS_KUBE_CONTEXT")]
    pub context: Option<String>,
    /// The namespace of instances that name none [default: the context's
    /// namespace; in a cluster, the worker's own].
    #[arg(long = "kubernetes-namespace", env = "DRAAS_KUBERNETES_NAMESPACE", value_parser = parse_namespace)]
    pub namespace: Option<String>,
    /// The image of Kubernetes instances that name none: the bundled
    /// runtime's image, as the cluster's nodes can pull it.
    #[arg(
        long = "kubernetes-image",
        env = "DRAAS_KUBERNETES_IMAGE",
        default_value = draas_worker_docker::DEFAULT_IMAGE
    )]
    pub kubernetes_image: String,
    /// When nodes pull images, for instances that do not say: Always,
    /// IfNotPresent or Never.
    #[arg(
        long = "kubernetes-image-pull-policy",
        env = "DRAAS_KUBERNETES_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent",
        value_parser = parse_pull_policy
    )]
    pub image_pull_policy: draas_core::instance::ImagePullPolicy,
    /// The cluster's identity: workers of one cluster take over each
    /// other's servers [default: the uid of its kube-system namespace].
    #[arg(long = "kubernetes-cluster-id", env = "DRAAS_KUBERNETES_CLUSTER_ID")]
    pub cluster_id: Option<String>,
}

impl KubernetesArgs {
    /// The worker's settings.
    pub fn settings(&self) -> draas_worker_kubernetes::KubernetesSettings {
        draas_worker_kubernetes::KubernetesSettings {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespace: self.namespace.clone(),
            image_pull_policy: self.image_pull_policy,
            cluster_id: self.cluster_id.clone(),
            ..draas_worker_kubernetes::KubernetesSettings::new(self.kubernetes_image.clone())
        }
    }
}

fn parse_namespace(text: &str) -> Result<String, String> {
    draas_core::instance::validate_name(text)
        .map(|()| text.to_string())
        .map_err(|_| format!("{text:?} is not a namespace name (1-63 of a-z, 0-9, '-')"))
}

fn parse_pull_policy(text: &str) -> Result<draas_core::instance::ImagePullPolicy, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("{text:?} is not a pull policy: Always, IfNotPresent or Never"))
}

/// Settings of a Docker worker.
#[derive(Args, Debug, Clone)]
pub struct DockerArgs {
    /// The Docker engine: `unix:///path/docker.sock` or `tcp://host:port`
    /// [default: the local socket].
    #[arg(long = "docker-host", env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// The image of Docker instances that name none. When it is missing,
    /// or was built from another runtime binary, it is built from the
    /// bundled runtime (`--runtime`).
    #[arg(long = "docker-image", env = "DRAAS_DOCKER_IMAGE", default_value = draas_worker_docker::DEFAULT_IMAGE)]
    pub image: String,
    /// The host address containers' ports are published on (`0.0.0.0` to
    /// reach them from other machines).
    #[arg(
        long = "docker-publish-address",
        env = "DRAAS_DOCKER_PUBLISH_ADDRESS",
        default_value = "127.0.0.1"
    )]
    pub publish_address: std::net::IpAddr,
    /// Keep, beside each running instance of the bundled runtime's image,
    /// its next container started with the runtime waiting, so the restart
    /// after a crash skips the engine's create and start (~250 ms). Costs
    /// one idle container per running instance.
    #[arg(
        long = "warm-containers",
        env = "DRAAS_WARM_CONTAINERS",
        value_enum,
        default_value = "on"
    )]
    pub warm_containers: Switch,
}

/// HTTPS for the REST API.
#[derive(Args, Debug, Clone)]
pub struct TlsArgs {
    /// PEM certificate chain: the API answers HTTPS only (with --tls-key).
    #[arg(long = "tls-cert", env = "DRAAS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long = "tls-key", env = "DRAAS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// Certificate and key, when HTTPS is asked for.
    pub fn files(&self) -> Option<(PathBuf, PathBuf)> {
        self.tls_cert.clone().zip(self.tls_key.clone())
    }
}

/// `draas serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address of the REST API.
    #[arg(long, env = "DRAAS_LISTEN", default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub control: ControlArgs,
    /// Seconds between checks for workers that stopped heartbeating.
    #[arg(long, env = "DRAAS_WATCHDOG_SECONDS", default_value_t = 2)]
    pub watchdog_seconds: u64,
    /// Whether every request needs an API key (`draas keys create
    /// --redis ...`): `on` or `off`.
    #[arg(
        long = "require-auth",
        env = "DRAAS_REQUIRE_AUTH",
        value_enum,
        default_value = "on"
    )]
    pub require_auth: Switch,
}

/// `draas worker`.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The platform to serve: `process`, `docker` or `kubernetes`.
    #[arg(long, env = "DRAAS_PLATFORM", default_value = "process")]
    pub platform: draas_core::instance::PlatformType,
    /// The worker's id, stable across its restarts (a worker that comes
    /// back under its id takes its servers back at once) [default: made
    /// up once and kept in the data directory].
    #[arg(long = "worker-id", env = "DRAAS_WORKER_ID", value_parser = parse_worker_id)]
    pub worker_id: Option<String>,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub process: ProcessArgs,
    #[command(flatten)]
    pub docker: DockerArgs,
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
}

fn parse_worker_id(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 128
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a worker id (1-128 of letters, digits, '-', '_', '.')"
        ))
    }
}

/// How to reach Redis.
#[derive(Args, Clone)]
pub struct RedisArgs {
    /// Redis URL: `redis://[user:password@]host:port[/db]`, or `rediss://`
    /// for TLS. The password is never logged.
    #[arg(long = "redis", env = "DRAAS_REDIS_URL")]
    pub url: String,
    /// PEM file of the CA that signed the Redis server's certificate, when
    /// it is not in the system trust store.
    #[arg(long = "redis-ca", env = "DRAAS_REDIS_CA")]
    pub ca: Option<PathBuf>,
    /// Prefix of every key and channel, so several installations can share
    /// one Redis.
    #[arg(
        long = "redis-prefix",
        env = "DRAAS_REDIS_PREFIX",
        default_value = "draas"
    )]
    pub prefix: String,
}

impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisArgs")
            .field("url", &draas_redis::redact(&self.url))
            .field("ca", &self.ca)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisArgs {
    /// The connection settings (reads the CA file).
    pub fn settings(&self) -> anyhow::Result<draas_redis::RedisSettings> {
        let mut settings = draas_redis::RedisSettings::new(self.url.clone());
        settings.prefix = self.prefix.clone();
        if let Some(path) = &self.ca {
            settings.ca_pem = Some(std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read the Redis CA {}: {e}", path.display())
            })?);
        }
        Ok(settings)
    }
}

/// `draas up`.
#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Address of the REST API.
    #[arg(long, env = "DRAAS_LISTEN", default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub process: ProcessArgs,
    #[command(flatten)]
    pub control: ControlArgs,
    /// Run a Docker worker too: `auto` when an engine answers.
    #[arg(long, env = "DRAAS_DOCKER", value_enum, default_value = "auto")]
    pub docker: PlatformSwitch,
    #[command(flatten)]
    pub docker_args: DockerArgs,
    /// Run a Kubernetes worker too: `auto` when a cluster is configured
    /// (`--kubeconfig`, `$KUBECONFIG`, `~/.kube/config`, in-cluster) and
    /// answers.
    #[arg(long, env = "DRAAS_KUBERNETES", value_enum, default_value = "auto")]
    pub kubernetes: PlatformSwitch,
    #[command(flatten)]
    pub kubernetes_args: KubernetesArgs,
    /// Require an API key on every request (`draas keys create
    /// --data-dir ...`); without it, requests without a key act as admin
    /// (bind to loopback then).
    #[arg(long = "require-auth", env = "DRAAS_REQUIRE_AUTH", num_args = 0..=1, default_missing_value = "on", value_enum, default_value = "off")]
    pub require_auth: Switch,
}

/// Where state lives.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data directory: the state store, and the Process worker's
    /// configurations, working directories and logs.
    /// [default: $XDG_DATA_HOME/draas or ~/.local/share/draas]
    #[arg(long, env = "DRAAS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataArgs {
    /// The data directory, with the default applied.
    pub fn resolve(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("draas");
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".local/share/draas"),
            None => PathBuf::from("draas-data"),
        }
    }
}

/// Settings of the Process worker (the runtime, heartbeats and advertised
/// host serve the Docker worker too).
#[derive(Args, Debug, Clone)]
pub struct ProcessArgs {
    /// The bundled Drasi runtime: started for Process instances that name
    /// no executable, and the binary the default Docker image is built from
    /// [default: draas-runtime next to this binary].
    #[arg(long, env = "DRAAS_RUNTIME")]
    pub runtime: Option<PathBuf>,
    /// Another executable instances may name in `executablePath` (e.g. the
    /// official drasi-server). Repeat for several; comma-separated in the
    /// environment.
    #[arg(
        long = "allow-executable",
        env = "DRAAS_ALLOW_EXECUTABLES",
        value_delimiter = ','
    )]
    pub allow_executables: Vec<PathBuf>,
    /// Seconds between worker heartbeats.
    #[arg(long, env = "DRAAS_HEARTBEAT_SECONDS", default_value_t = 2)]
    pub heartbeat_seconds: u64,
    /// Seconds between the worker's sweeps for platform objects of
    /// instances that no longer exist (removed when found).
    #[arg(long = "orphan-sweep-seconds", env = "DRAAS_ORPHAN_SWEEP_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub orphan_sweep_seconds: u64,
    /// The host name or address users reach this machine's servers on, put
    /// in the endpoints of servers that bind every interface (`0.0.0.0`)
    /// [default: this machine's name].
    #[arg(long, env = "DRAAS_ADVERTISE_HOST", value_parser = parse_host)]
    pub advertise_host: Option<String>,
    /// Keep one bundled runtime started ahead of need, waiting, so the next
    /// start of a Process instance (above all the restart after a crash)
    /// skips the runtime's ~2 ms exec. Costs one idle process.
    #[arg(
        long = "warm-runtime",
        env = "DRAAS_WARM_RUNTIME",
        value_enum,
        default_value = "on"
    )]
    pub warm_runtime: Switch,
}

/// A host name or IP address: what may stand between `http://` and `:port`.
fn parse_host(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 253
        && (text.parse::<std::net::IpAddr>().is_ok()
            || text.split('.').all(|label| {
                draas_core::instance::validate_name(&label.to_ascii_lowercase()).is_ok()
            }));
    if ok {
        Ok(match text.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{text}]"),
            Err(_) => text.to_string(),
        })
    } else {
        Err(format!("{text:?} is not a host name or IP address"))
    }
}

impl ProcessArgs {
    /// The runtime executable, with the default applied.
    pub fn runtime(&self) -> anyhow::Result<PathBuf> {
        runtime_or_sibling(self.runtime.as_ref())
    }
}

/// `given`, or `draas-runtime` next to this binary.
pub fn runtime_or_sibling(given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.clone());
    }
    let me = std::env::current_exe()?;
    let dir = me
        .parent()
        .ok_or_else(|| anyhow::anyhow!("cannot locate the directory of {}", me.display()))?;
    Ok(dir.join("draas-runtime"))
}

/// Settings of the control plane.
#[derive(Args, Debug, Clone)]
pub struct ControlArgs {
    /// Seconds the API waits for a worker's reply to a command (starts and
    /// stops wait longer when the server's own timeouts ask for it).
    #[arg(long, env = "DRAAS_COMMAND_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=draas_core::limits::MAX_COMMAND_TIMEOUT_SECONDS))]
    pub command_timeout: u64,
    /// Ports given to instances that choose none, as FIRST-LAST.
    #[arg(long, env = "DRAAS_PORT_RANGE", default_value = "21000-21999", value_parser = parse_range)]
    pub port_range: RangeInclusive<u16>,
    /// Run the reconciler in this process (restarts failed instances by
    /// their restart policy, applies configuration changes, hands
    /// instances of dead workers to live ones): `on` or `off`.
    #[arg(long, env = "DRAAS_RECONCILE", value_enum, default_value = "on")]
    pub reconcile: Switch,
    /// Seconds between the reconciler's full passes (events trigger it at
    /// once in between).
    #[arg(long, env = "DRAAS_RECONCILE_INTERVAL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub reconcile_interval: u64,
    /// Seconds a term of the reconciler lease lasts unless renewed (with
    /// several control-plane replicas, only the holder's reconciler acts).
    #[arg(long = "lease-ttl", env = "DRAAS_LEASE_TTL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub lease_ttl: u64,
    /// Requests a second each API key may send on average (bursts of
    /// twice that); beyond, 429 with Retry-After. 0 turns the limit off.
    #[arg(long = "rate-limit", env = "DRAAS_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,
}

/// On or off.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

impl ControlArgs {
    /// The command deadline.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.command_timeout)
    }

    /// The in-process reconciler's settings, when it runs.
    pub fn reconciler(&self) -> Option<draas_reconciler::ReconcilerSettings> {
        (self.reconcile == Switch::On).then(|| draas_reconciler::ReconcilerSettings {
            full_pass_every: Duration::from_secs(self.reconcile_interval),
            lease_ttl: Duration::from_secs(self.lease_ttl),
            ..draas_reconciler::ReconcilerSettings::default()
        })
    }
}

fn parse_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("expected FIRST-LAST, got {text:?}"))?;
    let first: u16 = a.trim().parse().map_err(|e| format!("first port: {e}"))?;
    let last: u16 = b.trim().parse().map_err(|e| format!("last port: {e}"))?;
    if first == 0 || first > last {
        return Err(format!(
            "{first}-{last} is not a range of ports (1-65535, first <= last)"
        ));
    }
    Ok(first..=last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_hosts_are_names_or_addresses() {
        assert_eq!(
            parse_host("drasi-1.example.com").unwrap(),
            "drasi-1.example.com"
        );
        assert_eq!(parse_host("10.0.0.7").unwrap(), "10.0.0.7");
        assert_eq!(parse_host("::1").unwrap(), "[::1]");
        for bad in ["", "a b", "host/path", "x@y", "-x.com", "h:80"] {
            assert!(parse_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn port_ranges_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_range("21000-21999").unwrap(), 21000..=21999);
        assert!(parse_range("0-10").is_err());
        assert!(parse_range("20-10").is_err());
        assert!(parse_range("abc").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "draas",
            "up",
            "--listen",
            "127.0.0.1:7000",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        let Mode::Up(args) = cli.mode else {
            panic!("up")
        };
        assert_eq!(args.listen.port(), 7000);
        assert_eq!(args.data.resolve(), PathBuf::from("/tmp/x"));
        assert!(Cli::try_parse_from(["draas", "up", "--listen", "nonsense"]).is_err());
        let cli = Cli::try_parse_from([
            "draas",
            "worker",
            "--platform",
            "process",
            "--redis",
            "redis://:pw@h:1",
        ])
        .unwrap();
        let Mode::Worker(args) = cli.mode else {
            panic!("worker")
        };
        assert_eq!(args.platform, draas_core::instance::PlatformType::Process);
        assert!(
            !format!("{args:?}").contains("pw@"),
            "no password in debug output"
        );
        assert!(Cli::try_parse_from([
            "draas",
            "worker",
            "--platform",
            "mainframe",
            "--redis",
            "redis://h"
        ])
        .is_err());
        let cli = Cli::try_parse_from([
            "draas",
            "up",
            "--docker",
            "off",
            "--docker-publish-address",
            "0.0.0.0",
        ])
        .unwrap();
        let Mode::Up(args) = cli.mode else {
            panic!("up")
        };
        assert_eq!(args.docker, PlatformSwitch::Off);
        assert_eq!(args.docker_args.image, "draas-runtime:latest");
        assert_eq!(args.kubernetes, PlatformSwitch::Auto);
        let cli = Cli::try_parse_from([
            "draas",
            "worker",
            "--platform",
            "aks",
            "--redis",
            "redis://h",
            "--kubeconfig",
            "/k/config",
            "--kubernetes-namespace",
            "drasi",
            "--kubernetes-image-pull-policy",
            "Never",
            "--worker-id",
            "k8s-1",
        ])
        .unwrap();
        let Mode::Worker(args) = cli.mode else {
            panic!("worker")
        };
        assert_eq!(
            args.platform,
            draas_core::instance::PlatformType::Kubernetes
        );
        let settings = args.kubernetes.settings();
        assert_eq!(settings.namespace.as_deref(), Some("drasi"));
        assert_eq!(
            settings.image_pull_policy,
            draas_core::instance::ImagePullPolicy::Never
        );
        assert_eq!(args.worker_id.as_deref(), Some("k8s-1"));
        for bad in [
            ["--kubernetes-namespace", "Team_A"],
            ["--kubernetes-image-pull-policy", "Sometimes"],
            ["--worker-id", "a b"],
        ] {
            let mut argv = vec!["draas", "worker", "--redis", "redis://h"];
            argv.extend(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["draas", "up", "--docker", "maybe"]).is_err());
        assert!(
            Cli::try_parse_from(["draas", "docker-daemon"]).is_err(),
            "needs --control-plane"
        );
        assert!(Cli::try_parse_from(["draas", "image", "build", "--tag", "x:1"]).is_ok());
    }
}
