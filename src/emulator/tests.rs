//! End-to-end tests of the emulator over real HTTP on 127.0.0.1.

use std::time::{Duration, Instant};

use chrono::{Days, Utc};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::service_zone;
use super::error::{
    APIGW_AUTH_FAILED, APIGW_BAD_REQUEST, APIGW_NOT_FOUND, APIGW_SIGNATURE_EXPIRED,
    APIGW_THROTTLED, APIGW_TOKEN_EXPIRED, DEPLOY_INVALID, DEPLOY_NO_RECORD, DEPLOY_TASK_NOT_FOUND,
};
use super::*;
use crate::auth::signer::{AkSk, SignRequest, sign};
use crate::secret::Secret;

const TASK: &str = "d2dc947ec2424d8789bb3984bb3adf45";
const OTHER_TASK: &str = "0ee9c8e6a7dc44109541e53c6dccf47c";

async fn emulator(config: EmulatorConfig) -> Emulator {
    let addr = "127.0.0.1:0".parse().expect("literal address");
    Emulator::start(config, addr)
        .await
        .expect("emulator starts")
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("client builds")
}

/// A response, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn code(&self) -> &str {
        self.body["error_code"].as_str().unwrap_or("")
    }
}

async fn read(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body reads");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

async fn try_start(
    c: &reqwest::Client,
    emu: &Emulator,
    task: &str,
    body: &str,
    content_type: Option<&str>,
    token: Option<&str>,
) -> reqwest::Result<Answer> {
    let mut req = c
        .post(format!("{}/v2/tasks/{task}/start", emu.base_url()))
        .body(body.to_owned());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(token) = token {
        req = req.header("x-auth-token", token);
    }
    Ok(read(req.send().await?).await)
}

async fn start(emu: &Emulator, task: &str, body: &str) -> Answer {
    try_start(
        &client(Duration::from_secs(10)),
        emu,
        task,
        body,
        Some("application/json"),
        Some(DEFAULT_TOKEN),
    )
    .await
    .expect("request completes")
}

async fn get(emu: &Emulator, path_and_query: &str) -> Answer {
    let resp = client(Duration::from_secs(10))
        .get(format!("{}{path_and_query}", emu.base_url()))
        .header("x-auth-token", DEFAULT_TOKEN)
        .send()
        .await
        .expect("request completes");
    read(resp).await
}

fn history_path(task: &str, page: u32, size: u32) -> String {
    let today = Utc::now().with_timezone(&service_zone()).date_naive();
    let (from, to) = (
        today.checked_sub_days(Days::new(1)).unwrap_or(today),
        today.checked_add_days(Days::new(1)).unwrap_or(today),
    );
    format!(
        "/v2/{DEFAULT_PROJECT_ID}/task/{task}/history?end_date={to}&page={page}&size={size}&start_date={from}"
    )
}

/// Polls `check` until it returns true or the deadline passes.
async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_valid_start_is_answered_and_logged() {
    let emu = emulator(EmulatorConfig::default()).await;
    let body = r#"{"params": [{"key": "version", "value": "1.2.3", "type": "text"}, {"key": "pw", "value": "s3cret", "type": "encrypt"}], "trigger_source": "0"}"#;
    let a = start(&emu, TASK, body).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let id = a.body["id"].as_str().expect("id is a string");
    assert!(is_hex32(id), "{id}");
    assert_eq!(a.body["task_id"], TASK);
    let job = a.body["job_name"].as_str().expect("job_name");
    assert!(job.starts_with(&format!("job_{TASK}_")), "{job}");
    assert_eq!(a.body["app_component_list"], json!([]));
    assert!(is_hex32(a.header("x-request-id")));

    let log = emu.log();
    assert_eq!(log.len(), 1);
    let entry = &log[0];
    assert_eq!((entry.seq, entry.record_id.as_str()), (1, id));
    assert_eq!(entry.task_id, TASK);
    assert_eq!(entry.request_id, a.header("x-request-id"));
    assert_eq!(entry.body, body);
    assert_eq!(entry.params.len(), 2);
    assert_eq!(entry.params[1].param_type.as_deref(), Some("encrypt"));
    assert_eq!(entry.trigger_source.as_deref(), Some("0"));
    assert_eq!(entry.principal, "token");
    let token = entry
        .headers
        .iter()
        .find(|(n, _)| n == "x-auth-token")
        .map(|(_, v)| v.as_str());
    assert_eq!(token, Some("***"));
    assert!(!format!("{entry:?}").contains("s3cret"));

    // No body and an empty object are fine too, and every start makes a new record.
    assert_eq!(start(&emu, TASK, "").await.status, 200);
    assert_eq!(start(&emu, TASK, "{}").await.status, 200);
    let log = emu.log();
    assert_eq!(log.len(), 3);
    assert_ne!(log[1].record_id, log[2].record_id);
    let stats = emu.stats();
    assert_eq!((stats.status(200), stats.accepted, stats.total), (3, 3, 3));
}

#[tokio::test]
async fn every_validation_rule_is_a_400() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(Duration::from_secs(10));
    let many: Vec<String> = (0..501)
        .map(|i| format!(r#"{{"key":"k{i}","value":"v"}}"#))
        .collect();
    let long = "v".repeat(8193);
    let json = Some("application/json");
    let cases: Vec<(&str, String, Option<&str>, &str)> = vec![
        (
            "number trigger_source",
            r#"{"trigger_source": 0}"#.into(),
            json,
            TASK,
        ),
        ("null field", r#"{"record_id": null}"#.into(), json, TASK),
        (
            "bad key",
            r#"{"params": [{"key": "a b", "value": "v"}]}"#.into(),
            json,
            TASK,
        ),
        (
            "long value",
            format!(r#"{{"params": [{{"key": "k", "value": "{long}"}}]}}"#),
            json,
            TASK,
        ),
        (
            "template",
            r#"{"params": [{"key": "k", "value": "{{x}}"}]}"#.into(),
            json,
            TASK,
        ),
        (
            "501 params",
            format!(r#"{{"params": [{}]}}"#, many.join(",")),
            json,
            TASK,
        ),
        ("unknown field", r#"{"force": true}"#.into(), json, TASK),
        (
            "bad type",
            r#"{"params": [{"key": "k", "value": "v", "type": "secret"}]}"#.into(),
            json,
            TASK,
        ),
        ("bad content type", "{}".into(), Some("text/plain"), TASK),
        ("no content type", "{}".into(), None, TASK),
        ("not json", "{".into(), json, TASK),
        ("short task id", "{}".into(), json, "abc"),
    ];
    for (name, body, ct, task) in &cases {
        let a = try_start(&c, &emu, task, body, *ct, Some(DEFAULT_TOKEN))
            .await
            .expect("request completes");
        assert_eq!(a.status, 400, "{name}: {:?}", a.body);
        assert_eq!(a.code(), DEPLOY_INVALID, "{name}");
        assert_eq!(a.body["status"], "error", "{name}");
        assert!(a.body["error"]["code"].is_string(), "{name}");
        assert!(is_hex32(a.header("x-request-id")), "{name}");
    }
    // Invalid UTF-8 bytes in the body.
    let resp = c
        .post(format!("{}/v2/tasks/{TASK}/start", emu.base_url()))
        .header("content-type", "application/json")
        .header("x-auth-token", DEFAULT_TOKEN)
        .body(vec![b'{', 0xff, 0xfe, b'}'])
        .send()
        .await
        .expect("request completes");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(emu.log().is_empty());
    assert_eq!(emu.stats().status(400), cases.len() as u64 + 1);
}

#[tokio::test]
async fn an_unknown_task_is_a_404_served_as_html() {
    let config = EmulatorConfig {
        unknown_task_ids: [OTHER_TASK.to_owned()].into(),
        ..EmulatorConfig::default()
    };
    let emu = emulator(config).await;
    let a = start(&emu, OTHER_TASK, "{}").await;
    assert_eq!(a.status, 404);
    assert!(a.header("content-type").starts_with("text/html"));
    assert_eq!(a.code(), DEPLOY_TASK_NOT_FOUND);
    assert!(emu.log().is_empty());
    // Unknown routes are the gateway's 404.
    let a = get(&emu, "/v2/nothing/here").await;
    assert_eq!((a.status, a.code()), (404, APIGW_NOT_FOUND));
    assert!(is_hex32(a.body["request_id"].as_str().unwrap_or("")));
}

#[tokio::test]
async fn tokens_are_required_unless_auth_is_off() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(Duration::from_secs(10));
    let json = Some("application/json");
    for token in [None, Some("wrong-token")] {
        let a = try_start(&c, &emu, TASK, "{}", json, token)
            .await
            .expect("request completes");
        assert_eq!((a.status, a.code()), (401, APIGW_AUTH_FAILED), "{token:?}");
    }
    let a = get(&emu, &history_path(TASK, 1, 10)).await;
    assert_eq!(a.status, 200);
    assert!(emu.log().is_empty());

    let open = emulator(EmulatorConfig {
        auth_required: false,
        ..EmulatorConfig::default()
    })
    .await;
    let a = try_start(&c, &open, TASK, "{}", json, None)
        .await
        .expect("request completes");
    assert_eq!(a.status, 200);
    assert_eq!(open.log()[0].principal, "anonymous");
}

#[tokio::test]
async fn iam_tokens_are_issued_used_and_expire() {
    let config = EmulatorConfig {
        token_lifetime: Duration::from_secs(1),
        users: vec![IamUser::new("acme", "bob", "pw")],
        ..EmulatorConfig::default()
    };
    let emu = emulator(config).await;
    let c = client(Duration::from_secs(10));
    let auth = |password: &str| {
        json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "domain": {"name": "acme"}, "name": "bob", "password": password}}},
            "scope": {"project": {"name": "cn-north-4"}}}})
        .to_string()
    };
    let issue = |body: String| {
        c.post(format!("{}/v3/auth/tokens?nocatalog=true", emu.base_url()))
            .header("content-type", "application/json;charset=utf8")
            .body(body)
            .send()
    };
    let a = read(issue(auth("wrong")).await.expect("request completes")).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.body["error"]["code"], 401);
    assert!(a.headers.get("x-subject-token").is_none());

    let a = read(issue(auth("pw")).await.expect("request completes")).await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let token = a.header("x-subject-token").to_owned();
    assert!(!token.is_empty());
    for field in ["issued_at", "expires_at"] {
        let t = a.body["token"][field].as_str().expect("time is a string");
        assert!(
            t.ends_with('Z') && t.len() == "2019-02-13T06:52:13.855000Z".len(),
            "{t}"
        );
    }
    assert!(
        a.body["token"].get("catalog").is_none(),
        "nocatalog drops it"
    );

    let a = try_start(&c, &emu, TASK, "{}", Some("application/json"), Some(&token))
        .await
        .expect("request completes");
    assert_eq!(a.status, 200);
    assert_eq!(emu.log()[0].principal, "iam:acme/bob");

    // Poll with a read-only call, so that polling creates no records.
    let expired = eventually(Duration::from_secs(5), || async {
        let resp = c
            .get(format!("{}{}", emu.base_url(), history_path(TASK, 1, 1)))
            .header("x-auth-token", &token)
            .send()
            .await
            .expect("request completes");
        let a = read(resp).await;
        a.status == 401 && a.code() == APIGW_TOKEN_EXPIRED
    })
    .await;
    assert!(expired, "the issued token never expired");
    let a = try_start(&c, &emu, TASK, "{}", Some("application/json"), Some(&token))
        .await
        .expect("request completes");
    assert_eq!((a.status, a.code()), (401, APIGW_TOKEN_EXPIRED));
    assert_eq!(emu.log().len(), 1);
}

