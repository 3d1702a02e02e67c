//! Request handling: routing, the fault pipeline, authentication and the endpoint handlers.
//!
//! Every API request goes through the same pipeline, in the order a gateway in front of the
//! service would apply it: route (404), latency, drop-before, hang, body limit (413),
//! authentication (401), rate limit (429), injected 5xx, the handler (400/404/200), drop-after.
//! Only the handler of the start endpoint creates records. Sockets are not handled here.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::config::{AK_MAX_FAILURES, EmulatorConfig, ScriptedFault};
use super::error::ErrorAnswer;
use super::http::{Body, response};
use super::state::{
    Faults, IssuedToken, LoggedRequest, Phase, Record, Stats, Store, hex32, http_date, service_time,
};
use super::validate;
use crate::api::rules;
use crate::auth::signer::{self, SignatureError};

/// The largest body the gateway accepts (APIG caps signed bodies at 12 MB).
pub const BODY_LIMIT: usize = 12 * 1024 * 1024;

/// Headers whose values never reach the request log.
const MASKED_HEADERS: [&str; 5] = [
    "x-auth-token",
    "authorization",
    "x-security-token",
    "x-subject-token",
    "cookie",
];

/// The service's answer when a connection must be closed without a response: hyper drops the
/// connection when a service future fails.
#[derive(Debug)]
pub struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DropConnection {}

/// Who made an authenticated call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is off.
    Anonymous,
    /// One of the configured static tokens.
    StaticToken,
    /// A token issued by the IAM endpoint, for `<domain>/<user>`.
    Iam {
        /// `<domain>/<user>`.
        user: String,
    },
    /// A request signed with a configured AK/SK pair.
    AkSk {
        /// The access key id.
        ak: String,
    },
}

impl Principal {
    /// The name written to the request log.
    pub fn label(&self) -> String {
        match self {
            Self::Anonymous => "anonymous".into(),
            Self::StaticToken => "token".into(),
            Self::Iam { user } => format!("iam:{user}"),
            Self::AkSk { ak } => format!("aksk:{ak}"),
        }
    }

    /// The user name shown as a record's operator.
    pub fn operator(&self) -> String {
        match self {
            Self::Anonymous | Self::StaticToken => "emulator".into(),
            Self::Iam { user } => user.rsplit('/').next().unwrap_or(user).to_owned(),
            Self::AkSk { ak } => ak.clone(),
        }
    }
}

/// A deploy endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DeployRoute {
    /// `POST /v2/tasks/{task_id}/start`.
    Start { task_id: String },
    /// `GET /v2/{project_id}/task/{task_id}/history`.
    History { project_id: String, task_id: String },
    /// `GET /v2/tasks/{task_id}/state`.
    State { task_id: String },
    /// `GET /v2/history/tasks/{task_id}/params`.
    Params { task_id: String },
}

/// Entries kept in the request log (the oldest half is dropped beyond this).
const MAX_LOG: usize = 1_000_000;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Deploy(DeployRoute),
    /// `POST /v3/auth/tokens`.
    IamTokens,
    /// `GET /_emulator/log`.
    EmulatorLog,
    /// `GET /_emulator/stats`.
    EmulatorStats,
    NotFound,
}

impl Route {
    fn parse(method: &Method, path: &str) -> Self {
        let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        let owned = |s: &str| s.to_owned();
        match (method, segments.as_slice()) {
            (&Method::POST, ["v2", "tasks", id, "start"]) => {
                Self::Deploy(DeployRoute::Start { task_id: owned(id) })
            }
            (&Method::GET, ["v2", project, "task", id, "history"]) => {
                Self::Deploy(DeployRoute::History {
                    project_id: owned(project),
                    task_id: owned(id),
                })
            }
            (&Method::GET, ["v2", "tasks", id, "state"]) => {
                Self::Deploy(DeployRoute::State { task_id: owned(id) })
            }
            (&Method::GET, ["v2", "history", "tasks", id, "params"]) => {
                Self::Deploy(DeployRoute::Params { task_id: owned(id) })
            }
            (&Method::POST, ["v3", "auth", "tokens"]) => Self::IamTokens,
            (&Method::GET, ["_emulator", "log"]) => Self::EmulatorLog,
            (&Method::GET, ["_emulator", "stats"]) => Self::EmulatorStats,
            _ => Self::NotFound,
        }
    }
}

