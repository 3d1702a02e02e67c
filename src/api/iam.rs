//! IAM tokens by password (API doc E1): `POST {iam}/v3/auth/tokens?nocatalog=true`, the token
//! from the `X-Subject-Token` header, its lifetime from `token.issued_at`/`expires_at`.
//!
//! [`IamTokenSource`] caches one token in memory and refreshes it well before it expires (see
//! [`refresh_margin`]). There is at most one request to IAM in flight however many calls want a
//! token at once: it runs as its own task, within the configured timeouts, and every caller that
//! needs a token waits for it and takes its result (single flight), even when IAM answers more
//! slowly than the refresh margin. While a due refresh is under way, a still valid token is used.
//! The answer is read up to 1 MiB. A refusal by IAM (400/401/403/404: wrong password, user
//! locked or unknown) is remembered and never retried, because IAM locks a user after repeated
//! wrong passwords. A failed refresh while the old token is still valid keeps the old token.
//!
//! The password only ever leaves this module in the request body; it is never logged, and the
//! token is only handed out as a [`Secret`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::body::{BodyError, IAM_LIMIT, read_limited};
use crate::api::endpoint::{ClientOptions, Endpoint, EndpointError};
use crate::api::errors::{parse_error_body, parse_retry_after};
use crate::api::pace::Pacer;
use crate::secret::Secret;

/// The smallest refresh margin for long-lived tokens.
pub const MIN_MARGIN: Duration = Duration::from_secs(60);

/// How long a failed refresh waits before the next attempt, while the old token is still good.
const RETRY_REFRESH_AFTER: Duration = Duration::from_secs(30);

/// The project a token is scoped to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectScope {
    /// `scope.project.id`.
    Id(String),
    /// `scope.project.name`: a region id such as `cn-north-4`.
    Name(String),
}

/// Validated `auth.iam` settings (built by `crate::settings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamConfig {
    /// IAM endpoint, e.g. `https://iam.cn-north-4.myhuaweicloud.com`.
    pub endpoint: Endpoint,
    /// Account (domain) name.
    pub domain: String,
    /// IAM user name.
    pub user: String,
    /// File with the user's password (relative paths are looked up in
    /// `$CREDENTIALS_DIRECTORY` first).
    pub password_file: PathBuf,
    /// Token scope.
    pub project: ProjectScope,
    /// Timeouts for the token request.
    pub options: ClientOptions,
}

/// `https://iam.{region}.myhuaweicloud.com`.
pub fn default_endpoint(region: &str) -> Result<Endpoint, EndpointError> {
    Endpoint::parse(&format!("https://iam.{region}.myhuaweicloud.com"))
}

/// How long before expiry a token of this lifetime is refreshed: a tenth of the lifetime, at
/// least [`MIN_MARGIN`], but never more than half the lifetime (short test lifetimes are
/// refreshed at half time). A 24 h token is refreshed after 21.6 h, a 2 s one after 1 s.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).max(MIN_MARGIN).min(lifetime / 2)
}

/// Why no token could be obtained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IamError {
    /// No answer from IAM (connect, timeout, connection lost).
    #[error("IAM token request to {url} failed: {message}")]
    Transport {
        /// The token URL.
        url: String,
        /// The transport error.
        message: String,
    },
    /// IAM answered with an error status.
    #[error("IAM refused the token request to {url}: HTTP {status}: {message}")]
    Refused {
        /// The token URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// IAM's message.
        message: String,
    },
    /// A success status without a usable token.
    #[error("IAM answer from {url} is unusable: {reason}")]
    BadAnswer {
        /// The token URL.
        url: String,
        /// What is missing.
        reason: String,
    },
    /// IAM refused these credentials before; they are not tried again.
    #[error(
        "{0} (not asked again, so that IAM does not lock the user; fix the credentials and restart or reload)"
    )]
    RefusedBefore(String),
    /// IAM failed moments ago and no token is cached: callers wait for the next attempt
    /// instead of each asking again.
    #[error("IAM is unavailable ({last}); next token request in {wait:?}")]
    BackingOff {
        /// The last failure.
        last: String,
        /// Time until the next request.
        wait: Duration,
    },
}