#[tokio::test]
async fn the_rate_limit_answers_429() {
    let emu = emulator(EmulatorConfig {
        rate_limit: Some(2.0),
        ..EmulatorConfig::default()
    })
    .await;
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(start(&emu, TASK, "{}").await);
    }
    let throttled: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(
        !throttled.is_empty(),
        "6 quick calls at 2/s must be throttled"
    );
    for a in &throttled {
        assert_eq!(a.code(), APIGW_THROTTLED);
        assert_eq!(a.header("retry-after"), "1");
    }
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert!(ok >= 2, "the burst of 2 goes through");
    assert_eq!(emu.log().len(), ok);
    assert_eq!(emu.stats().status(429), throttled.len() as u64);
}

#[tokio::test]
async fn drop_before_processing_creates_nothing() {
    let emu = emulator(EmulatorConfig {
        drop_before_rate: 1.0,
        ..EmulatorConfig::default()
    })
    .await;
    let c = client(Duration::from_secs(10));
    let result = try_start(
        &c,
        &emu,
        TASK,
        "{}",
        Some("application/json"),
        Some(DEFAULT_TOKEN),
    )
    .await;
    let err = result.expect_err("the connection is closed unanswered");
    assert!(!err.is_timeout(), "{err}");
    assert!(emu.log().is_empty());
    let stats = emu.stats();
    assert_eq!((stats.dropped_before, stats.accepted), (1, 0));
    assert!(stats.by_status.is_empty());
}

