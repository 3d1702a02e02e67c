//! Issue 10 (hardening), through the real binary: settings out of range are configuration
//! errors (exit 78, or "keeping the old one" on SIGHUP), never panics; plan files whose name is
//! not UTF-8 are reported; cron expressions `deployd next` used to get wrong.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::helpers::*;

/// `deployd COMMAND --plans-dir root/plans --results-dir .. --state-dir .. ARGS...`
/// (`args[0]` is the command).
fn with_folders(root: &Path, args: &[&str]) -> Command {
    let mut cmd = deployd();
    cmd.arg(args[0])
        .arg("--plans-dir")
        .arg(root.join("plans"))
        .arg("--results-dir")
        .arg(root.join("results"))
        .arg("--state-dir")
        .arg(root.join("state"))
        .args(&args[1..]);
    cmd
}

/// `--rate 1e-20` (flag or config file) panicked with exit 101; now exit 78 naming the setting.
#[test]
fn out_of_range_settings_exit_78_naming_the_setting() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    write(&root.join("plans/p.yaml"), &format!("tasks: [{T1}]\n"));

    let (code, _, stderr) = run_to_end(with_folders(
        root,
        &["run", "--emulator", "--rate", "1e-20"],
    ));
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("--rate: must be a number of calls per second from 0.001 to 10000"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let config = root.join("config.yaml");
    write(&config, "concurrency: 4\nrate: 1e-20\nsettle: 11m\n");
    for command in ["run", "exec"] {
        let mut cmd = with_folders(root, &[command, "--emulator", "--config"]);
        cmd.arg(&config);
        if command == "exec" {
            cmd.arg(root.join("plans/p.yaml"));
        }
        let (code, _, stderr) = run_to_end(cmd);
        assert_eq!(code, Some(78), "{command}: {stderr}");
        for needle in [
            ":2:1: rate: must be",
            ":3:1: settle: must be from 0s to 10m, got 11m",
        ] {
            assert!(
                stderr.contains(&format!("{}{needle}", config.display())),
                "{command}: {needle} missing in {stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{command}: {stderr}");
    }

    let (code, _, stderr) = run_to_end(with_folders(
        root,
        &[
            "exec",
            "--emulator",
            "--burst",
            "0",
            "--concurrency",
            "99999",
            "x.yaml",
        ],
    ));
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("--burst: must be from 1 to 10000, got 0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--concurrency: must be from 1 to 10000, got 99999"),
        "{stderr}"
    );
}

/// SIGHUP with `rate: 1e-20` in the config killed the daemon; now it logs why and keeps the
/// old configuration, still running plans, and exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_with_an_out_of_range_rate_keeps_the_daemon_running() {
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    std::fs::create_dir_all(&plans).expect("mkdir");
    let results_dir = root.path().join("results");
    let emulator = start_emulator(emulator_config()).await;
    let config = root.path().join("config.yaml");
    write(&config, "rescan_interval: 60s\n");
    // Without `--rate`: a flag would win over the file's value.
    let mut child = with_folders(root.path(), &["run", "--config"])
        .arg(&config)
        .args([
            "--endpoint",
            &emulator.base_url(),
            "--project-id",
            &emulator.config().project_id,
        ])
        .env("DEPLOYD_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id().to_string();
    // The daemon is up once it ran a first plan.
    write(&plans.join("first.yaml"), &format!("tasks: [{T1}]\n"));
    wait_for(15, "the first plan's run", async || {
        results(&results_dir, "first").len() == 1
    })
    .await;

    write(&config, "rescan_interval: 60s\nrate: 1e-20\n");
    let kill = |sig: &str| {
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success()
    };
    assert!(kill("-HUP"));
    write(&plans.join("after-hup.yaml"), &format!("tasks: [{T2}]\n"));
    wait_for(15, "a run after the bad reload", async || {
        results(&results_dir, "after-hup").len() == 1
    })
    .await;
    assert!(child.try_wait().expect("wait").is_none(), "still running");
    assert!(kill("-TERM"));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait"))
        .await
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("the new configuration is invalid; keeping the old one"),
        "{stderr}"
    );
    assert!(stderr.contains(":2:1: rate: must be"), "{stderr}");
    assert!(!stderr.contains("panic"), "{stderr}");
}

/// A plan file named `caf\xe9.yaml` (not UTF-8).
fn non_utf8_plan(plans: &Path) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    plans.join(std::ffi::OsStr::from_bytes(b"caf\xe9.yaml"))
}

