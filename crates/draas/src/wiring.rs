//! The composition root: builds stores, buses, workers and the API for each
//! mode and runs them until shutdown. Read top to bottom.

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use draas_api::{router, Auth, ControlPlane, ControlPlaneSettings};
use draas_bus::InProcessBus;
use draas_core::auth::{KeyRing, StoreKeyRing};
use draas_core::instance::PlatformType;
use draas_core::keys;
use draas_core::messages::WorkerInfo;
use draas_core::ports::store::JsonStore;
use draas_core::ports::{MessageBus, PlatformDriver, StateStore};
use draas_drasi::validate::DrasiValidator;
use draas_store::{EmbeddedStore, KeyFile};
use draas_worker::{Worker, WorkerContext, WorkerSettings};
use draas_worker_docker::{DockerSettings, Engine};
use draas_worker_process::ProcessSettings;
use tracing::{info, warn};

use crate::config::{
    ControlArgs, DockerArgs, DockerDaemonArgs, ImageBuildArgs, KubernetesArgs, PlatformSwitch,
    ProcessArgs, ReconcileArgs, RedisArgs, ServeArgs, Switch, UpArgs, WorkerArgs,
};
use crate::shutdown::{self, Shutdown};

/// How long the HTTP server may drain after shutdown began (open event
/// streams never end on their own).
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// Makes the data directory private to this user: what it holds (the
/// state store with every instance's environment, servers' files and
/// logs) is readable by no one else. From now on everything this process
/// and the servers it starts create is private (umask 077); what an
/// earlier version left readable by others is made private too.
fn private_data_dir(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use nix::sys::stat::{umask, Mode};
    umask(Mode::from_bits_truncate(0o077));
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    restrict(data_dir).with_context(|| {
        format!(
            "cannot make the data directory {} private",
            data_dir.display()
        )
    })
}

/// Takes the group's and others' permissions off `path` and, for a
/// directory, off everything under it (symbolic links are left alone).
fn restrict(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o077))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            restrict(&entry?.path())?;
        }
    }
    Ok(())
}

/// `draas up`: everything in one process.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = args.data.resolve();
    private_data_dir(&data_dir)?;
    let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(&data_dir.join("state.redb"))?);
    let bus: Arc<dyn MessageBus> = Arc::new(InProcessBus::new());
    let shutdown = shutdown::install().context("cannot install signal handlers")?;

    // The API and the workers live and die together: a worker that stops
    // on its own stops everything (and `draas up` exits non-zero) rather
    // than leaving an API that answers 503 forever.
    let mut workers = Vec::new();
    let process = process_worker(&data_dir, &args.process, store.clone(), bus.clone())?;
    workers.push(spawn_worker(process, store.as_ref(), &shutdown).await?);
    if let Some(docker) =
        docker_worker_if_wanted(&args, &data_dir, store.clone(), bus.clone()).await?
    {
        workers.push(spawn_worker(docker, store.as_ref(), &shutdown).await?);
    }
    if let Some(kubernetes) =
        kubernetes_worker_if_wanted(&args, &data_dir, store.clone(), bus.clone()).await?
    {
        workers.push(spawn_worker(kubernetes, store.as_ref(), &shutdown).await?);
    }

    // The Process worker runs on this host: allocation may look at it.
    let mut settings = control_settings(&args.control);
    settings.process_port_probe = Some(Arc::new(|port| {
        std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
    }));
    let control = Arc::new(ControlPlane::new(
        store,
        bus,
        Arc::new(DrasiValidator),
        settings,
    ));
    let keys: Arc<dyn KeyRing> = Arc::new(KeyFile::in_data_dir(&data_dir));
    let auth = match args.require_auth {
        Switch::On => Auth::required(keys),
        Switch::Off => Auth::optional(Some(keys)),
    }
    .with_rate_limit(args.control.rate_limit);
    serve_api(
        args.listen,
        control,
        Arc::new(auth),
        args.tls.files(),
        args.control.reconciler(),
        shutdown.clone(),
    )
    .await?;

    info!("waiting for the workers to finish running commands");
    let joined = tokio::select! {
        joined = futures::future::join_all(workers) => joined,
        () = shutdown.forced.cancelled() => {
            warn!("not waiting for the workers' commands (forced)");
            Vec::new()
        }
    };
    for outcome in joined {
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("a worker stopped: {e}"),
            Err(e) => anyhow::bail!("a worker failed: {e}"),
        }
    }
    info!("stopped; Drasi servers keep running and are re-adopted at the next start");
    Ok(())
}