#[tokio::test]
async fn drop_after_processing_leaves_a_record() {
    let emu = emulator(EmulatorConfig {
        drop_after_rate: 1.0,
        ..EmulatorConfig::default()
    })
    .await;
    let c = client(Duration::from_secs(10));
    let result = try_start(
        &c,
        &emu,
        TASK,
        "{}",
        Some("application/json"),
        Some(DEFAULT_TOKEN),
    )
    .await;
    assert!(result.is_err(), "the response is lost");
    let log = emu.log();
    assert_eq!(log.len(), 1, "the record was created");
    assert_eq!(log[0].task_id, TASK);
    assert_eq!(emu.stats().dropped_after, 1);
}

#[tokio::test]
async fn injected_errors_create_nothing() {
    let emu = emulator(EmulatorConfig {
        error_rate: 1.0,
        seed: Some(3),
        ..EmulatorConfig::default()
    })
    .await;
    for _ in 0..6 {
        let a = start(&emu, TASK, "{}").await;
        assert!(a.status == 500 || a.status == 503, "{}", a.status);
    }
    assert!(emu.log().is_empty());
}

#[tokio::test]
async fn seeded_faults_are_reproducible() {
    async fn statuses(seed: u64) -> Vec<u16> {
        let emu = emulator(EmulatorConfig {
            error_rate: 0.5,
            seed: Some(seed),
            ..EmulatorConfig::default()
        })
        .await;
        let mut out = Vec::new();
        for _ in 0..12 {
            out.push(start(&emu, TASK, "{}").await.status);
        }
        out
    }
    let first = statuses(42).await;
    assert_eq!(first, statuses(42).await);
    assert!(
        first.contains(&200) && first.iter().any(|s| *s >= 500),
        "{first:?}"
    );
}

