//! `deployd emulator`: a local CodeArts Deploy server with strict validation and fault injection,
//! used by the quick start (embedded) and by integration tests.
//!
//! Theory of operation: [`Emulator::start`] binds a `TcpListener` and spawns one accept loop on
//! the current tokio runtime; each connection is served by hyper's HTTP/1.1 server and a
//! [`service`] pipeline that applies gateway behaviour (routing, latency, faults, body limit,
//! auth, rate limit) before the endpoint handlers. A dropped-connection fault makes the service
//! future fail, which makes hyper close the socket without writing anything. State (records,
//! tokens, log, counters) lives in [`state::Store`] behind one mutex.
//!
//! Authentication: a static token or an IAM token it issued in `X-Auth-Token`, or an AK/SK
//! `SDK-HMAC-SHA256` signature verified with [`crate::auth::signer::verify`] against the raw
//! received request (API doc E2), with the gateway's skew limit and AK lock-out.
//!
//! Endpoints: `POST /v2/tasks/{task_id}/start`, `GET /v2/{project_id}/task/{id}/history`,
//! `GET /v2/tasks/{task_id}/state`, `POST /v3/auth/tokens`, and for tests `GET /_emulator/log`
//! and `GET /_emulator/stats` (never subject to auth, faults or counters).
//!
//! This module owns the emulator's socket; it never calls out.

mod config;
mod error;
mod http;
mod service;
mod state;
mod timer;
/// Public only for the fuzz targets (`fuzz/`); not part of the API.
#[doc(hidden)]
pub mod validate;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub use config::{
    AK_MAX_FAILURES, AccessKey, ConfigError, DEFAULT_AK, DEFAULT_DOMAIN, DEFAULT_PASSWORD,
    DEFAULT_PROJECT_ID, DEFAULT_SK, DEFAULT_TOKEN, DEFAULT_USER, EmulatorArgs, EmulatorConfig,
    IamUser, ScriptedFault, parse_utc_offset,
};
pub use error::{ErrorAnswer, ErrorForm};
pub use service::{BODY_LIMIT, Principal};
pub use state::{LoggedRequest, Stats};
pub use validate::WireParam;

use service::Shared;

/// How long shutdown waits for in-flight requests before closing their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running emulator. Dropping the handle stops the server too (without waiting).
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Checks the configuration, binds `addr` (port 0 picks a free port) and serves on the
    /// current tokio runtime.
    pub async fn start(config: EmulatorConfig, addr: SocketAddr) -> io::Result<Emulator> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config, CancellationToken::new()));
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Emulator {
            addr,
            shared,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the endpoint to give a client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EmulatorConfig {
        &self.shared.config
    }

    /// The accepted requests so far, oldest first.
    pub fn log(&self) -> Vec<LoggedRequest> {
        self.shared.log()
    }

    /// Creates a record as another caller would have, started at `start_time` (the service's
    /// clock) with `params` (`(key, value, type)`); returns its id.
    pub fn insert_record(
        &self,
        task_id: &str,
        start_time: chrono::DateTime<chrono::Utc>,
        params: &[(&str, &str, &str)],
    ) -> String {
        let params = params
            .iter()
            .map(|(k, v, t)| WireParam {
                key: (*k).to_string(),
                value: (*v).to_string(),
                param_type: Some((*t).to_string()),
            })
            .collect();
        self.shared.insert_record(task_id, start_time, params)
    }

    /// The service's clock now.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.shared.now()
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Stops accepting, lets in-flight requests finish (hung ones are answered 504 at once)
    /// for up to 5 s, then closes every connection.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        if let Some(task) = self.task.take() {
            // The loop never panics by design; a JoinError would only repeat a panic message.
            let _ = task.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// Runs an emulator until `shutdown` resolves. Prints `emulator listening on http://ADDR` to
/// stdout once bound.
pub async fn serve_until(
    config: EmulatorConfig,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let emulator = Emulator::start(config, addr).await?;
    println!("emulator listening on {}", emulator.base_url());
    shutdown.await;
    emulator.shutdown().await;
    Ok(())
}

/// Accepts connections until cancelled, then drains them.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shared.cancel.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "emulator: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!("emulator: connections still open after the grace period, closing them");
        connections.shutdown().await;
    }
}

/// Serves one connection; on shutdown, finishes the request in flight and closes.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let cancel = shared.cancel.clone();
    let service = service_fn(move |req| service::handle(Arc::clone(&shared), req));
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let finished = tokio::select! {
        result = connection.as_mut() => Some(result),
        () = cancel.cancelled() => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            connection.as_mut().await
        }
    };
    if let Err(error) = result {
        // Dropped-connection faults, clients going away and malformed requests end up here.
        tracing::debug!(%error, "emulator: connection ended with an error");
    }
}
