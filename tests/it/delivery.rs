//! "Never twice, never lost" under attack: two plans starting one task with lost answers, two
//! daemons on one state folder, a state folder moved by a reload, many plans under a low
//! open-files limit, a plan still being written when a full rescan comes.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use deployd::emulator::{EmulatorConfig, ScriptedFault};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread")]
async fn two_plans_starting_one_task_never_take_each_others_record() {
    // Plan A's call is lost before the service sees it, plan B's after it created a record:
    // in flight together, A's lookup would find B's record. One call per task id at a time.
    let emulator = start_emulator(EmulatorConfig {
        latency: Duration::from_millis(200),
        start_script: vec![
            (T1.to_string(), ScriptedFault::DropBefore),
            (T1.to_string(), ScriptedFault::DropAfter),
        ],
        ..emulator_config()
    })
    .await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    std::fs::create_dir_all(&plans).expect("mkdir");
    write(&root.path().join("config.yaml"), "settle: 1s\n");
    let mut child = daemon_command(root.path(), &emulator, "100", "8")
        .arg("--config")
        .arg(root.path().join("config.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    for who in ["a", "b"] {
        write(
            &plans.join(format!(".{who}.tmp")),
            &format!("name: {who}\nparams:\n  - {{key: who, value: {who}}}\ntasks:\n  - {T1}\n"),
        );
    }
    for who in ["a", "b"] {
        std::fs::rename(
            plans.join(format!(".{who}.tmp")),
            plans.join(format!("{who}.yaml")),
        )
        .expect("rename");
    }
    let results_dir = root.path().join("results");
    wait_for(30, "both results", async || {
        results(&results_dir, "a").len() == 1 && results(&results_dir, "b").len() == 1
    })
    .await;
    kill(&child, "-TERM");
    let _ = child.wait();
    let log = emulator.log();
    for who in ["a", "b"] {
        let r = &results(&results_dir, who)[0];
        let line = task(r, T1);
        assert_eq!(line["status"], "started", "plan {who}: {line}");
        let id = line["record_id"].as_str().expect("record id");
        let created = log
            .iter()
            .find(|l| l.record_id == id)
            .unwrap_or_else(|| panic!("plan {who} reports {id}, which no call created"));
        assert_eq!(
            created.params[0].value, who,
            "plan {who} reports the record plan {} created",
            created.params[0].value
        );
    }
    assert_eq!(log.len(), 2, "two records, one per plan: {log:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_the_same_state_folder_refuses_to_start() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("plans")).expect("mkdir");
    let mut first = daemon_command(root.path(), &emulator, "10", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let first_log = capture_stderr(&mut first);
    wait_for(20, "the first daemon ready", async || {
        logged(&first_log, "daemon ready")
    })
    .await;
    let second = output(daemon_command(root.path(), &emulator, "10", "2")).await;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.id())),
        "names the holder: {stderr}"
    );
    // A run-once plan dropped now runs once, in the first daemon.
    write(
        &root.path().join("plans/once.yaml"),
        &format!("tasks:\n  - {T1}\n"),
    );
    let results_dir = root.path().join("results");
    wait_for(20, "the run", async || {
        results(&results_dir, "once").len() == 1
    })
    .await;
    kill(&first, "-TERM");
    let _ = first.wait();
    assert_eq!(emulator.log().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_cannot_move_the_state_folder() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("plans")).expect("mkdir");
    let config = root.path().join("config.yaml");
    write(&config, "settle: 1s\n");
    let mut cmd = deployd();
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--plans-dir")
        .arg(root.path().join("plans"))
        .arg("--results-dir")
        .arg(root.path().join("results"))
        .args([
            "--endpoint",
            &emulator.base_url(),
            "--project-id",
            &emulator.config().project_id,
        ])
        .env("DEPLOYD_TOKEN", TOKEN);
    write(
        &config,
        &format!(
            "settle: 1s\nstate_dir: {}\n",
            root.path().join("state").display()
        ),
    );
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = capture_stderr(&mut child);
    wait_for(20, "ready", async || logged(&log, "daemon ready")).await;
    write(
        &config,
        &format!(
            "settle: 1s\nstate_dir: {}\n",
            root.path().join("moved").display()
        ),
    );
    kill(&child, "-HUP");
    wait_for(20, "the refusal", async || {
        logged(&log, "refused, keeping the old configuration")
    })
    .await;
    write(
        &root.path().join("plans/once.yaml"),
        &format!("tasks:\n  - {T1}\n"),
    );
    wait_for(20, "the run", async || {
        results(&root.path().join("results"), "once").len() == 1
    })
    .await;
    kill(&child, "-TERM");
    let _ = child.wait();
    assert!(
        root.path().join("state/once/once").is_dir(),
        "memory in the old folder"
    );
    assert!(
        !root.path().join("moved").exists(),
        "nothing in the new one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hundreds_of_plans_under_a_low_open_files_limit_all_run_once() {
    let emulator = start_emulator(EmulatorConfig {
        latency: Duration::from_millis(20),
        ..emulator_config()
    })
    .await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    let staging = root.path().join("staging");
    std::fs::create_dir_all(&plans).expect("mkdir");
    std::fs::create_dir_all(&staging).expect("mkdir");
    const PLANS: usize = 300;
    let ids: Vec<String> = (0..PLANS)
        .map(|i| format!("{:032x}", 0xfd000 + i))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        write(
            &staging.join(format!("p{i:03}.yaml")),
            &format!("tasks:\n  - {id}\n"),
        );
    }
    // Both limits at 96: the daemon cannot raise them, and must fit.
    let daemon = daemon_command(root.path(), &emulator, "1000", "16");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 96 && exec \"$0\" \"$@\"")
        .arg(daemon.get_program())
        .args(daemon.get_args())
        .envs(daemon.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .env_remove("DEPLOYD_TOKEN_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let log = capture_stderr(&mut child);
    wait_for(20, "ready", async || logged(&log, "daemon ready")).await;
    for i in 0..PLANS {
        std::fs::rename(
            staging.join(format!("p{i:03}.yaml")),
            plans.join(format!("p{i:03}.yaml")),
        )
        .expect("mv");
    }
    let results_dir = root.path().join("results");
    let done = || {
        (0..PLANS)
            .filter(|i| !results(&results_dir, &format!("p{i:03}")).is_empty())
            .count()
    };
    wait_for(120, "every plan's result", async || done() == PLANS).await;
    kill(&child, "-TERM");
    let _ = child.wait();
    let text = log.lock().map(|t| t.clone()).unwrap_or_default();
    let by_task = records_by_task(&emulator.log());
    for (i, id) in ids.iter().enumerate() {
        let r = results(&results_dir, &format!("p{i:03}"));
        assert_eq!(r.len(), 1, "plan {i}: one result");
        assert_eq!(r[0]["status"], "succeeded", "plan {i}: {}", r[0]);
        assert_eq!(by_task.get(id).map(Vec::len), Some(1), "plan {i}: one call");
    }
    assert!(!text.contains("Too many open files"), "{text}");
    assert!(
        !root
            .path()
            .join("state/runs")
            .read_dir()
            .expect("runs")
            .any(|_| true),
        "every journal finished"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_still_open_for_writing_is_not_read_by_a_reload_rescan() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    std::fs::create_dir_all(&plans).expect("mkdir");
    let mut child = daemon_command(root.path(), &emulator, "100", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = capture_stderr(&mut child);
    wait_for(20, "ready", async || logged(&log, "daemon ready")).await;
    // Half a plan (one task of two), written, and the file left open; then SIGHUP once it
    // has been quiet longer than the settle time.
    let path = plans.join("half.yaml");
    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(format!("tasks:\n  - {T1}\n").as_bytes())
        .expect("write");
    file.flush().expect("flush");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kill(&child, "-HUP");
    // The reload's full scan sees the file and leaves it alone (it says so), then the rest
    // is written.
    wait_for(20, "the reload's scan", async || {
        logged(&log, "half.yaml is still open for writing")
    })
    .await;
    file.write_all(format!("  - {T2}\n").as_bytes())
        .expect("write");
    drop(file);
    let results_dir = root.path().join("results");
    wait_for(20, "the run", async || {
        results(&results_dir, "half").len() == 1
    })
    .await;
    // A second run would come within the debounce of the close.
    write(&plans.join("sentinel.yaml"), &format!("tasks:\n  - {T3}\n"));
    wait_for(20, "sentinel", async || {
        results(&results_dir, "sentinel").len() == 1
    })
    .await;
    kill(&child, "-TERM");
    let _ = child.wait();
    let r = results(&results_dir, "half");
    assert_eq!(r.len(), 1, "one run: {r:?}");
    assert_eq!(r[0]["summary"]["total"], 2, "the whole plan ran: {}", r[0]);
    let by_task = records_by_task(&emulator.log());
    assert_eq!(
        by_task.get(T1).map(Vec::len),
        Some(1),
        "task 1 started once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_edited_just_before_its_fire_loses_no_fire() {
    use chrono::{DurationRound, TimeDelta, Utc};
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    std::fs::create_dir_all(&plans).expect("mkdir");
    let version = |n: i64| {
        format!("# version {n}\nschedule: \"*/2 * * * * *\"\noverlap: allow\ntasks:\n  - {T1}\n")
    };
    write(&plans.join("tick.yaml"), &version(0));
    let mut child = daemon_command(root.path(), &emulator, "100", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = capture_stderr(&mut child);
    wait_for(20, "ready", async || logged(&log, "daemon ready")).await;
    // Every other second, a new version is renamed in about 100 ms (the rescan's debounce)
    // before the fire, a little earlier or later each time: the rescan then comes just before,
    // at or just after the fire time.
    let mut fires = Vec::new();
    for (n, early_ms) in (1..).zip([104i64, 102, 101, 100, 99, 98, 97, 96, 95, 100]) {
        let now = Utc::now();
        let second = now.duration_trunc(TimeDelta::seconds(1)).expect("trunc");
        let mut fire = second + TimeDelta::seconds(1);
        while fire.timestamp() % 2 != 0 || fire - now < TimeDelta::milliseconds(400) {
            fire += TimeDelta::seconds(1);
        }
        let edit_at = fire - TimeDelta::milliseconds(early_ms);
        tokio::time::sleep((edit_at - Utc::now()).to_std().unwrap_or_default()).await;
        let tmp = plans.join(".tick.tmp");
        write(&tmp, &version(n));
        std::fs::rename(&tmp, plans.join("tick.yaml")).expect("mv");
        fires.push(fire);
    }
    let last = *fires.last().expect("fires");
    let results_dir = root.path().join("results");
    let scheduled = || -> Vec<String> {
        results(&results_dir, "tick")
            .iter()
            .filter_map(|r| r["scheduled_for"].as_str().map(str::to_string))
            .collect()
    };
    let want: Vec<String> = fires.iter().map(deployd::results::ts).collect();
    let accounted = |t: &String| scheduled().contains(t) || logged(&log, &format!("fire at {t}"));
    wait_for(20, "every edited-around fire run or logged", async || {
        Utc::now() > last + TimeDelta::seconds(1) && want.iter().all(accounted)
    })
    .await;
    kill(&child, "-TERM");
    let _ = child.wait();
    let ran = scheduled();
    let missing: Vec<&String> = want.iter().filter(|t| !ran.contains(t)).collect();
    assert!(
        missing.is_empty(),
        "fires not run: {missing:?} (ran {ran:?})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_during_crash_recovery_runs_nothing_and_forgets_nothing() {
    let emulator = start_emulator(EmulatorConfig {
        latency: Duration::from_secs(3),
        ..emulator_config()
    })
    .await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    std::fs::create_dir_all(&plans).expect("mkdir");
    write(&root.path().join("config.yaml"), "settle: 10s\n");
    let spawn = || {
        daemon_command(root.path(), &emulator, "100", "4")
            .arg("--config")
            .arg(root.path().join("config.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let mut first = spawn();
    let log1 = capture_stderr(&mut first);
    wait_for(20, "ready", async || logged(&log1, "daemon ready")).await;
    write(
        &root.path().join("staging/a.yaml"),
        &format!("tasks:\n  - {T1}\n"),
    );
    std::fs::rename(root.path().join("staging/a.yaml"), plans.join("a.yaml")).expect("mv");
    let runs = root.path().join("state/runs");
    wait_for(20, "a call in flight", async || {
        std::fs::read_dir(&runs).is_ok_and(|d| {
            d.flatten()
                .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("\"intent\"")))
        })
    })
    .await;
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    write(
        &root.path().join("staging/b.yaml"),
        &format!("tasks:\n  - {T2}\n"),
    );
    std::fs::rename(root.path().join("staging/b.yaml"), plans.join("b.yaml")).expect("mv");
    // Settled long ago, as far as its age tells: the start's scan reads it at once.
    std::fs::File::options()
        .write(true)
        .open(plans.join("b.yaml"))
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(5)))
        .expect("mtime");
    // The restarted daemon looks a's call up (10 s of settle) and is stopped meanwhile.
    let mut second = spawn();
    let log2 = capture_stderr(&mut second);
    wait_for(20, "recovery under way", async || {
        logged(&log2, "runs alive at once")
    })
    .await;
    kill(&second, "-TERM");
    let _ = second.wait();
    assert!(
        !root.path().join("state/once/b").exists(),
        "b was remembered as run without a call:\n{}",
        log2.lock().map(|t| t.clone()).unwrap_or_default()
    );
    // The next start runs b.
    let mut third = spawn();
    let _log3 = capture_stderr(&mut third);
    let results_dir = root.path().join("results");
    wait_for(40, "b runs", async || results(&results_dir, "b").len() == 1).await;
    kill(&third, "-TERM");
    let _ = third.wait();
    assert_eq!(results(&results_dir, "b")[0]["status"], "succeeded");
}