#[tokio::test]
async fn hung_requests_time_out_and_shutdown_ends_them() {
    let emu = emulator(EmulatorConfig {
        hang_rate: 1.0,
        hang_for: Duration::from_secs(60),
        ..EmulatorConfig::default()
    })
    .await;
    let c = client(Duration::from_millis(300));
    let err = try_start(
        &c,
        &emu,
        TASK,
        "{}",
        Some("application/json"),
        Some(DEFAULT_TOKEN),
    )
    .await
    .expect_err("the request hangs");
    assert!(err.is_timeout(), "{err}");
    assert_eq!(emu.stats().hung, 1);
    assert!(emu.log().is_empty());
    let began = Instant::now();
    emu.shutdown().await;
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "shutdown waited for the hang"
    );
}

#[tokio::test]
async fn history_pages_newest_first() {
    let emu = emulator(EmulatorConfig::default()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let a = start(&emu, TASK, "{}").await;
        ids.push(a.body["id"].as_str().expect("id").to_owned());
    }
    start(&emu, OTHER_TASK, "{}").await;

    let a = get(&emu, &history_path(TASK, 1, 2)).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["total_num"], 3);
    let page: Vec<&str> = a.body["result"]
        .as_array()
        .expect("result is an array")
        .iter()
        .filter_map(|r| r["execution_id"].as_str())
        .collect();
    assert_eq!(page, vec![ids[2].as_str(), ids[1].as_str()]);
    let first = &a.body["result"][0];
    assert_eq!(first["release_id"], 3);
    assert_eq!(first["state"], "running");
    assert_eq!(first["operator"], "emulator");
    let start_time = first["start_time"].as_str().expect("start_time");
    assert_eq!(
        start_time.len(),
        "2024-03-16 04:30:00".len(),
        "{start_time}"
    );

    let a = get(&emu, &history_path(TASK, 2, 2)).await;
    assert_eq!(a.body["result"][0]["execution_id"], ids[0].as_str());
    assert_eq!(a.body["result"].as_array().map(Vec::len), Some(1));

    let old = format!(
        "/v2/{DEFAULT_PROJECT_ID}/task/{TASK}/history?page=1&size=10&start_date=2020-01-01&end_date=2020-01-31"
    );
    let a = get(&emu, &old).await;
    assert_eq!((a.status, a.body["total_num"].as_u64()), (200, Some(0)));

    for bad in [
        format!(
            "/v2/{DEFAULT_PROJECT_ID}/task/{TASK}/history?page=1&size=10&start_date=2020-01-01"
        ),
        format!(
            "/v2/{DEFAULT_PROJECT_ID}/task/{TASK}/history?page=1&size=10&start_date=2020-01-01&end_date=2020-03-01"
        ),
        format!(
            "/v2/{DEFAULT_PROJECT_ID}/task/{TASK}/history?page=1&size=101&start_date=2020-01-01&end_date=2020-01-02"
        ),
        format!(
            "/v2/{DEFAULT_PROJECT_ID}/task/{TASK}/history?page=1&size=10&start_date=Mar 16, 2022&end_date=2020-01-02"
        ),
    ] {
        let a = get(&emu, &bad).await;
        assert_eq!((a.status, a.code()), (400, DEPLOY_INVALID), "{bad}");
    }
    let wrong_project = history_path(TASK, 1, 2).replace(DEFAULT_PROJECT_ID, &"f".repeat(32));
    assert_eq!(get(&emu, &wrong_project).await.status, 404);
}

