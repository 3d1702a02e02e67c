//! The HTTP client of the CodeArts Deploy API: authentication headers, bounded answer reads,
//! the credential guard, and turning every answer (or its absence) into a classified outcome.
//! It never retries: the executor decides. It never logs a secret.
//!
//! It does not pace itself either: the daemon makes every call through the executor's limited
//! client (`executor::limited::LimitedClient`), which wraps this one in the account's limits.
//! The call methods here are its transport, and what the tests of the wire use.

use std::time::Duration;

use chrono::{NaiveDate, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};

use crate::api::body::{self, BodyError};
use crate::api::credentials::{Credentials, RequestToSign};
// The client's input values live in a leaf module (the IAM source and the settings use them
// too); re-exported so that a caller building a client needs one import.
pub use crate::api::endpoint::{ClientOptions, Endpoint, EndpointError, KNOWN_REGIONS};
use crate::api::errors::{self, StatusClass, body_request_id, parse_error_body, parse_retry_after};
use crate::api::guard::{Blocked, CredentialGuard, Pass};
use crate::api::service_clock::ServiceClock;
use crate::api::types::{
    CallInfo, HistoryPage, RecordParam, RecordStatus, StartOutcome, StartResponse,
};
use crate::auth::signer::encode_component;
use crate::secret::Secret;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ClientBuildError(String);

/// A failed GET (history or status query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetFailure {
    /// What is known about the exchange.
    pub info: CallInfo,
    /// Whether asking again may help (429, 5xx, transport errors).
    pub retryable: bool,
}

impl std::fmt::Display for GetFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        describe(&self.info, f)
    }
}

fn describe(info: &CallInfo, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    let mut parts = Vec::new();
    if let Some(status) = info.http_status {
        parts.push(format!("HTTP {status}"));
    }
    if let Some(code) = &info.error_code {
        parts.push(code.clone());
    }
    write!(f, "{}", parts.join(" "))?;
    if let Some(msg) = &info.error_msg {
        write!(f, ": {msg}")?;
    }
    Ok(())
}

/// The CodeArts Deploy client. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct DeployClient {
    http: reqwest::Client,
    endpoint: Endpoint,
    credentials: Credentials,
    user_agent: String,
    /// What the answers' `Date` headers tell of the service's clock (shared by clones).
    clock: std::sync::Arc<ServiceClock>,
    /// Whether the API accepts `credentials` (shared by clones and by the clients of later
    /// reloads with the same credentials).
    guard: std::sync::Arc<CredentialGuard>,
    /// The whole-call deadline, also applied to reading the answer.
    request_timeout: Duration,
}

impl std::fmt::Debug for DeployClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeployClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("auth", &self.credentials.method_name())
            .finish()
    }
}

/// A raw answer: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A transport failure, split by whether the request may have reached the server.
struct TransportFailure {
    /// True when the request certainly was not sent (connect, DNS, TLS, auth preparation).
    before_send: bool,
    /// False only when no credentials can be had (IAM refused the password): sending again
    /// cannot help.
    retryable: bool,
    class: &'static str,
    message: String,
}