/// Runs `worker` until shutdown; a worker that ends on its own starts the
/// shutdown of everything. Returns once the worker announced itself.
async fn spawn_worker(
    worker: Worker,
    store: &dyn StateStore,
    shutdown: &Shutdown,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), draas_worker::WorkerError>>> {
    let id = worker.id().to_string();
    let token = shutdown.graceful.clone();
    let task = tokio::spawn(async move {
        let outcome = worker.run(token.clone()).await;
        if let Err(e) = &outcome {
            warn!("a worker stopped on its own: {e}");
        }
        token.cancel();
        outcome
    });
    wait_for_worker(store, &id).await?;
    Ok(task)
}

/// `draas serve`: the control plane over Redis.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (store, bus) = connect_redis(&args.redis).await?;
    let shutdown = shutdown::install().context("cannot install signal handlers")?;
    let keys: Arc<dyn KeyRing> = Arc::new(StoreKeyRing::new(store.clone()));
    let auth = match args.require_auth {
        Switch::On => Auth::required(keys),
        Switch::Off => {
            warn!("--require-auth off: requests without an API key act as admin");
            Auth::optional(Some(keys))
        }
    }
    .with_rate_limit(args.control.rate_limit);
    let control = Arc::new(ControlPlane::new(
        store,
        bus,
        Arc::new(DrasiValidator),
        control_settings(&args.control),
    ));
    let watchdog = tokio::spawn(draas_api::watchdog::run(
        control.clone(),
        Duration::from_secs(args.watchdog_seconds.max(1)),
        shutdown.graceful.clone(),
    ));
    serve_api(
        args.listen,
        control,
        Arc::new(auth),
        args.tls.files(),
        args.control.reconciler(),
        shutdown.clone(),
    )
    .await?;
    shutdown.graceful.cancel();
    let _ = watchdog.await;
    info!("stopped");
    Ok(())
}

/// `draas worker`: one platform worker over Redis.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let data_dir = args.data.resolve();
    private_data_dir(&data_dir)?;
    let (store, bus) = connect_redis(&args.redis).await?;
    let shutdown = shutdown::install().context("cannot install signal handlers")?;
    if let Some(id) = &args.worker_id {
        std::fs::write(
            data_dir.join(format!("{}-worker-id", platform_key(args.platform))),
            id,
        )
        .with_context(|| format!("cannot write the worker id into {}", data_dir.display()))?;
    }
    let worker = match args.platform {
        PlatformType::Process => process_worker(&data_dir, &args.process, store, bus)?,
        PlatformType::Docker => {
            let engine = connect_engine(&args.docker).await?;
            docker_worker(engine, &data_dir, &args.process, &args.docker, store, bus).await?
        }
        PlatformType::Kubernetes => {
            let settings = args.kubernetes.settings();
            let cluster = draas_worker_kubernetes::Cluster::connect(&settings).await?;
            kubernetes_worker(
                cluster,
                &data_dir,
                &args.process,
                &args.kubernetes,
                store,
                bus,
            )
            .await?
        }
    };
    info!(worker = worker.id(), "worker starting");
    let run = worker.run(shutdown.graceful.clone());
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => result.context("worker failed")?,
        () = shutdown.forced.cancelled() => {
            warn!("forced stop");
        }
    }
    info!("stopped; Drasi servers keep running and are re-adopted at the next start");
    Ok(())
}

/// `draas docker-daemon`: reports an engine's DRaaS containers to a control
/// plane.
pub async fn docker_daemon(args: DockerDaemonArgs) -> anyhow::Result<()> {
    let engine = Engine::connect(args.docker_host.as_deref(), ENGINE_TIMEOUT).await?;
    let shutdown = shutdown::install().context("cannot install signal handlers")?;
    let settings = draas_worker_docker::daemon::DaemonSettings {
        trusted: args.token.trusted(&args.control_plane)?,
        control_plane: args.control_plane,
        source: args.source,
        token: args.token.token.clone(),
    };
    draas_worker_docker::daemon::run(engine, settings, shutdown.graceful.clone()).await?;
    info!("stopped");
    Ok(())
}

