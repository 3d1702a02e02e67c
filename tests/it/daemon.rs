//! The daemon end to end: booted in-process (plans folder, scheduler, state) against the
//! emulator, and as a real process for signals.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deployd::api::client::{ClientOptions, DeployClient, Endpoint};
use deployd::api::credentials::Credentials;
use deployd::daemon::{self, Control, DaemonParts};
use deployd::emulator::{Emulator, EmulatorConfig};
use deployd::secret::Secret;
use deployd::settings::{Overrides, RawConfig, Settings};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// A daemon running in this process.
struct Daemon {
    shutdown: CancellationToken,
    reload: mpsc::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The last systemd STATUS= line (plan counts, running runs, next fire).
    status: Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    fn boot(root: &Path, emulator: &Emulator) -> Self {
        let overrides = Overrides {
            plans_dir: Some(root.join("plans")),
            results_dir: Some(root.join("results")),
            state_dir: Some(root.join("state")),
            endpoint: Some(emulator.base_url()),
            project_id: Some(emulator.config().project_id.clone()),
            rate: Some(100.0),
            burst: Some(5),
            concurrency: Some(8),
            ..Overrides::default()
        };
        let raw: RawConfig =
            serde_saphyr::from_str("rescan_interval: 60s\nshutdown_grace: 5s\nsettle: 1s\n")
                .expect("yaml");
        let settings = Settings::from_raw(raw, &overrides, &|_| None, None).expect("settings");
        let endpoint = Endpoint::parse(&emulator.base_url()).expect("endpoint");
        let client = DeployClient::new(
            endpoint,
            Credentials::Token(Secret::new(TOKEN)),
            ClientOptions::default(),
        )
        .expect("client");
        let executor = settings.executor(client);
        let shutdown = CancellationToken::new();
        let (reload, reload_rx) = mpsc::channel(4);
        let status = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = status.clone();
        let control = Control {
            shutdown: shutdown.clone(),
            reload: reload_rx,
            on_ready: Box::new(|| {}),
            on_status: Box::new(move |s| *sink.lock().expect("lock") = s.to_string()),
            watchdog: None,
            cluster: None,
        };
        let handle = tokio::spawn(daemon::run(
            DaemonParts { settings, executor },
            control,
            None,
        ));
        Self {
            shutdown,
            reload,
            handle,
            status,
        }
    }

    fn status(&self) -> String {
        self.status.lock().expect("lock").clone()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("the daemon stops in time")
            .expect("join")
            .expect("clean exit");
    }
}

fn plan(tasks: &[&str], extra: &str) -> String {
    let mut text = String::from(extra);
    text.push_str("tasks:\n");
    for t in tasks {
        text.push_str(&format!("  - {t}\n"));
    }
    text
}

