//! Authentication end to end (issue 5): AK/SK signing verified by the emulator on every call,
//! IAM password tokens refreshed during a run that outlives several of them, a wrong SK that
//! fails once per task without a retry, and no secret in any log line, output or result file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use deployd::api::client::{ClientOptions, DeployClient, Endpoint};
use deployd::api::credentials::Credentials;
use deployd::api::iam::{IamConfig, IamTokenSource, ProjectScope};
use deployd::api::types::StartOutcome;
use deployd::emulator::{AccessKey, DEFAULT_PROJECT_ID, Emulator, EmulatorConfig, IamUser};
use deployd::secret::Secret;

use crate::helpers::*;

const AK: &str = "ITACCESSKEY000000001";
const SK: &str = "it-sk-0f3c9a-SECRET";
const STS: &str = "it-sts-7d1e44-SECRET";
const PASSWORD: &str = "it-iam-pw-5b2a-SECRET";
const DB_PASSWORD: &str = "it-db-pw-91c3-SECRET";
/// Every token the emulator issues starts with this.
const ISSUED_TOKEN_PREFIX: &str = "MIIemu";

/// `n` distinct task ids.
/// A plan over `tasks` with an `encrypt` param from the environment and a fast retry block.
fn plan(tasks: &[String]) -> String {
    let mut text = String::from(
        "name: auth\nparams:\n  - {key: db_password, value_from: {env: IT_DB_PASSWORD}, type: encrypt}\n\
         retry: {max_attempts: 5, base: 1ms, cap: 5ms, deadline: 1m}\ntasks:\n",
    );
    for t in tasks {
        text.push_str(&format!("  - {t}\n"));
    }
    text
}

/// A folder with the plan; `exec` runs the binary on it against `emulator` with `RUST_LOG=trace`.
struct Setup {
    dir: tempfile::TempDir,
    emulator: Emulator,
    tasks: Vec<String>,
}

impl Setup {
    async fn new(config: EmulatorConfig, tasks: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let tasks = task_ids(tasks, 0xa);
        write(&dir.path().join("auth.yaml"), &plan(&tasks));
        Self {
            dir,
            emulator: start_emulator(config).await,
            tasks,
        }
    }

    fn results_dir(&self) -> PathBuf {
        self.dir.path().join("results")
    }

    fn exec(&self, rate: &str) -> Command {
        let mut cmd = deployd();
        cmd.arg("exec")
            .arg(self.dir.path().join("auth.yaml"))
            .arg("--endpoint")
            .arg(self.emulator.base_url())
            .arg("--results-dir")
            .arg(self.results_dir())
            .args(["--rate", rate, "--burst", "1", "--concurrency", "4"])
            .env_remove("CLOUD_SDK_SECURITY_TOKEN")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("IT_DB_PASSWORD", DB_PASSWORD)
            .env("RUST_LOG", "trace");
        cmd
    }