impl IamError {
    /// Whether asking again later may help (transport errors, 429 and 5xx).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::BadAnswer { .. } | Self::BackingOff { .. } => true,
            Self::Refused { status, .. } => *status == 429 || *status >= 500,
            Self::RefusedBefore(_) => false,
        }
    }
}

/// A token and when to refresh it.
struct CachedToken {
    token: Secret,
    refresh_at: Instant,
    expires: Instant,
}

/// What one token request hands to everyone waiting for it.
type FlightResult = Option<Result<Secret, IamError>>;

#[derive(Default)]
struct State {
    cached: Option<CachedToken>,
    /// Set when IAM refused the credentials: every later call fails with it.
    refused: Option<String>,
    /// After a failed request: no new attempt before this (the failure is shared with every
    /// caller meanwhile).
    next_attempt: Option<Instant>,
    /// The last failure and how many in a row (for the backoff without a cached token).
    last_failure: Option<(String, u32)>,
    /// The token request in flight, if any: every caller that needs a token waits on it
    /// instead of sending its own.
    flight: Option<watch::Receiver<FlightResult>>,
}

/// Obtains, caches and refreshes IAM tokens; shared by every request of a client.
pub struct IamTokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    url: String,
    domain: String,
    user: String,
    project: ProjectScope,
    password: Secret,
    /// The longest a token request may take, answer read included.
    timeout: Duration,
    state: StdMutex<State>,
    fetches: AtomicU64,
    /// The account's limits, which token requests go through like every other call (set by
    /// the limited client that uses these credentials; none in tests of the source alone).
    pacer: StdMutex<Option<Arc<dyn Pacer>>>,
}

impl std::fmt::Debug for IamTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IamTokenSource")
            .field("url", &self.inner.url)
            .field("domain", &self.inner.domain)
            .field("user", &self.inner.user)
            .field("project", &self.inner.project)
            .finish_non_exhaustive()
    }
}

