//! The composition root: builds stores, buses, workers and the API for each
//! mode and runs them until shutdown. Read top to bottom.

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use draas_api::{router, ControlPlane, ControlPlaneSettings};
use draas_bus::InProcessBus;
use draas_core::keys;
use draas_core::messages::WorkerInfo;
use draas_core::ports::store::JsonStore;
use draas_core::ports::{MessageBus, PlatformDriver, StateStore};
use draas_drasi::validate::DrasiValidator;
use draas_store::EmbeddedStore;
use draas_worker::{Worker, WorkerContext, WorkerSettings};
use draas_worker_process::ProcessSettings;
use tracing::{info, warn};

use crate::config::{ControlArgs, ProcessArgs, RedisArgs, ServeArgs, UpArgs, WorkerArgs};
use crate::shutdown::{self, Shutdown};

/// How long the HTTP server may drain after shutdown began (open event
/// streams never end on their own).
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// `draas up`: everything in one process.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = args.data.resolve();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(&data_dir.join("state.redb"))?);
    let bus: Arc<dyn MessageBus> = Arc::new(InProcessBus::new());
    let shutdown = shutdown::install().context("cannot install signal handlers")?;

    let worker = process_worker(&data_dir, &args.process, store.clone(), bus.clone())?;
    let worker_id = worker.id().to_string();
    let mut worker_task = tokio::spawn(worker.run(shutdown.graceful.clone()));
    wait_for_worker(store.as_ref(), &worker_id).await?;

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
    // The API and the worker live and die together: a worker that stops on
    // its own takes the API down with it (and `draas up` exits non-zero)
    // rather than leaving an API that answers 503 forever.
    let api = serve_api(args.listen, control, shutdown.clone());
    tokio::pin!(api);
    let worker_result = tokio::select! {
        served = &mut api => {
            served?;
            info!("waiting for the worker to finish running commands");
            tokio::select! {
                joined = &mut worker_task => Some(joined),
                () = shutdown.forced.cancelled() => {
                    warn!("not waiting for the worker's commands (forced)");
                    None
                }
            }
        }
        joined = &mut worker_task => {
            shutdown.graceful.cancel();
            let _ = api.await;
            Some(joined)
        }
    };
    match worker_result {
        Some(Ok(Ok(()))) | None => {}
        Some(Ok(Err(e))) => anyhow::bail!("the Process worker stopped: {e}"),
        Some(Err(e)) => anyhow::bail!("the Process worker failed: {e}"),
    }
    info!("stopped; Drasi servers keep running and are re-adopted at the next start");
    Ok(())
}

/// `draas serve`: the control plane over Redis.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (store, bus) = connect_redis(&args.redis).await?;
    let shutdown = shutdown::install().context("cannot install signal handlers")?;
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
    serve_api(args.listen, control, shutdown.clone()).await?;
    shutdown.graceful.cancel();
    let _ = watchdog.await;
    info!("stopped");
    Ok(())
}

/// `draas worker`: one platform worker over Redis.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    if args.platform != draas_core::instance::PlatformType::Process {
        anyhow::bail!(
            "no worker for the {} platform in this build (only process)",
            args.platform
        );
    }
    let data_dir = args.data.resolve();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let (store, bus) = connect_redis(&args.redis).await?;
    let shutdown = shutdown::install().context("cannot install signal handlers")?;
    let worker = process_worker(&data_dir, &args.process, store, bus)?;
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
            concurrency: draas_worker::DEFAULT_CONCURRENCY,
            capacity: None,
        },
        store,
        bus,
    );
    let mut settings = ProcessSettings::new(data_dir.join("process"), runtime, host);
    settings.allowed_executables = args.allow_executables.clone();
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
/// never end on their own); a second signal ends the drain at once.
async fn serve_api(
    listen: std::net::SocketAddr,
    control: Arc<ControlPlane>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    info!("DRaaS API listening on http://{}", listener.local_addr()?);
    let app = router(control).layer(tower_http::trace::TraceLayer::new_for_http());
    let stop = shutdown.graceful.clone();
    let mut server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .into_future(),
    );
    tokio::select! {
        result = &mut server => {
            result.context("API server task failed")?.context("API server failed")?;
            return Ok(());
        }
        () = shutdown.graceful.cancelled() => {}
    }
    tokio::select! {
        _ = tokio::time::timeout(HTTP_DRAIN, &mut server) => {}
        () = shutdown.forced.cancelled() => {}
    }
    server.abort();
    Ok(())
}