/// `draas reconcile`: the reconciler alone, against a control plane's
/// REST API; only the holder of the lease acts.
pub async fn reconcile(args: ReconcileArgs) -> anyhow::Result<()> {
    let settings = args.settings();
    if let Some(file) = &settings.cursor_file {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    let shutdown = shutdown::install().context("cannot install signal handlers")?;
    // The control plane answers within its own route limits
    // (`ClientOptions::new` waits as long as they allow).
    let client = draas_client::Client::new(draas_client::ClientOptions {
        token: args.token.token.clone(),
        trusted: args.token.trusted(&args.control_plane)?,
        ..draas_client::ClientOptions::new(args.control_plane.clone())
    })?;
    let client = draas_reconciler::ControlPlaneClient::new(client);
    info!(control_plane = %args.control_plane, holder = %settings.holder, "reconciler starting");
    draas_reconciler::run(Arc::new(client), settings, shutdown.graceful.clone()).await;
    info!("stopped");
    Ok(())
}

/// `draas image build`: the bundled runtime's image.
pub async fn image_build(args: ImageBuildArgs) -> anyhow::Result<()> {
    let engine = Engine::connect(args.docker_host.as_deref(), ENGINE_TIMEOUT).await?;
    let runtime = crate::config::runtime_or_sibling(args.runtime.as_ref())?;
    let id = draas_worker_docker::image::build_runtime_image(&engine.docker, &runtime, &args.tag)
        .await?;
    info!(tag = %args.tag, %id, runtime = %runtime.display(), "built");
    // The tag on the last line, for scripts.
    #[allow(clippy::print_stdout)]
    {
        println!("{}", args.tag);
    }
    Ok(())
}

/// How long an engine may take to answer when it is first contacted.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect_engine(args: &DockerArgs) -> anyhow::Result<Engine> {
    Engine::connect(args.docker_host.as_deref(), ENGINE_TIMEOUT)
        .await
        .map_err(Into::into)
}

/// The Docker worker of `draas up`, as `--docker` says: with `auto`, only
/// when an engine answers.
async fn docker_worker_if_wanted(
    args: &UpArgs,
    data_dir: &Path,
    store: Arc<dyn StateStore>,
    bus: Arc<dyn MessageBus>,
) -> anyhow::Result<Option<Worker>> {
    if args.docker == PlatformSwitch::Off {
        return Ok(None);
    }
    let engine = match connect_engine(&args.docker_args).await {
        Ok(engine) => engine,
        Err(e) if args.docker == PlatformSwitch::Auto => {
            info!("the Docker platform is off: {e}");
            return Ok(None);
        }
        Err(e) => return Err(e.context("--docker on, but no engine")),
    };
    info!(engine = %engine.address, version = %engine.version, "the Docker platform is on");
    docker_worker(
        engine,
        data_dir,
        &args.process,
        &args.docker_args,
        store,
        bus,
    )
    .await
    .map(Some)
}

/// The key of a platform in file names (`<key>-worker-id`).
fn platform_key(platform: PlatformType) -> &'static str {
    match platform {
        PlatformType::Process => "process",
        PlatformType::Docker => "docker",
        PlatformType::Kubernetes => "kubernetes",
    }
}

/// How long `draas up --kubernetes auto` waits for a configured cluster.
const CLUSTER_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The Kubernetes worker of `draas up`, as `--kubernetes` says: with
/// `auto`, only when a cluster is configured and answers.
async fn kubernetes_worker_if_wanted(
    args: &UpArgs,
    data_dir: &Path,
    store: Arc<dyn StateStore>,
    bus: Arc<dyn MessageBus>,
) -> anyhow::Result<Option<Worker>> {
    if args.kubernetes == PlatformSwitch::Off {
        return Ok(None);
    }
    let mut settings = args.kubernetes_args.settings();
    if args.kubernetes == PlatformSwitch::Auto {
        settings.connect_timeout = CLUSTER_PROBE_TIMEOUT;
    }
    let cluster = match draas_worker_kubernetes::Cluster::connect(&settings).await {
        Ok(cluster) => cluster,
        Err(e) if args.kubernetes == PlatformSwitch::Auto => {
            info!("the Kubernetes platform is off: {e}");
            return Ok(None);
        }
        Err(e) => return Err(anyhow::Error::new(e).context("--kubernetes on, but no cluster")),
    };
    kubernetes_worker(
        cluster,
        data_dir,
        &args.process,
        &args.kubernetes_args,
        store,
        bus,
    )
    .await
    .map(Some)
}

