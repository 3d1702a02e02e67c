//! The emulator's mutable state: deployment records, issued IAM tokens, the request log, the
//! counters, the rate limiter and the fault RNG. Plain data behind one mutex in the service;
//! no I/O and no async here, so every piece is testable with explicit instants.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};
use hyper::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::config::EmulatorConfig;
use super::validate::WireParam;

/// Formats a time the way CodeArts Deploy does: `yyyy-MM-dd HH:mm:ss` in the service's zone.
pub fn service_time(t: DateTime<Utc>, zone: FixedOffset) -> String {
    t.with_timezone(&zone)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// The `Date` header of an answer (RFC 9110 IMF-fixdate).
pub fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// 32 random lowercase hex digits (record ids, request ids).
pub fn hex32() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

/// A request the emulator accepted, i.e. one that created a deployment record.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// 1-based order of acceptance.
    pub seq: u64,
    /// When the request arrived (before any injected latency).
    pub received_at: DateTime<Utc>,
    /// The `X-Request-Id` answered.
    pub request_id: String,
    /// HTTP method.
    pub method: String,
    /// Request path (without the query).
    pub path: String,
    /// Task id from the path.
    pub task_id: String,
    /// The record id created.
    pub record_id: String,
    /// Who made the call: `token`, `iam:<domain>/<user>` or `anonymous`.
    pub principal: String,
    /// Headers in arrival order, names lowercased; token and signature values are `***`.
    pub headers: Vec<(String, String)>,
    /// The raw body, decoded as UTF-8 (lossily).
    pub body: String,
    /// The params parsed from the body.
    pub params: Vec<WireParam>,
    /// `trigger_source`, when sent.
    pub trigger_source: Option<String>,
    /// `record_id` of the body (a rollback target), when sent.
    pub rollback_record_id: Option<String>,
}

impl LoggedRequest {
    /// This entry with the values of `encrypt` params replaced by `***`, in the params and in
    /// the body, for `GET /_emulator/log` (any local user can read it).
    pub fn masked(&self) -> Self {
        let mut out = self.clone();
        for p in &mut out.params {
            if p.param_type.as_deref() == Some(crate::api::rules::ParamType::Encrypt.as_str())
                && !p.value.is_empty()
            {
                for encoded in [
                    crate::api::wire::json_string(&p.value),
                    serde_json::Value::from(p.value.clone()).to_string(),
                ] {
                    out.body = out.body.replace(&encoded, "\"***\"");
                }
                p.value = "***".into();
            }
        }
        out
    }
}

impl std::fmt::Debug for LoggedRequest {
    // The body may hold `encrypt` values: print its size, and the params masked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedRequest")
            .field("seq", &self.seq)
            .field("received_at", &self.received_at)
            .field("request_id", &self.request_id)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("task_id", &self.task_id)
            .field("record_id", &self.record_id)
            .field("principal", &self.principal)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("params", &self.params)
            .field("trigger_source", &self.trigger_source)
            .field("rollback_record_id", &self.rollback_record_id)
            .finish()
    }
}

/// Counters over every API request (`/_emulator/*` excluded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests received.
    pub total: u64,
    /// Responses sent, by HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Deployment records created.
    pub accepted: u64,
    /// Connections closed unanswered before processing.
    pub dropped_before: u64,
    /// Connections closed unanswered after processing.
    pub dropped_after: u64,
    /// Requests held open by the hang fault.
    pub hung: u64,
    /// IAM tokens issued by `POST /v3/auth/tokens`.
    #[serde(default)]
    pub tokens_issued: u64,
    /// IAM token requests received (issued or refused).
    #[serde(default)]
    pub token_requests: u64,
    /// Requests refused by authentication (any 401).
    #[serde(default)]
    pub auth_failures: u64,
    /// Requests being served now (from their arrival to their answer or dropped
    /// connection): a client's calls in flight, as the service sees them.
    #[serde(default)]
    pub in_flight: u64,
    /// The most requests ever served at once: a client that keeps its concurrency limit
    /// never exceeds it (a request is in flight here for less time than at the client).
    #[serde(default)]
    pub max_in_flight: u64,
}

