//! Running one server: start every component, bind the API, wait for
//! SIGINT/SIGTERM, stop in order.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use draas_drasi::assemble::{self, Lib};
use draas_drasi::supervise::supervise;
use drasi_lib::ComponentStatus;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::api::{router, ApiState};
use crate::load::LoadedConfig;

/// How long the HTTP server may drain after the components stopped. Open
/// SSE streams never end on their own, so this is short.
const HTTP_DRAIN: Duration = Duration::from_secs(1);

/// A startup or shutdown failure; printed as `Error: <this>` and exit 1.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The file failed validation.
    #[error("invalid configuration '{path}': {first}{more}")]
    Invalid {
        /// The file.
        path: String,
        /// The first issue.
        first: String,
        /// The other issues, one per line.
        more: String,
    },
    /// A component could not be created or started.
    #[error("{0}")]
    Startup(#[from] assemble::StartupError),
    /// The API address could not be used.
    #[error("cannot bind the API on {addr}: {source}")]
    Bind {
        /// host:port.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// Components did not stop in time, or a second signal arrived.
    #[error("shutdown did not complete: {0}")]
    Shutdown(String),
}

/// Turns validation issues into the startup error.
pub fn invalid(loaded: &LoadedConfig) -> Option<RunError> {
    let issues = loaded.issues();
    let (first, rest) = issues.split_first()?;
    Some(RunError::Invalid {
        path: loaded.path.display().to_string(),
        first: first.to_string(),
        more: rest.iter().map(|i| format!("\n  also: {i}")).collect(),
    })
}

/// Runs the server described by `loaded` (already validated) until a signal.
/// `default_id` is the lib instance id when the file names none.
pub async fn run(
    loaded: LoadedConfig,
    default_id: String,
    shutdown_timeout: Duration,
) -> Result<(), RunError> {
    // Installs drasi-lib's tracing subscriber (stdout, RUST_LOG) before the
    // first log line, so our lines and the components' share one format.
    let _ = drasi_lib::get_or_init_global_registry();
    let (_, warnings) = loaded.report();
    for warning in warnings {
        warn!("{warning}");
    }
    let config = loaded.config;
    let env = |name: &str| std::env::var(name).ok();
    let host = match &config.host {
        None => draas_core::config::DEFAULT_HOST.to_string(),
        Some(host) => host
            .resolve(&env, "a host")
            .map_err(|e| RunError::Startup(startup("host", e)))?,
    };
    let port = match &config.port {
        None => draas_core::config::DEFAULT_PORT,
        Some(port) => port
            .resolve(&env, "a port")
            .map_err(|e| RunError::Startup(startup("port", e)))?,
    };
    let addr = format!("{host}:{port}");
    // Fail fast on a taken port, before any component opens its own.
    std::net::TcpListener::bind(&addr).map_err(|source| RunError::Bind {
        addr: addr.clone(),
        source,
    })?;

    // Signals are watched from the start so a stop request during startup
    // is not lost.
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signals)?;

    let work_dir = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let libs = assemble::build(&config, &default_id, &work_dir).await?;
    // Before any source starts: no change is lost between a query's
    // bootstrap and its source's first replication (see `slots`).
    crate::slots::reserve(&config).await;
    if let Err(e) = assemble::start(&libs).await {
        stop(&libs, shutdown_timeout).await.ok();
        return Err(e.into());
    }

    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(source) => {
            stop(&libs, shutdown_timeout).await.ok();
            return Err(RunError::Bind { addr, source });
        }
    };
    let local: SocketAddr = listener.local_addr().map_err(|source| RunError::Bind {
        addr: addr.clone(),
        source,
    })?;
    let ids: Vec<&str> = libs.iter().map(|l| l.id.as_str()).collect();
    info!(instances = ?ids, %local, "Drasi server started; API listening");

    // Reactions start once their queries have bootstrapped; failed sources
    // are started again.
    let supervising = tokio_util::sync::CancellationToken::new();
    let (pending, mut supervisors) = supervise(&libs, supervising.clone());

    let stopped = tokio_util::sync::CancellationToken::new();
    let state = Arc::new(ApiState {
        libs,
        config,
        pending,
        stopped: stopped.clone(),
    });
    let app = router(state.clone());
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut http = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .into_future(),
    );

    let which = tokio::select! {
        _ = sigint.recv() => "SIGINT",
        _ = sigterm.recv() => "SIGTERM",
        result = &mut http => {
            // The server only returns on its own after an accept error.
            supervising.cancel();
            stop(&state.libs, shutdown_timeout).await.ok();
            return Err(RunError::Shutdown(format!("API server ended: {result:?}")));
        }
    };
    info!("{which} received: stopping reactions, queries, then sources");
    supervising.cancel();
    supervisors.abort_all();
    let _ = stop_http.send(());

    let result = tokio::select! {
        r = stop(&state.libs, shutdown_timeout) => r,
        _ = sigint.recv() => Err("second signal received".to_string()),
        _ = sigterm.recv() => Err("second signal received".to_string()),
    };
    stopped.cancel();
    if tokio::time::timeout(HTTP_DRAIN, &mut http).await.is_err() {
        http.abort();
    }
    result.map_err(RunError::Shutdown)?;
    info!("stopped");
    Ok(())
}

fn startup(what: &str, e: impl std::fmt::Display) -> assemble::StartupError {
    assemble::StartupError {
        component: "configuration".to_string(),
        message: format!("{what}: {e}"),
    }
}

/// How long the runtime waits, after stopping the components, for drasi-lib
/// to have published every component's final status.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

/// Stops every component of every lib (reactions → queries → sources)
/// and releases the libs, within `limit`.
async fn stop(libs: &[Lib], limit: Duration) -> Result<(), String> {
    let work = async {
        for lib in libs {
            let lib = &lib.lib;
            // Reactions first: the runtime started them itself (after
            // their queries), so `stop` may not count them as its own.
            for (id, status) in lib.list_reactions().await.unwrap_or_default() {
                if matches!(status, ComponentStatus::Running | ComponentStatus::Starting) {
                    let _ = lib.stop_reaction(&id).await;
                }
            }
            if lib.is_running().await {
                if let Err(e) = lib.stop().await {
                    warn!("some components reported errors while stopping: {e}");
                }
            }
            // drasi-lib publishes status changes (and the events of
            // `/api/v1/events`) from its graph-update loop, which `shutdown`
            // aborts: without this wait, the last Stopped events are lost.
            settle(lib).await;
            if let Err(e) = lib.shutdown().await {
                warn!("shutdown reported an error: {e}");
            }
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| format!("components did not stop within {} s", limit.as_secs()))
}

/// Waits (at most [`SETTLE_LIMIT`]) until every component's status is final
/// (`Stopped` or `Error`): by then the graph-update loop has applied and
/// published every status change.
async fn settle(lib: &drasi_lib::DrasiLib) {
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    loop {
        let (sources, queries, reactions) =
            tokio::join!(lib.list_sources(), lib.list_queries(), lib.list_reactions());
        let settled = [sources, queries, reactions]
            .into_iter()
            .flat_map(|listed| listed.unwrap_or_default())
            .all(|(_, status)| {
                matches!(
                    status,
                    ComponentStatus::Stopped | ComponentStatus::Error | ComponentStatus::Added
                )
            });
        if settled {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!("some components had not reported Stopped after {SETTLE_LIMIT:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