impl DeployClient {
    /// Builds a client. Redirects are not followed (as in the SDK).
    pub fn new(
        endpoint: Endpoint,
        credentials: Credentials,
        options: ClientOptions,
    ) -> Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .pool_idle_timeout(options.pool_idle_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientBuildError(e.to_string()))?;
        Ok(Self {
            http,
            endpoint,
            credentials,
            user_agent: format!("deployd/{}", env!("CARGO_PKG_VERSION")),
            clock: std::sync::Arc::new(ServiceClock::new()),
            guard: std::sync::Arc::new(CredentialGuard::default()),
            request_timeout: options.request_timeout,
        })
    }

    /// This client (built from a reloaded configuration) keeping what `old` knows of the
    /// credentials when they are the same: the guard (a refused credential stays refused)
    /// and, for IAM, the token source (its token, and a refused password is not sent again).
    pub fn with_credentials_of(mut self, old: &DeployClient) -> Self {
        if self.credentials.same_as(&old.credentials) {
            self.credentials = old.credentials.clone();
            self.guard = old.guard.clone();
        }
        self
    }

    /// The guard of this client's credentials.
    pub fn guard(&self) -> &CredentialGuard {
        &self.guard
    }

    /// Waits for the right to make one call with these credentials (see
    /// [`crate::api::guard`]).
    pub async fn admit(&self) -> Result<Pass<'_>, Blocked> {
        self.guard.admit().await
    }

    /// This client, sharing `clock` (a client rebuilt on reload keeps what was learned).
    pub fn with_clock(mut self, clock: std::sync::Arc<ServiceClock>) -> Self {
        self.clock = clock;
        self
    }

    /// What this client's answers told of the service's clock.
    pub fn clock(&self) -> &std::sync::Arc<ServiceClock> {
        &self.clock
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The credentials in use.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// `POST /v2/tasks/{task_id}/start` with `body` (the exact bytes, see [`crate::api::wire`]).
    /// Credentials the API refused are not used: the outcome is then `Final` with code
    /// [`CREDENTIALS_REFUSED`] and no HTTP status (nothing was sent).
    pub async fn start_task(&self, task_id: &str, body: &str) -> StartOutcome {
        match self.admit().await {
            Ok(pass) => self.start_task_with(pass, task_id, body).await,
            Err(blocked) => StartOutcome::Final(refused_info(&blocked)),
        }
    }

    /// [`start_task`](Self::start_task) with the right to call already obtained.
    pub async fn start_task_with(&self, pass: Pass<'_>, task_id: &str, body: &str) -> StartOutcome {
        let path = format!("/v2/tasks/{}/start", encode_component(task_id));
        let answer = match self
            .send(
                pass,
                Method::POST,
                &path,
                &[],
                body.as_bytes(),
                body::START_LIMIT,
            )
            .await
        {
            Ok(answer) => answer,
            Err(failure) => {
                let info = CallInfo {
                    error_code: Some(failure.class.to_string()),
                    error_msg: Some(failure.message),
                    ..CallInfo::default()
                };
                return if failure.before_send && !failure.retryable {
                    StartOutcome::Final(info)
                } else if failure.before_send {
                    StartOutcome::Retryable(info)
                } else {
                    StartOutcome::Unknown(info)
                };
            }
        };
        let mut info = call_info(&answer);
        if answer.status.is_success() {
            return match serde_json::from_slice::<StartResponse>(&answer.body) {
                Ok(response) if !response.id.is_empty() => StartOutcome::Started { response, info },
                _ => {
                    // Some refusals come as 200 with an error body (e.g. Deploy.00011021, a
                    // deleted application): a code in the body is a refusal, not a mystery.
                    if let (Some(code), msg) = parse_error_body(&answer.body) {
                        info.error_code = Some(code);
                        info.error_msg = msg;
                        return StartOutcome::Final(info);
                    }
                    info.error_code = Some("unreadable_response".into());
                    info.error_msg = Some(format!(
                        "HTTP {} without a readable record id; the deployment may have started",
                        answer.status.as_u16()
                    ));
                    StartOutcome::Unknown(info)
                }
            };
        }
        match errors::classify_status(answer.status.as_u16()) {
            StatusClass::Retryable => StartOutcome::Retryable(info),
            StatusClass::Final => StartOutcome::Final(info),
            StatusClass::Unknown => StartOutcome::Unknown(info),
        }
    }

    /// One page of `GET /v2/{project_id}/task/{task_id}/history` for a date window.
    pub async fn history_page(
        &self,
        project_id: &str,
        task_id: &str,
        page: u32,
        size: u32,
        start_date: NaiveDate,
        end_date: NaiveDate,
    ) -> Result<HistoryPage, GetFailure> {
        let path = format!(
            "/v2/{}/task/{}/history",
            encode_component(project_id),
            encode_component(task_id)
        );
        let query = [
            ("page".to_string(), page.to_string()),
            ("size".to_string(), size.to_string()),
            (
                "start_date".to_string(),
                start_date.format("%Y-%m-%d").to_string(),
            ),
            (
                "end_date".to_string(),
                end_date.format("%Y-%m-%d").to_string(),
            ),
        ];
        let answer = self.get(&path, &query, body::HISTORY_LIMIT).await?;
        serde_json::from_slice(&answer.body).map_err(|e| unreadable(&answer, e))
    }

    /// `GET /v2/tasks/{task_id}/state?record_id=` (ShowDeployStatus).
    pub async fn record_status(
        &self,
        task_id: &str,
        record_id: &str,
    ) -> Result<RecordStatus, GetFailure> {
        #[derive(serde::Deserialize)]
        struct Envelope {
            result: RecordStatus,
        }
        let path = format!("/v2/tasks/{}/state", encode_component(task_id));
        let query = [("record_id".to_string(), record_id.to_string())];
        let answer = self.get(&path, &query, body::STATUS_LIMIT).await?;
        serde_json::from_slice::<Envelope>(&answer.body)
            .map(|e| e.result)
            .map_err(|e| unreadable(&answer, e))
    }

    /// `GET /v2/history/tasks/{task_id}/params?record_id=` (ShowExecutionParams): the params a
    /// record was started with.
    pub async fn record_params(
        &self,
        task_id: &str,
        record_id: &str,
    ) -> Result<Vec<RecordParam>, GetFailure> {
        let path = format!("/v2/history/tasks/{}/params", encode_component(task_id));
        let query = [("record_id".to_string(), record_id.to_string())];
        let answer = self.get(&path, &query, body::PARAMS_LIMIT).await?;
        serde_json::from_slice(&answer.body).map_err(|e| unreadable(&answer, e))
    }

    async fn get(
        &self,
        path: &str,
        query: &[(String, String)],
        limit: usize,
    ) -> Result<Answer, GetFailure> {
        let pass = self.admit().await.map_err(|blocked| GetFailure {
            info: refused_info(&blocked),
            retryable: false,
        })?;
        let answer = self
            .send(pass, Method::GET, path, query, b"", limit)
            .await
            .map_err(|f| GetFailure {
                info: CallInfo {
                    error_code: Some(f.class.into()),
                    error_msg: Some(f.message),
                    ..CallInfo::default()
                },
                retryable: f.retryable,
            })?;
        if answer.status.is_success() {
            return Ok(answer);
        }
        let status = answer.status.as_u16();
        Err(GetFailure {
            info: call_info(&answer),
            retryable: status == 429 || status >= 500,
        })
    }

    /// Sends one call, with `pass` from the credential guard, which learns the answer. With
    /// IAM password credentials, a 401 that says the token is expired or invalid drops the
    /// cached token, gets a new one and sends the call once more: a 401 was certainly not
    /// processed, so this cannot start a deployment twice.
    async fn send(
        &self,
        pass: Pass<'_>,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: &[u8],
        limit: usize,
    ) -> Result<Answer, TransportFailure> {
        let (mut answer, token_used) = self
            .send_once(method.clone(), path, query, body, limit)
            .await?;
        if let (Credentials::Iam(source), Some(used)) = (&self.credentials, token_used)
            && answer.status == StatusCode::UNAUTHORIZED
            && let Some(code) = refused_token_code(&answer.body)
        {
            tracing::info!(
                code,
                path,
                "the API refused the IAM token; getting a new one and sending the call once more"
            );
            source.invalidate(&used).await;
            answer = self
                .send_once(method, path, query, body, limit)
                .await
                .map(|(answer, _)| answer)?;
        }
        pass.answered(answer.status.as_u16(), || {
            let info = call_info(&answer);
            match info.error_code {
                Some(code) if code != "401" => format!("HTTP 401 {code}"),
                _ => "HTTP 401".to_string(),
            }
        });
        Ok(answer)
    }

    /// One HTTP exchange, and the IAM token it carried (if any).
    async fn send_once(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: &[u8],
        limit: usize,
    ) -> Result<(Answer, Option<Secret>), TransportFailure> {
        let started = tokio::time::Instant::now();
        let full_path = format!("{}{}", self.endpoint.path_prefix(), path);
        let mut headers = vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("User-Agent".to_string(), self.user_agent.clone()),
        ];
        let prepared = self
            .credentials
            .prepare(RequestToSign {
                method: method.as_str(),
                host: &self.endpoint.host_header(),
                path: &full_path,
                query,
                headers: &mut headers,
                body,
                now: Utc::now(),
            })
            .await
            .map_err(|e| TransportFailure {
                before_send: true,
                retryable: e.retryable,
                class: "auth_failed",
                message: e.message,
            })?;
        let url = self
            .endpoint
            .join(path, &prepared.query_string)
            .map_err(|e| TransportFailure {
                before_send: true,
                retryable: true,
                class: "bad_url",
                message: e.to_string(),
            })?;
        let mut header_map = HeaderMap::with_capacity(headers.len());
        for (name, value) in &headers {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) else {
                return Err(TransportFailure {
                    before_send: true,
                    retryable: true,
                    class: "bad_header",
                    message: format!("header {name:?} cannot be sent"),
                });
            };
            header_map.append(name, value);
        }
        let sent = Utc::now();
        let response = self
            .http
            .request(method, url)
            .headers(header_map)
            .body(body.to_vec())
            .send()
            .await
            .map_err(transport_failure)?;
        let status = response.status();
        let headers = response.headers().clone();
        self.clock.observe(
            sent,
            Utc::now(),
            headers
                .get(reqwest::header::DATE)
                .and_then(|v| v.to_str().ok()),
        );
        // Read chunk by chunk up to the cap, within what is left of the call's timeout: an
        // endless or huge answer costs at most `limit` bytes. After a start call, a body that
        // cannot be read whole is an unknown outcome like a lost connection.
        let left = self.request_timeout.saturating_sub(started.elapsed());
        let mut body = body::read_limited(response, limit, left)
            .await
            .map_err(|e| match e {
                BodyError::Transport(e) => transport_failure(e),
                BodyError::TooLarge { .. } => TransportFailure {
                    before_send: false,
                    retryable: true,
                    class: "answer_too_large",
                    message: format!("HTTP {}: {e}", status.as_u16()),
                },
                BodyError::TimedOut(_) => TransportFailure {
                    before_send: false,
                    retryable: true,
                    class: "timeout",
                    message: format!("HTTP {}: {e}", status.as_u16()),
                },
            })?;
        if !status.is_success() {
            // An error answer may echo what it received (a gateway's canonical request shows
            // signed headers): keep our secrets out of result files and logs.
            let secrets = self.credentials.wire_secrets();
            body = mask_secrets_in_body(body, secrets.into_iter().chain(&prepared.token_used));
        }
        Ok((
            Answer {
                status,
                headers,
                body,
            },
            prepared.token_used,
        ))
    }
}