impl Stats {
    /// How many responses had this status.
    pub fn status(&self, code: u16) -> u64 {
        self.by_status.get(&code).copied().unwrap_or(0)
    }

    /// Connections closed without a response, both flavours.
    pub fn dropped(&self) -> u64 {
        self.dropped_before + self.dropped_after
    }
}

/// Where a deployment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Still deploying.
    Running,
    /// Ended well.
    Succeeded,
    /// Ended badly.
    Failed,
}

impl Phase {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// One deployment record.
#[derive(Debug, Clone)]
pub struct Record {
    /// Record id (32 lowercase hex).
    pub id: String,
    /// Task id.
    pub task_id: String,
    /// `job_<task_id>_<millis>`.
    pub job_name: String,
    /// Per-task sequence number, from 1.
    pub release_id: u64,
    /// Monotonic start, for the phase.
    pub started: Instant,
    /// Wall-clock start.
    pub start_time: DateTime<Utc>,
    /// Whether the deployment ends `failed`.
    pub fails: bool,
    /// The caller's user name.
    pub operator: String,
    /// Whether the start call asked for a rollback (`record_id` given).
    pub rollback: bool,
    /// The params the start call carried (`ShowExecutionParams` answers them).
    pub params: Vec<WireParam>,
}

impl Record {
    /// The phase at `now`, given how long deployments take.
    pub fn phase(&self, now: Instant, deploy: Duration) -> Phase {
        if now.saturating_duration_since(self.started) < deploy {
            Phase::Running
        } else if self.fails {
            Phase::Failed
        } else {
            Phase::Succeeded
        }
    }

    /// The wall-clock end, once finished.
    pub fn end_time(&self, now: Instant, deploy: Duration) -> Option<DateTime<Utc>> {
        match self.phase(now, deploy) {
            Phase::Running => None,
            _ => chrono::Duration::from_std(deploy)
                .ok()
                .and_then(|d| self.start_time.checked_add_signed(d)),
        }
    }

    /// Elapsed deployment time as `HH:mm:ss` (capped at the deployment duration).
    pub fn duration_text(&self, now: Instant, deploy: Duration) -> String {
        let secs = now
            .saturating_duration_since(self.started)
            .min(deploy)
            .as_secs();
        format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    }
}

/// A token issued by the IAM endpoint.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// `<domain>/<user>`.
    pub user: String,
    /// When it stops being accepted.
    pub expires: Instant,
}

/// Failed AK/SK signatures of one access key.
#[derive(Debug, Clone, Default)]
pub struct AkFailures {
    /// Failures in a row since the last success or lock.
    pub consecutive: u32,
    /// Until when every request with this AK is refused.
    pub locked_until: Option<Instant>,
}

