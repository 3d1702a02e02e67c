//! Shared helpers: an emulator on a free port, plan files, running the binary, waiting on
//! conditions with a deadline.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use deployd::emulator::{Emulator, EmulatorConfig, LoggedRequest};
use serde_json::Value;

/// The token the test emulators accept.
pub const TOKEN: &str = "it-token-0123456789";

/// Task ids used across the tests.
pub const T1: &str = "d2dc947ec2424d8789bb3984bb3adf45";
pub const T2: &str = "0ee9c8e6a7dc44109541e53c6dccf47c";
pub const T3: &str = "5f1c0a7e9b2d4c3e8a6f0b1d2c3e4f5a";
pub const T4: &str = "7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";

/// An emulator config accepting `TOKEN`.
pub fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        tokens: vec![deployd::secret::Secret::new(TOKEN)],
        seed: Some(7),
        ..EmulatorConfig::default()
    }
}

/// Starts an emulator on a free loopback port.
pub async fn start_emulator(config: EmulatorConfig) -> Emulator {
    Emulator::start(config, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("emulator starts")
}

/// Writes a file, creating folders.
pub fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// The `deployd` binary built for these tests.
pub fn deployd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deployd"));
    cmd.env_remove("DEPLOYD_TOKEN")
        .env_remove("DEPLOYD_TOKEN_FILE")
        .env_remove("CLOUD_SDK_AK")
        .env_remove("CLOUD_SDK_SK")
        .env_remove("CLOUD_SDK_PROJECT_ID")
        .env_remove("CLOUD_SDK_SECURITY_TOKEN")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG");
    cmd
}

/// Runs a command to completion on a blocking thread (the emulator keeps serving meanwhile).
pub async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("the binary runs"))
        .await
        .expect("join")
}

/// Every result file under `dir/plan`, parsed, oldest first.
pub fn results(dir: &Path, plan: &str) -> Vec<Value> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir.join(plan)) {
        Ok(entries) => entries
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    files
        .iter()
        .map(|p| {
            serde_json::from_slice(&std::fs::read(p).expect("read"))
                .expect("a result file is whole JSON")
        })
        .collect()
}

/// Waits until `cond` holds, polling every 20 ms; panics with `what` after `secs` seconds.
/// The one way tests wait: on a condition, with a deadline, never a bare sleep.
pub async fn wait_for(secs: u64, what: &str, cond: impl AsyncFnMut() -> bool) {
    assert!(
        holds_within(secs, cond).await,
        "timed out waiting for: {what}"
    );
}

/// Whether `cond` comes to hold within `secs` seconds, polling every 20 ms: for a test that
/// must clean up (stop a daemon) before it asserts.
pub async fn holds_within(secs: u64, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Waits for a child's exit; kills it and fails with `what` after `secs` seconds.
pub async fn exit_within(
    child: &mut std::process::Child,
    secs: u64,
    what: &str,
) -> std::process::ExitStatus {
    let mut status = None;
    let waited = tokio::time::timeout(
        Duration::from_secs(secs),
        wait_for(secs + 1, what, async || {
            status = child.try_wait().expect("wait");
            status.is_some()
        }),
    )
    .await;
    match (waited, status) {
        (Ok(()), Some(status)) => status,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {secs} s");
        }
    }
}

