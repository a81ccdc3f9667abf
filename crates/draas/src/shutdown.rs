//! One shutdown signal for the whole process: the first SIGINT or SIGTERM
//! cancels the token every task watches; a second one cancels the "forced"
//! token, which ends every wait for a graceful stop (the HTTP drain, the
//! worker's running commands).

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The two stages of shutting down.
#[derive(Clone)]
pub struct Shutdown {
    /// Cancelled by the first signal: stop taking work, finish what runs.
    pub graceful: CancellationToken,
    /// Cancelled by the second: stop waiting.
    pub forced: CancellationToken,
}

/// Installs the handlers.
pub fn install() -> std::io::Result<Shutdown> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let shutdown = Shutdown {
        graceful: CancellationToken::new(),
        forced: CancellationToken::new(),
    };
    let tokens = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => info!("SIGINT: shutting down (again to force)"),
            _ = sigterm.recv() => info!("SIGTERM: shutting down (again to force)"),
        }
        tokens.graceful.cancel();
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        warn!("second signal: not waiting any longer");
        tokens.forced.cancel();
    });
    Ok(shutdown)
}
