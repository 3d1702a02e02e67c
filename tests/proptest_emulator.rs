//! Hostile input for the emulator's request parsing, over raw TCP (so malformed HTTP is tried,
//! not only what an HTTP client would send): arbitrary bytes, and requests built from random
//! methods, paths, query strings, headers and bodies (mutated valid start bodies included).
//!
//! The emulator must never panic (a panic hook counts panics on every thread, the server's
//! connection tasks included), must answer garbage with a 4xx (or close the connection), never
//! a 5xx (no faults are configured), and must keep answering a valid request afterwards.
//!
//! Cases per property: `PROPTEST_CASES` (default 256).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deployd::emulator::{Emulator, EmulatorConfig};
use deployd::secret::Secret;
use proptest::prelude::*;

const TOKEN: &str = "proptest-token-0123456789";
const TASK: &str = "d2dc947ec2424d8789bb3984bb3adf45";
const PROJECT: &str = deployd::emulator::DEFAULT_PROJECT_ID;
/// A start body the emulator accepts.
const VALID_BODY: &str = r#"{"params":[{"key":"version","value":"1.4.2","type":"text"},{"key":"env","value":"e3144513a4094398857c992606ccba12","type":"host_group"}],"trigger_source":"0"}"#;

/// Panics seen on any thread since the hook was installed.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// One emulator for the whole file, on its own runtime.
struct Server {
    _rt: tokio::runtime::Runtime,
    emulator: Arc<Emulator>,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let config = EmulatorConfig {
            tokens: vec![Secret::new(TOKEN)],
            seed: Some(1),
            ..EmulatorConfig::default()
        };
        let emulator = rt
            .block_on(Emulator::start(
                config,
                "127.0.0.1:0".parse().expect("addr"),
            ))
            .expect("emulator starts");
        Server {
            _rt: rt,
            emulator: Arc::new(emulator),
        }
    })
}

fn addr() -> SocketAddr {
    server().emulator.addr()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Sends `bytes` on a fresh connection; with `half_close`, shuts the write side afterwards.
/// Returns everything the server sent until it closed the connection.
fn exchange(bytes: &[u8], half_close: bool) -> Result<Vec<u8>, TestCaseError> {
    let mut stream =
        TcpStream::connect(addr()).map_err(|e| TestCaseError::fail(format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    // The server may close early (a 400 for a bad head) while we are still writing: fine.
    let _ = stream.write_all(bytes);
    if half_close {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut out = Vec::new();
    match stream.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        // A reset after a rejected request is a close too.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(out),
        Err(e) => Err(TestCaseError::fail(format!(
            "no answer and no close within 10 s ({e}); got {} bytes",
            out.len()
        ))),
    }
}

/// The status code of the first response in `answer`, if any.
fn status(answer: &[u8]) -> Result<Option<u16>, TestCaseError> {
    if answer.is_empty() {
        return Ok(None);
    }
    let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    let code = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) => Ok(Some(c)),
        None => Err(TestCaseError::fail(format!(
            "not an HTTP response: {head:?}"
        ))),
    }
}

/// After each case: no panic anywhere, and a valid request still gets its 200.
fn still_healthy() -> Result<(), TestCaseError> {
    prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic happened");
    let answer = exchange(
        b"GET /_emulator/stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        false,
    )?;
    prop_assert_eq!(
        status(&answer)?,
        Some(200),
        "the emulator stopped answering"
    );
    Ok(())
}

/// A request assembled from parts.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    query: Option<String>,
    version: &'static str,
    token: Option<String>,
    content_type: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    chunked: bool,
}

impl Req {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {}", self.method, self.path).into_bytes();
        if let Some(q) = &self.query {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        out.extend_from_slice(
            format!(
                " {}\r\nhost: 127.0.0.1\r\nconnection: close\r\n",
                self.version
            )
            .as_bytes(),
        );
        if let Some(t) = &self.token {
            out.extend_from_slice(format!("x-auth-token: {t}\r\n").as_bytes());
        }
        if let Some(ct) = &self.content_type {
            out.extend_from_slice(format!("content-type: {ct}\r\n").as_bytes());
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if self.chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            for chunk in self.body.chunks(7) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(
                format!("content-length: {}\r\n\r\n", self.body.len()).as_bytes(),
            );
            out.extend_from_slice(&self.body);
        }
        out
    }

    /// Whether the request could legitimately succeed: everything else is garbage.
    fn may_succeed(&self) -> bool {
        let emulator_page = self.method == "GET"
            && (self.path == "/_emulator/log" || self.path == "/_emulator/stats");
        let authed = self.token.as_deref() == Some(TOKEN);
        emulator_page || (authed && self.path.starts_with("/v2/"))
    }
}

