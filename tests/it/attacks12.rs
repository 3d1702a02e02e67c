//! Attacks on the structural refactor (scheduler, store, finish, limited client, settings),
//! through the real binary: each test reproduces a problem found, and passes with its fix
//! (or is ignored, naming the fix, where the code is someone else's to change).

use std::path::Path;
use std::process::Stdio;

use crate::helpers::*;

/// `deployd run` over `root`'s folders with `config` (against the embedded emulator when
/// `emulator`); stderr piped.
fn run_with_config(root: &Path, config: &str, emulator: bool) -> std::process::Command {
    write(&root.join("config.yaml"), config);
    std::fs::create_dir_all(root.join("plans")).expect("mkdir");
    let mut cmd = deployd();
    cmd.arg("run")
        .arg("--config")
        .arg(root.join("config.yaml"))
        .arg("--plans-dir")
        .arg(root.join("plans"))
        .arg("--results-dir")
        .arg(root.join("results"))
        .arg("--state-dir")
        .arg(root.join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if emulator {
        cmd.arg("--emulator");
    }
    cmd
}

/// `ha:` with no value (its settings commented out, a template half filled in) was taken for
/// "no ha": the daemon started as a single host, which on two hosts runs every fire twice.
/// `ha: {}` was refused (no database); an empty `ha:` is refused the same way now, at its
/// line.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_ha_block_is_refused_not_taken_for_a_single_host() {
    for config in [
        "rate: 5\nha:\n#  postgres: postgres://deployd@db/deployd\n",
        "rate: 5\nha: ~\n",
    ] {
        let root = tempfile::tempdir().expect("tempdir");
        let mut child = run_with_config(root.path(), config, true)
            .spawn()
            .expect("spawn");
        let log = capture_stderr(&mut child);
        let status = exit_within(&mut child, 10, "an empty ha: refused at start-up").await;
        let text = log.lock().expect("log").clone();
        assert_eq!(status.code(), Some(78), "{config:?}: {text}");
        assert!(
            text.contains("config.yaml:2:1: ha.postgres: required"),
            "{config:?}: {text}"
        );
    }
}

/// A value given by a flag (or the environment) that is wrong was reported at the line of the
/// config file that holds the same setting, a line that did not count and holds a valid value:
/// `config.yaml:1:1: project_id: must be 32 letters and digits, got 3 characters` for
/// `--project-id bad`. It names the flag (or variable) now, as `--rate` always did.
#[test]
fn a_bad_flag_is_named_as_the_flag_not_placed_at_the_files_valid_line() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let config = format!(
        "project_id: {}\nregion: cn-north-4\n",
        "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    );
    let mut cmd = run_with_config(root, &config, false);
    cmd.args(["--project-id", "bad", "--region", "nowhere"])
        .env("DEPLOYD_TOKEN", TOKEN);
    let (code, _, stderr) = run_to_end(cmd);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("config.yaml: --project-id: must be 32 letters and digits"),
        "{stderr}"
    );
    assert!(
        stderr.contains("config.yaml: --region: unknown region \"nowhere\""),
        "{stderr}"
    );
    assert!(!stderr.contains("config.yaml:1:1"), "{stderr}");
    assert!(!stderr.contains("config.yaml:2:1"), "{stderr}");

    let mut cmd = run_with_config(
        root,
        "endpoint: https://codearts-deploy.cn-north-4.myhuaweicloud.com\n",
        false,
    );
    cmd.args(["--endpoint", "http://example.com"])
        .env("DEPLOYD_TOKEN", TOKEN);
    let (code, _, stderr) = run_to_end(cmd);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("config.yaml: --endpoint: endpoint"),
        "{stderr}"
    );
    assert!(!stderr.contains("config.yaml:1:1"), "{stderr}");

    let mut cmd = run_with_config(root, "rate: 5\n", true);
    cmd.env("CLOUD_SDK_PROJECT_ID", "bad");
    let (code, _, stderr) = run_to_end(cmd);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("config.yaml: CLOUD_SDK_PROJECT_ID: must be 32 letters and digits"),
        "{stderr}"
    );
}

