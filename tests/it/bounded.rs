//! Issue 11 §4 and §5 end to end: credentials used with care (a wrong SK never locks the AK,
//! whatever the concurrency or the number of plans; a reload with an unchanged wrong IAM
//! password does not ask IAM again) and bounded reads (an endless answer ends as an unknown
//! outcome in bounded memory).

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use deployd::api::client::{ClientOptions, DeployClient, Endpoint};
use deployd::api::credentials::Credentials;
use deployd::api::types::StartOutcome;
use deployd::auth::AkSk;
use deployd::emulator::{AccessKey, DEFAULT_PROJECT_ID, Emulator, EmulatorConfig, IamUser};
use deployd::secret::Secret;

use crate::helpers::*;

const AK: &str = "ITBOUNDEDKEY00000001";
const SK: &str = "it-bounded-sk-SECRET";
const WRONG_SK: &str = "it-bounded-wrong-sk-SECRET";
const PASSWORD: &str = "it-bounded-pw-SECRET";

/// Stops a daemon with SIGTERM and waits for it.
async fn stop(mut child: Child) {
    kill(&child, "-TERM");
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
}

fn aksk_emulator() -> EmulatorConfig {
    EmulatorConfig {
        access_keys: vec![AccessKey::new(AK, SK)],
        ..emulator_config()
    }
}

/// The AK is not locked: a call signed with the right SK starts a deployment.
async fn assert_ak_not_locked(emulator: &Emulator) {
    let client = DeployClient::new(
        Endpoint::parse(&emulator.base_url()).expect("loopback"),
        Credentials::AkSk(Box::new(AkSk {
            ak: AK.into(),
            sk: Secret::new(SK),
            project_id: Some(DEFAULT_PROJECT_ID.into()),
            security_token: None,
        })),
        ClientOptions::default(),
    )
    .expect("client");
    let outcome = client.start_task(T4, "{}").await;
    assert!(
        matches!(outcome, StartOutcome::Started { .. }),
        "the AK is locked: {outcome:?}"
    );
}

/// Issue 11 §4: 8 one-task plans with a wrong SK sent 8 badly signed calls (the guard was per
/// run) and the AK was locked for 5 minutes.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_sk_never_locks_the_ak_however_many_plans_run_at_once() {
    let emulator = start_emulator(aksk_emulator()).await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    std::fs::create_dir_all(&plans).expect("mkdir");
    // Eight plans, all in place before the daemon starts: their runs begin together.
    let tasks: Vec<String> = (1..=8).map(|i| format!("{i:032x}")).collect();
    for (i, t) in tasks.iter().enumerate() {
        write(
            &plans.join(format!("p{i}.yaml")),
            &format!("tasks: [{t}]\n"),
        );
    }
    let mut cmd = daemon_command(root.path(), &emulator, "1000", "8");
    cmd.env_remove("DEPLOYD_TOKEN")
        .env("CLOUD_SDK_AK", AK)
        .env("CLOUD_SDK_SK", WRONG_SK)
        .env("CLOUD_SDK_PROJECT_ID", DEFAULT_PROJECT_ID)
        .args(["--burst", "100"]);
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = capture_stderr(&mut child);
    let results_dir = root.path().join("results");
    wait_for(30, "eight results", async || {
        (0..8).all(|i| results(&results_dir, &format!("p{i}")).len() == 1)
    })
    .await;
    stop(child).await;

    let stats = emulator.stats();
    assert!(
        stats.auth_failures <= 2,
        "at most 2 badly signed calls: {stats:?}"
    );
    let mut refused = 0;
    for i in 0..8 {
        let r = &results(&results_dir, &format!("p{i}"))[0];
        let t = &r["tasks"][0];
        assert_eq!(t["status"], "failed", "{t}");
        match t["error_code"].as_str() {
            Some("APIGW.0301") => refused += 1,
            Some("credentials_refused") => {
                assert_eq!(t["attempts"], 0, "{t}");
                let msg = t["error_msg"].as_str().unwrap_or_default();
                assert!(msg.contains("reload"), "{msg}");
            }
            other => panic!("{other:?}: {t}"),
        }
    }
    assert!((1..=2).contains(&refused));
    assert_ak_not_locked(&emulator).await;
    let text = log.lock().expect("log").clone();
    assert!(
        !text.contains(WRONG_SK) && !text.contains(SK),
        "a secret in the log"
    );
}

/// Issue 11 §4: one run of 8 tasks at concurrency 8 (rate high enough to send them at once).
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_sk_never_locks_the_ak_with_eight_calls_at_once() {
    let emulator = start_emulator(aksk_emulator()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tasks: Vec<String> = (1..=8).map(|i| format!("{i:032x}")).collect();
    write(
        &dir.path().join("eight.yaml"),
        &format!("tasks: [{}]\n", tasks.join(", ")),
    );
    let mut cmd = exec_command(dir.path(), "eight.yaml", &emulator, true);
    cmd.env_remove("DEPLOYD_TOKEN")
        .env("CLOUD_SDK_AK", AK)
        .env("CLOUD_SDK_SK", WRONG_SK)
        .args(["--rate", "1000", "--burst", "100", "--concurrency", "8"]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1));
    let stats = emulator.stats();
    assert!(stats.auth_failures <= 2, "{stats:?}");
    let r = &results(&dir.path().join("results"), "eight")[0];
    let not_called = tasks
        .iter()
        .filter(|t| task(r, t)["error_code"] == "credentials_refused")
        .count();
    assert!(not_called >= 6, "{r}");
    assert_ak_not_locked(&emulator).await;
}