/// The error code of a call not made because the API refused the credentials before.
pub const CREDENTIALS_REFUSED: &str = "credentials_refused";

/// What a call not made because of the credential guard reports.
pub fn refused_info(blocked: &Blocked) -> CallInfo {
    CallInfo {
        error_code: Some(CREDENTIALS_REFUSED.into()),
        error_msg: Some(blocked.to_string()),
        ..CallInfo::default()
    }
}

/// The code of a 401 answer that says the IAM token is expired or invalid (APIGW.0307, or
/// APIGW.0301 with a message about the token), worth one refresh; `None` for other refusals.
fn refused_token_code(body: &[u8]) -> Option<String> {
    let (code, message) = parse_error_body(body);
    let code = code?;
    let about_token = message.is_some_and(|m| m.to_ascii_lowercase().contains("token"));
    (code == "APIGW.0307" || (code == "APIGW.0301" && about_token)).then_some(code)
}

/// Replaces every occurrence of each (non-empty) secret in `body` with `***`.
fn mask_secrets_in_body<'s>(
    body: Vec<u8>,
    secrets: impl IntoIterator<Item = &'s Secret>,
) -> Vec<u8> {
    let mut text = match String::from_utf8(body) {
        Ok(text) => text,
        // Not text: nothing a secret (always text) could be found in as such.
        Err(e) => return e.into_bytes(),
    };
    for secret in secrets {
        if !secret.is_empty() && text.contains(secret.expose()) {
            text = text.replace(secret.expose(), "***");
        }
    }
    text.into_bytes()
}

