//! The run journal under load (issue 14): lines of concurrent calls are written in batches (one
//! `writev`, one `fdatasync`), a started call's answer is its task's last line, and none of it
//! may cost a promise: the concurrency limit holds with every slot busy, no call leaves
//! without its intent in the journal, a killed `exec` is finished by the next daemon with
//! nothing run twice, and a disk that fills up mid-run stops the calls it cannot journal.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use deployd::emulator::{Emulator, EmulatorConfig};

use crate::helpers::*;

/// A plan of `n` tasks named `name` in `dir`, with `extra` lines before its tasks.
fn plan_file(dir: &Path, name: &str, ids: &[String], extra: &str) {
    write(
        &dir.join(format!("{name}.yaml")),
        &plan_of(name, ids, extra),
    );
}

fn slow_emulator(latency_ms: u64) -> EmulatorConfig {
    EmulatorConfig {
        latency: Duration::from_millis(latency_ms),
        ..emulator_config()
    }
}

/// The run journals under `state/runs`.
fn journals(state: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state.join("runs"))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect()
        })
        .unwrap_or_default()
}

/// A journal's lines, read as recovery reads them (up to the first that is not a whole
/// entry).
fn lines_of(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map_while(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .collect()
}

/// The lines of every run journal under `state/runs`.
fn journal_lines(state: &Path) -> Vec<serde_json::Value> {
    journals(state).iter().flat_map(|p| lines_of(p)).collect()
}

/// Tasks with an intent line in the journal.
fn intents(lines: &[serde_json::Value]) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|l| l["type"] == "intent")
        .filter_map(|l| l["task_id"].as_str().map(str::to_string))
        .collect()
}

/// Promise: `--concurrency N` (and a plan's `concurrency`) bounds the calls in flight, with
/// the journal's batches and every slot busy: the service never sees more at once.
#[tokio::test(flavor = "multi_thread")]
async fn the_concurrency_limit_holds_with_every_slot_busy() {
    for (global, plan_limit, limit) in [("5", "", 5u64), ("8", "concurrency: 3\n", 3)] {
        let emulator = start_emulator(slow_emulator(150)).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = task_ids(24, 0x1400 + u32::try_from(limit).expect("small"));
        plan_file(dir.path(), "busy", &ids, plan_limit);
        let mut cmd = exec_command(dir.path(), "busy.yaml", &emulator, false);
        cmd.args(["--rate", "1000", "--burst", "50", "--concurrency", global]);
        let out = output(cmd).await;
        assert_eq!(out.status.code(), Some(0), "{}", both_streams(&out));
        let r = &results(&dir.path().join("results"), "busy")[0];
        assert_eq!(r["summary"]["started"], 24, "{r}");
        let stats = emulator.stats();
        assert_eq!(stats.total, 24, "one call per task");
        assert_eq!(stats.in_flight, 0);
        assert!(
            (2..=limit).contains(&stats.max_in_flight),
            "limit {limit}: the service saw {} calls at once",
            stats.max_in_flight
        );
    }
}