    /// Writes a secret file with `mode` under `creds/`, the `$CREDENTIALS_DIRECTORY`.
    fn credential(&self, name: &str, text: &str, mode: u32) {
        let path = self.dir.path().join("creds").join(name);
        write(&path, text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn creds_dir(&self) -> PathBuf {
        self.dir.path().join("creds")
    }

    /// The only result file, parsed.
    fn result(&self) -> serde_json::Value {
        let mut all = results(&self.results_dir(), "auth");
        assert_eq!(all.len(), 1, "one result file");
        all.remove(0)
    }

    /// Asserts that none of `secrets` (nor any token the emulator issued) appears in the
    /// output or in any file under the results folder.
    fn assert_no_secrets(&self, out: &Output, secrets: &[&str]) {
        let mut texts = vec![
            (
                "stdout".to_string(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ),
            (
                "stderr".to_string(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ),
        ];
        for file in files_under(&self.results_dir()) {
            let text = std::fs::read_to_string(&file).expect("a result file is text");
            texts.push((file.display().to_string(), text));
        }
        assert!(texts.len() > 2, "no result file was written");
        for (name, text) in &texts {
            for secret in secrets.iter().chain(&[ISSUED_TOKEN_PREFIX]) {
                assert!(
                    !text.contains(secret),
                    "{secret:?} found in {name}:\n{text}"
                );
            }
        }
    }
}

/// Every file below `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        tail(&String::from_utf8_lossy(&out.stderr), 6000)
    )
}

/// The last `n` bytes of a long log (trace logs are large), cut at a char boundary.
fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn aksk_config() -> EmulatorConfig {
    EmulatorConfig {
        access_keys: vec![AccessKey::new(AK, SK)],
        ..emulator_config()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn aksk_from_the_environment_signs_every_call_including_history_queries() {
    // Every start answer is lost after processing, so each task is also looked up in its
    // history: signed GETs with a query string.
    let s = Setup::new(
        EmulatorConfig {
            drop_after_rate: 1.0,
            ..aksk_config()
        },
        4,
    )
    .await;
    let mut cmd = s.exec("1000");
    cmd.env("CLOUD_SDK_AK", AK)
        .env("CLOUD_SDK_SK", SK)
        .env("CLOUD_SDK_SECURITY_TOKEN", STS)
        .env("CLOUD_SDK_PROJECT_ID", DEFAULT_PROJECT_ID);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let r = s.result();
    for t in &s.tasks {
        let entry = task(&r, t);
        assert_eq!(entry["status"], "started", "{entry}");
        assert_eq!(entry["reconciled"], true, "{entry}");
        assert_eq!(entry["attempts"], 1, "{entry}");
    }
    let log = s.emulator.log();
    assert_eq!(log.len(), s.tasks.len());
    assert!(
        log.iter().all(|l| l.principal == format!("aksk:{AK}")),
        "{log:?}"
    );
    let stats = s.emulator.stats();
    assert_eq!(
        (stats.auth_failures, stats.status(401)),
        (0, 0),
        "{stats:?}"
    );
    assert!(
        stats.status(200) >= s.tasks.len() as u64,
        "signed history queries answered: {stats:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("authentication: AK/SK signing"),
        "{}",
        text(&out)
    );
    s.assert_no_secrets(&out, &[SK, STS, DB_PASSWORD]);
}

#[tokio::test(flavor = "multi_thread")]
async fn aksk_from_systemd_credential_files_warns_about_a_shared_sk_file() {
    let s = Setup::new(aksk_config(), 2).await;
    s.credential("ak", &format!("{AK}\n"), 0o600);
    s.credential("sk", &format!("{SK}\n"), 0o644);
    let config = s.dir.path().join("deployd.yaml");
    write(&config, "auth:\n  ak_file: ak\n  sk_file: sk\n");
    let mut cmd = s.exec("1000");
    cmd.arg("--config")
        .arg(&config)
        .env("CREDENTIALS_DIRECTORY", s.creds_dir());
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("readable by group or others"),
        "{}",
        text(&out)
    );
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("readable by group") && l.contains("/ak ")),
        "only the shared file is reported"
    );
    let log = s.emulator.log();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|l| l.principal == format!("aksk:{AK}")));
    s.assert_no_secrets(&out, &[SK, DB_PASSWORD]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_sk_fails_each_task_with_apigw_0301_and_no_retry() {
    let s = Setup::new(aksk_config(), 8).await;
    let mut cmd = s.exec("1000");
    cmd.env("CLOUD_SDK_AK", AK)
        .env("CLOUD_SDK_SK", "it-wrong-sk-SECRET")
        .env("CLOUD_SDK_PROJECT_ID", DEFAULT_PROJECT_ID);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    let r = s.result();
    let mut called = 0;
    for t in &s.tasks {
        let entry = task(&r, t);
        // The run stops calling after the first auth failure: later tasks fail uncalled.
        let attempts = entry["attempts"].as_u64().unwrap_or(0);
        assert!(attempts <= 1, "task {t} was called more than once: {entry}");
        assert_eq!(entry["status"], "failed", "{entry}");
        if attempts == 1 {
            assert_eq!(entry["error_code"], "APIGW.0301", "{entry}");
            assert_eq!(entry["http_status"], 401, "{entry}");
            called += 1;
        } else {
            assert_eq!(entry["error_code"], "credentials_refused", "{entry}");
        }
    }
    assert!(called >= 1);
    assert_ne!(r["status"], "succeeded");
    let stats = s.emulator.stats();
    assert!(s.emulator.log().is_empty(), "nothing was started");
    assert_eq!(stats.accepted, 0);
    assert!(
        stats.total <= s.tasks.len() as u64,
        "at most one call per task: {stats:?}"
    );
    assert_eq!(stats.status(401), stats.total);
    s.assert_no_secrets(&out, &["it-wrong-sk-SECRET", SK, DB_PASSWORD]);
}

fn iam_config_file(s: &Setup, password_file: &str) -> PathBuf {
    let config = s.dir.path().join("deployd.yaml");
    write(
        &config,
        &format!(
            "project_id: {DEFAULT_PROJECT_ID}\nauth:\n  iam:\n    domain: acme\n    user: bob\n    password_file: {password_file}\n    project_name: cn-north-4\n    endpoint: {}\n",
            s.emulator.base_url()
        ),
    );
    config
}

fn iam_emulator(lifetime: Duration, latency: Duration) -> EmulatorConfig {
    EmulatorConfig {
        users: vec![IamUser::new("acme", "bob", PASSWORD)],
        token_lifetime: lifetime,
        latency,
        ..emulator_config()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn iam_tokens_are_refreshed_during_a_run_that_outlives_several() {
    // 2 s tokens; 12 tasks at 3 calls per second with 150 ms latency take about 4 s.
    let s = Setup::new(
        iam_emulator(Duration::from_secs(2), Duration::from_millis(150)),
        12,
    )
    .await;
    s.credential("iam-password", &format!("{PASSWORD}\n"), 0o600);
    let config = iam_config_file(&s, "iam-password");
    let mut cmd = s.exec("3");
    cmd.arg("--config")
        .arg(&config)
        .env("CREDENTIALS_DIRECTORY", s.creds_dir());
    let started = std::time::Instant::now();
    let out = output(cmd).await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        took > Duration::from_secs(3),
        "the run outlived a token: {took:?}"
    );

    let r = s.result();
    for t in &s.tasks {
        let entry = task(&r, t);
        assert_eq!(entry["status"], "started", "{entry}");
        assert_eq!(entry["attempts"], 1, "{entry}");
    }
    let log = s.emulator.log();
    assert_eq!(log.len(), s.tasks.len());
    assert!(log.iter().all(|l| l.principal == "iam:acme/bob"), "{log:?}");
    let stats = s.emulator.stats();
    assert!(stats.tokens_issued >= 3, "tokens were refreshed: {stats:?}");
    // Refreshing at half-life means calls normally never carry an expired token; one that did
    // (a very slow machine) was refreshed and re-sent within its attempt, as checked above.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("authentication: IAM tokens for acme/bob"),
        "{}",
        text(&out)
    );
    s.assert_no_secrets(&out, &[PASSWORD, DB_PASSWORD]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_iam_password_is_sent_once_and_fails_every_task() {
    let s = Setup::new(iam_emulator(Duration::from_secs(3600), Duration::ZERO), 5).await;
    s.credential("iam-password", "it-wrong-pw-SECRET\n", 0o600);
    let config = iam_config_file(&s, "iam-password");
    let mut cmd = s.exec("1000");
    cmd.arg("--config")
        .arg(&config)
        .env("CREDENTIALS_DIRECTORY", s.creds_dir());
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let r = s.result();
    for t in &s.tasks {
        let entry = task(&r, t);
        assert!(entry["attempts"].as_u64().unwrap_or(0) <= 1, "{entry}");
        if entry["status"] == "failed" {
            assert_eq!(entry["error_code"], "auth_failed", "{entry}");
            let msg = entry["error_msg"].as_str().unwrap_or_default();
            assert!(msg.contains("HTTP 401"), "{msg}");
        }
    }
    let stats = s.emulator.stats();
    // One token request, refused; no deploy call was sent.
    assert_eq!(
        (stats.total, stats.status(401), stats.tokens_issued),
        (1, 1, 0)
    );
    s.assert_no_secrets(&out, &["it-wrong-pw-SECRET", DB_PASSWORD]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_iam_token_is_refreshed_once_and_the_call_sent_again() {
    // The first emulator issues a token; a second one on the same port does not know it
    // (401 APIGW.0301 "decrypt token fail"), as after a password change.
    let config = iam_emulator(Duration::from_secs(3600), Duration::ZERO);
    let first = start_emulator(config.clone()).await;
    let addr = first.addr();
    let iam = IamConfig {
        endpoint: Endpoint::parse(&first.base_url()).expect("loopback"),
        domain: "acme".into(),
        user: "bob".into(),
        password_file: PathBuf::new(),
        project: ProjectScope::Id(DEFAULT_PROJECT_ID.into()),
        options: ClientOptions::default(),
    };
    let source = std::sync::Arc::new(
        IamTokenSource::new(&iam, Secret::new(PASSWORD)).expect("source builds"),
    );
    let client = DeployClient::new(
        Endpoint::parse(&first.base_url()).expect("loopback"),
        Credentials::Iam(source.clone()),
        ClientOptions::default(),
    )
    .expect("client builds");
    let today = chrono::Utc::now().date_naive();
    let ids = task_ids(1, 0xa);
    client
        .history_page(DEFAULT_PROJECT_ID, &ids[0], 1, 10, today, today)
        .await
        .expect("first call");
    assert_eq!(source.fetches(), 1);
    first.shutdown().await;

    let second = Emulator::start(config, addr)
        .await
        .expect("same port again");
    // A pooled connection to the first emulator may fail once: ask until one gets through.
    let mut outcome = None;
    wait_for(
        10,
        "a call that reaches the second emulator",
        async || match client.start_task(&ids[0], "{}").await {
            StartOutcome::Retryable(info) | StartOutcome::Unknown(info)
                if info.http_status.is_none() =>
            {
                false
            }
            other => {
                outcome = Some(other);
                true
            }
        },
    )
    .await;
    let outcome = outcome.expect("an outcome");
    assert!(
        matches!(outcome, StartOutcome::Started { .. }),
        "{outcome:?}"
    );
    let stats = second.stats();
    assert_eq!(
        (stats.status(401), stats.tokens_issued, stats.accepted),
        (1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(source.fetches(), 2);
    assert_eq!(second.log()[0].principal, "iam:acme/bob");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_warns_about_a_plain_text_encrypt_value_without_showing_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = dir.path().join("p.yaml");
    write(
        &plan,
        &format!(
            "tasks:\n  - task_id: {T1}\n    params:\n      - {{key: pw, value: plain-SECRET-42, type: encrypt}}\n"
        ),
    );
    let mut cmd = deployd();
    cmd.arg("check").arg(&plan).env("RUST_LOG", "trace");
    let out = output(cmd).await;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("plain-text secret"), "{all}");
    assert!(!all.contains("plain-SECRET-42"), "{all}");
}
