//! The process's signals: terminate (SIGTERM/SIGINT) and reload (SIGHUP). The handlers are
//! registered once, for the process's life, so that no signal is lost between two waits, and
//! a terminate wins over a reload that arrived with it. Logs nothing itself.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// What arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrived {
    /// SIGTERM or SIGINT, with its name.
    Terminate(&'static str),
    /// SIGHUP (several pending ones count as one).
    Reload,
}

/// The registered handlers.
pub struct Signals {
    term: Option<Signal>,
    int: Option<Signal>,
    hup: Option<Signal>,
}

impl Signals {
    /// Registers the handlers (a handler that cannot be registered never fires).
    pub fn new() -> Self {
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// The next signal; a terminate first when both kinds are pending.
    pub async fn next(&mut self) -> Arrived {
        tokio::select! {
            biased;
            Some(()) = recv(&mut self.term) => Arrived::Terminate("SIGTERM"),
            Some(()) = recv(&mut self.int) => Arrived::Terminate("SIGINT"),
            Some(()) = recv(&mut self.hup) => Arrived::Reload,
        }
    }

    /// Waits for the next SIGTERM or SIGINT (SIGHUPs are ignored meanwhile).
    pub async fn terminate(&mut self) -> &'static str {
        loop {
            if let Arrived::Terminate(name) = self.next().await {
                return name;
            }
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}

async fn recv(s: &mut Option<Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves on the next SIGTERM or SIGINT, with the signal's name (registers its handlers
/// when called: for a process that waits only once).
pub async fn terminate() -> &'static str {
    Signals::new().terminate().await
}
