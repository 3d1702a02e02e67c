//! Prometheus metrics: process-wide counters and gauges the executor and the daemon update,
//! rendered in the text exposition format and served on `--metrics-listen ADDR` at `/metrics`.
//! The only module that serves metrics; it never sees a secret (labels are plan names,
//! outcomes and HTTP statuses).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The process-wide metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    start_calls: Mutex<BTreeMap<(String, String), u64>>,
    retries: AtomicU64,
    limiter_wait_micros: AtomicU64,
    runs: Mutex<BTreeMap<(String, String), u64>>,
    last_run: Mutex<BTreeMap<String, (DateTime<Utc>, String)>>,
    next_fire: Mutex<BTreeMap<String, DateTime<Utc>>>,
    plans: Mutex<(u64, u64, u64)>,
    /// High availability: whether this node leads (`None`: no cluster), lease renewals and
    /// failed renewals, takeovers.
    ha_leader: Mutex<Option<bool>>,
    lease_renewals: AtomicU64,
    lease_failures: AtomicU64,
    takeovers: AtomicU64,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Metrics {
    /// A start call ended with `outcome` (`started`, `retryable`, `final`, `unknown`).
    pub fn start_call(&self, outcome: &str, status: Option<u16>) {
        let status = status.map_or_else(|| "none".to_string(), |s| s.to_string());
        if let Ok(mut m) = self.start_calls.lock() {
            *m.entry((outcome.to_string(), status)).or_default() += 1;
        }
    }

    /// A start call is being retried.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Time a caller waited for the rate limiter.
    pub fn limiter_wait(&self, waited: std::time::Duration) {
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.limiter_wait_micros
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// A run of `plan` ended with `status`.
    pub fn run_finished(&self, plan: &str, status: &str, at: DateTime<Utc>) {
        if let Ok(mut m) = self.runs.lock() {
            *m.entry((plan.to_string(), status.to_string())).or_default() += 1;
        }
        if let Ok(mut m) = self.last_run.lock() {
            m.insert(plan.to_string(), (at, status.to_string()));
        }
    }

    /// Updates the next fire times of one daemon's plans: `gone` are the plans it published
    /// before and schedules no more. Other plans' entries are left alone (the registry is per
    /// process; a test process may hold several daemons).
    pub fn update_next_fires(
        &self,
        gone: impl IntoIterator<Item = String>,
        fires: impl IntoIterator<Item = (String, DateTime<Utc>)>,
    ) {
        if let Ok(mut m) = self.next_fire.lock() {
            for name in gone {
                m.remove(&name);
            }
            m.extend(fires);
        }
    }

    /// Plans loaded, scheduled, invalid.
    pub fn set_plans(&self, loaded: u64, scheduled: u64, invalid: u64) {
        if let Ok(mut m) = self.plans.lock() {
            *m = (loaded, scheduled, invalid);
        }
    }

    /// Whether this cluster node leads now.
    pub fn ha_leader(&self, leads: bool) {
        if let Ok(mut m) = self.ha_leader.lock() {
            *m = Some(leads);
        }
    }

    /// A lease renewal succeeded (`true`) or failed.
    pub fn lease_renewal(&self, ok: bool) {
        let counter = if ok {
            &self.lease_renewals
        } else {
            &self.lease_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// This node took the lead.
    pub fn takeover(&self) {
        self.takeovers.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let o = &mut out;
        if let Ok(Some(leads)) = self.ha_leader.lock().map(|m| *m) {
            header(
                o,
                "deployd_ha_leader",
                "gauge",
                "1 when this cluster node leads.",
            );
            sample(o, "deployd_ha_leader", "", u64::from(leads));
            header(
                o,
                "deployd_ha_lease_renewals_total",
                "counter",
                "Lease renewals that succeeded.",
            );
            let renewals = self.lease_renewals.load(Ordering::Relaxed);
            sample(o, "deployd_ha_lease_renewals_total", "", renewals);
            header(
                o,
                "deployd_ha_lease_renewal_failures_total",
                "counter",
                "Lease renewals that failed (error, timeout, or the lead taken).",
            );
            let failures = self.lease_failures.load(Ordering::Relaxed);
            sample(o, "deployd_ha_lease_renewal_failures_total", "", failures);
            header(
                o,
                "deployd_ha_takeovers_total",
                "counter",
                "Times this node took the lead.",
            );
            let takeovers = self.takeovers.load(Ordering::Relaxed);
            sample(o, "deployd_ha_takeovers_total", "", takeovers);
        }
        header(o, "deployd_build_info", "gauge", "Build information.");
        sample(
            o,
            "deployd_build_info",
            &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
            1,
        );

        header(
            o,
            "deployd_start_calls_total",
            "counter",
            "Start calls by outcome and HTTP status.",
        );
        if let Ok(m) = self.start_calls.lock() {
            for ((outcome, status), v) in m.iter() {
                sample(
                    o,
                    "deployd_start_calls_total",
                    &format!("outcome=\"{outcome}\",status=\"{status}\""),
                    v,
                );
            }
        }
        header(
            o,
            "deployd_retries_total",
            "counter",
            "Start calls retried.",
        );
        sample(
            o,
            "deployd_retries_total",
            "",
            self.retries.load(Ordering::Relaxed),
        );
        header(
            o,
            "deployd_rate_limiter_wait_seconds_total",
            "counter",
            "Time API calls spent waiting for the rate limiter.",
        );
        let waited = self.limiter_wait_micros.load(Ordering::Relaxed) as f64 / 1e6;
        sample(o, "deployd_rate_limiter_wait_seconds_total", "", waited);

        header(
            o,
            "deployd_runs_total",
            "counter",
            "Runs by plan and status.",
        );
        if let Ok(m) = self.runs.lock() {
            for ((plan, status), v) in m.iter() {
                sample(
                    o,
                    "deployd_runs_total",
                    &format!("plan=\"{}\",status=\"{status}\"", escape(plan)),
                    v,
                );
            }
        }
        if let Ok(m) = self.last_run.lock() {
            header(
                o,
                "deployd_last_run_timestamp_seconds",
                "gauge",
                "When the last run of a plan ended.",
            );
            for (plan, (at, _)) in m.iter() {
                sample(
                    o,
                    "deployd_last_run_timestamp_seconds",
                    &format!("plan=\"{}\"", escape(plan)),
                    at.timestamp(),
                );
            }
            header(
                o,
                "deployd_last_run_status",
                "gauge",
                "Status of the last run of a plan (1 on the status it had).",
            );
            for (plan, (_, status)) in m.iter() {
                sample(
                    o,
                    "deployd_last_run_status",
                    &format!("plan=\"{}\",status=\"{status}\"", escape(plan)),
                    1,
                );
            }
        }
        header(
            o,
            "deployd_next_fire_timestamp_seconds",
            "gauge",
            "The next fire time of a scheduled plan.",
        );
        if let Ok(m) = self.next_fire.lock() {
            for (plan, at) in m.iter() {
                sample(
                    o,
                    "deployd_next_fire_timestamp_seconds",
                    &format!("plan=\"{}\"", escape(plan)),
                    at.timestamp(),
                );
            }
        }
        header(o, "deployd_plans", "gauge", "Plans by state.");
        if let Ok(p) = self.plans.lock() {
            sample(o, "deployd_plans", "state=\"loaded\"", p.0);
            sample(o, "deployd_plans", "state=\"scheduled\"", p.1);
            sample(o, "deployd_plans", "state=\"invalid\"", p.2);
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// Label values are plan names (`[A-Za-z0-9._-]`), but escape anyway.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` on `addr` until `stop` is cancelled. Returns once bound.
///
/// Any local user can connect, so no client may hold the listener: a connection gets
/// [`HEADER_TIMEOUT`] to send its request headers and [`CONNECTION_TIMEOUT`] in all (one
/// request per connection), and when [`MAX_CONNECTIONS`] are open, a new connection closes the
/// oldest one that has not sent a request yet. Idle connections never lock scrapers out.
pub async fn serve(addr: SocketAddr, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let open = std::sync::Arc::new(Connections::default());
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of file descriptors, most likely: do not spin.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // A bounded number of connections at once: the oldest idle one makes room; when
            // every one is answering a request (each done within its timeout), the new one
            // is closed at once.
            let Some(conn) = open.admit() else {
                continue;
            };
            let open = open.clone();
            tokio::spawn(async move {
                let busy = conn.busy.clone();
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    busy.store(true, Ordering::Relaxed);
                    async move {
                        let (status, body) = if req.uri().path() == "/metrics" {
                            (StatusCode::OK, global().render())
                        } else {
                            (StatusCode::NOT_FOUND, "see /metrics\n".to_string())
                        };
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = status;
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
                let connection = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn.close.cancelled() => {}
                    _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection) => {}
                }
                open.remove(conn.id);
            });
        }
    });
    Ok(local)
}

/// Connections open at most at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a connection has to send its request headers.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Time a connection may stay open in all (one request, its answer).
pub const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The open connections of the metrics listener, oldest first.
#[derive(Default)]
struct Connections {
    open: Mutex<(u64, std::collections::VecDeque<Conn>)>,
}

/// One open connection.
#[derive(Clone)]
struct Conn {
    id: u64,
    /// Set once its request headers arrived.
    busy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Cancelled to close it and make room.
    close: CancellationToken,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, std::collections::VecDeque<Conn>)> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a new connection, closing the oldest idle one when full; `None` when every
    /// open connection is busy with a request.
    fn admit(&self) -> Option<Conn> {
        let mut guard = self.lock();
        let (next, open) = &mut *guard;
        if open.len() >= MAX_CONNECTIONS {
            let idle = open.iter().position(|c| !c.busy.load(Ordering::Relaxed))?;
            if let Some(evicted) = open.remove(idle) {
                evicted.close.cancel();
            }
        }
        *next += 1;
        let conn = Conn {
            id: *next,
            busy: Default::default(),
            close: CancellationToken::new(),
        };
        open.push_back(conn.clone());
        Some(conn)
    }

    fn remove(&self, id: u64) {
        self.lock().1.retain(|c| c.id != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn scrape(addr: SocketAddr) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("read");
        text
    }

    /// Issue 11: 64 idle connections locked every scrape out for as long as they were held.
    #[tokio::test]
    async fn idle_connections_never_lock_scrapers_out() {
        let stop = CancellationToken::new();
        let addr = serve("127.0.0.1:0".parse().expect("addr"), stop.clone())
            .await
            .expect("bound");
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 8 {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        // The scrape comes after every idle connection in the accept queue.
        for _ in 0..3 {
            let answer = tokio::time::timeout(std::time::Duration::from_secs(3), scrape(addr))
                .await
                .expect("answered at once");
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.contains("deployd_build_info"));
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn idle_and_slow_connections_are_closed() {
        let stop = CancellationToken::new();
        let addr = serve("127.0.0.1:0".parse().expect("addr"), stop.clone())
            .await
            .expect("bound");
        let started = tokio::time::Instant::now();
        let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(8), idle.read(&mut buf))
            .await
            .expect("closed after the header timeout")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        assert!(started.elapsed() >= HEADER_TIMEOUT - std::time::Duration::from_millis(100));

        // One header byte a second: closed by the header timeout too, whatever it sends.
        let started = tokio::time::Instant::now();
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let closed = async {
            for b in b"GET /metrics HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaa".iter() {
                if slow.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        };
        tokio::time::timeout(
            CONNECTION_TIMEOUT + std::time::Duration::from_secs(2),
            closed,
        )
        .await
        .expect("the slow client is cut off");
        assert!(started.elapsed() <= CONNECTION_TIMEOUT + std::time::Duration::from_secs(2));
        stop.cancel();
    }

    #[test]
    fn renders_every_family() {
        let m = Metrics::default();
        m.start_call("started", Some(200));
        m.start_call("retryable", Some(503));
        m.start_call("retryable", None);
        m.retry();
        m.limiter_wait(std::time::Duration::from_millis(1500));
        m.run_finished(
            "web",
            "succeeded",
            DateTime::from_timestamp(1_800_000_000, 0).expect("t"),
        );
        m.update_next_fires(
            Vec::new(),
            [(
                "nightly".to_string(),
                DateTime::from_timestamp(1_800_003_600, 0).expect("t"),
            )],
        );
        m.set_plans(3, 1, 2);
        let text = m.render();
        for line in [
            "deployd_start_calls_total{outcome=\"started\",status=\"200\"} 1",
            "deployd_start_calls_total{outcome=\"retryable\",status=\"none\"} 1",
            "deployd_retries_total 1",
            "deployd_rate_limiter_wait_seconds_total 1.5",
            "deployd_runs_total{plan=\"web\",status=\"succeeded\"} 1",
            "deployd_last_run_timestamp_seconds{plan=\"web\"} 1800000000",
            "deployd_last_run_status{plan=\"web\",status=\"succeeded\"} 1",
            "deployd_next_fire_timestamp_seconds{plan=\"nightly\"} 1800003600",
            "deployd_plans{state=\"invalid\"} 2",
            "deployd_build_info{version=",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // Every sample belongs to a family announced with TYPE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().expect("name");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}