/// A JSON response.
fn json_response(status: StatusCode, value: &impl Serialize, request_id: &str) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    response(
        status,
        request_id,
        &[("content-type", "application/json;charset=UTF-8".to_owned())],
        body,
    )
}

/// Reads a body up to [`BODY_LIMIT`].
async fn read_body(parts: &Parts, body: Incoming) -> Result<Bytes, ErrorAnswer> {
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > BODY_LIMIT as u64) {
        return Err(ErrorAnswer::too_large(BODY_LIMIT));
    }
    match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ErrorAnswer::too_large(BODY_LIMIT)),
        Err(_) => Err(ErrorAnswer::bad_request(
            "the request body could not be read",
        )),
    }
}

/// The `Content-Type` header as text, if present.
fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not ASCII)"))
}

/// Headers for the log, with secrets masked.
fn masked_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let name = name.as_str().to_owned();
            let value = if MASKED_HEADERS.contains(&name.as_str()) {
                "***".to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name, value)
        })
        .collect()
}

/// A canonical request as APIG shows it in an error message: `|` for newlines, and the value
/// of a signed `x-security-token` masked (it is a credential).
fn shown_canonical_request(canonical_request: &str) -> String {
    crate::auth::signer::redact_canonical_request(canonical_request, "|")
}

/// A stable 32-hex id derived from a name (IAM user and domain ids).
fn derived_id(name: &str) -> String {
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    digest.chars().take(32).collect()
}

/// ISO-8601 UTC with microseconds, as IAM writes times.
fn iam_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The state shared by every connection.
pub struct Shared {
    /// The configuration, fixed for the emulator's life.
    pub config: EmulatorConfig,
    store: Mutex<Store>,
    /// Cancelled when the emulator shuts down; wakes hung requests.
    pub cancel: CancellationToken,
}

