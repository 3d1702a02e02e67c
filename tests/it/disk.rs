//! A disk that refuses writes loses nothing. The refusal is made without privileges: the
//! folder a write needs is replaced by a plain file (the write fails as it would on a full
//! disk: nothing is written, the error comes back), then "space comes back" when the folder
//! is restored.

use std::process::Stdio;

use crate::helpers::*;

fn once_plan(root: &std::path::Path, name: &str) {
    let staging = root.join("staging");
    write(
        &staging.join(format!("{name}.yaml")),
        &format!("tasks:\n  - {T1}\n"),
    );
    std::fs::rename(
        staging.join(format!("{name}.yaml")),
        root.join("plans").join(format!("{name}.yaml")),
    )
    .expect("mv");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_the_results_folder_refuses_is_written_when_it_takes_it_again() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("plans")).expect("mkdir");
    let blocked = root.path().join("results/once");
    write(&blocked, "not a folder\n");
    let mut child = daemon_command(root.path(), &emulator, "100", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = capture_stderr(&mut child);
    wait_for(20, "ready", async || logged(&log, "daemon ready")).await;
    once_plan(root.path(), "once");
    wait_for(20, "the result kept back", async || {
        logged(
            &log,
            "the result is kept (in memory and in the run journal)",
        )
    })
    .await;
    std::fs::remove_file(&blocked).expect("rm");
    let results_dir = root.path().join("results");
    wait_for(30, "the result written", async || {
        results(&results_dir, "once").len() == 1
    })
    .await;
    kill(&child, "-TERM");
    let _ = child.wait();
    let r = &results(&results_dir, "once")[0];
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(emulator.log().len(), 1, "one call");
    assert!(
        !root
            .path()
            .join("state/runs")
            .read_dir()
            .expect("runs")
            .any(|_| true),
        "journal finished"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_kept_back_at_shutdown_is_written_by_the_next_start_with_its_true_status() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("plans")).expect("mkdir");
    let blocked = root.path().join("results/once");
    write(&blocked, "not a folder\n");
    let spawn = || {
        daemon_command(root.path(), &emulator, "100", "4")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let mut first = spawn();
    let log = capture_stderr(&mut first);
    wait_for(20, "ready", async || logged(&log, "daemon ready")).await;
    once_plan(root.path(), "once");
    wait_for(20, "the result kept back", async || {
        logged(
            &log,
            "the result is kept (in memory and in the run journal)",
        )
    })
    .await;
    kill(&first, "-TERM");
    let _ = first.wait();
    std::fs::remove_file(&blocked).expect("rm");
    let mut second = spawn();
    let log2 = capture_stderr(&mut second);
    let results_dir = root.path().join("results");
    wait_for(30, "the result written", async || {
        results(&results_dir, "once").len() == 1
    })
    .await;
    wait_for(20, "ready", async || logged(&log2, "daemon ready")).await;
    kill(&second, "-TERM");
    let _ = second.wait();
    let r = &results(&results_dir, "once")[0];
    assert_eq!(r["status"], "succeeded", "not interrupted: {r}");
    assert_eq!(emulator.log().len(), 1, "one call, not run again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_cannot_begin_is_not_remembered_and_runs_when_it_can() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("plans")).expect("mkdir");
    // An empty journal a full disk left behind: removed once, not an error forever.
    write(
        &root.path().join("state/runs/20261201T000000Z-0a.jsonl"),
        "",
    );
    let mut child = daemon_command(root.path(), &emulator, "100", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = capture_stderr(&mut child);
    wait_for(20, "ready", async || logged(&log, "daemon ready")).await;
    assert!(
        logged(&log, "it holds no call"),
        "the empty journal is removed"
    );
    // The journals' folder refuses new files.
    let runs = root.path().join("state/runs");
    std::fs::remove_dir_all(&runs).expect("rm runs");
    write(&runs, "not a folder\n");
    once_plan(root.path(), "once");
    wait_for(20, "a failed beginning", async || {
        logged(&log, "the run could not begin")
    })
    .await;
    assert!(
        !root.path().join("state/once/once").exists(),
        "not remembered as run"
    );
    assert!(emulator.log().is_empty(), "no call");
    std::fs::remove_file(&runs).expect("rm");
    std::fs::create_dir_all(&runs).expect("mkdir");
    let results_dir = root.path().join("results");
    wait_for(30, "the run", async || {
        results(&results_dir, "once").len() == 1
    })
    .await;
    kill(&child, "-TERM");
    let _ = child.wait();
    let r = &results(&results_dir, "once")[0];
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(emulator.log().len(), 1);
    assert!(
        root.path().join("state/once/once").is_dir(),
        "remembered once run"
    );
    let text = log.lock().map(|t| t.clone()).unwrap_or_default();
    assert!(!text.contains("unreadable run journal"), "{text}");
}