/// `deployd check` skipped a plan file whose name is not UTF-8; now it is an error line (the
/// name shown lossily) and exit 1.
#[test]
fn check_reports_a_plan_file_name_that_is_not_utf8() {
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    write(&plans.join("ok.yaml"), &format!("tasks: [{T1}]\n"));
    std::fs::write(
        non_utf8_plan(&plans),
        format!("name: cafe\ntasks: [{T2}]\n"),
    )
    .expect("write");
    let mut cmd = deployd();
    cmd.arg("check").arg(&plans);
    let (code, stdout, stderr) = run_to_end(cmd);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("caf\u{FFFD}.yaml"))
        .unwrap_or_else(|| panic!("no line for the file in {stdout}"));
    assert!(
        line.contains(":1:1: ") && line.contains("not valid UTF-8"),
        "{line}"
    );
    assert!(stderr.contains("1 valid plan, 1 error"), "{stderr}");
}

/// The daemon skipped it too; now it logs it as invalid and writes
/// `RESULTS/_invalid/caf\u{FFFD}.yaml.txt`, removed once the file is renamed.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_reports_a_plan_file_name_that_is_not_utf8() {
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    std::fs::create_dir_all(&plans).expect("mkdir");
    let results_dir = root.path().join("results");
    let emulator = start_emulator(emulator_config()).await;
    let child = daemon_command(root.path(), &emulator, "50", "8")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id().to_string();
    write(&plans.join("first.yaml"), &format!("tasks: [{T1}]\n"));
    wait_for(15, "the first plan's run", async || {
        results(&results_dir, "first").len() == 1
    })
    .await;

    let bad = non_utf8_plan(&plans);
    let staging = root.path().join("staging.yaml");
    std::fs::write(&staging, format!("name: cafe\ntasks: [{T2}]\n")).expect("write");
    std::fs::rename(&staging, &bad).expect("mv");
    let report = results_dir.join("_invalid").join("caf\u{FFFD}.yaml.txt");
    wait_for(15, "the invalid report", async || report.exists()).await;
    let text = std::fs::read_to_string(&report).expect("read");
    assert!(text.contains("not valid UTF-8"), "{text}");
    // Renamed to a proper name: it runs, and the report goes.
    std::fs::rename(&bad, plans.join("cafe.yaml")).expect("mv");
    wait_for(15, "the report removed", async || !report.exists()).await;
    wait_for(15, "the renamed plan's run", async || {
        results(&results_dir, "cafe").len() == 1
    })
    .await;
    assert_eq!(emulator.log().len(), 2, "the misnamed file made no call");

    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait"))
        .await
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("caf\u{FFFD}.yaml is invalid and will not run"),
        "{stderr}"
    );
}

/// The fire times `deployd next` prints for `plan` (the UTC column), in order.
fn next_fires(stdout: &str, plan: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with(&format!("{plan}: ")))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            l.split_whitespace()
                .last()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("no UTC time in {l:?}"))
        })
        .collect()
}

/// `deployd next` on the cron cases of issue 10: `7L` (was refused), `1/2` in the
/// day-of-week field (fired on Sundays too) and February 29 on a Monday (was "never": its next
/// fire is in 2044, beyond the old five-year search).
#[test]
fn next_shows_last_sundays_weekday_steps_and_rare_dates() {
    use chrono::{Datelike, Weekday};
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    for (name, expr) in [
        ("last-sunday", "0 0 * * 7L"),
        ("mon-wed-fri", "0 0 * * 1/2"),
        ("leap-monday", "0 0 29 2 +1"),
    ] {
        write(
            &plans.join(format!("{name}.yaml")),
            &format!("schedule: \"{expr}\"\ntasks: [{T1}]\n"),
        );
    }
    let mut cmd = deployd();
    cmd.arg("next").arg(&plans).args(["--count", "6"]);
    let (code, stdout, stderr) = run_to_end(cmd);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");

    let last_sundays = next_fires(&stdout, "last-sunday");
    assert_eq!(last_sundays.len(), 6, "{stdout}");
    for t in &last_sundays {
        assert_eq!(t.weekday(), Weekday::Sun, "{t}");
        assert_ne!(
            (t.date_naive() + chrono::Days::new(7)).month(),
            t.month(),
            "{t}"
        );
    }
    let steps = next_fires(&stdout, "mon-wed-fri");
    assert_eq!(steps.len(), 6, "{stdout}");
    for t in &steps {
        assert!(
            matches!(t.weekday(), Weekday::Mon | Weekday::Wed | Weekday::Fri),
            "{t} in {stdout}"
        );
    }
    let rare = next_fires(&stdout, "leap-monday");
    assert_eq!(rare.len(), 6, "{stdout}");
    for t in &rare {
        assert_eq!(
            (t.month(), t.day(), t.weekday()),
            (2, 29, Weekday::Mon),
            "{t}"
        );
    }
    // The first after any date before 2044 is 2044-02-29.
    assert_eq!(rare[0].year(), 2044, "{stdout}");
}