impl Shared {
    /// State for a configuration.
    pub fn new(config: EmulatorConfig, cancel: CancellationToken) -> Self {
        let store = Mutex::new(Store::new(&config));
        Self {
            config,
            store,
            cancel,
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the plain data half-updated in a way that
        // matters to an emulator; keep serving.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the request log.
    pub fn log(&self) -> Vec<LoggedRequest> {
        self.store().log.clone()
    }

    /// A copy of the counters.
    pub fn stats(&self) -> Stats {
        self.store().stats.clone()
    }

    /// Creates a record as another caller would have (for tests: a deployment this client
    /// did not start), with the given start instant and params; returns its id.
    pub fn insert_record(
        &self,
        task_id: &str,
        start_time: DateTime<Utc>,
        params: Vec<crate::emulator::validate::WireParam>,
    ) -> String {
        let mut store = self.store();
        store
            .create_record(
                task_id,
                "someone-else".into(),
                false,
                false,
                params,
                start_time,
            )
            .id
    }

    /// The service's clock: this host's, moved by `clock_offset`.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now()
            .checked_add_signed(self.config.clock_offset)
            .unwrap_or_else(Utc::now)
    }

    /// Waits `d` (on time, see [`super::timer`]), or less if the emulator shuts down. True if
    /// the whole time passed.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            () = super::timer::sleep(d) => true,
            () = self.cancel.cancelled() => false,
        }
    }

    /// Serves one API request through the fault pipeline.
    async fn process(
        &self,
        route: Route,
        req: Request<Incoming>,
        request_id: &str,
    ) -> Result<Response<Body>, DropConnection> {
        let received_at = self.now();
        let _in_flight = InFlight::begin(self);
        let faults = {
            let mut store = self.store();
            store.stats.total += 1;
            if matches!(route, Route::Deploy(_)) {
                let mut faults = Faults::roll(&mut store.rng, &self.config);
                let scripted = match &route {
                    Route::Deploy(DeployRoute::Start { task_id }) => store.scripted_fault(task_id),
                    Route::Deploy(
                        DeployRoute::History { task_id, .. }
                        | DeployRoute::State { task_id }
                        | DeployRoute::Params { task_id },
                    ) => store
                        .scripted_query_fault(task_id)
                        // A query creates nothing: losing its answer is losing the request.
                        .map(|f| match f {
                            ScriptedFault::DropAfter => ScriptedFault::DropBefore,
                            other => other,
                        }),
                    _ => None,
                };
                if let Some(scripted) = scripted {
                    faults = Faults {
                        drop_before: scripted == ScriptedFault::DropBefore,
                        drop_after: scripted == ScriptedFault::DropAfter,
                        throttled: match scripted {
                            ScriptedFault::Throttled(secs) => Some(secs),
                            _ => None,
                        },
                        ..Faults::default()
                    };
                }
                faults
            } else {
                Faults::default()
            }
        };
        let mut delay = self.config.latency + faults.jitter;
        if matches!(route, Route::IamTokens) {
            self.store().stats.token_requests += 1;
            delay += self.config.iam_latency;
        }
        let result = if !delay.is_zero() && !self.pause(delay).await {
            Err(ErrorAnswer::injected(StatusCode::SERVICE_UNAVAILABLE))
        } else if faults.drop_before {
            self.store().stats.dropped_before += 1;
            return Err(DropConnection);
        } else if faults.hang {
            self.store().stats.hung += 1;
            self.pause(self.config.hang_for).await;
            Err(ErrorAnswer::gateway_timeout())
        } else {
            let (parts, body) = req.into_parts();
            let result = self
                .answer(&route, &parts, body, &faults, request_id, received_at)
                .await;
            // Losing the answer after processing only matters for a start call that created a
            // record (the client cannot know it exists): a query is simply failed and asked
            // again, and a refused call (401, 400, ...) created nothing.
            if faults.drop_after
                && result.is_ok()
                && matches!(route, Route::Deploy(DeployRoute::Start { .. }))
            {
                self.store().stats.dropped_after += 1;
                return Err(DropConnection);
            }
            result
        };
        let mut resp = result.unwrap_or_else(|e| e.into_response(request_id));
        // The service's clock, as a real gateway tells it (to the second).
        if let Ok(date) = HeaderValue::from_str(&http_date(self.now())) {
            resp.headers_mut().insert(hyper::header::DATE, date);
        }
        *self
            .store()
            .stats
            .by_status
            .entry(resp.status().as_u16())
            .or_default() += 1;
        Ok(resp)
    }

    /// Everything after the connection-level faults.
    async fn answer(
        &self,
        route: &Route,
        parts: &Parts,
        body: Incoming,
        faults: &Faults,
        request_id: &str,
        received_at: DateTime<Utc>,
    ) -> Result<Response<Body>, ErrorAnswer> {
        let deploy = match route {
            Route::Deploy(deploy) => deploy,
            Route::IamTokens => {
                let body = read_body(parts, body).await?;
                return self.issue_token(parts, &body, request_id);
            }
            Route::NotFound | Route::EmulatorLog | Route::EmulatorStats => {
                return Err(ErrorAnswer::no_route(
                    parts.method.as_str(),
                    parts.uri.path(),
                ));
            }
        };
        let body = read_body(parts, body).await?;
        let principal = self.authenticate(parts, &body)?;
        if let Some(secs) = faults.throttled {
            return Err(ErrorAnswer::throttled_for(secs));
        }
        self.throttle()?;
        if let Some(status) = faults.error {
            return Err(ErrorAnswer::injected(status));
        }
        match deploy {
            DeployRoute::Start { task_id } => {
                self.start(task_id, parts, &body, &principal, request_id, received_at)
            }
            DeployRoute::History {
                project_id,
                task_id,
            } => self.history(project_id, task_id, parts.uri.query(), request_id),
            DeployRoute::State { task_id } => self.state(task_id, parts.uri.query(), request_id),
            DeployRoute::Params { task_id } => self.params(task_id, parts.uri.query(), request_id),
        }
    }

    /// Authenticates a deploy call: a static token, an unexpired issued IAM token, an AK/SK
    /// signature over the raw received request (`body` is the payload that was hashed), or
    /// nothing when authentication is off. Every refusal is a 401 and is counted.
    pub fn authenticate(&self, parts: &Parts, body: &[u8]) -> Result<Principal, ErrorAnswer> {
        if !self.config.auth_required {
            return Ok(Principal::Anonymous);
        }
        let result = if let Some(token) = parts.headers.get("x-auth-token") {
            match token.to_str() {
                Ok(token) => self.check_token(token),
                Err(_) => Err(ErrorAnswer::unauthorized("decrypt token fail")),
            }
        } else if parts.headers.contains_key(AUTHORIZATION) {
            self.check_signature(parts, body)
        } else {
            Err(ErrorAnswer::unauthorized("x-auth-token not found"))
        };
        if result.is_err() {
            self.store().stats.auth_failures += 1;
        }
        result
    }

    /// Verifies an `SDK-HMAC-SHA256` signature as the gateway does: unknown AK and bad
    /// signatures are APIGW.0301 (with the server's canonical request, `|` for newlines, as APIG
    /// shows it), a skew over 15 minutes APIGW.0303. More than [`AK_MAX_FAILURES`] failures in a
    /// row lock the AK for the configured time, during which even good signatures are refused.
    fn check_signature(&self, parts: &Parts, body: &[u8]) -> Result<Principal, ErrorAnswer> {
        let mut headers = Vec::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            let value = value.to_str().map_err(|_| {
                ErrorAnswer::unauthorized("verify aksk signature fail: a header is not ASCII")
            })?;
            headers.push((name.as_str().to_owned(), value.to_owned()));
        }
        let authorization = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let parsed = signer::parse_authorization(authorization)
            .map_err(|e| ErrorAnswer::unauthorized(&format!("verify aksk signature fail: {e}")))?;
        let Some(key) = self
            .config
            .access_keys
            .iter()
            .find(|k| k.ak == parsed.access)
        else {
            return Err(ErrorAnswer::unauthorized(&format!(
                "verify aksk signature fail: the access key {:?} does not exist",
                parsed.access
            )));
        };
        let now = Instant::now();
        if self
            .store()
            .ak_failures
            .get(&key.ak)
            .is_some_and(|f| f.locked(now))
        {
            return Err(ErrorAnswer::unauthorized(
                "AK access failed to reach the limit, forbidden",
            ));
        }
        let received = signer::ReceivedRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or_default(),
            headers: &headers,
            body,
        };
        let verdict = signer::verify(&received, key.sk.expose(), self.now());
        let mut store = self.store();
        let failures = store.ak_failures.entry(key.ak.clone()).or_default();
        let Err(error) = verdict else {
            failures.consecutive = 0;
            return Ok(Principal::AkSk { ak: key.ak.clone() });
        };
        if failures.fail(now, AK_MAX_FAILURES, self.config.ak_lock_duration) {
            tracing::info!(ak = %key.ak, "emulator: AK locked after repeated signature failures");
        }
        Err(match error {
            SignatureError::Expired { .. } => ErrorAnswer::signature_expired(&error.to_string()),
            SignatureError::Mismatch { canonical_request } => ErrorAnswer::unauthorized(&format!(
                "verify aksk signature fail, canonicalRequest: {}",
                shown_canonical_request(&canonical_request)
            )),
            SignatureError::Malformed(_) => {
                ErrorAnswer::unauthorized(&format!("verify aksk signature fail: {error}"))
            }
        })
    }

    /// Checks an `X-Auth-Token` value.
    fn check_token(&self, token: &str) -> Result<Principal, ErrorAnswer> {
        if self.config.tokens.iter().any(|t| t.expose() == token) {
            return Ok(Principal::StaticToken);
        }
        match self.store().tokens.get(token) {
            Some(issued) if Instant::now() < issued.expires => Ok(Principal::Iam {
                user: issued.user.clone(),
            }),
            Some(_) => Err(ErrorAnswer::token_expired()),
            None => Err(ErrorAnswer::unauthorized("decrypt token fail")),
        }
    }

    /// Applies the rate limit.
    fn throttle(&self) -> Result<(), ErrorAnswer> {
        let mut store = self.store();
        let Some(bucket) = store.limiter.as_mut() else {
            return Ok(());
        };
        if bucket.try_acquire(Instant::now()) {
            Ok(())
        } else {
            Err(ErrorAnswer::throttled(bucket.rate()))
        }
    }

    /// `POST /v2/tasks/{task_id}/start`: validates, creates a record, logs the request.
    fn start(
        &self,
        task_id: &str,
        parts: &Parts,
        body: &Bytes,
        principal: &Principal,
        request_id: &str,
        received_at: DateTime<Utc>,
    ) -> Result<Response<Body>, ErrorAnswer> {
        rules::check_id(task_id).map_err(|e| ErrorAnswer::invalid(format!("task_id: {e}")))?;
        validate::check_content_type(content_type(&parts.headers)).map_err(ErrorAnswer::invalid)?;
        let parsed = validate::parse_start_body(body).map_err(ErrorAnswer::invalid)?;
        if self.config.unknown_task_ids.contains(task_id) {
            return Err(ErrorAnswer::unknown_task(task_id));
        }
        if self.config.rejected_task_ids.contains(task_id) {
            return Err(ErrorAnswer::invalid(format!(
                "params: the dynamic parameters do not match the ones defined on task {task_id}"
            )));
        }
        let fails = self.config.failing_task_ids.contains(task_id);
        let mut store = self.store();
        let record = store.create_record(
            task_id,
            principal.operator(),
            fails,
            parsed.record_id.is_some(),
            parsed.params.clone(),
            self.now(),
        );
        let entry = LoggedRequest {
            seq: store.log.len() as u64 + 1,
            received_at,
            request_id: request_id.to_owned(),
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            task_id: task_id.to_owned(),
            record_id: record.id.clone(),
            principal: principal.label(),
            headers: masked_headers(&parts.headers),
            body: String::from_utf8_lossy(body).into_owned(),
            params: parsed.params,
            trigger_source: parsed.trigger_source,
            rollback_record_id: parsed.record_id,
        };
        store.log.push(entry);
        // A long-running emulator keeps the newest entries only.
        if store.log.len() > MAX_LOG {
            store.log.drain(..MAX_LOG / 2);
        }
        drop(store);
        let answer = json!({
            "id": record.id,
            "task_id": task_id,
            "job_name": record.job_name,
            "app_component_list": [],
        });
        Ok(json_response(StatusCode::OK, &answer, request_id))
    }

    /// `GET /v2/{project_id}/task/{task_id}/history`: the task's records in a date window.
    fn history(
        &self,
        project_id: &str,
        task_id: &str,
        query: Option<&str>,
        request_id: &str,
    ) -> Result<Response<Body>, ErrorAnswer> {
        rules::check_id(project_id)
            .map_err(|e| ErrorAnswer::invalid(format!("project_id: {e}")))?;
        rules::check_id(task_id).map_err(|e| ErrorAnswer::invalid(format!("id: {e}")))?;
        if project_id != self.config.project_id {
            return Err(ErrorAnswer::unknown_project(project_id));
        }
        let q = validate::parse_history_query(query).map_err(ErrorAnswer::invalid)?;
        if self.config.unknown_task_ids.contains(task_id) {
            return Err(ErrorAnswer::unknown_task(task_id));
        }
        let (now, zone, deploy) = (
            Instant::now(),
            self.config.record_utc_offset,
            self.config.deploy_duration,
        );
        let store = self.store();
        let matching: Vec<&Record> = store
            .task_records(task_id)
            .into_iter()
            .filter(|r| {
                let day = r.start_time.with_timezone(&zone).date_naive();
                q.start_date <= day && day <= q.end_date
            })
            .collect();
        let skip = (q.page as usize - 1).saturating_mul(q.size as usize);
        let result: Vec<Value> = matching
            .iter()
            .skip(skip)
            .take(q.size as usize)
            .map(|r| {
                json!({
                    "execution_id": r.id,
                    "state": r.phase(now, deploy).as_str(),
                    "start_time": service_time(r.start_time, zone),
                    "end_time": r.end_time(now, deploy).map(|t| service_time(t, zone)).unwrap_or_default(),
                    "duration": r.duration_text(now, deploy),
                    "operator": r.operator,
                    "nickname": r.operator,
                    "release_id": r.release_id,
                    "type": if r.rollback { "rollback" } else { "deploy" },
                })
            })
            .collect();
        let answer = json!({"result": result, "total_num": matching.len()});
        Ok(json_response(StatusCode::OK, &answer, request_id))
    }

    /// The record a `?record_id=` query names (the task's latest without one), as the state
    /// and params endpoints find it; an unknown record is 400 Deploy.00011303.
    fn one_record(&self, task_id: &str, query: Option<&str>) -> Result<Record, ErrorAnswer> {
        rules::check_id(task_id).map_err(|e| ErrorAnswer::invalid(format!("task_id: {e}")))?;
        let q = validate::parse_state_query(query).map_err(ErrorAnswer::invalid)?;
        if self.config.unknown_task_ids.contains(task_id) {
            return Err(ErrorAnswer::unknown_task(task_id));
        }
        let store = self.store();
        match &q.record_id {
            Some(id) => store.records.get(id).filter(|r| r.task_id == task_id),
            None => store.task_records(task_id).first().copied(),
        }
        .cloned()
        .ok_or_else(|| {
            ErrorAnswer::no_record(format!("no execution record found for task {task_id}"))
        })
    }

    /// `GET /v2/tasks/{task_id}/state`: one record's status (the latest without `record_id`).
    fn state(
        &self,
        task_id: &str,
        query: Option<&str>,
        request_id: &str,
    ) -> Result<Response<Body>, ErrorAnswer> {
        let record = self.one_record(task_id, query)?;
        let (now, deploy) = (Instant::now(), self.config.deploy_duration);
        let zone = self.config.record_utc_offset;
        let phase = record.phase(now, deploy);
        let answer = json!({
            "status": "success",
            "result": {
                "status": phase.as_str(),
                "record_id": record.id,
                "task_id": task_id,
                "step": if phase == Phase::Running { "running" } else { "finish" },
                "start_time": service_time(record.start_time, zone),
                "end_time": record.end_time(now, deploy).map(|t| service_time(t, zone)).unwrap_or_default(),
                "executor": record.operator,
                "task_name": format!("emulated-{task_id}"),
                "nick_name": record.operator,
                "step_state": [],
            },
        });
        Ok(json_response(StatusCode::OK, &answer, request_id))
    }

    /// `GET /v2/history/tasks/{task_id}/params?record_id=`: the params a record was started
    /// with, as a top-level array of `{"name", "type", "value"}` (values of `encrypt` params
    /// are not shown); an unknown record is 400 Deploy.00011303.
    fn params(
        &self,
        task_id: &str,
        query: Option<&str>,
        request_id: &str,
    ) -> Result<Response<Body>, ErrorAnswer> {
        let record = self.one_record(task_id, query)?;
        let answer: Vec<Value> = record
            .params
            .iter()
            .map(|p| {
                let ty = p.param_type.as_deref().unwrap_or("text");
                let value = if ty == "encrypt" {
                    "******"
                } else {
                    p.value.as_str()
                };
                json!({"name": p.key, "type": ty, "value": value})
            })
            .collect();
        Ok(json_response(StatusCode::OK, &answer, request_id))
    }

    /// `POST /v3/auth/tokens`: password authentication, 201 with `X-Subject-Token`.
    fn issue_token(
        &self,
        parts: &Parts,
        body: &[u8],
        request_id: &str,
    ) -> Result<Response<Body>, ErrorAnswer> {
        let bad = |m: String| ErrorAnswer::iam(StatusCode::BAD_REQUEST, m);
        validate::check_content_type(content_type(&parts.headers)).map_err(bad)?;
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| bad(format!("the body is not valid JSON: {e}")))?;
        let identity = &v["auth"]["identity"];
        let password_method = identity["methods"]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == "password"));
        if !password_method {
            return Err(bad("auth.identity.methods must include \"password\"".into()));
        }
        let user = &identity["password"]["user"];
        let (Some(domain), Some(name), Some(password)) = (
            user["domain"]["name"].as_str(),
            user["name"].as_str(),
            user["password"].as_str(),
        ) else {
            return Err(bad(
                "auth.identity.password.user needs domain.name, name and password strings".into(),
            ));
        };
        let project = &v["auth"]["scope"]["project"];
        if let Some(id) = project["id"].as_str()
            && id != self.config.project_id
        {
            return Err(bad(format!("project {id} does not exist")));
        }
        let known = self
            .config
            .users
            .iter()
            .any(|u| u.domain == domain && u.name == name && u.password.expose() == password);
        if !known {
            return Err(ErrorAnswer::iam(
                StatusCode::UNAUTHORIZED,
                "The username or password is wrong.",
            ));
        }
        let token = format!("MIIemu{}{}", hex32(), hex32());
        let lifetime = self.config.token_lifetime;
        let issued_at = self.now();
        let expires_at = chrono::Duration::from_std(lifetime)
            .ok()
            .and_then(|d| issued_at.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let now = Instant::now();
        // A lifetime too long for the monotonic clock means "never" in practice.
        let expires = now
            .checked_add(lifetime)
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
            .unwrap_or(now);
        let mut store = self.store();
        store.stats.tokens_issued += 1;
        store.tokens.insert(
            token.clone(),
            IssuedToken {
                user: format!("{domain}/{name}"),
                expires,
            },
        );
        drop(store);
        let domain_json = json!({"id": derived_id(domain), "name": domain});
        let mut token_json = json!({
            "expires_at": iam_time(expires_at),
            "issued_at": iam_time(issued_at),
            "methods": ["password"],
            "user": {
                "domain": domain_json,
                "id": derived_id(&format!("{domain}/{name}")),
                "name": name,
                "password_expires_at": "",
            },
            "project": {
                "id": self.config.project_id,
                "name": project["name"].as_str().unwrap_or("cn-north-4"),
                "domain": domain_json,
            },
            "roles": [{"id": "0", "name": "op_service"}],
        });
        let nocatalog = validate::query_pairs(parts.uri.query())
            .unwrap_or_default()
            .iter()
            .any(|(n, v)| n == "nocatalog" && !v.is_empty());
        if !nocatalog {
            token_json["catalog"] = json!([]);
        }
        let mut resp = json_response(
            StatusCode::CREATED,
            &json!({"token": token_json}),
            request_id,
        );
        if let Ok(value) = HeaderValue::from_str(&token) {
            resp.headers_mut().insert("x-subject-token", value);
        }
        Ok(resp)
    }
}