/// Issue 11 §4: every SIGHUP with an unchanged wrong IAM password asked IAM again (IAM locks
/// users too). Now IAM is asked again only once the password file changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_asks_iam_again_only_when_the_password_changed() {
    let emulator = start_emulator(EmulatorConfig {
        users: vec![IamUser::new("acme", "bob", PASSWORD)],
        ..emulator_config()
    })
    .await;
    let root = tempfile::tempdir().expect("tempdir");
    let creds = root.path().join("creds");
    write(&creds.join("pw"), "it-bounded-wrong-pw-SECRET\n");
    let config = root.path().join("deployd.yaml");
    write(
        &config,
        &format!(
            "auth:\n  iam:\n    domain: acme\n    user: bob\n    password_file: pw\n    project_name: cn-north-4\n    endpoint: {}\n",
            emulator.base_url()
        ),
    );
    std::fs::create_dir_all(root.path().join("plans")).expect("mkdir");
    let mut cmd = daemon_command(root.path(), &emulator, "100", "4");
    cmd.env_remove("DEPLOYD_TOKEN")
        .env("CREDENTIALS_DIRECTORY", &creds)
        .arg("--config")
        .arg(&config);
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = capture_stderr(&mut child);
    wait_for(20, "ready", async || {
        count_logged(&log, "daemon ready") == 1
    })
    .await;
    let results_dir = root.path().join("results");
    // A plan after each reload: each run needs a token.
    let run = |i: usize, task: &str| {
        write(
            &root.path().join(format!("plans/r{i}.yaml")),
            &format!("tasks: [{task}]\n"),
        );
    };
    run(0, T1);
    wait_for(20, "the first run", async || {
        results(&results_dir, "r0").len() == 1
    })
    .await;
    assert_eq!(emulator.stats().token_requests, 1);
    for i in 1..=8 {
        kill(&child, "-HUP");
        wait_for(20, "the reload", async || {
            count_logged(&log, "configuration reloaded") == i
        })
        .await;
        run(i, T1);
        wait_for(20, "the run", async || {
            results(&results_dir, &format!("r{i}")).len() == 1
        })
        .await;
        let r = &results(&results_dir, &format!("r{i}"))[0];
        assert_eq!(task(r, T1)["status"], "failed", "{r}");
    }
    assert_eq!(
        emulator.stats().token_requests,
        1,
        "IAM was asked again with the password it refused"
    );

    // The password is fixed: the next reload asks IAM, and deploys.
    write(&creds.join("pw"), &format!("{PASSWORD}\n"));
    kill(&child, "-HUP");
    wait_for(20, "the reload", async || {
        count_logged(&log, "configuration reloaded") == 9
    })
    .await;
    run(9, T2);
    wait_for(20, "the run", async || {
        results(&results_dir, "r9").len() == 1
    })
    .await;
    stop(child).await;
    let r = &results(&results_dir, "r9")[0];
    assert_eq!(task(r, T2)["status"], "started", "{r}");
    let stats = emulator.stats();
    assert_eq!((stats.token_requests, stats.tokens_issued), (2, 1));
    let text = log.lock().expect("log").clone();
    assert!(!text.contains(PASSWORD) && !text.contains("wrong-pw"));
}

/// Issue 11 §5: a 200 with an endless chunked body grew `exec` to 8 GB, then the call was
/// re-sent. Now the answer is read up to 1 MiB: an unknown outcome, never re-sent blindly.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_answer_is_an_unknown_outcome_in_bounded_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                if stream.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                if stream.write_all(head).await.is_err() {
                    return;
                }
                let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
                while stream.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        &dir.path().join("endless.yaml"),
        &format!("tasks: [{T1}]\n"),
    );
    let mut cmd = deployd();
    cmd.arg("exec")
        .arg(dir.path().join("endless.yaml"))
        .args(["--endpoint", &format!("http://{addr}")])
        .arg("--results-dir")
        .arg(dir.path().join("results"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("DEPLOYD_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    let pid = child.id();
    // The exec's peak resident memory (VmHWM), sampled until it exits.
    let (status, peak_kib) = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut peak = 0u64;
        loop {
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                && let Some(kib) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, peak);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("exec did not finish within 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .expect("join");
    assert_eq!(
        status.code(),
        Some(1),
        "the task failed, the exec was not killed"
    );
    assert!(peak_kib > 0, "peak memory was sampled");
    assert!(
        peak_kib < 200 * 1024,
        "exec peaked at {} MiB",
        peak_kib / 1024
    );
    let r = &results(&dir.path().join("results"), "endless")[0];
    let t = task(r, T1);
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error_code"], "answer_too_large", "{t}");
    assert_eq!(t["attempts"], 1, "never re-sent blindly: {t}");
    let msg = t["error_msg"].as_str().unwrap_or_default();
    assert!(msg.contains("larger than 1 MiB"), "{msg}");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}