impl IamTokenSource {
    /// A source for `config` with the user's `password`. Makes no request yet.
    pub fn new(config: &IamConfig, password: Secret) -> Result<Self, IamError> {
        let url = format!("{}/v3/auth/tokens?nocatalog=true", config.endpoint.as_str());
        let http = reqwest::Client::builder()
            .connect_timeout(config.options.connect_timeout)
            .timeout(config.options.request_timeout)
            .pool_idle_timeout(config.options.pool_idle_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| IamError::Transport {
                url: url.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                url,
                domain: config.domain.clone(),
                user: config.user.clone(),
                project: config.project.clone(),
                password,
                timeout: config.options.connect_timeout + config.options.request_timeout,
                state: StdMutex::new(State::default()),
                fetches: AtomicU64::new(0),
                pacer: StdMutex::new(None),
            }),
        })
    }

    /// The token URL (no secret in it).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// `domain/user`, for logs.
    pub fn who(&self) -> String {
        self.inner.who()
    }

    /// Makes every later token request take its turn in `pacer` and report its answer there
    /// (a 429 slows every caller down and its `Retry-After` pauses them). The last one set
    /// wins: a reload with new limits hands them over to a source it kept.
    pub fn pace_with(&self, pacer: Arc<dyn Pacer>) {
        *self
            .inner
            .pacer
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(pacer);
    }

    /// How many token requests were sent to IAM so far.
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Whether `other` asks IAM the same thing: same URL, user, scope and password. A reload
    /// with the same password keeps the old source (its token, and a refusal: IAM is not
    /// asked again with a password it refused).
    pub fn same_as(&self, other: &IamTokenSource) -> bool {
        let (a, b) = (&self.inner, &other.inner);
        a.url == b.url
            && a.domain == b.domain
            && a.user == b.user
            && a.project == b.project
            && a.password == b.password
    }

    /// A valid token: the cached one, or a new one when none is cached or the cached one is
    /// within its refresh margin. Concurrent callers share one request to IAM, which runs on
    /// its own (a caller that gives up does not cancel it for the others), within the
    /// configured timeouts; while a refresh is under way, a still valid token is used.
    pub async fn token(&self) -> Result<Secret, IamError> {
        let mut flight = {
            let mut state = self.inner.state();
            if let Some(reason) = &state.refused {
                return Err(IamError::RefusedBefore(reason.clone()));
            }
            let now = Instant::now();
            let backing_off = state.next_attempt.filter(|t| now < *t);
            let valid = state
                .cached
                .as_ref()
                .filter(|c| now < c.expires)
                .map(|c| (c.token.clone(), now < c.refresh_at));
            match valid {
                Some((token, true)) => return Ok(token),
                Some((token, false)) if backing_off.is_some() || state.flight.is_some() => {
                    return Ok(token);
                }
                _ => {}
            }
            match &state.flight {
                Some(flight) => flight.clone(),
                None => {
                    if let (Some(until), Some((last, _))) = (backing_off, &state.last_failure) {
                        // No usable token and IAM failed moments ago: share that failure.
                        return Err(IamError::BackingOff {
                            last: last.clone(),
                            wait: until - now,
                        });
                    }
                    let (tx, rx) = watch::channel(None);
                    state.flight = Some(rx.clone());
                    tokio::spawn(Arc::clone(&self.inner).fly(tx));
                    if let Some((token, _)) = valid {
                        // Due for a refresh but still valid: the refresh goes on meanwhile.
                        return Ok(token);
                    }
                    rx
                }
            }
        };
        let outcome = tokio::time::timeout(
            self.inner.timeout + Duration::from_secs(1),
            flight.wait_for(Option::is_some),
        )
        .await;
        match outcome {
            Ok(Ok(result)) => result
                .clone()
                .unwrap_or_else(|| Err(self.inner.no_answer())),
            _ => Err(self.inner.no_answer()),
        }
    }

    /// Drops the cached token if it is `used` (the API refused it), so that the next
    /// [`token`](Self::token) gets a new one. A token already replaced by another caller's
    /// refresh is left alone.
    pub async fn invalidate(&self, used: &Secret) {
        let mut state = self.inner.state();
        if state.cached.as_ref().is_some_and(|c| &c.token == used) {
            state.cached = None;
            state.next_attempt = None;
        }
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn who(&self) -> String {
        format!("{}/{}", self.domain, self.user)
    }

    fn no_answer(&self) -> IamError {
        IamError::Transport {
            url: self.url.clone(),
            message: format!("no answer within {:?}", self.timeout),
        }
    }

    /// One token request, its outcome recorded in the state and handed to every waiter.
    async fn fly(self: Arc<Self>, tx: watch::Sender<FlightResult>) {
        let pacer = self
            .pacer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // The wait for a turn (a `Retry-After` pause in force) counts in the request's time:
        // callers wait for the flight no longer than that.
        let paced_fetch = async {
            if let Some(pacer) = &pacer {
                pacer.turn().await;
            }
            self.fetch(pacer.as_deref()).await
        };
        let result = tokio::time::timeout(self.timeout, paced_fetch)
            .await
            .unwrap_or_else(|_| Err(self.no_answer()));
        let mut state = self.state();
        state.flight = None;
        let shared = match result {
            Ok(fresh) => {
                let token = fresh.token.clone();
                state.cached = Some(fresh);
                state.next_attempt = None;
                state.last_failure = None;
                Ok(token)
            }
            Err(e) if !e.retryable() => {
                tracing::error!(user = %self.who(), "{e}");
                state.refused = Some(e.to_string());
                state.cached = None;
                Err(e)
            }
            Err(e) => {
                let now = Instant::now();
                let failures = state.last_failure.as_ref().map_or(0, |f| f.1) + 1;
                state.last_failure = Some((e.to_string(), failures));
                match state.cached.as_ref().filter(|c| now < c.expires) {
                    None => {
                        // 1 s, doubling up to 30 s, between requests while IAM keeps failing.
                        let wait =
                            Duration::from_secs(1u64 << failures.min(5)).min(RETRY_REFRESH_AFTER);
                        state.next_attempt = Some(now + wait);
                        Err(e)
                    }
                    Some(old) => {
                        tracing::warn!(
                            user = %self.who(),
                            "{e}; keeping the current token, which is still valid for {:?}",
                            old.expires.saturating_duration_since(now)
                        );
                        let token = old.token.clone();
                        state.next_attempt = Some(now + RETRY_REFRESH_AFTER);
                        Ok(token)
                    }
                }
            }
        };
        drop(state);
        tx.send_replace(Some(shared));
    }

    /// One token request; its answer is reported to `pacer`.
    async fn fetch(&self, pacer: Option<&dyn Pacer>) -> Result<CachedToken, IamError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let scope = match &self.project {
            ProjectScope::Id(id) => json!({"id": id}),
            ProjectScope::Name(name) => json!({"name": name}),
        };
        let body = Secret::new(
            json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "domain": {"name": self.domain},
                    "name": self.user,
                    "password": self.password.expose(),
                }}},
                "scope": {"project": scope},
            }})
            .to_string(),
        );
        let sent = Instant::now();
        let transport = |e: reqwest::Error| IamError::Transport {
            url: self.url.clone(),
            message: error_chain(&e),
        };
        let response = self
            .http
            .post(&self.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/json;charset=utf8",
            )
            .body(body.expose().to_owned())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if let Some(pacer) = pacer {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, Utc::now()));
            pacer.answered(Some(status.as_u16()), retry_after);
        }
        let subject = response
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = read_limited(
            response,
            IAM_LIMIT,
            self.timeout.saturating_sub(sent.elapsed()),
        )
        .await
        .map_err(|e| match e {
            BodyError::Transport(e) => transport(e),
            other => IamError::Transport {
                url: self.url.clone(),
                message: format!("HTTP {}: {other}", status.as_u16()),
            },
        })?;
        if !status.is_success() {
            let (code, message) = parse_error_body(&bytes);
            let message = message
                .or(code)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
            return Err(IamError::Refused {
                url: self.url.clone(),
                status: status.as_u16(),
                message: message.replace(self.password.expose(), "***"),
            });
        }
        let bad = |reason: &str| IamError::BadAnswer {
            url: self.url.clone(),
            reason: reason.to_owned(),
        };
        let token = subject
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no X-Subject-Token header"))?;
        let lifetime = token_lifetime(&bytes, Utc::now()).map_err(|r| bad(&r))?;
        let margin = refresh_margin(lifetime);
        tracing::info!(
            user = %self.who(),
            "IAM token obtained, valid for {lifetime:?}; it will be refreshed after {:?}",
            lifetime - margin
        );
        Ok(CachedToken {
            token: Secret::new(token),
            refresh_at: sent + (lifetime - margin),
            expires: sent + lifetime,
        })
    }
}