/// A Kubernetes worker on `cluster`.
async fn kubernetes_worker(
    cluster: draas_worker_kubernetes::Cluster,
    data_dir: &Path,
    process: &ProcessArgs,
    args: &KubernetesArgs,
    store: Arc<dyn StateStore>,
    bus: Arc<dyn MessageBus>,
) -> anyhow::Result<Worker> {
    info!(
        cluster = %cluster.url,
        version = %cluster.version,
        namespace = %cluster.default_namespace,
        "the Kubernetes platform is on"
    );
    let host = hostname();
    let worker_id = worker_id(data_dir, "kubernetes", &host)?;
    let heartbeat = Duration::from_secs(process.heartbeat_seconds.max(1));
    let context = WorkerContext::new(
        WorkerSettings {
            worker_id,
            host,
            heartbeat_interval: heartbeat,
            heartbeat_ttl: heartbeat * 3,
            orphan_sweep_every: Duration::from_secs(process.orphan_sweep_seconds),
            concurrency: draas_worker::DEFAULT_CONCURRENCY,
            capacity: None,
        },
        store,
        bus,
    );
    let driver = draas_worker_kubernetes::driver(cluster, args.settings(), &context)
        .await
        .context("cannot read the installation's identity")?;
    Ok(Worker::new(context, Arc::new(driver)))
}

/// A Docker worker on `engine`.
async fn docker_worker(
    engine: Engine,
    data_dir: &Path,
    process: &ProcessArgs,
    args: &DockerArgs,
    store: Arc<dyn StateStore>,
    bus: Arc<dyn MessageBus>,
) -> anyhow::Result<Worker> {
    let host = hostname();
    let worker_id = worker_id(data_dir, "docker", &host)?;
    let heartbeat = Duration::from_secs(process.heartbeat_seconds.max(1));
    let context = WorkerContext::new(
        WorkerSettings {
            worker_id,
            host,
            heartbeat_interval: heartbeat,
            heartbeat_ttl: heartbeat * 3,
            orphan_sweep_every: Duration::from_secs(process.orphan_sweep_seconds),
            concurrency: draas_worker::DEFAULT_CONCURRENCY,
            capacity: None,
        },
        store,
        bus,
    );
    let runtime = process.runtime()?;
    let settings = DockerSettings {
        default_image: args.image.clone(),
        runtime_binary: runtime.is_file().then_some(runtime),
        publish_address: args.publish_address.to_string(),
        advertise_host: process.advertise_host.clone(),
        config_in_env: true,
        warm_containers: args.warm_containers == crate::config::Switch::On,
    };
    let driver = draas_worker_docker::driver(engine, settings, &context)
        .await
        .context("cannot read the installation id")?;
    Ok(Worker::new(context, Arc::new(driver)))
}

/// Connects the Redis store and bus, waiting (with a log line every few
/// seconds) while Redis is not reachable yet.
async fn connect_redis(
    args: &RedisArgs,
) -> anyhow::Result<(Arc<dyn StateStore>, Arc<dyn MessageBus>)> {
    let settings = args.settings()?;
    let url = draas_redis::redact(&settings.url);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let attempt = async {
            let store = draas_redis::RedisStore::connect(settings.clone()).await?;
            let bus = draas_redis::RedisBus::connect(
                settings.clone(),
                draas_redis::BusOptions::default(),
            )
            .await
            .map_err(|e| draas_core::ports::StoreError::Unavailable(e.to_string()))?;
            Ok::<_, draas_core::ports::StoreError>((store, bus))
        };
        match attempt.await {
            Ok((store, bus)) => {
                info!(redis = %url, prefix = %settings.prefix, "connected to Redis");
                return Ok((Arc::new(store), Arc::new(bus)));
            }
            Err(e @ draas_core::ports::StoreError::Unavailable(_))
                if tokio::time::Instant::now() < deadline =>
            {
                warn!(redis = %url, "Redis not reachable yet ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => anyhow::bail!("cannot connect to Redis at {url}: {e}"),
        }
    }
}

fn control_settings(args: &ControlArgs) -> ControlPlaneSettings {
    ControlPlaneSettings {
        command_timeout: args.command_timeout(),
        port_range: args.port_range.clone(),
        ..ControlPlaneSettings::default()
    }
}

/// A Process worker whose files live under `<data>/process`.
fn process_worker(
    data_dir: &Path,
    args: &ProcessArgs,
    store: Arc<dyn StateStore>,
    bus: Arc<dyn MessageBus>,
) -> anyhow::Result<Worker> {
    let host = hostname();
    let worker_id = worker_id(data_dir, "process", &host)?;
    let runtime = args.runtime()?;
    if !runtime.is_file() {
        warn!(
            "the Drasi runtime {} does not exist; instances without executablePath will fail to start",
            runtime.display()
        );
    }
    let heartbeat = Duration::from_secs(args.heartbeat_seconds.max(1));
    let context = WorkerContext::new(
        WorkerSettings {
            worker_id,
            host: host.clone(),
            heartbeat_interval: heartbeat,
            heartbeat_ttl: heartbeat * 3,
            orphan_sweep_every: Duration::from_secs(args.orphan_sweep_seconds),
            concurrency: draas_worker::DEFAULT_CONCURRENCY,
            capacity: None,
        },
        store,
        bus,
    );
    let mut settings = ProcessSettings::new(data_dir.join("process"), runtime, host);
    settings.allowed_executables = args.allow_executables.clone();
    settings.warm_runtime = args.warm_runtime == crate::config::Switch::On;
    if let Some(advertised) = &args.advertise_host {
        settings.advertise_host = advertised.clone();
    }
    let driver: Arc<dyn PlatformDriver> =
        Arc::new(draas_worker_process::driver(settings, &context));
    Ok(Worker::new(context, driver))
}

/// The worker's id: stable across restarts (its unacknowledged commands
/// and its processes' records are found again under it), kept in
/// `<data>/<platform>-worker-id`.
fn worker_id(data_dir: &Path, platform: &str, host: &str) -> anyhow::Result<String> {
    let path: PathBuf = data_dir.join(format!("{platform}-worker-id"));
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let id = format!("{platform}-{host}-{}", &suffix[..8]);
    std::fs::write(&path, &id).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

fn hostname() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .to_string();
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".to_string()
    } else {
        clean
    }
}