#[tokio::test]
async fn records_move_from_running_to_their_end_state() {
    let emu = emulator(EmulatorConfig {
        deploy_duration: Duration::from_millis(300),
        failing_task_ids: [OTHER_TASK.to_owned()].into(),
        ..EmulatorConfig::default()
    })
    .await;
    let good = start(&emu, TASK, "{}").await.body["id"].clone();
    let bad = start(&emu, OTHER_TASK, "{}").await.body["id"].clone();
    let state = |task: &'static str, id: Value| {
        let emu = &emu;
        async move {
            let id = id.as_str().unwrap_or_default().to_owned();
            get(emu, &format!("/v2/tasks/{task}/state?record_id={id}")).await
        }
    };
    let a = state(TASK, good.clone()).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["status"], "success");
    assert_eq!(a.body["result"]["status"], "running");
    assert_eq!(a.body["result"]["step"], "running");
    assert_eq!(a.body["result"]["record_id"], good);

    let ended = eventually(Duration::from_secs(5), || async {
        let g = state(TASK, good.clone()).await;
        let b = state(OTHER_TASK, bad.clone()).await;
        g.body["result"]["status"] == "succeeded" && b.body["result"]["status"] == "failed"
    })
    .await;
    assert!(ended, "the records never ended");
    let a = state(TASK, good.clone()).await;
    assert_eq!(a.body["result"]["step"], "finish");
    assert_ne!(a.body["result"]["end_time"], "");
    let h = get(&emu, &history_path(OTHER_TASK, 1, 10)).await;
    assert_eq!(h.body["result"][0]["state"], "failed");

    // A record of another task, or an unknown one, is "no execution record".
    for id in [bad.clone(), json!("a".repeat(32))] {
        let a = state(TASK, id).await;
        assert_eq!((a.status, a.code()), (400, DEPLOY_NO_RECORD));
    }
    // Without record_id: the latest record of the task.
    let a = get(&emu, &format!("/v2/tasks/{TASK}/state")).await;
    assert_eq!(a.body["result"]["record_id"], good);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(Duration::from_secs(30));
    let body = "x".repeat(BODY_LIMIT + 1);
    let result = try_start(
        &c,
        &emu,
        TASK,
        &body,
        Some("application/json"),
        Some(DEFAULT_TOKEN),
    )
    .await;
    // The server answers before reading the body; the client may see the answer or, if it was
    // still writing, a reset. Either way nothing is accepted.
    if let Ok(a) = result {
        assert_eq!((a.status, a.code()), (413, APIGW_BAD_REQUEST));
    }
    assert_eq!(emu.stats().status(413), 1);

    // Without Content-Length the limit applies while reading.
    let mut stream = tokio::net::TcpStream::connect(emu.addr())
        .await
        .expect("connects");
    let head = format!(
        "POST /v2/tasks/{TASK}/start HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-Auth-Token: {DEFAULT_TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        BODY_LIMIT + 1
    );
    stream.write_all(head.as_bytes()).await.expect("writes");
    // The server may stop reading once over the limit, so a failed write is fine.
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.write_all(b"\r\n0\r\n\r\n").await;
    let mut answer = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut answer))
        .await
        .expect("answers in time")
        .expect("reads the status line");
    assert_eq!(&answer, b"HTTP/1.1 413");
    assert_eq!(emu.stats().status(413), 2);
    assert!(emu.log().is_empty());
    assert_eq!(emu.stats().accepted, 0);
}