/// The lifetime of a token from its body: `expires_at - issued_at` (both from IAM's clock, so a
/// skewed local clock does not matter), or `expires_at - now` without `issued_at`.
pub fn token_lifetime(body: &[u8], now: DateTime<Utc>) -> Result<Duration, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let time = |field: &str| {
        value["token"][field]
            .as_str()
            .map(|t| DateTime::parse_from_rfc3339(t).map(|t| t.with_timezone(&Utc)))
    };
    let expires = time("expires_at")
        .ok_or("no token.expires_at")?
        .map_err(|e| format!("token.expires_at: {e}"))?;
    let start = match time("issued_at") {
        Some(Ok(issued)) => issued,
        _ => now,
    };
    (expires - start)
        .to_std()
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "the token has already expired".to_owned())
}

/// An error and its sources, `: `-separated (reqwest names the URL, which holds no secret).
fn error_chain(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::{Emulator, EmulatorConfig, IamUser};
    use std::sync::Arc;

    #[test]
    fn margins_are_a_tenth_at_least_a_minute_at_most_half() {
        let s = Duration::from_secs;
        for (lifetime, margin) in [
            (s(86_400), s(8_640)),
            (s(3_600), s(360)),
            (s(600), s(60)),
            (s(300), s(60)),
            (s(90), s(45)),
            (s(2), s(1)),
            (Duration::ZERO, Duration::ZERO),
        ] {
            assert_eq!(refresh_margin(lifetime), margin, "{lifetime:?}");
        }
    }

    #[test]
    fn lifetime_comes_from_iams_own_clock() {
        let now = Utc::now();
        let body = br#"{"token": {"issued_at": "2019-02-13T06:52:13.855000Z", "expires_at": "2019-02-14T06:52:13.855000Z"}}"#;
        assert_eq!(token_lifetime(body, now), Ok(Duration::from_secs(86_400)));
        let expires = (now + chrono::TimeDelta::seconds(100)).to_rfc3339();
        let body = json!({"token": {"expires_at": expires}}).to_string();
        let d = token_lifetime(body.as_bytes(), now).expect("valid");
        assert!(
            d > Duration::from_secs(99) && d <= Duration::from_secs(100),
            "{d:?}"
        );
        for bad in [
            &b"nope"[..],
            br#"{"token": {}}"#,
            br#"{"token": {"expires_at": "tomorrow"}}"#,
            br#"{"token": {"issued_at": "2019-02-14T06:52:13Z", "expires_at": "2019-02-13T06:52:13Z"}}"#,
        ] {
            assert!(token_lifetime(bad, now).is_err());
        }
    }

    async fn emulator(lifetime: Duration) -> Emulator {
        let config = EmulatorConfig {
            token_lifetime: lifetime,
            users: vec![IamUser::new("acme", "bob", "pw-SECRET")],
            ..EmulatorConfig::default()
        };
        Emulator::start(config, "127.0.0.1:0".parse().expect("address"))
            .await
            .expect("emulator starts")
    }

    fn source(emu: &Emulator, password: &str) -> Arc<IamTokenSource> {
        let config = IamConfig {
            endpoint: Endpoint::parse(&emu.base_url()).expect("loopback endpoint"),
            domain: "acme".into(),
            user: "bob".into(),
            password_file: PathBuf::new(),
            project: ProjectScope::Name("cn-north-4".into()),
            options: ClientOptions::default(),
        };
        Arc::new(IamTokenSource::new(&config, Secret::new(password)).expect("builds"))
    }

    /// Records what token requests tell the account's limits.
    #[derive(Default)]
    struct Recorder {
        turns: AtomicU64,
        answers: StdMutex<Vec<(Option<u16>, Option<Duration>)>>,
    }

    impl Pacer for Recorder {
        fn turn(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            self.turns.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {})
        }

        fn answered(&self, status: Option<u16>, retry_after: Option<Duration>) {
            self.answers
                .lock()
                .expect("lock")
                .push((status, retry_after));
        }
    }

    #[tokio::test]
    async fn token_requests_take_their_turn_and_report_their_answer() {
        let emu = emulator(Duration::from_secs(3600)).await;
        let src = source(&emu, "pw-SECRET");
        let recorder = Arc::new(Recorder::default());
        src.pace_with(recorder.clone());
        src.token().await.expect("a token");
        assert_eq!(recorder.turns.load(Ordering::SeqCst), 1);
        assert_eq!(*recorder.answers.lock().expect("lock"), [(Some(201), None)]);

        // A throttled IAM: its 429 and Retry-After reach the limits.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 8192];
            let _ = stream.read(&mut buf).await;
            let body = r#"{"error_code":"APIGW.0308","error_msg":"throttled"}"#;
            let raw = format!(
                "HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(raw.as_bytes()).await;
        });
        let config = IamConfig {
            endpoint: Endpoint::parse(&format!("http://{addr}")).expect("endpoint"),
            domain: "acme".into(),
            user: "bob".into(),
            password_file: PathBuf::new(),
            project: ProjectScope::Name("cn-north-4".into()),
            options: ClientOptions::default(),
        };
        let throttled = IamTokenSource::new(&config, Secret::new("pw")).expect("builds");
        let recorder = Arc::new(Recorder::default());
        throttled.pace_with(recorder.clone());
        let err = throttled.token().await.expect_err("throttled");
        assert!(err.retryable(), "{err}");
        assert_eq!(
            *recorder.answers.lock().expect("lock"),
            [(Some(429), Some(Duration::from_secs(7)))]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_request() {
        let emu = emulator(Duration::from_secs(3600)).await;
        let src = source(&emu, "pw-SECRET");
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let src = Arc::clone(&src);
            calls.spawn(async move { src.token().await });
        }
        let mut tokens = Vec::new();
        while let Some(joined) = calls.join_next().await {
            tokens.push(joined.expect("no panic").expect("a token"));
        }
        assert_eq!(src.fetches(), 1);
        assert_eq!(emu.stats().tokens_issued, 1);
        assert!(tokens.iter().all(|t| t == &tokens[0]));

        // Invalidating a token that is not the current one changes nothing; the current one
        // makes the next caller fetch, once.
        src.invalidate(&Secret::new("some-other-token")).await;
        assert_eq!(src.token().await.expect("cached"), tokens[0]);
        assert_eq!(src.fetches(), 1);
        src.invalidate(&tokens[0]).await;
        let fresh = src.token().await.expect("new");
        assert_ne!(fresh, tokens[0]);
        assert_eq!((src.fetches(), emu.stats().tokens_issued), (2, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_iam_is_asked_once_for_every_caller_waiting() {
        // IAM answers in 1.5 s, later than the 1 s refresh margin of its 2 s tokens: each
        // token is due for a refresh when it arrives. Every caller waiting still takes it.
        let emu = Emulator::start(
            EmulatorConfig {
                token_lifetime: Duration::from_secs(2),
                iam_latency: Duration::from_millis(1500),
                users: vec![IamUser::new("acme", "bob", "pw-SECRET")],
                ..EmulatorConfig::default()
            },
            "127.0.0.1:0".parse().expect("address"),
        )
        .await
        .expect("emulator starts");
        let src = source(&emu, "pw-SECRET");
        let started = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..30 {
            let src = Arc::clone(&src);
            calls.spawn(async move { src.token().await });
        }
        let mut tokens = Vec::new();
        while let Some(joined) = calls.join_next().await {
            tokens.push(joined.expect("no panic").expect("a token"));
        }
        assert!(tokens.iter().all(|t| t == &tokens[0]));
        assert_eq!((src.fetches(), emu.stats().token_requests), (1, 1));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "one request, not one per caller: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_request_without_an_answer_times_out_once_for_everyone() {
        let emu = Emulator::start(
            EmulatorConfig {
                iam_latency: Duration::from_secs(30),
                users: vec![IamUser::new("acme", "bob", "pw-SECRET")],
                ..EmulatorConfig::default()
            },
            "127.0.0.1:0".parse().expect("address"),
        )
        .await
        .expect("emulator starts");
        let config = IamConfig {
            endpoint: Endpoint::parse(&emu.base_url()).expect("loopback endpoint"),
            domain: "acme".into(),
            user: "bob".into(),
            password_file: PathBuf::new(),
            project: ProjectScope::Name("cn-north-4".into()),
            options: ClientOptions {
                connect_timeout: Duration::from_millis(300),
                request_timeout: Duration::from_millis(500),
                ..ClientOptions::default()
            },
        };
        let src = Arc::new(IamTokenSource::new(&config, Secret::new("pw-SECRET")).expect("builds"));
        let started = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let src = Arc::clone(&src);
            calls.spawn(async move { src.token().await });
        }
        while let Some(joined) = calls.join_next().await {
            let err = joined.expect("no panic").expect_err("no token");
            assert!(err.retryable(), "{err:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(src.fetches(), 1);
    }

    #[tokio::test]
    async fn short_lived_tokens_are_refreshed_at_half_time() {
        let emu = emulator(Duration::from_millis(400)).await;
        let src = source(&emu, "pw-SECRET");
        let first = src.token().await.expect("a token");
        assert_eq!(src.token().await.expect("cached"), first);
        assert_eq!(src.fetches(), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        let second = loop {
            let t = src.token().await.expect("a token");
            if t != first {
                break t;
            }
            assert!(Instant::now() < deadline, "never refreshed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_ne!(second, first);
        assert_eq!(src.fetches(), 2);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_still_valid_token_and_backs_off() {
        let emu = emulator(Duration::from_secs(4)).await;
        let src = source(&emu, "pw-SECRET");
        let first = src.token().await.expect("a token");
        emu.shutdown().await;
        // From half time on, each call would refresh; IAM is gone, so the old token stays.
        let deadline = Instant::now() + Duration::from_secs(4);
        while src.fetches() < 2 {
            assert_eq!(src.token().await.expect("the old token"), first);
            assert!(Instant::now() < deadline, "no refresh was attempted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The failed attempt is not repeated at once.
        assert_eq!(src.token().await.expect("the old token"), first);
        assert_eq!(src.fetches(), 2);
    }

    #[tokio::test]
    async fn a_refused_password_is_not_tried_again() {
        let emu = emulator(Duration::from_secs(3600)).await;
        let src = source(&emu, "wrong-password");
        let err = src.token().await.expect_err("refused");
        assert!(
            matches!(err, IamError::Refused { status: 401, .. }),
            "{err:?}"
        );
        assert!(!err.retryable());
        let again = src.token().await.expect_err("remembered");
        assert!(matches!(again, IamError::RefusedBefore(_)));
        assert_eq!(src.fetches(), 1);
        let shown = format!("{err} {again} {src:?}");
        assert!(!shown.contains("wrong-password"), "{shown}");
    }

    #[tokio::test]
    async fn an_unreachable_iam_is_retryable() {
        // Bind and drop a listener to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = IamConfig {
            endpoint: Endpoint::parse(&format!("http://127.0.0.1:{port}")).expect("valid"),
            domain: "acme".into(),
            user: "bob".into(),
            password_file: PathBuf::new(),
            project: ProjectScope::Id("0a1b2c3d4e5f60718293a4b5c6d7e8f9".into()),
            options: ClientOptions::default(),
        };
        let src = IamTokenSource::new(&config, Secret::new("pw")).expect("builds");
        let err = src.token().await.expect_err("nobody listens");
        assert!(
            matches!(err, IamError::Transport { .. }) && err.retryable(),
            "{err:?}"
        );
        // Right after a failure, callers share it instead of each asking IAM again...
        let shared = src.token().await.expect_err("still failing");
        assert!(
            matches!(shared, IamError::BackingOff { .. }) && shared.retryable(),
            "{shared:?}"
        );
        assert_eq!(src.fetches(), 1, "the failure is shared, not repeated");
        // ...and after the backoff (1 s after a first failure) IAM is asked again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while src.fetches() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "IAM is asked again after the backoff"
            );
            let _ = src.token().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            src.token().await.is_err(),
            "a transport failure is not a refusal: never remembered as one"
        );
    }
}