/// One request counted in flight while it is served, however its service ends (answered,
/// connection dropped, or abandoned by a client that went away).
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn begin(shared: &'a Shared) -> Self {
        let mut store = shared.store();
        store.stats.in_flight += 1;
        store.stats.max_in_flight = store.stats.max_in_flight.max(store.stats.in_flight);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut store = self.0.store();
        store.stats.in_flight = store.stats.in_flight.saturating_sub(1);
    }
}

/// The hyper service: answers `/_emulator/*` directly, everything else through the pipeline.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, DropConnection> {
    let request_id = hex32();
    match Route::parse(req.method(), req.uri().path()) {
        Route::EmulatorLog => {
            let masked: Vec<_> = shared.log().iter().map(|entry| entry.masked()).collect();
            Ok(json_response(StatusCode::OK, &masked, &request_id))
        }
        Route::EmulatorStats => Ok(json_response(StatusCode::OK, &shared.stats(), &request_id)),
        route => shared.process(route, req, &request_id).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let id = "a".repeat(32);
        assert_eq!(
            Route::parse(&Method::POST, &format!("/v2/tasks/{id}/start")),
            Route::Deploy(DeployRoute::Start {
                task_id: id.clone()
            })
        );
        assert_eq!(
            Route::parse(&Method::GET, &format!("/v2/p/task/{id}/history")),
            Route::Deploy(DeployRoute::History {
                project_id: "p".into(),
                task_id: id.clone()
            })
        );
        assert_eq!(
            Route::parse(&Method::GET, &format!("/v2/tasks/{id}/start")),
            Route::NotFound
        );
        assert_eq!(
            Route::parse(&Method::POST, &format!("/v2/tasks/{id}/start/")),
            Route::NotFound
        );
        assert_eq!(
            Route::parse(&Method::POST, "/v3/auth/tokens"),
            Route::IamTokens
        );
        assert_eq!(Route::parse(&Method::GET, "/"), Route::NotFound);
    }

    #[test]
    fn masking() {
        let mut headers = HeaderMap::new();
        headers.insert("x-auth-token", HeaderValue::from_static("tok"));
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("SDK-HMAC-SHA256 Access=a"),
        );
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let masked = masked_headers(&headers);
        assert!(
            masked
                .iter()
                .all(|(_, v)| v != "tok" && !v.contains("Access"))
        );
        assert!(masked.contains(&("content-type".into(), "application/json".into())));
    }

    #[test]
    fn principals() {
        let p = Principal::Iam {
            user: "acme/bob".into(),
        };
        assert_eq!(p.label(), "iam:acme/bob");
        assert_eq!(p.operator(), "bob");
        assert_eq!(Principal::StaticToken.operator(), "emulator");
    }

    #[test]
    fn iam_times_have_microseconds() {
        let t = DateTime::parse_from_rfc3339("2019-02-13T06:52:13.855Z")
            .expect("valid")
            .with_timezone(&Utc);
        assert_eq!(iam_time(t), "2019-02-13T06:52:13.855000Z");
    }
}