#[tokio::test]
async fn garbage_bytes_do_not_hurt_the_server() {
    let emu = emulator(EmulatorConfig::default()).await;
    for garbage in [
        &b"\x00\xff\xfe GARBAGE\r\n\r\n"[..],
        b"POST /v2/tasks/x/start HTTP/1.1\r\nContent-Length: zz\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let mut stream = tokio::net::TcpStream::connect(emu.addr())
            .await
            .expect("connects");
        stream.write_all(garbage).await.expect("writes");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server closes bad connections");
    }
    assert_eq!(start(&emu, TASK, "{}").await.status, 200);
}

#[tokio::test]
async fn log_and_stats_are_served_over_http() {
    let emu = emulator(EmulatorConfig::default()).await;
    start(&emu, TASK, r#"{"trigger_source": "1"}"#).await;
    start(&emu, TASK, r#"{"trigger_source": 1}"#).await;
    let c = client(Duration::from_secs(10));
    let log: Vec<LoggedRequest> = serde_json::from_str(
        &c.get(format!("{}/_emulator/log", emu.base_url()))
            .send()
            .await
            .expect("log answers")
            .text()
            .await
            .expect("log reads"),
    )
    .expect("log is JSON");
    assert_eq!(
        log,
        emu.log(),
        "nothing secret in these requests: the same log"
    );
    assert_eq!(log[0].trigger_source.as_deref(), Some("1"));

    // Encrypt values are masked over HTTP (kept in-process for tests).
    start(
        &emu,
        TASK,
        r#"{"params": [{"key": "pw", "value": "hunter2", "type": "encrypt"}]}"#,
    )
    .await;
    let text = c
        .get(format!("{}/_emulator/log", emu.base_url()))
        .send()
        .await
        .expect("log answers")
        .text()
        .await
        .expect("log reads");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(emu.log().last().expect("entry").body.contains("hunter2"));
    let stats: Stats = serde_json::from_str(
        &c.get(format!("{}/_emulator/stats", emu.base_url()))
            .send()
            .await
            .expect("stats answers")
            .text()
            .await
            .expect("stats reads"),
    )
    .expect("stats is JSON");
    assert_eq!(stats, emu.stats());
    assert_eq!(
        (stats.total, stats.status(200), stats.status(400)),
        (3, 2, 1)
    );
}

#[tokio::test]
async fn serve_until_stops_on_its_future() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let addr = "127.0.0.1:0".parse().expect("literal address");
    let server = tokio::spawn(serve_until(EmulatorConfig::default(), addr, async {
        let _ = rx.await;
    }));
    let _ = tx.send(());
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve_until returns")
        .expect("task does not panic");
    assert!(result.is_ok());
}

#[tokio::test]
async fn bad_configs_do_not_start() {
    let addr = "127.0.0.1:0".parse().expect("literal address");
    let config = EmulatorConfig {
        project_id: "short".into(),
        ..EmulatorConfig::default()
    };
    let err = Emulator::start(config, addr).await.err().expect("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// AK/SK credentials for the signature tests.
fn aksk(ak: &str, sk: &str, security_token: Option<&str>) -> AkSk {
    AkSk {
        ak: ak.into(),
        sk: Secret::new(sk),
        project_id: Some(DEFAULT_PROJECT_ID.into()),
        security_token: security_token.map(Secret::new),
    }
}

/// Sends a request signed as the client does (the query goes out in its canonical form),
/// with `X-Sdk-Date` taken from `at`.
async fn signed(
    emu: &Emulator,
    creds: &AkSk,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: &str,
    at: chrono::DateTime<Utc>,
) -> Answer {
    let query: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    let host = emu.addr().to_string();
    let s = sign(
        creds,
        &SignRequest {
            method,
            host: &host,
            path,
            query: &query,
            headers: &headers,
            body: body.as_bytes(),
        },
        at,
    );
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let mut req = client(Duration::from_secs(10))
        .request(method, format!("{}{}", emu.base_url(), s.request_uri))
        .body(body.to_owned());
    for (name, value) in &s.headers {
        req = req.header(name.as_str(), value.as_str());
    }
    read(req.send().await.expect("request completes")).await
}

#[tokio::test]
async fn aksk_signatures_are_verified_on_starts_and_queries() {
    let emu = emulator(EmulatorConfig::default()).await;
    let good = aksk(DEFAULT_AK, DEFAULT_SK, None);
    let start_path = format!("/v2/tasks/{TASK}/start");
    let a = signed(
        &emu,
        &good,
        "POST",
        &start_path,
        &[],
        r#"{"trigger_source": "0"}"#,
        Utc::now(),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let entry = &emu.log()[0];
    assert_eq!(entry.principal, format!("aksk:{DEFAULT_AK}"));
    let shown = entry
        .headers
        .iter()
        .find(|(n, _)| n == "authorization")
        .map(|(_, v)| v.as_str());
    assert_eq!(shown, Some("***"));

    // A query given out of order goes out sorted (its canonical form) and verifies too.
    let today = Utc::now()
        .with_timezone(&service_zone())
        .date_naive()
        .to_string();
    let history = format!("/v2/{DEFAULT_PROJECT_ID}/task/{TASK}/history");
    let query = [
        ("start_date", today.as_str()),
        ("size", "10"),
        ("page", "1"),
        ("end_date", today.as_str()),
    ];
    let a = signed(&emu, &good, "GET", &history, &query, "", Utc::now()).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["total_num"], 1);
    let state = format!("/v2/tasks/{TASK}/state");
    let a = signed(
        &emu,
        &good,
        "GET",
        &state,
        &[("record_id", entry.record_id.as_str())],
        "",
        Utc::now(),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);

    // The wrong SK: 0301 with the server's canonical request, newlines shown as `|`.
    let wrong = aksk(DEFAULT_AK, "not-the-sk", Some("sts-token-SECRET"));
    let a = signed(&emu, &wrong, "POST", &start_path, &[], "{}", Utc::now()).await;
    assert_eq!((a.status, a.code()), (401, APIGW_AUTH_FAILED));
    let msg = a.body["error_msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("verify aksk signature fail")
            && msg.contains(&format!("canonicalRequest: POST|{start_path}/||")),
        "{msg}"
    );
    assert!(msg.contains("x-security-token:***"), "{msg}");
    assert!(
        !msg.contains("sts-token-SECRET") && !msg.contains("not-the-sk"),
        "{msg}"
    );

    // An unknown AK, and a skew over 15 minutes.
    let a = signed(
        &emu,
        &aksk("NOSUCHAK", DEFAULT_SK, None),
        "POST",
        &start_path,
        &[],
        "{}",
        Utc::now(),
    )
    .await;
    assert_eq!((a.status, a.code()), (401, APIGW_AUTH_FAILED));
    assert!(
        a.body["error_msg"]
            .as_str()
            .unwrap_or_default()
            .contains("NOSUCHAK")
    );
    let old = Utc::now() - chrono::TimeDelta::minutes(16);
    let a = signed(&emu, &good, "POST", &start_path, &[], "{}", old).await;
    assert_eq!(
        (a.status, a.code()),
        (401, APIGW_SIGNATURE_EXPIRED),
        "{:?}",
        a.body
    );
    let a = signed(
        &emu,
        &good,
        "POST",
        &start_path,
        &[],
        "{}",
        Utc::now() - chrono::TimeDelta::minutes(14),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);

    let stats = emu.stats();
    assert_eq!(
        (stats.accepted, stats.auth_failures, stats.status(401)),
        (2, 3, 3)
    );
}

#[tokio::test]
async fn a_refused_start_is_answered_even_with_drop_after() {
    let emu = emulator(EmulatorConfig {
        drop_after_rate: 1.0,
        ..EmulatorConfig::default()
    })
    .await;
    let path = format!("/v2/tasks/{TASK}/start");
    let a = signed(
        &emu,
        &aksk(DEFAULT_AK, "wrong", None),
        "POST",
        &path,
        &[],
        "{}",
        Utc::now(),
    )
    .await;
    assert_eq!((a.status, a.code()), (401, APIGW_AUTH_FAILED));
    let stats = emu.stats();
    assert_eq!((stats.dropped_after, stats.accepted), (0, 0));
}

#[tokio::test]
async fn an_ak_is_locked_after_more_than_five_failures_in_a_row() {
    let emu = emulator(EmulatorConfig {
        ak_lock_duration: Duration::from_millis(400),
        ..EmulatorConfig::default()
    })
    .await;
    let good = aksk(DEFAULT_AK, DEFAULT_SK, None);
    let bad = aksk(DEFAULT_AK, "wrong", None);
    let path = format!("/v2/tasks/{TASK}/start");
    // Five failures, then a success: the count starts again.
    for _ in 0..AK_MAX_FAILURES {
        let a = signed(&emu, &bad, "POST", &path, &[], "{}", Utc::now()).await;
        assert!(
            a.body["error_msg"]
                .as_str()
                .unwrap_or_default()
                .contains("verify aksk")
        );
    }
    assert_eq!(
        signed(&emu, &good, "POST", &path, &[], "{}", Utc::now())
            .await
            .status,
        200
    );
    // Six in a row lock the key: even a good signature is refused.
    for _ in 0..=AK_MAX_FAILURES {
        signed(&emu, &bad, "POST", &path, &[], "{}", Utc::now()).await;
    }
    let a = signed(&emu, &good, "POST", &path, &[], "{}", Utc::now()).await;
    assert_eq!((a.status, a.code()), (401, APIGW_AUTH_FAILED));
    assert!(
        a.body["error_msg"]
            .as_str()
            .unwrap_or_default()
            .contains("AK access failed to reach the limit"),
        "{:?}",
        a.body
    );
    assert_eq!(emu.log().len(), 1);
    // Until the lock runs out.
    let unlocked = eventually(Duration::from_secs(5), || async {
        signed(&emu, &good, "POST", &path, &[], "{}", Utc::now())
            .await
            .status
            == 200
    })
    .await;
    assert!(unlocked, "the AK never unlocked");
}
