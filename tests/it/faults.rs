//! Delivery guarantees under faults, throttling and crashes: every task ends in one known
//! outcome, and no deployment is started twice.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use deployd::emulator::{EmulatorConfig, ScriptedFault};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread")]
async fn faults_end_in_one_known_outcome_and_never_a_double_deploy() {
    let config = EmulatorConfig {
        error_rate: 0.3,
        drop_before_rate: 0.05,
        drop_after_rate: 0.05,
        hang_rate: 0.03,
        hang_for: Duration::from_secs(3),
        ..emulator_config()
    };
    let emulator = start_emulator(config).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tasks = task_ids(40, 1);
    write(
        &dir.path().join("faults.yaml"),
        &plan_of(
            "faults",
            &tasks,
            "retry: {max_attempts: 10, base: 10ms, cap: 100ms, deadline: 2m}\n",
        ),
    );
    write(
        &dir.path().join("config.yaml"),
        "settle: 1s\ntimeouts: {connect: 2s, request: 1s}\n",
    );
    let mut cmd = exec_command(dir.path(), "faults.yaml", &emulator, true);
    cmd.arg("--config")
        .arg(dir.path().join("config.yaml"))
        .args(["--rate", "200", "--burst", "10", "--concurrency", "10"]);
    let out = output(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{stderr}");
    let r = &results(&dir.path().join("results"), "faults")[0];
    let stats = emulator.stats();
    assert!(
        stats.dropped() > 0 && stats.hung > 0 && stats.status(503) > 0,
        "faults happened: {stats:?}"
    );
    let by_task = records_by_task(&emulator.log());
    let mut started = 0;
    for id in &tasks {
        let t = task(r, id);
        let issued: BTreeSet<String> = by_task
            .get(id)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        match t["status"].as_str() {
            Some("started") => {
                started += 1;
                let mut reported: BTreeSet<String> = t["records"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|r| r["record_id"].as_str().expect("id").to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                reported.insert(t["record_id"].as_str().expect("record").to_string());
                assert_eq!(
                    issued, reported,
                    "task {id}: every record issued is reported"
                );
                assert_eq!(issued.len(), 1, "task {id} was started twice: {t}");
            }
            Some("failed") => {
                assert!(
                    t["error_msg"].as_str().is_some_and(|m| !m.is_empty()),
                    "a reason: {t}"
                );
                assert!(
                    issued.is_empty(),
                    "task {id} failed but has records {issued:?}: {t}"
                );
            }
            other => panic!("task {id} ended {other:?}: {t}"),
        }
    }
    assert!(
        started >= 30,
        "most tasks start despite the faults: {started}/40"
    );
    assert!(
        !dir.path()
            .join("state/runs")
            .read_dir()
            .expect("runs")
            .any(|_| true),
        "journal removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_rate_on_both_sides_gets_no_429() {
    let emulator = start_emulator(EmulatorConfig {
        rate_limit: Some(20.0),
        ..emulator_config()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tasks = task_ids(40, 2);
    write(&dir.path().join("rate.yaml"), &plan_of("rate", &tasks, ""));
    let mut cmd = exec_command(dir.path(), "rate.yaml", &emulator, false);
    cmd.args(["--rate", "20", "--concurrency", "8"]);
    let out = output(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = emulator.stats();
    assert_eq!(stats.status(429), 0, "{stats:?}");
    assert_eq!(stats.status(200), 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_set_too_high_settles_instead_of_storming() {
    // The gateway allows 10/s; we ask for 100/s. The slow lane must keep 429s to a fraction of
    // the calls and every task must still start, each exactly once.
    let emulator = start_emulator(EmulatorConfig {
        rate_limit: Some(10.0),
        ..emulator_config()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tasks = task_ids(60, 3);
    write(
        &dir.path().join("hot.yaml"),
        &plan_of(
            "hot",
            &tasks,
            "retry: {max_attempts: 20, base: 100ms, cap: 2s, deadline: 2m}\n",
        ),
    );
    let mut cmd = exec_command(dir.path(), "hot.yaml", &emulator, false);
    cmd.args(["--rate", "100", "--burst", "1", "--concurrency", "8"]);
    let out = output(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = emulator.stats();
    let throttled = stats.status(429);
    assert!(throttled > 0, "the test does provoke throttling");
    assert!(
        throttled < 60,
        "429s settle instead of storming: {throttled} for 60 tasks"
    );
    let by_task = records_by_task(&emulator.log());
    assert!(tasks.iter().all(|t| by_task[t].len() == 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_run_then_restart_writes_it_interrupted_and_starts_nothing_twice() {
    let emulator = start_emulator(EmulatorConfig {
        latency: Duration::from_millis(100),
        ..emulator_config()
    })
    .await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    let results_dir = root.path().join("results");
    let tasks = task_ids(20, 4);
    write(&plans.join("crash.yaml"), &plan_of("crash", &tasks, ""));
    let spawn = || {
        daemon_command(root.path(), &emulator, "3", "2")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn")
    };
    let mut first = spawn();
    wait_for(20, "a few calls", async || emulator.log().len() >= 4).await;
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let killed_at = chrono::Utc::now();
    assert!(
        results(&results_dir, "crash").is_empty(),
        "no result before recovery"
    );

    let mut second = spawn();
    wait_for(20, "the recovered result", async || {
        results(&results_dir, "crash").len() == 1
    })
    .await;
    // Give the restarted daemon a moment in which it could (wrongly) run the plan again: a
    // sentinel plan dropped now runs only after the folder was scanned.
    write(
        &plans.join("sentinel.yaml"),
        &plan_of("sentinel", &task_ids(1, 5), ""),
    );
    wait_for(20, "sentinel", async || {
        results(&results_dir, "sentinel").len() == 1
    })
    .await;
    second.kill().expect("stop");
    let _ = second.wait();

    let r = &results(&results_dir, "crash")[0];
    assert_eq!(r["status"], "interrupted");
    let log = emulator.log();
    // A request may still have been in the emulator (its latency) at the kill, but none may
    // have arrived after it: the restarted daemon does not resume the run.
    let late: Vec<_> = log
        .iter()
        .filter(|l| tasks.contains(&l.task_id) && l.received_at > killed_at)
        .collect();
    assert!(
        late.is_empty(),
        "calls for the crashed run after the kill: {late:?}"
    );
    let by_task = records_by_task(&log);
    let mut seen = HashSet::new();
    for id in &tasks {
        let t = task(r, id);
        let issued = by_task.get(id).cloned().unwrap_or_default();
        assert!(issued.len() <= 1, "task {id} started twice");
        match t["status"].as_str() {
            Some("started") => {
                assert_eq!(
                    issued,
                    vec![t["record_id"].as_str().expect("id").to_string()]
                );
                seen.insert(id.clone());
            }
            Some("skipped") => assert!(
                issued.is_empty(),
                "task {id} has a record but was reported skipped"
            ),
            other => panic!("task {id}: {other:?} {t}"),
        }
    }
    assert_eq!(
        seen.len(),
        by_task.keys().filter(|k| tasks.contains(k)).count(),
        "every record is in the result"
    );
    assert!(!seen.is_empty() && seen.len() < 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_one_refused_authentication_the_run_stops_calling() {
    let emulator = start_emulator(emulator_config()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tasks = task_ids(8, 6);
    write(&dir.path().join("auth.yaml"), &plan_of("auth", &tasks, ""));
    let mut cmd = exec_command(dir.path(), "auth.yaml", &emulator, false);
    cmd.args(["--rate", "100", "--concurrency", "1"])
        .env("DEPLOYD_TOKEN", "not-the-token");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1));
    let stats = emulator.stats();
    assert_eq!(
        stats.status(401),
        1,
        "one refused call, then no more: {stats:?}"
    );
    let r = &results(&dir.path().join("results"), "auth")[0];
    assert_eq!(r["status"], "failed");
    // One task (whichever got the single slot first) was refused; the others were not called.
    let refused: Vec<&String> = tasks
        .iter()
        .filter(|t| task(r, t)["error_code"] == "APIGW.0301")
        .collect();
    assert_eq!(refused.len(), 1, "{r}");
    for t in tasks.iter().filter(|t| !refused.contains(t)) {
        assert_eq!(task(r, t)["error_code"], "credentials_refused");
        assert_eq!(task(r, t)["attempts"], 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_while_following_reports_the_started_tasks_as_started() {
    let emulator = start_emulator(EmulatorConfig {
        deploy_duration: Duration::from_secs(600),
        ..emulator_config()
    })
    .await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    let results_dir = root.path().join("results");
    let tasks = task_ids(4, 7);
    write(
        &plans.join("followed.yaml"),
        &plan_of("followed", &tasks, "follow: true\nfollow_timeout: 1h\n"),
    );
    let spawn = || {
        daemon_command(root.path(), &emulator, "50", "4")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn")
    };
    let mut first = spawn();
    // Every task started and is now being followed (the deployments run for 10 minutes).
    wait_for(20, "all tasks started", async || emulator.log().len() == 4).await;
    wait_for(20, "following", async || emulator.stats().total > 4).await;
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let mut second = spawn();
    wait_for(30, "the recovered result", async || {
        results(&results_dir, "followed").len() == 1
    })
    .await;
    second.kill().expect("stop");
    let _ = second.wait();
    let r = &results(&results_dir, "followed")[0];
    assert_eq!(r["status"], "interrupted");
    let by_task = records_by_task(&emulator.log());
    for id in &tasks {
        let t = task(r, id);
        assert_eq!(t["status"], "started", "{t}");
        assert_eq!(
            by_task[id],
            vec![t["record_id"].as_str().expect("id").to_string()]
        );
    }
    assert_eq!(emulator.log().len(), 4, "nothing started twice");
}

/// A history query answered 429 slows every caller down and its `Retry-After` is waited out
/// before the lookup asks again, as for a start call (it used to be retried after 500 ms).
#[tokio::test(flavor = "multi_thread")]
async fn a_history_query_answered_429_honours_retry_after() {
    let tasks = task_ids(1, 429);
    let emulator = start_emulator(EmulatorConfig {
        start_script: vec![(tasks[0].clone(), ScriptedFault::DropAfter)],
        query_script: vec![(tasks[0].clone(), ScriptedFault::Throttled(3))],
        ..emulator_config()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    write(&dir.path().join("lost.yaml"), &plan_of("lost", &tasks, ""));
    write(&dir.path().join("config.yaml"), "settle: 1s\n");
    let mut cmd = exec_command(dir.path(), "lost.yaml", &emulator, true);
    cmd.arg("--config")
        .arg(dir.path().join("config.yaml"))
        .args(["--rate", "100", "--concurrency", "4"]);
    let started = std::time::Instant::now();
    let out = output(cmd).await;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let r = &results(&dir.path().join("results"), "lost")[0];
    let entry = task(r, &tasks[0]);
    assert_eq!(entry["status"], "started", "{entry}");
    assert_eq!(entry["reconciled"], true, "{entry}");
    assert_eq!(entry["attempts"], 1, "{entry}");
    let stats = emulator.stats();
    assert_eq!(stats.status(429), 1, "{stats:?}");
    assert_eq!(emulator.log().len(), 1, "one deployment");
    assert!(
        stderr.contains("throttled by the API (429)"),
        "the query's 429 slowed the lane: {stderr}"
    );
    assert!(
        took >= Duration::from_secs(3),
        "the lookup waited out Retry-After: 3 before asking again: {took:?}"
    );
}

/// A state query answered 429 while following a deployment: the next poll waits out the
/// `Retry-After` (4 s), not only the follow's own 2 s pause.
#[tokio::test(flavor = "multi_thread")]
async fn a_status_query_answered_429_honours_retry_after() {
    let tasks = task_ids(1, 0x4290);
    let emulator = start_emulator(EmulatorConfig {
        deploy_duration: Duration::from_millis(100),
        query_script: vec![(tasks[0].clone(), ScriptedFault::Throttled(4))],
        ..emulator_config()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        &dir.path().join("followed.yaml"),
        &plan_of("followed", &tasks, "follow: true\nfollow_timeout: 1m\n"),
    );
    // No project id: no history lookup nor zone learning, so the follow's first poll is the
    // task's first query.
    let mut cmd = exec_command(dir.path(), "followed.yaml", &emulator, false);
    cmd.args(["--rate", "100", "--concurrency", "4"]);
    let out = output(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let r = &results(&dir.path().join("results"), "followed")[0];
    let entry = task(r, &tasks[0]);
    assert_eq!(entry["status"], "started", "{entry}");
    assert_eq!(entry["final_state"], "succeeded", "{entry}");
    let followed = entry["duration_secs"].as_f64().expect("duration");
    assert!(
        followed >= 3.99,
        "the second poll waited out Retry-After: 4: followed {followed} s"
    );
    assert_eq!(emulator.stats().status(429), 1);
    assert!(
        stderr.contains("throttled by the API (429)"),
        "the query's 429 slowed the lane: {stderr}"
    );
}
