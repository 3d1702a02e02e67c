//! Adversarial reproductions from an attack on the reconciliation and admission fixes: each
//! test states the promise it checks, and failed while the promise was broken.

use std::time::Duration;

use chrono::{FixedOffset, TimeDelta};
use deployd::emulator::{Emulator, EmulatorConfig, ScriptedFault};

use crate::helpers::*;

fn one_task_plan(dir: &std::path::Path, name: &str, task: &str, version: &str) {
    write(
        &dir.join(format!("{name}.yaml")),
        &format!(
            "name: {name}\nparams:\n  - {{key: version, value: \"{version}\"}}\ntasks:\n  - {task}\n"
        ),
    );
}

async fn exec_once(
    dir: &std::path::Path,
    name: &str,
    emulator: &Emulator,
    settle: &str,
) -> std::process::Output {
    write(&dir.join("config.yaml"), &format!("settle: {settle}\n"));
    let mut cmd = exec_command(dir, &format!("{name}.yaml"), emulator, true);
    cmd.arg("--config")
        .arg(dir.join("config.yaml"))
        .args(["--rate", "100"]);
    output(cmd).await
}

/// Promise: never silently fails to run; never adopts another caller's record.
/// The zone of record times is not known yet (first call of a fresh state folder). Our call
/// is lost before the service saw it (no record). Another caller started the same task
/// exactly a quarter hour earlier, with OTHER params. The lookup counts "every real offset"
/// and so aliases every record a whole number of quarter hours older than the send onto the
/// send time; one candidate is adopted without looking at its params.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_record_a_quarter_hour_off_is_not_adopted_while_the_zone_is_unknown() {
    let emulator = start_emulator(EmulatorConfig {
        record_utc_offset: FixedOffset::east_opt(8 * 3600).expect("zone"),
        start_script: vec![(T1.to_string(), ScriptedFault::DropBefore)],
        ..emulator_config()
    })
    .await;
    // A colleague's deploy of the same task, 15 minutes (minus the few seconds it takes the
    // exec to start) before our send, with another version.
    let foreign = emulator.insert_record(
        T1,
        emulator.now() - TimeDelta::seconds(15 * 60) + TimeDelta::seconds(3),
        &[("version", "0.9.0", "text")],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    one_task_plan(dir.path(), "alias", T1, "1.0.0");
    let out = exec_once(dir.path(), "alias", &emulator, "10s").await;
    let r = results(&dir.path().join("results"), "alias")
        .pop()
        .unwrap_or_else(|| panic!("no result: {}", String::from_utf8_lossy(&out.stderr)));
    let line = task(&r, T1);
    let ours = records_by_task(&emulator.log())
        .get(T1)
        .cloned()
        .unwrap_or_default();
    assert_ne!(
        line["record_id"].as_str(),
        Some(foreign.as_str()),
        "adopted another caller's record (version 0.9.0, 15 min old) as ours; records we created: {ours:?}; line: {line}"
    );
    assert_eq!(ours.len(), 1, "records we created: {ours:?}; line: {line}");
}

/// Promise: a deploy never runs twice. The learned zone in `STATE/service-zone.json` is wrong
/// (state folder restored from another region's host, the endpoint changed, or the service
/// changed its zone). It is trusted forever: no lookup ever checks it again, so a lost answer
/// is looked for hours away from where the record is, found "not there", and sent again.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_zone_in_the_state_folder_does_not_deploy_twice() {
    let emulator = start_emulator(EmulatorConfig {
        record_utc_offset: FixedOffset::east_opt(8 * 3600).expect("zone"),
        start_script: vec![
            (T2.to_string(), ScriptedFault::None),
            (T1.to_string(), ScriptedFault::DropAfter),
        ],
        ..emulator_config()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        &dir.path().join("state/service-zone.json"),
        r#"{"utc_offset_secs": 0, "learned_at": "2026-01-01T00:00:00Z", "record_id": "x"}"#,
    );
    write(
        &dir.path().join("wz.yaml"),
        &format!(
            "name: wz\nconcurrency: 1\nparams:\n  - {{key: version, value: \"1\"}}\ntasks:\n  - {T2}\n  - {T1}\n"
        ),
    );
    let out = exec_once(dir.path(), "wz", &emulator, "2s").await;
    let r = results(&dir.path().join("results"), "wz")
        .pop()
        .unwrap_or_else(|| panic!("no result: {}", String::from_utf8_lossy(&out.stderr)));
    let ours = records_by_task(&emulator.log())
        .get(T1)
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        ours.len(),
        1,
        "task started {} times: {ours:?}; line: {}; zone file now: {}",
        ours.len(),
        task(&r, T1),
        std::fs::read_to_string(dir.path().join("state/service-zone.json")).unwrap_or_default()
    );
}

