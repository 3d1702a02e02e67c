//! `value_from` end to end (issues 9 §6 and 10): one value per run, no reads of `/proc`,
//! `/sys`, `/dev` or non-regular files, no hang on a FIFO, and a budget on a plan's params.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deployd::emulator::EmulatorConfig;

use crate::helpers::*;

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo")
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn issue_9_every_task_of_a_run_is_sent_the_value_read_when_it_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tasks = task_ids(40, 9);
    let mut plan = String::from(
        "name: snap\nparams:\n  - {key: version, value_from: {file: version.txt}}\ntasks:\n",
    );
    for t in &tasks {
        plan.push_str(&format!("  - {t}\n"));
    }
    write(&dir.path().join("snap.yaml"), &plan);
    write(&dir.path().join("version.txt"), "1.0.0\n");
    // 40 calls of 100 ms, 2 at a time: the run takes about 2 s.
    let emulator = start_emulator(EmulatorConfig {
        latency: Duration::from_millis(100),
        ..emulator_config()
    })
    .await;
    let mut child = exec_command(dir.path(), "snap.yaml", &emulator, true)
        .args(["--rate", "1000", "--burst", "10", "--concurrency", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for(15, "the first calls", async || emulator.log().len() >= 2).await;
    write(&dir.path().join("version.txt"), "2.0.0\n");
    let calls_before_the_change = emulator.log().len();
    let status = exit_within(&mut child, 30, "the exec").await;
    assert_eq!(status.code(), Some(0));
    assert!(
        calls_before_the_change < tasks.len(),
        "the file changed in the middle of the run"
    );
    let log = emulator.log();
    assert_eq!(log.len(), tasks.len());
    for call in &log {
        assert!(
            call.body
                .contains(r#"{"key": "version", "value": "1.0.0", "type": "text"}"#),
            "{}: {}",
            call.task_id,
            call.body
        );
    }
    let r = &results(&dir.path().join("results"), "snap")[0];
    assert_eq!(r["summary"]["started"], 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn issue_10_proc_self_environ_and_dev_zero_are_refused_by_check_and_exec() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink("/proc/self/environ", dir.path().join("env")).expect("symlink");
    let plan = format!(
        "name: leak\ntasks:\n  - task_id: {}\n    params:\n      - {{key: env, value_from: {{file: /proc/self/environ}}}}\n      - {{key: zero, value_from: {{file: /dev/zero}}}}\n      - {{key: sneaky, value_from: {{file: env}}}}\n",
        T1
    );
    let plan_path = dir.path().join("leak.yaml");
    write(&plan_path, &plan);

    let mut check = deployd();
    check
        .arg("check")
        .arg(&plan_path)
        .env("DEPLOYD_TOKEN", TOKEN);
    let out = output(check).await;
    let shown = both_streams(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let p = plan_path.display();
    for expected in [
        format!("{p}:5:39: tasks[0].params[0].value_from.file: /proc/self/environ is under /proc"),
        format!("{p}:6:40: tasks[0].params[1].value_from.file: /dev/zero is under /dev"),
        format!("{p}:7:42: tasks[0].params[2].value_from.file: "),
    ] {
        assert!(
            shown.contains(&expected),
            "missing {expected:?} in:\n{shown}"
        );
    }
    assert!(shown.contains("resolves to /proc/"), "{shown}");
    assert!(!shown.contains(TOKEN));

    let emulator = start_emulator(emulator_config()).await;
    let out = output(exec_command(dir.path(), "leak.yaml", &emulator, true)).await;
    assert_eq!(out.status.code(), Some(1), "{}", both_streams(&out));
    assert!(both_streams(&out).contains("/proc/self/environ is under /proc"));
    assert!(!both_streams(&out).contains(TOKEN));
    assert!(emulator.log().is_empty(), "no call made");
    assert!(results(&dir.path().join("results"), "leak").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn issue_10_a_fifo_fails_its_task_at_once_and_the_daemon_stops_promptly() {
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    let emulator = start_emulator(emulator_config()).await;
    // Fires every second; the value file does not exist yet when the plan is loaded.
    write(
        &plans.join("fifo.yaml"),
        &format!(
            "schedule: \"* * * * * *\"\ntasks:\n  - task_id: {T1}\n    params: [{{key: v, value_from: {{file: values/v}}}}]\n  - {T2}\n"
        ),
    );
    std::fs::create_dir_all(plans.join("values")).expect("mkdir");
    let mut child = daemon_command(root.path(), &emulator, "100", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let results_dir = root.path().join("results");
    let failed_with = |needle: &'static str| {
        let results_dir = results_dir.clone();
        async move || {
            results(&results_dir, "fifo").iter().any(|r| {
                task(r, T1)["error_msg"]
                    .as_str()
                    .is_some_and(|m| m.contains(needle))
            })
        }
    };
    wait_for(
        20,
        "a run with the file missing",
        failed_with("No such file"),
    )
    .await;
    mkfifo(&plans.join("values/v"));
    // A writer that holds the FIFO open and never writes: a blocking read would hang.
    let writer = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3>{}; sleep 60",
            plans.join("values/v").display()
        ))
        .spawn()
        .expect("writer");
    wait_for(20, "a run refusing the FIFO", failed_with("FIFO")).await;
    let r = results(&results_dir, "fifo")
        .into_iter()
        .find(|r| {
            task(r, T1)["error_msg"]
                .as_str()
                .is_some_and(|m| m.contains("FIFO"))
        })
        .expect("that run");
    let t1 = task(&r, T1);
    assert_eq!(t1["status"], "failed");
    assert_eq!(t1["error_code"], "param_unresolved");
    assert!(
        t1["error_msg"]
            .as_str()
            .expect("msg")
            .contains("param \"v\""),
        "{t1}"
    );
    assert_eq!(task(&r, T2)["status"], "started", "the other task runs");
    let took = chrono::DateTime::parse_from_rfc3339(r["finished_at"].as_str().expect("t"))
        .expect("time")
        - chrono::DateTime::parse_from_rfc3339(r["started_at"].as_str().expect("t")).expect("time");
    assert!(took < chrono::TimeDelta::seconds(2), "the run took {took}");
    assert!(emulator.log().iter().all(|l| l.task_id != T1));

    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = exit_within(&mut child, 10, "the daemon").await;
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    let mut writer = writer;
    let _ = writer.kill();
    let _ = writer.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn issue_10_a_plan_over_the_params_budget_is_refused_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The issue's plan: 1,000 tasks, 50 plan params of 8 KB: 448 KB of YAML, 415 MB merged.
    let value = "v".repeat(8000);
    let mut plan = String::from("name: huge\nparams:\n");
    for k in 0..50 {
        plan.push_str(&format!("  - {{key: p{k}, value: \"{value}\"}}\n"));
    }
    plan.push_str("tasks:\n");
    for t in task_ids(1000, 9) {
        plan.push_str(&format!("  - {t}\n"));
    }
    write(&dir.path().join("huge.yaml"), &plan);
    let mut check = deployd();
    check.arg("check").arg(dir.path().join("huge.yaml"));
    let out = output(check).await;
    let shown = both_streams(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let expected = format!(
        "{}:54:3: tasks: the plan's params take more than the budget of 67108864 bytes (64 MiB)",
        dir.path().join("huge.yaml").display()
    );
    assert!(shown.contains(&expected), "{shown}");

    let emulator = start_emulator(emulator_config()).await;
    let out = output(exec_command(dir.path(), "huge.yaml", &emulator, true)).await;
    assert_eq!(out.status.code(), Some(1), "{}", both_streams(&out));
    assert!(emulator.log().is_empty());
    assert!(
        !dir.path().join("state/runs").exists()
            || std::fs::read_dir(dir.path().join("state/runs"))
                .expect("dir")
                .next()
                .is_none()
    );
}