/// Waits until the worker has announced itself, so the API never answers
/// "no live worker" for its own worker.
async fn wait_for_worker(store: &dyn StateStore, worker_id: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if store
            .get_json::<WorkerInfo>(keys::WORKERS, worker_id)
            .await?
            .is_some()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the worker did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves the API until shutdown, then drains briefly (open event streams
/// never end on their own); a second signal ends the drain at once. With
/// `tls` (certificate and key files), HTTPS only. With `reconciler`, runs
/// the reconciler too, calling this control plane in-process (see
/// [`crate::reconciler_port`]).
async fn serve_api(
    listen: std::net::SocketAddr,
    control: Arc<ControlPlane>,
    auth: Arc<Auth>,
    tls: Option<(PathBuf, PathBuf)>,
    reconciler: Option<draas_reconciler::ReconcilerSettings>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!("DRaaS API listening on {scheme}://{bound}");
    if !auth.is_required() && !listen.ip().is_loopback() {
        warn!("the API listens on {listen} without requiring API keys: anyone who reaches it is admin (--require-auth)");
    }
    let mut servers = tokio::task::JoinSet::new();
    let _reconciler = reconciler.map(|mut settings| {
        settings.holder = format!("control-plane-{bound}-{}", std::process::id());
        AbortOnDrop(tokio::spawn(draas_reconciler::run(
            crate::reconciler_port::InProcess::port(control.clone()),
            settings,
            shutdown.graceful.clone(),
        )))
    });
    let app = router(control, auth);
    match tls {
        Some((cert, key)) => {
            let config = tls_config(&cert, &key)?;
            let handle = axum_server::Handle::new();
            let server = axum_server::from_tcp_rustls(listener, config)?
                .handle(handle.clone())
                .serve(app.into_make_service());
            let stop = shutdown.graceful.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                handle.graceful_shutdown(Some(HTTP_DRAIN));
            });
            servers.spawn(async move { server.await.map_err(anyhow::Error::from) });
        }
        None => {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let stop = shutdown.graceful.clone();
            servers.spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .into_future()
                    .await
                    .map_err(anyhow::Error::from)
            });
        }
    }
    tokio::select! {
        Some(result) = servers.join_next() => {
            result.context("API server task failed")?.context("API server failed")?;
            return Ok(());
        }
        () = shutdown.graceful.cancelled() => {}
    }
    tokio::select! {
        _ = tokio::time::timeout(HTTP_DRAIN, async { while servers.join_next().await.is_some() {} }) => {}
        () = shutdown.forced.cancelled() => {}
    }
    servers.abort_all();
    Ok(())
}

/// The API's TLS settings: the certificate chain and key from PEM files,
/// rustls with ring (as every TLS connection of DRaaS), HTTP/2 and 1.1.
fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<axum_server::tls_rustls::RustlsConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read the certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("cannot read the key {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("the certificate and key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(
        Arc::new(config),
    ))
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