fn plans_dir(root: &Path) -> PathBuf {
    let dir = root.join("plans");
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn drop_edit_delete_and_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let plans = plans_dir(root.path());
    let emulator = start_emulator(emulator_config()).await;
    let results_dir = root.path().join("results");
    let d = Daemon::boot(root.path(), &emulator);

    // Drop a run-once plan: one run, one result file, records as issued.
    write(&plans.join("web.yaml"), &plan(&[T1, T2], ""));
    wait_for(10, "first run's result", async || {
        results(&results_dir, "web").len() == 1
    })
    .await;
    let first = &results(&results_dir, "web")[0];
    assert_eq!(first["trigger"], "arrival");
    assert_eq!(first["status"], "succeeded");
    assert_eq!(emulator.log().len(), 2);

    // Touching it (same content) does not run it again: a sentinel proves the folder was
    // scanned after the touch.
    write(&plans.join("web.yaml"), &plan(&[T1, T2], ""));
    write(&plans.join("touch-sentinel.yaml"), &plan(&[T4], ""));
    wait_for(10, "touch sentinel", async || {
        results(&results_dir, "touch-sentinel").len() == 1
    })
    .await;
    assert_eq!(
        results(&results_dir, "web").len(),
        1,
        "a touch is not a change"
    );
    std::fs::remove_file(plans.join("touch-sentinel.yaml")).expect("rm");
    // Edit: a second run with the new content.
    write(&plans.join("web.yaml"), &plan(&[T1, T2, T3], "name: web\n"));
    wait_for(10, "second run's result", async || {
        results(&results_dir, "web").len() == 2
    })
    .await;
    assert_eq!(results(&results_dir, "web")[1]["summary"]["total"], 3);
    assert_eq!(emulator.log().len(), 6, "2 + the touch sentinel + 3");

    // Delete, then drop the same content again: it already ran, so nothing happens.
    std::fs::remove_file(plans.join("web.yaml")).expect("rm");
    d.reload.send(()).await.expect("reload");
    wait_for(10, "the removal seen", async || {
        d.status().starts_with("0 plans")
    })
    .await;
    write(&plans.join("web.yaml"), &plan(&[T1, T2, T3], "name: web\n"));
    // A sentinel plan proves the daemon looked at the folder after that.
    write(&plans.join("sentinel.yaml"), &plan(&[T4], ""));
    wait_for(10, "sentinel run", async || {
        results(&results_dir, "sentinel").len() == 1
    })
    .await;
    assert_eq!(
        results(&results_dir, "web").len(),
        2,
        "same content did not run again"
    );
    d.stop().await;

    // Restart with the same state folder: nothing runs again.
    let d = Daemon::boot(root.path(), &emulator);
    write(&plans.join("sentinel2.yaml"), &plan(&[T4], ""));
    wait_for(10, "second sentinel run", async || {
        results(&results_dir, "sentinel2").len() == 1
    })
    .await;
    assert_eq!(results(&results_dir, "web").len(), 2);
    assert_eq!(results(&results_dir, "sentinel").len(), 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mv_from_a_temporary_name_runs_once() {
    let root = tempfile::tempdir().expect("tempdir");
    let plans = plans_dir(root.path());
    let emulator = start_emulator(emulator_config()).await;
    let results_dir = root.path().join("results");
    let d = Daemon::boot(root.path(), &emulator);
    write(&plans.join("web.yaml.tmp"), &plan(&[T1], ""));
    std::fs::rename(plans.join("web.yaml.tmp"), plans.join("web.yaml")).expect("mv");
    wait_for(10, "the run", async || {
        results(&results_dir, "web").len() == 1
    })
    .await;
    // Give the folder a reason to be rescanned, then check nothing else ran.
    write(&plans.join("other.yaml"), &plan(&[T2], ""));
    wait_for(10, "other run", async || {
        results(&results_dir, "other").len() == 1
    })
    .await;
    assert_eq!(results(&results_dir, "web").len(), 1);
    assert_eq!(records_by_task(&emulator.log())[T1].len(), 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_written_in_chunks_runs_once_whole() {
    use std::io::Write;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = plans_dir(root.path());
    let emulator = start_emulator(emulator_config()).await;
    let results_dir = root.path().join("results");
    let d = Daemon::boot(root.path(), &emulator);
    // Each chunk on its own is a valid plan: reading early would run a truncated plan.
    let text = plan(&[T1, T2, T3], "name: chunks\n");
    let cut1 = text.find(T2).expect("t2") + 32;
    let cut2 = text.len() - 10;
    let mut file = std::fs::File::create(plans.join("chunks.yaml")).expect("create");
    for chunk in [&text[..cut1], &text[cut1..cut2], &text[cut2..]] {
        file.write_all(chunk.as_bytes()).expect("write");
        file.flush().expect("flush");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    drop(file);
    wait_for(10, "the run", async || {
        results(&results_dir, "chunks").len() == 1
    })
    .await;
    let r = &results(&results_dir, "chunks")[0];
    assert_eq!(r["summary"]["total"], 3, "the whole plan ran");
    assert!(
        !results_dir
            .join("_invalid")
            .join("chunks.yaml.txt")
            .exists()
    );
    write(&plans.join("sentinel.yaml"), &plan(&[T4], ""));
    wait_for(10, "sentinel", async || {
        results(&results_dir, "sentinel").len() == 1
    })
    .await;
    assert_eq!(results(&results_dir, "chunks").len(), 1, "exactly one run");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_plan_makes_no_call_and_the_daemon_keeps_going() {
    let root = tempfile::tempdir().expect("tempdir");
    let plans = plans_dir(root.path());
    let emulator = start_emulator(emulator_config()).await;
    let results_dir = root.path().join("results");
    let d = Daemon::boot(root.path(), &emulator);
    write(&plans.join("bad.yaml"), "tasks:\n  - not-an-id\n");
    let report = results_dir.join("_invalid").join("bad.yaml.txt");
    wait_for(10, "the invalid report", async || report.exists()).await;
    let text = std::fs::read_to_string(&report).expect("read");
    assert!(text.contains("bad.yaml:2:5: tasks[0]"), "{text}");
    write(&plans.join("good.yaml"), &plan(&[T1], ""));
    wait_for(10, "the valid plan's run", async || {
        results(&results_dir, "good").len() == 1
    })
    .await;
    assert_eq!(emulator.log().len(), 1, "only the valid plan made a call");
    // Fixing the file removes the report (and runs it).
    write(&plans.join("bad.yaml"), &plan(&[T2], ""));
    wait_for(10, "the report removed", async || !report.exists()).await;
    wait_for(10, "the fixed plan's run", async || {
        results(&results_dir, "bad").len() == 1
    })
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_second_schedule_fires_every_two_seconds_and_stops_when_deleted() {
    let root = tempfile::tempdir().expect("tempdir");
    let plans = plans_dir(root.path());
    let emulator = start_emulator(emulator_config()).await;
    let results_dir = root.path().join("results");
    let d = Daemon::boot(root.path(), &emulator);
    write(
        &plans.join("tick.yaml"),
        &plan(&[T1], "schedule: \"*/2 * * * * *\"\n"),
    );
    wait_for(15, "three scheduled runs", async || {
        results(&results_dir, "tick").len() >= 3
    })
    .await;
    let runs = results(&results_dir, "tick");
    let fires: Vec<chrono::DateTime<chrono::Utc>> = runs
        .iter()
        .map(|r| {
            assert_eq!(r["trigger"], "schedule");
            r["scheduled_for"]
                .as_str()
                .expect("time")
                .parse()
                .expect("rfc3339")
        })
        .collect();
    for pair in fires.windows(2) {
        assert_eq!((pair[1] - pair[0]).num_milliseconds(), 2000, "{fires:?}");
    }
    for f in &fires {
        assert_eq!(f.timestamp() % 2, 0);
        assert_eq!(f.timestamp_subsec_millis(), 0);
    }
    std::fs::remove_file(plans.join("tick.yaml")).expect("rm");
    // Once the removal is seen, the count stops growing: wait for a quiet window of 3 s.
    let mut last = results(&results_dir, "tick").len();
    let mut stable_since = tokio::time::Instant::now();
    wait_for(20, "no more fires after the delete", async || {
        let now = results(&results_dir, "tick").len();
        if now != last {
            last = now;
            stable_since = tokio::time::Instant::now();
        }
        stable_since.elapsed() > Duration::from_secs(3)
    })
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_in_the_middle_of_a_slow_run_writes_it_as_interrupted() {
    let root = tempfile::tempdir().expect("tempdir");
    let plans = plans_dir(root.path());
    let emulator = start_emulator(EmulatorConfig {
        latency: Duration::from_millis(200),
        ..emulator_config()
    })
    .await;
    let results_dir = root.path().join("results");
    let ids: Vec<String> = (0..20).map(|i| format!("{i:032x}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    write(&plans.join("slow.yaml"), &plan(&refs, ""));
    let mut child = daemon_command(root.path(), &emulator, "4", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for(15, "a few calls", async || emulator.log().len() >= 3).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let signalled_at = chrono::Utc::now();
    let exit = exit_within(&mut child, 20, "the daemon").await;
    assert_eq!(exit.code(), Some(0));
    let runs = results(&results_dir, "slow");
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(r["status"], "interrupted");
    let started = r["summary"]["started"].as_u64().expect("n") as usize;
    let skipped = r["summary"]["skipped"].as_u64().expect("n");
    assert!(skipped > 0, "tasks after the signal were skipped");
    let log = emulator.log();
    assert_eq!(
        log.len(),
        started,
        "every call the emulator accepted is in the result as started"
    );
    // A call may have been on the wire when the signal came; none may start well after it.
    let late = log
        .iter()
        .filter(|l| l.received_at > signalled_at + chrono::TimeDelta::milliseconds(300))
        .count();
    assert_eq!(late, 0, "no call started after the signal");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_calls_runs_and_plans() {
    let root = tempfile::tempdir().expect("tempdir");
    let plans = plans_dir(root.path());
    let emulator = start_emulator(emulator_config()).await;
    let results_dir = root.path().join("results");
    let stop = CancellationToken::new();
    let addr = deployd::metrics::serve("127.0.0.1:0".parse().expect("addr"), stop.clone())
        .await
        .expect("serve");
    let d = Daemon::boot(root.path(), &emulator);
    write(&plans.join("metered.yaml"), &plan(&[T1, T2], ""));
    write(
        &plans.join("nightly-metered.yaml"),
        &plan(&[T3], "schedule: \"0 30 2 * * *\"\n"),
    );
    wait_for(10, "the run", async || {
        results(&results_dir, "metered").len() == 1
    })
    .await;
    let url = format!("http://{addr}/metrics");
    let mut text = String::new();
    wait_for(10, "the run and the next fire in the metrics", async || {
        text = reqwest::get(&url)
            .await
            .expect("GET")
            .text()
            .await
            .expect("body");
        text.contains("deployd_runs_total{plan=\"metered\",status=\"succeeded\"} 1")
            && text.contains("deployd_next_fire_timestamp_seconds{plan=\"nightly-metered\"}")
    })
    .await;
    for needle in [
        "deployd_runs_total{plan=\"metered\",status=\"succeeded\"} 1",
        "deployd_start_calls_total{outcome=\"started\",status=\"200\"}",
        "deployd_next_fire_timestamp_seconds{plan=\"nightly-metered\"}",
        "deployd_last_run_status{plan=\"metered\",status=\"succeeded\"} 1",
        "deployd_build_info{version=",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    stop.cancel();
    d.stop().await;
}

/// Runs the real daemon with `NOTIFY_SOCKET` pointing at a socket of ours: checks the systemd
/// protocol (READY, STATUS, STOPPING), SIGHUP with a bad config (kept running), and exit 0 on
/// SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn systemd_notify_sighup_with_a_bad_config_and_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = plans_dir(root.path());
    let results_dir = root.path().join("results");
    let emulator = start_emulator(emulator_config()).await;
    let socket_path = root.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let config = root.path().join("config.yaml");
    write(&config, "rescan_interval: 60s\n");
    let mut child = daemon_command(root.path(), &emulator, "5", "8")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id().to_string();

    let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = messages.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = text.contains("STOPPING=1");
                sink.lock().expect("lock").push(text);
                if done {
                    return;
                }
            }
        }
    });
    let has = |needle: &str| {
        messages
            .lock()
            .expect("lock")
            .iter()
            .any(|m| m.contains(needle))
    };
    wait_for(15, "READY=1", async || has("READY=1")).await;
    assert!(has("STATUS="), "a status line is sent");

    // A bad config on SIGHUP: the daemon keeps the old one and keeps working.
    write(&config, "rate: -1\nbogus: 1\n");
    let kill = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success()
    };
    assert!(kill("-HUP"));
    write(&plans.join("after-hup.yaml"), &plan(&[T1], ""));
    wait_for(15, "a run after the bad reload", async || {
        results(&results_dir, "after-hup").len() == 1
    })
    .await;
    assert!(child.try_wait().expect("wait").is_none(), "still running");

    assert!(kill("-TERM"));
    let status = tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait"))
        .await
        .expect("join");
    assert_eq!(status.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        stderr.contains("keeping the old one"),
        "the reload error is logged: {stderr}"
    );
    reader.join().expect("reader");
    assert!(has("STOPPING=1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn world_writable_plans_and_plans_folders_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = plans_dir(root.path());
    let emulator = start_emulator(emulator_config()).await;

    // A plan file anyone can write: `check` refuses it, naming the fix.
    let file = plans.join("open.yaml");
    write(&file, &plan(&[T1], ""));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = output({
        let mut c = deployd();
        c.arg("check").arg(&plans);
        c
    })
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("open.yaml:1:1") && stdout.contains("chmod o-w"),
        "{stdout}"
    );

    // A plans folder anyone can write: the daemon does not start (78) and calls nothing.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::set_permissions(&plans, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = output({
        let mut c = deployd();
        c.arg("run")
            .arg("--plans-dir")
            .arg(&plans)
            .arg("--results-dir")
            .arg(root.path().join("results"))
            .arg("--state-dir")
            .arg(root.path().join("state"))
            .args(["--endpoint", &emulator.base_url()])
            .env("DEPLOYD_TOKEN", TOKEN);
        c
    })
    .await;
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable by every user"));
    assert_eq!(emulator.stats().total, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn saving_in_vim_runs_the_new_content_once() {
    use std::io::Write;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = plans_dir(root.path());
    let emulator = start_emulator(emulator_config()).await;
    let results_dir = root.path().join("results");
    let d = Daemon::boot(root.path(), &emulator);
    write(&plans.join("web.yaml"), &plan(&[T1], ""));
    wait_for(10, "first run", async || {
        results(&results_dir, "web").len() == 1
    })
    .await;

    // What vim does on :w (backupcopy=auto): swap file, rename the original to a backup,
    // write a new file, remove the backup.
    write(&plans.join(".web.yaml.swp"), "swap");
    std::fs::rename(plans.join("web.yaml"), plans.join("web.yaml~")).expect("backup");
    let mut f = std::fs::File::create(plans.join("web.yaml")).expect("create");
    f.write_all(plan(&[T1, T2], "").as_bytes()).expect("write");
    f.sync_all().expect("sync");
    drop(f);
    std::fs::remove_file(plans.join("web.yaml~")).expect("rm backup");
    std::fs::remove_file(plans.join(".web.yaml.swp")).expect("rm swap");

    wait_for(10, "the edited plan's run", async || {
        results(&results_dir, "web").len() == 2
    })
    .await;
    assert_eq!(results(&results_dir, "web")[1]["summary"]["total"], 2);
    write(&plans.join("sentinel.yaml"), &plan(&[T4], ""));
    wait_for(10, "sentinel", async || {
        results(&results_dir, "sentinel").len() == 1
    })
    .await;
    assert_eq!(results(&results_dir, "web").len(), 2, "one run per content");
    assert!(
        !results_dir.join("_invalid").exists()
            || std::fs::read_dir(results_dir.join("_invalid"))
                .expect("ls")
                .next()
                .is_none()
    );
    d.stop().await;
}

/// Content A is running; B arrives (waits); the file is reverted to A before A's run ends.
/// A already ran, so nothing more may run: the waiting run is decided on the current content.
#[tokio::test(flavor = "multi_thread")]
async fn reverting_while_a_run_is_going_does_not_run_the_old_content_twice() {
    let root = tempfile::tempdir().expect("tempdir");
    let plans = plans_dir(root.path());
    // 8 tasks at 300 ms each with the plan's concurrency 1: the run lasts about 2.4 s.
    let emulator = start_emulator(EmulatorConfig {
        latency: Duration::from_millis(300),
        ..emulator_config()
    })
    .await;
    let results_dir = root.path().join("results");
    let d = Daemon::boot(root.path(), &emulator);
    let ids: Vec<String> = (0..8).map(|i| format!("{i:032x}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let a = plan(&refs, "name: web\nconcurrency: 1\n");
    write(&plans.join("web.yaml"), &a);
    wait_for(10, "A's run under way", async || !emulator.log().is_empty()).await;
    write(
        &plans.join("web.yaml"),
        &plan(&refs, "name: web\nconcurrency: 1\noverlap: queue\n"),
    );
    // The sentinel's run proves the folder was scanned after B was written.
    write(&plans.join("sentinel.yaml"), &plan(&[T1], ""));
    wait_for(10, "sentinel", async || {
        results(&results_dir, "sentinel").len() == 1
    })
    .await;
    assert!(
        results(&results_dir, "web").is_empty(),
        "A is still running: the test needs a slower run"
    );
    write(&plans.join("web.yaml"), &a);
    wait_for(20, "A's result", async || {
        results(&results_dir, "web").len() == 1
    })
    .await;
    // After A's run ended, the waiting run was decided: prove the daemon moved on, then count.
    write(&plans.join("sentinel2.yaml"), &plan(&[T2], ""));
    wait_for(10, "sentinel2", async || {
        results(&results_dir, "sentinel2").len() == 1
    })
    .await;
    // A second run of A would have begun right after the first one's end, before sentinel2.
    assert_eq!(
        emulator.log().len(),
        8 + 2,
        "no call after A's run and the sentinels"
    );
    assert_eq!(
        results(&results_dir, "web").len(),
        1,
        "the reverted content A did not run again"
    );
    d.stop().await;
}
