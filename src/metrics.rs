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

/// Scrapers served at once.
const MAX_CONNECTIONS: usize = 64;

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

    /// The next fire times of the scheduled plans (replaces the previous set).
    pub fn set_next_fires(&self, fires: impl IntoIterator<Item = (String, DateTime<Utc>)>) {
        if let Ok(mut m) = self.next_fire.lock() {
            *m = fires.into_iter().collect();
        }
    }

    /// Plans loaded, scheduled, invalid.
    pub fn set_plans(&self, loaded: u64, scheduled: u64, invalid: u64) {
        if let Ok(mut m) = self.plans.lock() {
            *m = (loaded, scheduled, invalid);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let o = &mut out;
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
pub async fn serve(addr: SocketAddr, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
            // A bounded number of scrapers at once; the rest are closed at once.
            let Ok(slot) = connections.clone().try_acquire_owned() else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
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
                });
                let connection = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                // An idle or slow client is dropped after a while.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(30), connection).await;
                drop(slot);
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        m.set_next_fires([(
            "nightly".to_string(),
            DateTime::from_timestamp(1_800_003_600, 0).expect("t"),
        )]);
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
