//! One shutdown signal for the whole process: the first SIGINT or SIGTERM
//! cancels the token every task watches; a second one ends the wait for a
//! graceful stop.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Installs the handlers. Returns the token cancelled by the first signal
/// and a future that completes on the second.
pub fn install() -> std::io::Result<(CancellationToken, impl std::future::Future<Output = ()>)> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let token = CancellationToken::new();
    let first = token.clone();
    let (second_tx, second_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => info!("SIGINT: shutting down (again to force)"),
            _ = sigterm.recv() => info!("SIGTERM: shutting down (again to force)"),
        }
        first.cancel();
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        warn!("second signal: not waiting any longer");
        let _ = second_tx.send(());
    });
    Ok((token, async move {
        let _ = second_rx.await;
    }))
}