/// Path segments the router knows, ids, and junk.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "v2", "v3", "tasks", "task", "start", "history", "state", "auth", "tokens",
            "_emulator", "log", "stats", "", ".", "..", "%2e%2e", "%00", "%ZZ",
        ]).prop_map(str::to_owned),
        2 => Just(TASK.to_owned()),
        1 => Just(PROJECT.to_owned()),
        2 => "[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,40}",
        1 => "[^ \r\n]{0,10}",
    ]
}

/// A task id: valid, or one character off, or junk.
fn task_id() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just(TASK.to_owned()),
        1 => "[0-9a-f]{31,33}",
        1 => "[0-9a-zA-Z_.~%-]{0,40}",
    ]
}

/// A query value: plausible for the known names, or junk.
fn query_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[1-9][0-9]{0,2}",
        3 => "20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])",
        1 => "-?[0-9]{1,25}",
        1 => prop::sample::select(vec!["true", "false", TASK, ""]).prop_map(str::to_owned),
        1 => "[A-Za-z0-9%+=._-]{0,30}",
    ]
}

fn query() -> impl Strategy<Value = Option<String>> {
    let pair = (
        prop_oneof![
            6 => prop::sample::select(vec![
                "page", "size", "start_date", "end_date", "record_id", "step_state",
            ]).prop_map(str::to_owned),
            1 => "[a-z_]{1,12}",
        ],
        query_value(),
    )
        .prop_map(|(k, v)| format!("{k}={v}"));
    prop_oneof![
        1 => Just(None),
        6 => prop::collection::vec(pair, 0..6).prop_map(|v| Some(v.join("&"))),
        1 => "[!-~]{0,40}".prop_map(Some),
    ]
}

/// A method and a path: mostly an endpoint with its own method, sometimes anything.
fn route() -> impl Strategy<Value = (String, String)> {
    let known = (task_id(), 0..6usize).prop_map(|(id, r)| match r {
        0 | 1 => ("POST".to_owned(), format!("/v2/tasks/{id}/start")),
        2 => ("GET".to_owned(), format!("/v2/{PROJECT}/task/{id}/history")),
        3 => ("GET".to_owned(), format!("/v2/tasks/{id}/state")),
        4 => ("POST".to_owned(), "/v3/auth/tokens".to_owned()),
        _ => ("GET".to_owned(), "/_emulator/stats".to_owned()),
    });
    let method = prop_oneof![
        6 => prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]).prop_map(str::to_owned),
        1 => "[A-Z]{1,12}",
        1 => "[!-~]{1,12}",
    ];
    let path = prop_oneof![
        4 => prop::collection::vec(segment(), 0..7).prop_map(|s| format!("/{}", s.join("/"))),
        1 => "[^\r\n]{0,60}",
        1 => Just("*".to_owned()),
        1 => "http://[a-z]{1,10}(:[0-9]{1,6})?/[a-z/]{0,20}",
    ];
    prop_oneof![
        6 => known,
        1 => (method.clone(), known_path()).prop_map(|(m, p)| (m, p)),
        2 => (method, path),
    ]
}

fn known_path() -> impl Strategy<Value = String> {
    task_id().prop_map(|id| format!("/v2/tasks/{id}/start"))
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let mutated =
        (prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6))
            .prop_map(|edits| {
                let mut b = VALID_BODY.as_bytes().to_vec();
                for (at, byte, op) in edits {
                    if b.is_empty() {
                        break;
                    }
                    let i = at.index(b.len());
                    match op {
                        0 => b[i] = byte,
                        1 => {
                            b.remove(i);
                        }
                        _ => b.insert(i, byte),
                    }
                }
                b
            });
    prop_oneof![
        1 => Just(Vec::new()),
        4 => Just(VALID_BODY.as_bytes().to_vec()),
        4 => mutated,
        2 => prop::collection::vec(any::<u8>(), 0..2048),
        1 => Just(b"{\"params\":".repeat(2000)),
        1 => Just(b"[".repeat(5000)),
        1 => "\\{\"params\":\\[(\\{\"key\":\"[a-z]{0,200}\",\"value\":\"[^\"\\\\]{0,300}\"(,\"type\":\"[a-z_]{0,12}\")?\\},?){0,5}\\](,\"trigger_source\":(\"[0-9]\"|[0-9]|null|true))?(,\"record_id\":\"[0-9a-z]{0,40}\")?\\}".prop_map(String::into_bytes),
    ]
}

fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    (
        prop_oneof![
            8 => "x-[A-Za-z0-9!#$%&'*+.^_`|~-]{1,30}",
            1 => prop::sample::select(vec![
                "x-auth-token", "authorization", "x-project-id", "x-sdk-date", "content-type",
                "expect", "te", "accept", "accept-encoding",
            ]).prop_map(str::to_owned),
            1 => "[^:\r\n]{0,20}",
        ],
        prop_oneof![
            8 => "[ -~]{0,80}".prop_map(String::into_bytes),
            1 => prop::collection::vec(
                any::<u8>().prop_filter("no line breaks", |b| *b != b'\r' && *b != b'\n'),
                0..200,
            ),
        ],
    )
}

fn request() -> impl Strategy<Value = Req> {
    (
        route(),
        query(),
        prop_oneof![
            9 => Just("HTTP/1.1"),
            1 => prop::sample::select(vec!["HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "HTCPCP/1.0", "http/1.1"]),
        ],
        prop_oneof![
            8 => Just(Some(TOKEN.to_owned())),
            1 => Just(None),
            1 => "[ -~]{0,60}".prop_map(Some),
        ],
        prop_oneof![
            8 => prop::sample::select(vec!["application/json", "application/json;charset=UTF-8"])
                .prop_map(|c| Some(c.to_owned())),
            1 => Just(None),
            1 => "[ -~]{0,40}".prop_map(Some),
        ],
        prop::collection::vec(header(), 0..3),
        body(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|((method, path), query, version, token, content_type, headers, body, chunked)| Req {
            method,
            path,
            query,
            version,
            token,
            content_type,
            headers,
            body,
            chunked,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Raw bytes as a whole request, with an empty line appended so that the head ends, then
    /// the client's side closed (bytes that are only empty lines are skipped by HTTP/1 servers,
    /// which then wait for a request: the close ends that wait).
    #[test]
    fn arbitrary_bytes_get_4xx_or_a_close(mut bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        bytes.extend_from_slice(b"\r\n\r\n");
        let answer = exchange(&bytes, true)?;
        if let Some(code) = status(&answer)? {
            prop_assert!((400..500).contains(&code) || code == 505, "answered {code} to garbage");
        }
        still_healthy()?;
    }

    /// Bytes that stop in the middle of a request, then the client closes its side: the server
    /// closes too (or answers 4xx), without waiting forever.
    #[test]
    fn truncated_requests_are_closed(req in request(), cut in any::<prop::sample::Index>()) {
        let bytes = req.bytes();
        let cut = cut.index(bytes.len());
        let answer = exchange(&bytes[..cut], true)?;
        if let Some(code) = status(&answer)? {
            prop_assert!(code < 500 || code == 505, "answered {code} to a truncated request");
        }
        still_healthy()?;
    }

    /// Requests built from random parts: never a 5xx; garbage gets a 4xx; a 200 on a start call
    /// is logged with exactly the body sent.
    #[test]
    fn structured_requests_never_get_5xx(req in request()) {
        let server = server();
        let before = server.emulator.log().len();
        let answer = exchange(&req.bytes(), false)?;
        let code = status(&answer)?;
        let Some(code) = code else {
            return Err(TestCaseError::fail(format!("closed without an answer: {req:?}")));
        };
        prop_assert!(code < 500 || code == 505, "answered {code} to {req:?}");
        if !req.may_succeed() {
            prop_assert!((400..500).contains(&code) || code == 505, "answered {code} to garbage {req:?}");
        }
        let log = server.emulator.log();
        if code == 200 && req.method == "POST" && req.path.ends_with("/start") {
            prop_assert_eq!(log.len(), before + 1);
            let last = log.last().expect("an entry");
            let sent = String::from_utf8_lossy(&req.body).into_owned();
            prop_assert_eq!(&last.body, &sent);
        }
        still_healthy()?;
    }
}

/// The builder's valid request is accepted (so the properties above do reach the handlers),
/// both with a length and chunked.
#[test]
fn the_valid_request_is_accepted() {
    for chunked in [false, true] {
        let req = Req {
            method: "POST".into(),
            path: format!("/v2/tasks/{TASK}/start"),
            query: None,
            version: "HTTP/1.1",
            token: Some(TOKEN.into()),
            content_type: Some("application/json".into()),
            headers: vec![("x-sdk-date".into(), b"20260101T000000Z".to_vec())],
            body: VALID_BODY.as_bytes().to_vec(),
            chunked,
        };
        let answer = exchange(&req.bytes(), false).expect("an answer");
        assert_eq!(
            status(&answer).expect("HTTP"),
            Some(200),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
}