/// Promise: after a crash, a call that started a deployment is reported started (never
/// `skipped`). The journal keeps the send time on the crashed process's host clock only;
/// recovery compares it with the service's clock as measured *now*. A host clock that was
/// 10 min fast when the daemon crashed and is right after the reboot (NTP step at boot, a VM
/// restored) puts the send 10 min after the record's creation: the deployment that ran is
/// reported `skipped: not started`.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_after_a_host_clock_step_finds_the_deployed_task() {
    use std::process::Stdio;
    // 1. A real crash journal: the call is in flight (slow service) when the exec is killed.
    let slow = start_emulator(EmulatorConfig {
        latency: Duration::from_secs(30),
        ..emulator_config()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let plans = dir.path().join("plans");
    one_task_plan(&plans, "crashy", T1, "1.0.0");
    let mut cmd = deployd();
    cmd.arg("exec")
        .arg(plans.join("crashy.yaml"))
        .args(["--endpoint", &slow.base_url()])
        .args(["--project-id", &slow.config().project_id])
        .arg("--results-dir")
        .arg(dir.path().join("results"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("DEPLOYD_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    let runs = dir.path().join("state/runs");
    let journal = || -> Option<std::path::PathBuf> {
        std::fs::read_dir(&runs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("\"intent\"")))
    };
    wait_for(20, "the intent in the journal", async || {
        journal().is_some()
    })
    .await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let path = journal().expect("journal");
    // 2. The crashed host's clock was 10 min fast: its send time reads 10 min late.
    let text = std::fs::read_to_string(&path).expect("read");
    let mut lines = Vec::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).expect("json line");
        if v["type"] == "intent" {
            let at = chrono::DateTime::parse_from_rfc3339(v["sent_at"].as_str().expect("sent_at"))
                .expect("time");
            v["sent_at"] = serde_json::json!((at + TimeDelta::minutes(10)).to_rfc3339());
        }
        lines.push(v.to_string());
    }
    std::fs::write(&path, lines.join("\n") + "\n").expect("rewrite");
    // 3. The service: our call did create the record (at the true send time).
    let service = start_emulator(emulator_config()).await;
    let ours = service.insert_record(T1, service.now(), &[("version", "1.0.0", "text")]);
    // 4. The daemon restarts on the same state folder, with a right clock.
    let root = dir.path();
    std::fs::create_dir_all(root.join("empty-plans")).expect("mkdir");
    write(&root.join("config.yaml"), "settle: 2s\n");
    let mut daemon = deployd();
    daemon
        .arg("run")
        .arg("--plans-dir")
        .arg(root.join("empty-plans"))
        .arg("--results-dir")
        .arg(root.join("results"))
        .arg("--state-dir")
        .arg(root.join("state"))
        .arg("--config")
        .arg(root.join("config.yaml"))
        .args([
            "--endpoint",
            &service.base_url(),
            "--project-id",
            &service.config().project_id,
        ])
        .env("DEPLOYD_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut daemon = daemon.spawn().expect("spawn daemon");
    let results_dir = root.join("results");
    wait_for(30, "the recovered result", async || {
        !results(&results_dir, "crashy").is_empty()
    })
    .await;
    kill(&daemon, "-TERM");
    let _ = daemon.wait();
    let r = &results(&results_dir, "crashy")[0];
    let line = task(r, T1);
    assert_eq!(
        line["record_id"].as_str(),
        Some(ours.as_str()),
        "the deployment our call started is reported as: {line}"
    );
}

/// `exec` of a one-task plan under libfaketime driven by a timestamp file; the file is
/// rewritten to `step` (libfaketime syntax, e.g. "-600") `after` the start. Returns the
/// records the emulator created for `T1` and the result line.
async fn exec_with_clock_step(
    emulator: &Emulator,
    step: &str,
    after: Duration,
) -> Option<(Vec<String>, serde_json::Value)> {
    let dir = tempfile::tempdir().expect("tempdir");
    one_task_plan(dir.path(), "step", T1, "1.0.0");
    write(&dir.path().join("config.yaml"), "settle: 5s\n");
    let stamp = dir.path().join("faketime");
    write(&stamp, "+0\n");
    let mut cmd = exec_command(dir.path(), "step.yaml", emulator, true);
    cmd.arg("--config")
        .arg(dir.path().join("config.yaml"))
        .args(["--rate", "100"]);
    with_faked_clock(&mut cmd, &stamp)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    tokio::time::sleep(after).await;
    write(&stamp, &format!("{step}\n"));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait"))
        .await
        .expect("join");
    let r = results(&dir.path().join("results"), "step")
        .pop()
        .unwrap_or_else(|| panic!("no result: {}", String::from_utf8_lossy(&out.stderr)));
    let ours = records_by_task(&emulator.log())
        .get(T1)
        .cloned()
        .unwrap_or_default();
    Some((ours, task(&r, T1).clone()))
}

/// Promise: a deploy never runs twice. The host clock is stepped back 10 min (NTP correcting
/// a fast clock) while a start call is in flight, and that call's answer is lost. The send
/// time was read on the old clock, the skew is measured on the new one: the window starts
/// 10 min after the record was created, the lookup finds nothing, and the call is sent again.
#[tokio::test(flavor = "multi_thread")]
async fn a_clock_stepped_back_during_a_lost_call_does_not_deploy_twice() {
    let emulator = start_emulator(EmulatorConfig {
        latency: Duration::from_secs(3),
        start_script: vec![(T1.to_string(), ScriptedFault::DropAfter)],
        ..emulator_config()
    })
    .await;
    let Some((ours, line)) =
        exec_with_clock_step(&emulator, "-600", Duration::from_millis(1500)).await
    else {
        return;
    };
    assert_eq!(
        ours.len(),
        1,
        "task started {} times: {ours:?}; line: {line}",
        ours.len()
    );
}

/// Promise: never adopt another caller's record / never silently fail to run. The host clock
/// is stepped forward 10 min while our call is in flight; the call is lost before the service
/// saw it. Another caller started the same task 5 min before our send (other params): the
/// window now starts 10 min before the send, and that record, the only candidate, is adopted
/// without looking at its params.
#[tokio::test(flavor = "multi_thread")]
async fn a_clock_stepped_forward_during_a_lost_call_adopts_no_foreign_record() {
    let emulator = start_emulator(EmulatorConfig {
        latency: Duration::from_secs(3),
        start_script: vec![(T1.to_string(), ScriptedFault::DropBefore)],
        ..emulator_config()
    })
    .await;
    let foreign = emulator.insert_record(
        T1,
        emulator.now() - TimeDelta::minutes(5),
        &[("version", "0.9.0", "text")],
    );
    let Some((ours, line)) =
        exec_with_clock_step(&emulator, "+600", Duration::from_millis(1500)).await
    else {
        return;
    };
    assert_ne!(
        line["record_id"].as_str(),
        Some(foreign.as_str()),
        "adopted another caller's record; records we created: {ours:?}; line: {line}"
    );
}

/// Promise: never run with other params than the plan's; "a waiting run is decided when its
/// turn comes, on the plan's version then". A scheduled fire that waits for a run slot
/// (`max_runs`) keeps the plan version of its fire time: the operator fixes the plan while
/// it waits (version 1 -> 2), and the run still sends version 1.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_waiting_for_max_runs_runs_the_current_version() {
    use std::process::Stdio;
    let emulator = start_emulator(EmulatorConfig {
        deploy_duration: Duration::from_secs(8),
        ..emulator_config()
    })
    .await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    std::fs::create_dir_all(&plans).expect("mkdir");
    write(
        &root.path().join("config.yaml"),
        "settle: 1s\nmax_runs: 1\n",
    );
    // Holds the only run slot for ~8 s (followed deployment).
    write(
        &plans.join("blocker.yaml"),
        &format!("name: blocker\nfollow: true\ntasks:\n  - {T2}\n"),
    );
    let mut child = daemon_command(root.path(), &emulator, "100", "8")
        .arg("--config")
        .arg(root.path().join("config.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = capture_stderr(&mut child);
    wait_for(20, "the blocker started", async || {
        records_by_task(&emulator.log()).contains_key(T2)
    })
    .await;
    let put = |version: &str| {
        let tmp = plans.join(".p.tmp");
        write(
            &tmp,
            &format!(
                "name: p\nschedule: \"* * * * * *\"\nparams:\n  - {{key: version, value: \"{version}\"}}\ntasks:\n  - {T1}\n"
            ),
        );
        std::fs::rename(&tmp, plans.join("p.yaml")).expect("rename");
    };
    put("1");
    wait_for(20, "p waits its turn", async || {
        logged(&log, "waits its turn")
    })
    .await;
    put("2");
    let edited_at = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_for(30, "p ran", async || {
        records_by_task(&emulator.log()).contains_key(T1)
    })
    .await;
    kill(&child, "-TERM");
    let _ = child.wait();
    let first = emulator
        .log()
        .into_iter()
        .find(|e| e.task_id == T1)
        .expect("p's call");
    let sent = first.body.clone();
    assert!(
        !sent.contains("\"1\""),
        "{:?} after the edit to version 2, the waiting run sent version 1: {sent}",
        edited_at.elapsed()
    );
}