impl AkFailures {
    /// Whether the key is locked at `now`.
    pub fn locked(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|until| now < until)
    }

    /// Counts a failure; more than `max` in a row locks the key for `lock`. True if it locked.
    pub fn fail(&mut self, now: Instant, max: u32, lock: Duration) -> bool {
        self.consecutive += 1;
        if self.consecutive > max {
            self.consecutive = 0;
            self.locked_until = Some(now + lock);
            true
        } else {
            false
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `capacity` banked.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket with burst `ceil(rate)`, at least 1.
    pub fn new(rate: f64, now: Instant) -> Self {
        let capacity = rate.ceil().max(1.0);
        Self {
            rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes one token if there is one.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The faults drawn for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// Close the connection before processing.
    pub drop_before: bool,
    /// Hold the request open.
    pub hang: bool,
    /// Answer this error instead of processing.
    pub error: Option<StatusCode>,
    /// Close the connection after processing.
    pub drop_after: bool,
    /// Extra latency.
    pub jitter: Duration,
    /// Answer 429 with `Retry-After` of this many seconds instead of processing (scripted).
    pub throttled: Option<u32>,
}

impl Faults {
    /// Draws the faults of one request. Always draws the same number of values, so that with a
    /// seed the n-th request gets the same faults whatever the earlier ones were.
    pub fn roll(rng: &mut impl Rng, config: &EmulatorConfig) -> Self {
        let draws: [f64; 6] = rng.random();
        Self {
            drop_before: draws[0] < config.drop_before_rate,
            hang: draws[1] < config.hang_rate,
            error: (draws[2] < config.error_rate).then_some(if draws[3] < 0.5 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            }),
            drop_after: draws[4] < config.drop_after_rate,
            jitter: config.latency_jitter.mul_f64(draws[5]),
            throttled: None,
        }
    }
}

/// Everything that changes while the emulator runs.
pub struct Store {
    /// Records by id.
    pub records: HashMap<String, Record>,
    /// Record ids by task, oldest first.
    pub by_task: HashMap<String, Vec<String>>,
    /// Issued IAM tokens (expired ones stay, to answer APIGW.0307 rather than 0301).
    pub tokens: HashMap<String, IssuedToken>,
    /// Failed signatures and locks, by access key id.
    pub ak_failures: HashMap<String, AkFailures>,
    /// Accepted requests.
    pub log: Vec<LoggedRequest>,
    /// Counters.
    pub stats: Stats,
    /// The rate limiter, when configured.
    pub limiter: Option<TokenBucket>,
    /// The fault RNG.
    pub rng: StdRng,
    /// Scripted faults of the next start calls, per task id.
    pub start_script: Vec<(String, super::config::ScriptedFault)>,
    /// Scripted faults of the next queries, per task id.
    pub query_script: Vec<(String, super::config::ScriptedFault)>,
}

impl Store {
    /// Fresh state for a configuration.
    pub fn new(config: &EmulatorConfig) -> Self {
        Self {
            records: HashMap::new(),
            by_task: HashMap::new(),
            tokens: HashMap::new(),
            ak_failures: HashMap::new(),
            log: Vec::new(),
            stats: Stats::default(),
            limiter: config
                .rate_limit
                .map(|r| TokenBucket::new(r, Instant::now())),
            rng: match config.seed {
                Some(seed) => StdRng::seed_from_u64(seed),
                None => StdRng::from_os_rng(),
            },
            start_script: config.start_script.clone(),
            query_script: config.query_script.clone(),
        }
    }

    /// The scripted fault of `task_id`'s next start call, if one is left.
    pub fn scripted_fault(&mut self, task_id: &str) -> Option<super::config::ScriptedFault> {
        let at = self.start_script.iter().position(|(t, _)| t == task_id)?;
        Some(self.start_script.remove(at).1)
    }

    /// The scripted fault of `task_id`'s next query, if one is left.
    pub fn scripted_query_fault(&mut self, task_id: &str) -> Option<super::config::ScriptedFault> {
        let at = self.query_script.iter().position(|(t, _)| t == task_id)?;
        Some(self.query_script.remove(at).1)
    }

    /// Creates a record for a task and returns a copy of it.
    pub fn create_record(
        &mut self,
        task_id: &str,
        operator: String,
        fails: bool,
        rollback: bool,
        params: Vec<WireParam>,
        start_time: DateTime<Utc>,
    ) -> Record {
        let ids = self.by_task.entry(task_id.to_owned()).or_default();
        let record = Record {
            id: hex32(),
            task_id: task_id.to_owned(),
            job_name: format!("job_{task_id}_{}", start_time.timestamp_millis()),
            release_id: ids.len() as u64 + 1,
            started: Instant::now(),
            start_time,
            fails,
            operator,
            rollback,
            params,
        };
        ids.push(record.id.clone());
        self.records.insert(record.id.clone(), record.clone());
        self.stats.accepted += 1;
        record
    }

    /// The records of a task, newest first.
    pub fn task_records(&self, task_id: &str) -> Vec<&Record> {
        self.by_task
            .get(task_id)
            .map(|ids| {
                ids.iter()
                    .rev()
                    .filter_map(|id| self.records.get(id))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::config::service_zone;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(2.0, t0);
        assert!(bucket.try_acquire(t0));
        assert!(bucket.try_acquire(t0));
        assert!(!bucket.try_acquire(t0));
        assert!(!bucket.try_acquire(t0 + Duration::from_millis(400)));
        assert!(bucket.try_acquire(t0 + Duration::from_millis(500)));
        // A long idle period banks at most the burst.
        let later = t0 + Duration::from_secs(60);
        assert!(bucket.try_acquire(later));
        assert!(bucket.try_acquire(later));
        assert!(!bucket.try_acquire(later));
    }

    #[test]
    fn fractional_rate_has_a_burst_of_one() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0.5, t0);
        assert!(bucket.try_acquire(t0));
        assert!(!bucket.try_acquire(t0 + Duration::from_millis(1900)));
        assert!(bucket.try_acquire(t0 + Duration::from_millis(2000)));
    }

    #[test]
    fn faults_follow_rates_and_seed() {
        let never = EmulatorConfig::default();
        let always = EmulatorConfig {
            error_rate: 1.0,
            drop_before_rate: 1.0,
            drop_after_rate: 1.0,
            hang_rate: 1.0,
            ..EmulatorConfig::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            assert_eq!(Faults::roll(&mut rng, &never), Faults::default());
            let f = Faults::roll(&mut rng, &always);
            assert!(f.drop_before && f.hang && f.drop_after && f.error.is_some());
        }
        let half = EmulatorConfig {
            error_rate: 0.5,
            ..EmulatorConfig::default()
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50)
                .map(|_| Faults::roll(&mut rng, &half))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        let errors = draw(9).iter().filter(|f| f.error.is_some()).count();
        assert!((5..45).contains(&errors), "{errors}");
    }

    #[test]
    fn record_phases() {
        let mut store = Store::new(&EmulatorConfig::default());
        let r = store.create_record("t", "op".into(), true, false, vec![], Utc::now());
        let d = Duration::from_secs(2);
        assert_eq!(r.phase(r.started, d), Phase::Running);
        assert_eq!(r.end_time(r.started, d), None);
        assert_eq!(r.phase(r.started + d, d), Phase::Failed);
        assert_eq!(
            r.duration_text(
                r.started + Duration::from_secs(3725),
                Duration::from_secs(4000)
            ),
            "01:02:05"
        );
        let r2 = store.create_record("t", "op".into(), false, false, vec![], Utc::now());
        assert_eq!(r2.release_id, 2);
        assert_eq!(r2.phase(r2.started + d, d), Phase::Succeeded);
        let newest: Vec<_> = store
            .task_records("t")
            .iter()
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(newest, vec![r2.id, r.id]);
        assert_eq!(store.stats.accepted, 2);
    }

    #[test]
    fn service_time_is_utc_plus_8() {
        let t = DateTime::parse_from_rfc3339("2024-03-15T20:30:00Z")
            .expect("valid")
            .with_timezone(&Utc);
        assert_eq!(service_time(t, service_zone()), "2024-03-16 04:30:00");
        let utc = FixedOffset::east_opt(0).expect("UTC");
        assert_eq!(service_time(t, utc), "2024-03-15 20:30:00");
        let nepal = FixedOffset::east_opt(5 * 3600 + 45 * 60).expect("UTC+5:45");
        assert_eq!(service_time(t, nepal), "2024-03-16 02:15:00");
        assert_eq!(
            http_date(t.with_timezone(&Utc)),
            "Fri, 15 Mar 2024 20:30:00 GMT"
        );
    }
}