fn transport_failure(e: reqwest::Error) -> TransportFailure {
    // A connect failure (DNS, refused, TLS, connect timeout) happens before any byte of the
    // request is written. Anything later may have reached the server.
    let before_send = e.is_connect();
    let class = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect_failed"
    } else {
        "connection_lost"
    };
    // reqwest's Display names the URL, which never holds a secret (auth is in headers).
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    TransportFailure {
        before_send,
        retryable: true,
        class,
        message,
    }
}

fn call_info(answer: &Answer) -> CallInfo {
    let request_id = answer
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| body_request_id(&answer.body));
    let retry_after = answer
        .headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Utc::now()));
    let status = answer.status.as_u16();
    let (error_code, error_msg) = if answer.status.is_success() {
        (None, None)
    } else {
        let (code, msg) = parse_error_body(&answer.body);
        (Some(code.unwrap_or_else(|| status.to_string())), msg)
    };
    CallInfo {
        http_status: Some(status),
        request_id,
        error_code,
        error_msg,
        retry_after,
    }
}

fn unreadable(answer: &Answer, e: serde_json::Error) -> GetFailure {
    let mut info = call_info(answer);
    info.error_code = Some("unreadable_response".into());
    info.error_msg = Some(format!("the answer is not the expected JSON: {e}"));
    GetFailure {
        info,
        retryable: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_token_refusals_trigger_a_refresh() {
        let body = |code: &str, msg: &str| {
            serde_json::json!({"error_code": code, "error_msg": msg, "request_id": "r"})
                .to_string()
                .into_bytes()
        };
        assert_eq!(
            refused_token_code(&body("APIGW.0307", "The token must be updated.")).as_deref(),
            Some("APIGW.0307")
        );
        assert_eq!(
            refused_token_code(&body(
                "APIGW.0301",
                "Incorrect IAM authentication information: decrypt token fail"
            ))
            .as_deref(),
            Some("APIGW.0301")
        );
        for (code, msg) in [
            ("APIGW.0301", "verify aksk signature fail"),
            ("APIGW.0303", "signature expired"),
            ("APIGW.0308", "token bucket"),
        ] {
            assert_eq!(refused_token_code(&body(code, msg)), None, "{code}");
        }
        assert_eq!(refused_token_code(b"<html>401</html>"), None);
    }

    #[test]
    fn secrets_are_scrubbed_from_answers() {
        let secrets = [Secret::new("sts-SECRET"), Secret::new("")];
        let body = br#"{"error_msg": "canonicalRequest: x-security-token:sts-SECRET|x"}"#.to_vec();
        let out = String::from_utf8(mask_secrets_in_body(body, &secrets)).expect("text");
        assert_eq!(
            out,
            r#"{"error_msg": "canonicalRequest: x-security-token:***|x"}"#
        );
        assert_eq!(
            mask_secrets_in_body(vec![0xff, 0xfe], &secrets),
            vec![0xff, 0xfe]
        );
    }

    /// Serves one canned HTTP answer on a loopback port.
    async fn one_answer(raw: &'static str) -> Endpoint {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 8192];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(raw.as_bytes()).await;
        });
        Endpoint::parse(&format!("http://{addr}")).expect("endpoint")
    }

    #[tokio::test]
    async fn a_200_with_an_error_body_is_a_refusal_not_an_unknown_outcome() {
        let body = r#"{"error_code":"Deploy.00011021","error_msg":"application deleted"}"#;
        let raw: &'static str = Box::leak(
            format!("HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                .into_boxed_str(),
        );
        let endpoint = one_answer(raw).await;
        let client = DeployClient::new(
            endpoint,
            Credentials::Token(crate::secret::Secret::new("t")),
            ClientOptions::default(),
        )
        .expect("client");
        match client.start_task(&"a".repeat(32), "{}").await {
            StartOutcome::Final(info) => {
                assert_eq!(info.error_code.as_deref(), Some("Deploy.00011021"));
                assert_eq!(info.http_status, Some(200));
            }
            other => panic!("expected a final refusal, got {other:?}"),
        }
    }

    /// A server answering every request `200` with an endless chunked body; counts requests.
    async fn endless_answers() -> (Endpoint, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    if stream.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                    if stream.write_all(head).await.is_err() {
                        return;
                    }
                    let chunk = format!("8000\r\n{}\r\n", "{".repeat(0x8000));
                    while stream.write_all(chunk.as_bytes()).await.is_ok() {}
                });
            }
        });
        (
            Endpoint::parse(&format!("http://{addr}")).expect("endpoint"),
            count,
        )
    }

    fn token_client(endpoint: Endpoint, token: &str) -> DeployClient {
        DeployClient::new(
            endpoint,
            Credentials::Token(Secret::new(token)),
            ClientOptions::default(),
        )
        .expect("client")
    }

    #[tokio::test]
    async fn an_endless_answer_to_a_start_call_is_an_unknown_outcome_read_up_to_the_cap() {
        let (endpoint, requests) = endless_answers().await;
        let client = token_client(endpoint, "t");
        let started = std::time::Instant::now();
        match client.start_task(&"a".repeat(32), "{}").await {
            StartOutcome::Unknown(info) => {
                assert_eq!(info.error_code.as_deref(), Some("answer_too_large"));
                let msg = info.error_msg.unwrap_or_default();
                assert!(msg.contains("larger than 1 MiB"), "{msg}");
            }
            other => panic!("expected an unknown outcome, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A query reading an endless answer fails (and may be asked again).
        let today = Utc::now().date_naive();
        let err = client
            .history_page(&"p".repeat(32), &"a".repeat(32), 1, 100, today, today)
            .await
            .expect_err("too large");
        assert_eq!(err.info.error_code.as_deref(), Some("answer_too_large"));
        assert!(err.to_string().contains("larger than 4 MiB"), "{err}");
        assert!(err.retryable);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_credential_is_used_once_whatever_the_calls_in_parallel() {
        let emulator = crate::emulator::Emulator::start(
            crate::emulator::EmulatorConfig::default(),
            "127.0.0.1:0".parse().expect("address"),
        )
        .await
        .expect("emulator");
        let endpoint = Endpoint::parse(&emulator.base_url()).expect("endpoint");
        let client = token_client(endpoint.clone(), "not-the-token");
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..8 {
            let client = client.clone();
            calls.spawn(async move { client.start_task(&format!("{i:032x}"), "{}").await });
        }
        let mut codes = Vec::new();
        while let Some(done) = calls.join_next().await {
            codes.push(
                done.expect("join")
                    .info()
                    .error_code
                    .clone()
                    .unwrap_or_default(),
            );
        }
        codes.sort();
        assert_eq!(codes[0], "APIGW.0301", "{codes:?}");
        assert!(
            codes[1..].iter().all(|c| c == CREDENTIALS_REFUSED),
            "{codes:?}"
        );
        assert_eq!(emulator.stats().auth_failures, 1);

        // Queries are guarded too, and a reload with the same credential keeps the refusal.
        let today = Utc::now().date_naive();
        let again = token_client(endpoint.clone(), "not-the-token").with_credentials_of(&client);
        let err = again
            .history_page(&"0".repeat(32), &"1".repeat(32), 1, 10, today, today)
            .await
            .expect_err("not called");
        assert_eq!(err.info.error_code.as_deref(), Some(CREDENTIALS_REFUSED));
        assert!(!err.retryable);
        let msg = err.info.error_msg.unwrap_or_default();
        assert!(
            msg.contains("reload") && !msg.contains("not-the-token"),
            "{msg}"
        );
        assert_eq!(emulator.stats().total, 1);

        // Other credentials start afresh.
        let fixed =
            token_client(endpoint, crate::emulator::DEFAULT_TOKEN).with_credentials_of(&client);
        assert!(matches!(
            fixed.start_task(&"f".repeat(32), "{}").await,
            StartOutcome::Started { .. }
        ));
    }

    #[test]
    fn segments_are_encoded_with_upper_hex() {
        assert_eq!(encode_component("abc-_.~9"), "abc-_.~9");
        assert_eq!(encode_component("a b/c:é"), "a%20b%2Fc%3A%C3%A9");
    }

    /// What goes on the wire is what the signer signed: the path segments and the query are
    /// encoded by the signer's own functions, and a signed request verifies as sent.
    #[tokio::test]
    async fn the_query_and_path_sent_are_the_ones_signed() {
        use crate::auth::signer::{AkSk, ReceivedRequest, verify};
        let creds = Credentials::AkSk(Box::new(AkSk {
            ak: "AK".into(),
            sk: Secret::new("sk"),
            project_id: None,
            security_token: None,
        }));
        let query = [
            ("b".to_string(), "x y/é".to_string()),
            ("a".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ];
        let path = format!("/v2/tasks/{}/state", encode_component("t d/é"));
        let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
        let now = Utc::now();
        let prepared = creds
            .prepare(RequestToSign {
                method: "GET",
                host: "example.com",
                path: &path,
                query: &query,
                headers: &mut headers,
                body: b"",
                now,
            })
            .await
            .expect("signed");
        assert_eq!(prepared.query_string, "a=1&a=2&b=x%20y%2F%C3%A9");
        let received = ReceivedRequest {
            method: "GET",
            path: &path,
            query: &prepared.query_string,
            headers: &headers,
            body: b"",
        };
        assert_eq!(verify(&received, "sk", now), Ok(()));
        // A fixed token sends the same query string.
        let token = Credentials::Token(Secret::new("t"));
        let mut headers = Vec::new();
        let sent = token
            .prepare(RequestToSign {
                method: "GET",
                host: "example.com",
                path: &path,
                query: &query,
                headers: &mut headers,
                body: b"",
                now,
            })
            .await
            .expect("token");
        assert_eq!(sent.query_string, prepared.query_string);
    }
}
