//! Signal futures: terminate (SIGTERM/SIGINT) and reload (SIGHUP). Each logs nothing itself
//! and returns which signal arrived; nothing else lives here.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the next SIGTERM or SIGINT, with the signal's name.
pub async fn terminate() -> &'static str {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers there is nothing to wait for.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Resolves on the next SIGHUP.
pub async fn reload() {
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            hup.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