/// Runs a command to its end: (exit code, stdout, stderr).
pub fn run_to_end(mut cmd: Command) -> (Option<i32>, String, String) {
    let out = cmd.output().expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A finished command's stdout then stderr, as text.
pub fn both_streams(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `n` distinct task ids (32 hex digits), `salt` first so that tests sharing an emulator or
/// a history do not share ids.
pub fn task_ids(n: usize, salt: u32) -> Vec<String> {
    (0..n).map(|i| format!("{salt:08x}{i:024x}")).collect()
}

/// A plan named `name` over `ids`, with `extra` YAML lines (schedule, retry, params) before
/// its tasks.
pub fn plan_of(name: &str, ids: &[String], extra: &str) -> String {
    let mut text = format!("name: {name}\n{extra}tasks:\n");
    for id in ids {
        text.push_str(&format!("  - {id}\n"));
    }
    text
}

/// How many times the captured text holds `what`.
pub fn count_logged(text: &std::sync::Arc<std::sync::Mutex<String>>, what: &str) -> usize {
    text.lock().map(|t| t.matches(what).count()).unwrap_or(0)
}

/// Record ids the emulator issued, per task id.
pub fn records_by_task(log: &[LoggedRequest]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut map = std::collections::BTreeMap::<String, Vec<String>>::new();
    for entry in log {
        map.entry(entry.task_id.clone())
            .or_default()
            .push(entry.record_id.clone());
    }
    map
}

/// The task entry of a result file.
pub fn task<'a>(result: &'a Value, task_id: &str) -> &'a Value {
    result["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["task_id"] == task_id)
        .unwrap_or_else(|| panic!("task {task_id} in the result"))
}

/// `deployd run` on `root/plans`, with results and state under `root`, against `emulator`
/// (with its project id), authenticated with `TOKEN`, at `rate` calls/s and `concurrency`.
pub fn daemon_command(root: &Path, emulator: &Emulator, rate: &str, concurrency: &str) -> Command {
    let mut cmd = deployd();
    cmd.arg("run")
        .arg("--plans-dir")
        .arg(root.join("plans"))
        .arg("--results-dir")
        .arg(root.join("results"))
        .arg("--state-dir")
        .arg(root.join("state"))
        .args([
            "--endpoint",
            &emulator.base_url(),
            "--project-id",
            &emulator.config().project_id,
        ])
        .args(["--rate", rate, "--concurrency", concurrency])
        .env("DEPLOYD_TOKEN", TOKEN);
    cmd
}

/// `deployd exec DIR/PLAN` against `emulator` (with its project id when `project`), results and
/// state under `dir`, authenticated with `TOKEN` (callers add the rate flags).
pub fn exec_command(dir: &Path, plan: &str, emulator: &Emulator, project: bool) -> Command {
    let mut cmd = deployd();
    cmd.arg("exec")
        .arg(dir.join(plan))
        .args(["--endpoint", &emulator.base_url()])
        .arg("--results-dir")
        .arg(dir.join("results"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("DEPLOYD_TOKEN", TOKEN);
    if project {
        cmd.args(["--project-id", &emulator.config().project_id]);
    }
    cmd
}

/// Sends `signal` (`-TERM`, `-HUP`) to a child.
pub fn kill(child: &std::process::Child, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {signal}");
}

/// Reads a child's stderr into a shared string, in the background.
pub fn capture_stderr(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::Read;
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stderr = child.stderr.take().expect("stderr piped");
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut t) = sink.lock() {
                t.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    text
}

/// Whether the captured text holds `what`.
pub fn logged(text: &std::sync::Arc<std::sync::Mutex<String>>, what: &str) -> bool {
    text.lock().map(|t| t.contains(what)).unwrap_or(false)
}

/// libfaketime's multi-threaded preload library (installed by `.ci/run`).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Runs `cmd` with its wall clock read from the libfaketime timestamp file `clock` (`+0`,
/// `+1d`, `-10s`), re-read at every look, its monotonic clock left alone.
pub fn with_faked_clock<'c>(cmd: &'c mut Command, clock: &Path) -> &'c mut Command {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "libfaketime is missing: apt-get install faketime (.ci/run does)"
    );
    cmd.env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", clock)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
}

/// The `scheduled_for` of every result of a plan, oldest run first.
pub fn scheduled_for(results_dir: &Path, plan: &str) -> Vec<String> {
    results(results_dir, plan)
        .iter()
        .filter_map(|r| r["scheduled_for"].as_str().map(str::to_string))
        .collect()
}

/// The daemon over `root` with `config` and its wall clock read from the libfaketime file
/// `clock` (`+0`, `+1d`, `-10s`); stderr piped for [`capture_stderr`].
pub fn spawn_with_faked_clock(
    root: &Path,
    emulator: &Emulator,
    clock: &Path,
    config: &str,
) -> std::process::Child {
    write(&root.join("config.yaml"), config);
    let mut cmd = daemon_command(root, emulator, "100", "4");
    with_faked_clock(&mut cmd, clock)
        .arg("--config")
        .arg(root.join("config.yaml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// Mounts a tmpfs of `size` (`100k`, `1m`) on the folder `dir` (created), to fill a disk on
/// purpose. `false` where mounting is not allowed (not root): the caller skips, saying so.
pub fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs (not root)");
    }
    mounted
}

/// Unmounts what [`mount_tmpfs`] mounted.
pub fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg(dir).status();
}
