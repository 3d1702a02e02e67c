//! The wall clock is not to be trusted: the daemon runs under libfaketime (its wall clock
//! moved through a timestamp file, its monotonic clock left alone) while the clock goes a day
//! ahead and back, is set back 10 s across a restart, and goes a month ahead with retention on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::helpers::*;

fn tick_plan(plans: &Path, extra: &str) -> PathBuf {
    let path = plans.join("tick.yaml");
    write(
        &path,
        &format!("schedule: \"*/2 * * * * *\"\n{extra}tasks:\n  - {T1}\n"),
    );
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_day_ahead_and_back_the_schedule_goes_on_and_says_so() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    let clock = root.path().join("clock");
    write(&clock, "+0\n");
    tick_plan(&root.path().join("plans"), "");
    let mut child = spawn_with_faked_clock(root.path(), &emulator, &clock, "settle: 1s\n");
    let log = capture_stderr(&mut child);
    let results_dir = root.path().join("results");
    wait_for(20, "two fires", async || {
        scheduled_for(&results_dir, "tick").len() >= 2
    })
    .await;
    write(&clock, "+1d\n");
    tokio::time::sleep(Duration::from_secs(3)).await;
    write(&clock, "+0\n");
    let back_at = results(&results_dir, "tick").len();
    wait_for(20, "the jump back logged", async || {
        logged(&log, "the wall clock jumped by -")
    })
    .await;
    wait_for(20, "fires after the clock came back", async || {
        results(&results_dir, "tick").len() >= back_at + 3
    })
    .await;
    kill(&child, "-TERM");
    let _ = child.wait();
    let all = scheduled_for(&results_dir, "tick");
    let unique: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a fire time ran twice: {all:?}");
    assert!(
        logged(&log, "the wall clock jumped by +1d"),
        "the jump ahead is logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn set_back_then_restarted_no_fire_time_runs_twice() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    let clock = root.path().join("clock");
    write(&clock, "+0\n");
    tick_plan(&root.path().join("plans"), "");
    let results_dir = root.path().join("results");
    let mut first = spawn_with_faked_clock(root.path(), &emulator, &clock, "settle: 1s\n");
    let _log = capture_stderr(&mut first);
    wait_for(20, "three fires", async || {
        scheduled_for(&results_dir, "tick").len() >= 3
    })
    .await;
    kill(&first, "-TERM");
    let _ = first.wait();
    // Set back 10 s, then a new daemon: the fire times already used are remembered.
    write(&clock, "-10s\n");
    let before = scheduled_for(&results_dir, "tick").len();
    let mut second = spawn_with_faked_clock(root.path(), &emulator, &clock, "settle: 1s\n");
    let log = capture_stderr(&mut second);
    wait_for(20, "ready", async || logged(&log, "daemon ready")).await;
    wait_for(
        30,
        "fires after the set-back time has caught up",
        async || scheduled_for(&results_dir, "tick").len() >= before + 2,
    )
    .await;
    kill(&second, "-TERM");
    let _ = second.wait();
    let all = scheduled_for(&results_dir, "tick");
    let unique: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a fire time ran twice: {all:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_month_ahead_for_a_moment_removes_no_result_by_age() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    let clock = root.path().join("clock");
    write(&clock, "+0\n");
    tick_plan(&root.path().join("plans"), "");
    let results_dir = root.path().join("results");
    let mut child = spawn_with_faked_clock(
        root.path(),
        &emulator,
        &clock,
        "settle: 1s\nkeep_results: {age: 7d}\n",
    );
    let log = capture_stderr(&mut child);
    wait_for(20, "four fires", async || {
        results(&results_dir, "tick").len() >= 4
    })
    .await;
    let before = scheduled_for(&results_dir, "tick");
    write(&clock, "+30d\n");
    wait_for(20, "the jump logged", async || {
        logged(&log, "the wall clock jumped by +30d")
    })
    .await;
    wait_for(20, "a fire in the future", async || {
        scheduled_for(&results_dir, "tick").len() > before.len()
    })
    .await;
    write(&clock, "+0\n");
    wait_for(20, "the jump back logged", async || {
        logged(&log, "the wall clock jumped by -30d")
    })
    .await;
    let after_back = results(&results_dir, "tick").len();
    wait_for(20, "fires after the clock came back", async || {
        results(&results_dir, "tick").len() >= after_back + 2
    })
    .await;
    kill(&child, "-TERM");
    let _ = child.wait();
    let now = scheduled_for(&results_dir, "tick");
    for t in &before {
        assert!(
            now.contains(t),
            "the result of {t} was removed (all: {now:?})"
        );
    }
}
