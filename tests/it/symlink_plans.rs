//! A plans folder that is a symlink follows its target: `plans -> rev1` swapped atomically to
//! `rev2` (the git-sync and capistrano pattern) stops the plans of rev1 and starts those of
//! rev2, without a restart or a SIGHUP.

use std::process::Stdio;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_swapped_plans_link_is_followed() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    let (rev1, rev2) = (root.path().join("rev1"), root.path().join("rev2"));
    write(
        &rev1.join("old.yaml"),
        &format!("schedule: \"* * * * * *\"\ntasks:\n  - {T1}\n"),
    );
    write(&rev2.join("new.yaml"), &format!("tasks:\n  - {T2}\n"));
    std::os::unix::fs::symlink("rev1", root.path().join("plans")).expect("link");
    let mut child = daemon_command(root.path(), &emulator, "100", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = capture_stderr(&mut child);
    let results_dir = root.path().join("results");
    wait_for(20, "the old plan fires", async || {
        results(&results_dir, "old").len() >= 2
    })
    .await;
    // The swap: a new link renamed over the old one.
    std::os::unix::fs::symlink("rev2", root.path().join("plans.tmp")).expect("link");
    std::fs::rename(root.path().join("plans.tmp"), root.path().join("plans")).expect("mv");
    wait_for(20, "the new plan runs", async || {
        results(&results_dir, "new").len() == 1
    })
    .await;
    wait_for(20, "the old plan is removed", async || {
        logged(&log, "plan removed")
    })
    .await;
    std::fs::remove_dir_all(&rev1).expect("rm rev1");
    let old_runs = results(&results_dir, "old").len();
    // A sentinel dropped into the new target runs: the loop went on for a while.
    write(&rev2.join(".s.tmp"), &format!("tasks:\n  - {T3}\n"));
    std::fs::rename(rev2.join(".s.tmp"), rev2.join("sentinel.yaml")).expect("mv");
    wait_for(20, "sentinel", async || {
        results(&results_dir, "sentinel").len() == 1
    })
    .await;
    wait_for(20, "two seconds' worth of fires", async || {
        emulator.log().iter().filter(|l| l.task_id == T3).count() == 1
            && logged(&log, "now leads to")
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    kill(&child, "-TERM");
    let _ = child.wait();
    // At most a run already going when the swap was seen.
    assert!(
        results(&results_dir, "old").len() <= old_runs + 1,
        "the removed plan kept firing"
    );
}