/// A setting the file lacks (`auth.iam.user: required`, `ha.postgres: required`) was reported
/// without a line; it is placed at its block now, so every error of the config file names
/// the file, a line and the field.
#[test]
fn a_missing_setting_is_placed_at_its_block() {
    let root = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) = run_to_end(run_with_config(
        root.path(),
        "rate: 5\nauth:\n  iam:\n    domain: d\n    project_name: p\n    endpoint: https://iam.example.com\nha: {node: a}\n",
        true,
    ));
    assert_eq!(code, Some(78), "{stderr}");
    for needle in [
        "config.yaml:3:3: auth.iam.user: required",
        "config.yaml:3:3: auth.iam.password_file: required",
        "config.yaml:7:1: ha.postgres: required",
    ] {
        assert!(stderr.contains(needle), "{needle} missing in {stderr}");
    }
    assert!(
        !stderr.contains("config.yaml: auth") && !stderr.contains("config.yaml: ha"),
        "{stderr}"
    );
}

/// A result written, then its journal back (the removal of a journal is not made durable: a
/// power loss after a run ended, or a kill between the result's rename and the journal's
/// removal): the next start "recovered" the run and overwrote its true `succeeded` result with
/// an `interrupted` one, after history lookups. A journal whose run's result is written is
/// now closed without touching the result.
#[tokio::test(flavor = "multi_thread")]
async fn a_journal_back_after_its_result_was_written_does_not_overwrite_the_result() {
    let emulator = start_emulator(deployd::emulator::EmulatorConfig {
        latency: std::time::Duration::from_millis(800),
        ..emulator_config()
    })
    .await;
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    std::fs::create_dir_all(root.join("plans")).expect("mkdir");
    let spawn = || {
        daemon_command(root, &emulator, "100", "4")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let mut child = spawn();
    let log = capture_stderr(&mut child);
    wait_for(20, "ready", async || logged(&log, "daemon ready")).await;
    let ids = task_ids(2, 0x12a);
    write(&root.join("staging/p.yaml"), &plan_of("p", &ids, ""));
    std::fs::rename(root.join("staging/p.yaml"), root.join("plans/p.yaml")).expect("mv");
    // The journal's inode, kept by a second name while the run is alive: once the daemon
    // removes the journal, this name holds every line it had, as a journal whose removal
    // never reached the disk does.
    let runs = root.join("state/runs");
    let kept = root.join("state/kept-journal");
    let mut journal = None;
    wait_for(20, "the run's journal", async || {
        journal = std::fs::read_dir(&runs).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        });
        journal.is_some()
    })
    .await;
    let journal = journal.expect("journal");
    std::fs::hard_link(&journal, &kept).expect("link");
    let results_dir = root.join("results");
    wait_for(20, "the run's result", async || {
        results(&results_dir, "p").len() == 1 && !journal.exists()
    })
    .await;
    kill(&child, "-TERM");
    exit_within(&mut child, 20, "the daemon stops").await;
    let before = results(&results_dir, "p");
    assert_eq!(before[0]["status"], "succeeded", "{}", before[0]);

    std::fs::rename(&kept, &journal).expect("the journal is back");
    let mut child = spawn();
    let log = capture_stderr(&mut child);
    wait_for(30, "ready after recovery", async || {
        logged(&log, "daemon ready")
    })
    .await;
    kill(&child, "-TERM");
    exit_within(&mut child, 20, "the daemon stops").await;
    let after = results(&results_dir, "p");
    assert_eq!(after.len(), 1);
    assert_eq!(
        after[0], before[0],
        "the written result is left as it was: {}",
        after[0]
    );
    assert!(!journal.exists(), "the journal is closed");
    assert_eq!(emulator.log().len(), 2, "one call per task, none again");
}