/// Promise: no call without its intent in the journal; after a crash (SIGKILL of `deployd
/// exec` with calls in flight, at several moments), the next daemon finishes the run from
/// the journal: every task the service started is reported started with its record (from
/// the journal's answer line, or found in the history), the others skipped, and nothing is
/// sent twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_exec_leaves_every_call_journaled_and_recovery_runs_nothing_twice() {
    for (round, kill_after) in [0usize, 1, 6, 17].into_iter().enumerate() {
        let emulator = start_emulator(slow_emulator(200)).await;
        let root = tempfile::tempdir().expect("tempdir");
        let root = root.path();
        std::fs::create_dir_all(root.join("plans")).expect("mkdir");
        write(&root.join("config.yaml"), "settle: 1s\n");
        let ids = task_ids(30, 0x1410 + u32::try_from(round).expect("round"));
        plan_file(root, "crash", &ids, "");
        let mut cmd = exec_command(root, "crash.yaml", &emulator, true);
        cmd.args(["--rate", "1000", "--burst", "50", "--concurrency", "6"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn exec");
        let state = root.join("state");
        // 0: as soon as the first intent is in the journal (its call may be on its way).
        wait_for(30, "the moment to kill", async || {
            if kill_after == 0 {
                !intents(&journal_lines(&state)).is_empty()
            } else {
                emulator.log().len() >= kill_after
            }
        })
        .await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        // Calls already sent are answered (or abandoned) before the service is looked at.
        wait_for(10, "the service idle", async || {
            emulator.stats().in_flight == 0
        })
        .await;
        let journaled = intents(&journal_lines(&state));
        let started = records_by_task(&emulator.log());
        for task_id in started.keys() {
            assert!(
                journaled.contains(task_id),
                "round {round}: {task_id} was called without an intent in the journal"
            );
        }

        let mut daemon = daemon_command(root, &emulator, "100", "4");
        daemon
            .arg("--config")
            .arg(root.join("config.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let daemon = daemon.spawn().expect("spawn daemon");
        let results_dir = root.join("results");
        wait_for(60, "the recovered result", async || {
            !results(&results_dir, "crash").is_empty()
        })
        .await;
        kill(&daemon, "-TERM");
        let mut daemon = daemon;
        let _ = daemon.wait();
        let r = &results(&results_dir, "crash")[0];
        assert_eq!(r["status"], "interrupted", "round {round}: {r}");
        let after = records_by_task(&emulator.log());
        assert_eq!(after, started, "round {round}: recovery sent nothing");
        let mut reported = BTreeMap::new();
        for id in &ids {
            let line = task(r, id);
            match started.get(id) {
                Some(records) => {
                    assert_eq!(records.len(), 1, "round {round}: {id} started twice");
                    assert_eq!(line["status"], "started", "round {round}: {line}");
                    assert_eq!(line["record_id"], records[0].as_str(), "round {round}");
                }
                None => assert_eq!(line["status"], "skipped", "round {round}: {line}"),
            }
            *reported
                .entry(line["status"].as_str().unwrap_or("?").to_string())
                .or_insert(0) += 1;
        }
        assert_eq!(
            reported.get("started").copied().unwrap_or(0),
            started.len(),
            "round {round}: {reported:?}"
        );
        assert!(
            journal_lines(&state).is_empty(),
            "round {round}: the journal goes once its run is finished"
        );
    }
}

/// Promise: a state disk that fills up mid-run stops every call whose intent it cannot take
/// (`journal_failed`, uncalled), and the calls made are the calls journaled. Needs root (a
/// tmpfs); skipped otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_disk_full_mid_run_stops_the_calls_it_cannot_journal() {
    let emulator = start_emulator(slow_emulator(100)).await;
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let disk = root.join("disk");
    if !mount_tmpfs(&disk, "1m") {
        return;
    }
    let outcome = full_disk_run(&emulator, root, &disk).await;
    unmount(&disk);
    let (code, r, journaled) = outcome;
    assert_eq!(code, Some(1), "some tasks could not be called: {r}");
    let started = records_by_task(&emulator.log());
    assert!(!started.is_empty(), "calls before the disk filled up");
    let mut failed = 0;
    for line in r["tasks"].as_array().expect("tasks") {
        let id = line["task_id"].as_str().expect("task id");
        match started.get(id) {
            Some(records) => {
                assert_eq!(records.len(), 1, "{id} started twice");
                assert!(journaled.contains(id), "{id} called without its intent");
                assert_eq!(line["status"], "started", "{line}");
                assert_eq!(line["record_id"], records[0].as_str());
            }
            None => {
                assert_eq!(line["status"], "failed", "{line}");
                assert_eq!(line["error_code"], "journal_failed", "{line}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "the disk filled up before the run's end: {r}");
}

/// `exec` of 40 tasks with its state on `disk` (results elsewhere); the disk is filled up once
/// 8 calls were answered. Returns the exit status, the result and the tasks journaled.
async fn full_disk_run(
    emulator: &Emulator,
    root: &Path,
    disk: &Path,
) -> (Option<i32>, serde_json::Value, BTreeSet<String>) {
    let ids = task_ids(40, 0x1420);
    plan_file(root, "full", &ids, "");
    let state = disk.join("state");
    let mut cmd = deployd();
    cmd.arg("exec")
        .arg(root.join("full.yaml"))
        .args(["--endpoint", &emulator.base_url()])
        .arg("--results-dir")
        .arg(root.join("results"))
        .arg("--state-dir")
        .arg(&state)
        .args(["--rate", "1000", "--burst", "50", "--concurrency", "4"])
        .env("DEPLOYD_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn exec");
    wait_for(30, "8 calls answered", async || emulator.log().len() >= 8).await;
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", disk.join("filler").display()))
        .stderr(Stdio::null())
        .status();
    // A second name for the journal (no room needed), to read it after its run removed it.
    let journal = journals(&state).pop().expect("the run's journal");
    let kept = disk.join("kept.jsonl");
    std::fs::hard_link(&journal, &kept).expect("link");
    let status = tokio::task::spawn_blocking(move || child.wait().expect("wait"))
        .await
        .expect("join");
    let journaled = intents(&lines_of(&kept));
    let r = results(&root.join("results"), "full")
        .pop()
        .expect("the result, on its own disk");
    (status.code(), r, journaled)
}
