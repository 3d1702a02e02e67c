//! Signals are never lost: a SIGTERM right after a SIGHUP stops the daemon, and a flood of
//! SIGHUPs neither starves finished runs nor skips fires.

use std::process::Stdio;
use std::time::Duration;

use deployd::emulator::EmulatorConfig;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread")]
async fn sighup_then_sigterm_always_stops_the_daemon() {
    let emulator = start_emulator(emulator_config()).await;
    for trial in 0..10 {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("plans")).expect("mkdir");
        let mut child = daemon_command(root.path(), &emulator, "10", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let log = capture_stderr(&mut child);
        wait_for(20, "ready", async || logged(&log, "daemon ready")).await;
        kill(&child, "-HUP");
        kill(&child, "-TERM");
        let code = exit_within(&mut child, 15, &format!("trial {trial}"))
            .await
            .code()
            .unwrap_or(-1);
        assert_eq!(code, 0, "trial {trial}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sighup_flood_skips_no_fire() {
    let emulator = start_emulator(EmulatorConfig {
        latency: Duration::from_millis(150),
        ..emulator_config()
    })
    .await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    write(
        &plans.join("tick.yaml"),
        &format!("schedule: \"* * * * * *\"\ntasks:\n  - {T1}\n"),
    );
    let mut child = daemon_command(root.path(), &emulator, "100", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = capture_stderr(&mut child);
    wait_for(20, "ready", async || logged(&log, "daemon ready")).await;
    let pid = child.id();
    let flood = std::thread::spawn(move || {
        let until = std::time::Instant::now() + Duration::from_secs(6);
        let mut sent = 0u32;
        while std::time::Instant::now() < until {
            if std::process::Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success())
            {
                sent += 1;
            }
        }
        sent
    });
    let sent = tokio::task::spawn_blocking(move || flood.join().expect("flood"))
        .await
        .expect("join");
    let results_dir = root.path().join("results");
    wait_for(20, "runs during the flood", async || {
        results(&results_dir, "tick").len() >= 5
    })
    .await;
    kill(&child, "-TERM");
    assert_eq!(exit_within(&mut child, 20, "stop").await.code(), Some(0));
    let text = log.lock().map(|t| t.clone()).unwrap_or_default();
    assert!(sent > 50, "a flood: {sent} SIGHUPs");
    let skipped = text.matches("the previous run is still going").count();
    assert_eq!(
        skipped, 0,
        "fires skipped although every run takes 150 ms:\n{text}"
    );
}