/// SIGHUP with a config that now has `ha:` was accepted ("configuration reloaded") and the
/// daemon went on as a single host, while `deployd run` with the same file refuses to start
/// (exit 78): an operator turning a pair of hosts into a cluster by reloading both gets two
/// single hosts firing every schedule twice, and a log saying the reload worked.
///
/// The reloader now refuses a configuration that turns `ha:` on or off, like a moved
/// `state_dir`: the daemon goes on with its old configuration and says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_adds_ha_is_refused_as_a_start_with_it_is() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    std::fs::create_dir_all(root.join("plans")).expect("mkdir");
    write(&root.join("config.yaml"), "rate: 5\n");
    let mut child = daemon_command(root, &emulator, "100", "4")
        .arg("--config")
        .arg(root.join("config.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = capture_stderr(&mut child);
    wait_for(20, "ready", async || logged(&log, "daemon ready")).await;
    write(
        &root.join("config.yaml"),
        "rate: 5\nha:\n  postgres: postgres://deployd@127.0.0.1:5432/deployd?sslmode=disable\n",
    );
    kill(&child, "-HUP");
    wait_for(20, "the reload is answered", async || {
        logged(&log, "configuration reloaded") || logged(&log, "keeping the old")
    })
    .await;
    kill(&child, "-TERM");
    exit_within(&mut child, 20, "the daemon stops").await;
    let text = log.lock().expect("log").clone();
    assert!(
        !text.contains("configuration reloaded"),
        "a reload into a cluster config is not accepted by a single host: {text}"
    );
    assert!(text.contains("ha"), "{text}");
}

/// The fire times `plan`'s log lines say did not run: `fire=...` of a skipped or dropped
/// fire, `scheduled_for="..."` of a fire not started at shutdown, a missed one's time.
fn not_run_fires(text: &str, plan: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.ends_with(&format!("plan={plan}")) || l.contains(&format!("plan={plan} ")))
        .filter_map(|l| {
            let key = if l.contains("fire skipped") || l.contains("fire dropped") {
                "fire="
            } else if l.contains("not started") {
                "scheduled_for="
            } else if l.contains("missed the fire at ") {
                "missed the fire at "
            } else {
                return None;
            };
            let rest = l[l.find(key)? + key.len()..].trim_start_matches('"');
            Some(rest.get(..24)?.to_string())
        })
        .collect()
}

/// A fire skipped for overlap (`overlap: skip`) or dropped (`overlap: queue`, one already
/// waiting) was logged without its fire time ("fire skipped: the previous run is still
/// going"): with a plan firing every second, the log could not say which fire times did not
/// run. Each line names its fire time now, and every fire time of the plan is accounted for:
/// a result's `scheduled_for`, or a log line naming it.
#[tokio::test(flavor = "multi_thread")]
async fn every_fire_time_is_accounted_for_by_a_result_or_a_line_naming_it() {
    let emulator = start_emulator(deployd::emulator::EmulatorConfig {
        latency: std::time::Duration::from_millis(1300),
        ..emulator_config()
    })
    .await;
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    std::fs::create_dir_all(root.join("plans")).expect("mkdir");
    let mut child = daemon_command(root, &emulator, "100", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = capture_stderr(&mut child);
    wait_for(20, "ready", async || logged(&log, "daemon ready")).await;
    for (name, overlap, salt) in [("skip", "skip", 0x12b), ("queue", "queue", 0x12c)] {
        let extra = format!("schedule: \"* * * * * *\"\noverlap: {overlap}\n");
        write(
            &root.join(format!("staging/{name}.yaml")),
            &plan_of(name, &task_ids(1, salt), &extra),
        );
        std::fs::rename(
            root.join(format!("staging/{name}.yaml")),
            root.join(format!("plans/{name}.yaml")),
        )
        .expect("mv");
    }
    let results_dir = root.join("results");
    wait_for(30, "runs and skipped fires of both plans", async || {
        results(&results_dir, "skip").len() >= 2
            && results(&results_dir, "queue").len() >= 2
            && logged(&log, "fire skipped")
            && logged(&log, "fire dropped")
    })
    .await;
    kill(&child, "-TERM");
    exit_within(&mut child, 30, "the daemon stops").await;
    let text = log.lock().expect("log").clone();
    for plan in ["skip", "queue"] {
        let ran = scheduled_for(&results_dir, plan);
        let not_run = not_run_fires(&text, plan);
        assert!(
            !not_run.is_empty(),
            "{plan}: its skipped fires name their time: {text}"
        );
        for t in &not_run {
            assert!(!ran.contains(t), "{plan}: {t} both ran and was skipped");
        }
        let mut all: Vec<chrono::DateTime<chrono::Utc>> = ran
            .iter()
            .chain(&not_run)
            .map(|t| t.parse().expect("a fire time"))
            .collect();
        all.sort();
        all.dedup();
        let (first, last) = (all[0], all[all.len() - 1]);
        let seconds = (last - first).num_seconds() + 1;
        assert_eq!(
            all.len() as i64,
            seconds,
            "{plan}: every fire time from {first} to {last} ran or is named in the log: ran {ran:?}, not run {not_run:?}"
        );
    }
}
