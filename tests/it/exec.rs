//! `deployd exec` end to end: the real binary against the emulator.

use std::collections::HashSet;

use deployd::emulator::EmulatorConfig;

use crate::helpers::*;

/// A plan with plan-level params, a task override, a secret from the environment, and a
/// retry block fast enough for tests.
fn plan_text() -> String {
    format!(
        r#"name: web
trigger_source: 0
params:
  - {{key: env, value: e3144513a4094398857c992606ccba12, type: host_group}}
  - {{key: version, value: "1.0"}}
retry: {{max_attempts: 20, base: 1ms, cap: 5ms, deadline: 1m}}
tasks:
  - {T1}
  - task_id: {T2}
    params:
      - {{key: version, value: 1.10}}
      - {{key: note, value: "h\u00e9llo"}}
      - {{key: db_password, value_from: {{env: IT_DB_PASSWORD}}, type: encrypt}}
  - task_id: {T3}
    record_id: {T4}
"#
    )
}

struct Setup {
    dir: tempfile::TempDir,
    emulator: deployd::emulator::Emulator,
}

impl Setup {
    async fn new(config: EmulatorConfig, plan: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        write(&dir.path().join("web.yaml"), plan);
        let emulator = start_emulator(config).await;
        Self { dir, emulator }
    }

    fn results_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("results")
    }

    fn exec(&self, extra: &[&str]) -> std::process::Command {
        let mut cmd = deployd();
        cmd.arg("exec")
            .arg(self.dir.path().join("web.yaml"))
            .arg("--endpoint")
            .arg(self.emulator.base_url())
            .arg("--results-dir")
            .arg(self.results_dir())
            .args(["--rate", "1000", "--burst", "10", "--concurrency", "8"])
            .args(extra)
            .env("DEPLOYD_TOKEN", TOKEN)
            .env("IT_DB_PASSWORD", "s3cr3t-Pa55");
        cmd
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn result_file_matches_the_emulator_and_the_wire_bytes_match_the_sdk() {
    let s = Setup::new(emulator_config(), &plan_text()).await;
    let out = output(s.exec(&[])).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains("succeeded (3 started, 0 failed, 0 skipped of 3)"),
        "{stdout}"
    );

    let results = results(&s.results_dir(), "web");
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["trigger"], "manual");
    assert_eq!(
        r["summary"],
        serde_json::json!({"total": 3, "started": 3, "failed": 0, "skipped": 0})
    );
    let log = s.emulator.log();
    let by_task = records_by_task(&log);
    for t in [T1, T2, T3] {
        let entry = task(r, t);
        assert_eq!(entry["status"], "started");
        assert_eq!(entry["attempts"], 1);
        assert_eq!(entry["http_status"], 200);
        assert_eq!(
            by_task[t],
            vec![entry["record_id"].as_str().expect("record id").to_string()],
            "task {t}"
        );
        let logged = log.iter().find(|l| l.task_id == t).expect("logged");
        assert_eq!(entry["request_id"], logged.request_id.as_str());
    }

    // The exact bytes the vendor's SDK would send.
    let body = |t: &str| {
        log.iter()
            .find(|l| l.task_id == t)
            .expect("logged")
            .body
            .clone()
    };
    assert_eq!(
        body(T1),
        r#"{"params": [{"key": "env", "value": "e3144513a4094398857c992606ccba12", "type": "host_group"}, {"key": "version", "value": "1.0", "type": "text"}], "trigger_source": "0"}"#
    );
    assert_eq!(
        body(T2),
        r#"{"params": [{"key": "env", "value": "e3144513a4094398857c992606ccba12", "type": "host_group"}, {"key": "version", "value": "1.10", "type": "text"}, {"key": "note", "value": "h\u00e9llo", "type": "text"}, {"key": "db_password", "value": "s3cr3t-Pa55", "type": "encrypt"}], "trigger_source": "0"}"#
    );
    assert!(body(T3).contains(&format!(r#""record_id": "{T4}""#)));

    // The secret is sent, but never written nor printed.
    let t2 = task(r, T2);
    let secret_param = t2["params"]
        .as_array()
        .expect("params")
        .iter()
        .find(|p| p["key"] == "db_password")
        .expect("param");
    assert_eq!(secret_param["value"], "***");
    let file_text = serde_json::to_string(r).expect("json");
    assert!(!file_text.contains("s3cr3t-Pa55"));
    assert!(!stdout.contains("s3cr3t-Pa55") && !stderr.contains("s3cr3t-Pa55"));
    assert!(
        !stderr.contains(TOKEN) && !stdout.contains(TOKEN),
        "the token leaked into the output"
    );

    // Result file mode and the contract's timestamp shape.
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::read_dir(s.results_dir().join("web"))
        .expect("ls")
        .next()
        .expect("one")
        .expect("entry")
        .path();
    assert_eq!(
        std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777,
        0o640
    );
    let started = r["started_at"].as_str().expect("time");
    assert!(
        started.ends_with('Z') && started.len() == "2026-11-28T01:30:00.012Z".len(),
        "{started}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_plan_makes_no_call_and_writes_no_result() {
    let bad = plan_text().replace(T3, "not-a-task-id");
    let s = Setup::new(emulator_config(), &bad).await;
    let out = output(s.exec(&[])).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("web.yaml:14:"),
        "the error names file and line: {stderr}"
    );
    assert!(stderr.contains("tasks[2].task_id"), "{stderr}");
    assert_eq!(s.emulator.stats().total, 0, "no request at all");
    assert!(!s.results_dir().exists() || results(&s.results_dir(), "web").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_environment_variable_fails_that_task_without_a_call() {
    let s = Setup::new(emulator_config(), &plan_text()).await;
    let mut cmd = s.exec(&[]);
    cmd.env_remove("IT_DB_PASSWORD");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(1));
    let r = &results(&s.results_dir(), "web")[0];
    assert_eq!(r["status"], "partial");
    let t2 = task(r, T2);
    assert_eq!(t2["status"], "failed");
    assert_eq!(t2["attempts"], 0);
    assert_eq!(t2["error_code"], "param_unresolved");
    assert!(
        t2["error_msg"]
            .as_str()
            .expect("msg")
            .contains("IT_DB_PASSWORD")
    );
    assert!(
        s.emulator.log().iter().all(|l| l.task_id != T2),
        "no call for the failed task"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_are_retried_to_success_and_never_double_deploy() {
    let config = EmulatorConfig {
        error_rate: 0.4,
        ..emulator_config()
    };
    let s = Setup::new(config, &plan_text()).await;
    let project = s.emulator.config().project_id.clone();
    write(&s.dir.path().join("config.yaml"), "settle: 1s\n");
    let out = output(s.exec(&[
        "--project-id",
        &project,
        "--config",
        s.dir.path().join("config.yaml").to_str().expect("utf8"),
    ]))
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = &results(&s.results_dir(), "web")[0];
    let stats = s.emulator.stats();
    assert!(
        stats.status(503) + stats.status(500) > 0,
        "faults were injected: {stats:?}"
    );
    let attempts: u64 = [T1, T2, T3]
        .iter()
        .map(|t| task(r, t)["attempts"].as_u64().expect("n"))
        .sum();
    assert!(attempts > 3, "some task needed more than one attempt");
    // Exactly one record per task, and it is the one in the result.
    let by_task = records_by_task(&s.emulator.log());
    for t in [T1, T2, T3] {
        assert_eq!(
            by_task[t],
            vec![task(r, t)["record_id"].as_str().expect("id").to_string()]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_400_and_an_unknown_task_are_final() {
    let config = EmulatorConfig {
        rejected_task_ids: HashSet::from([T1.to_string()]),
        unknown_task_ids: HashSet::from([T2.to_string()]),
        ..emulator_config()
    };
    let s = Setup::new(config, &plan_text()).await;
    let out = output(s.exec(&[])).await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Deploy.00011020"),
        "the summary names the error: {stdout}"
    );
    let r = &results(&s.results_dir(), "web")[0];
    assert_eq!(r["status"], "partial");
    let t1 = task(r, T1);
    assert_eq!(
        (
            t1["status"].as_str(),
            t1["http_status"].as_u64(),
            t1["attempts"].as_u64()
        ),
        (Some("failed"), Some(400), Some(1))
    );
    assert!(
        t1["error_code"]
            .as_str()
            .expect("code")
            .starts_with("Deploy.")
    );
    let t2 = task(r, T2);
    assert_eq!(
        (
            t2["status"].as_str(),
            t2["http_status"].as_u64(),
            t2["attempts"].as_u64()
        ),
        (Some("failed"), Some(404), Some(1))
    );
    assert_eq!(t2["error_code"], "Deploy.00011020");
    assert!(t2["request_id"].is_string());
    assert_eq!(task(r, T3)["status"], "started");
    assert_eq!(s.emulator.stats().total, 3, "no retry of a final answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_is_found_in_the_history_not_sent_again() {
    let config = EmulatorConfig {
        drop_after_rate: 1.0,
        ..emulator_config()
    };
    let s = Setup::new(config, &plan_text()).await;
    let project = s.emulator.config().project_id.clone();
    let out = output(s.exec(&["--project-id", &project])).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = &results(&s.results_dir(), "web")[0];
    let by_task = records_by_task(&s.emulator.log());
    for t in [T1, T2, T3] {
        let entry = task(r, t);
        assert_eq!(entry["status"], "started");
        assert_eq!(entry["reconciled"], true);
        assert_eq!(entry["attempts"], 1);
        assert_eq!(
            by_task[t],
            vec![entry["record_id"].as_str().expect("id").to_string()],
            "one record, adopted"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_project_id_an_unknown_outcome_fails_instead_of_resending() {
    let config = EmulatorConfig {
        drop_after_rate: 1.0,
        ..emulator_config()
    };
    let s = Setup::new(config, &plan_text()).await;
    let out = output(s.exec(&[])).await;
    assert_eq!(out.status.code(), Some(1));
    let r = &results(&s.results_dir(), "web")[0];
    for t in [T1, T2, T3] {
        let entry = task(r, t);
        assert_eq!(entry["status"], "failed");
        assert_eq!(entry["attempts"], 1);
        assert!(
            entry["error_msg"]
                .as_str()
                .expect("msg")
                .contains("unknown_outcome: fail"),
            "{entry}"
        );
    }
    assert_eq!(s.emulator.log().len(), 3, "each call was sent once");
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_exit_2_and_missing_credentials_exit_78() {
    let s = Setup::new(emulator_config(), &plan_text()).await;
    let out = output({
        let mut c = deployd();
        c.args(["exec"]);
        c
    })
    .await;
    assert_eq!(out.status.code(), Some(2));
    let mut cmd = s.exec(&[]);
    cmd.env_remove("DEPLOYD_TOKEN");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEPLOYD_TOKEN"));
    assert_eq!(s.emulator.stats().total, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn followed_deployments_report_their_final_state() {
    let config = EmulatorConfig {
        deploy_duration: std::time::Duration::from_millis(500),
        failing_task_ids: HashSet::from([T2.to_string()]),
        ..emulator_config()
    };
    let plan = format!("name: web\nfollow: true\nfollow_timeout: 1m\ntasks:\n  - {T1}\n  - {T2}\n");
    let s = Setup::new(config, &plan).await;
    let out = output(s.exec(&[])).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = &results(&s.results_dir(), "web")[0];
    assert_eq!(task(r, T1)["final_state"], "succeeded");
    assert_eq!(task(r, T2)["final_state"], "failed");
    assert!(task(r, T1)["duration_secs"].as_f64().expect("duration") > 0.0);
    let stats = s.emulator.stats();
    assert!(stats.total > 2, "the state endpoint was polled: {stats:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_results_prunes_old_result_files_of_that_plan_only() {
    let s = Setup::new(emulator_config(), &format!("name: web\ntasks: [{T1}]\n")).await;
    write(
        &s.dir.path().join("config.yaml"),
        "keep_results: {count: 2}\n",
    );
    // Another plan's old results must survive.
    let other = s
        .results_dir()
        .join("other")
        .join("20200101T000000Z-00000000.json");
    write(&other, "{}");
    let config = s.dir.path().join("config.yaml");
    let mut run_ids = Vec::new();
    for _ in 0..3 {
        let out = output(s.exec(&["--config", config.to_str().expect("utf8")])).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        run_ids.push(
            stdout
                .split("run ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .expect("run id")
                .to_string(),
        );
    }
    let kept: Vec<String> = results(&s.results_dir(), "web")
        .iter()
        .map(|r| r["run_id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(kept, run_ids[1..].to_vec(), "the two newest are kept");
    assert!(other.exists(), "another plan's files are untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_cannot_read_deployds_own_token_file() {
    let dir_plan = format!(
        "name: web\ntasks:\n  - task_id: {T1}\n    params: [{{key: leak, value_from: {{file: token}}}}]\n  - task_id: {T2}\n    params: [{{key: note, value_from: {{file: note.txt}}}}]\n"
    );
    let s = Setup::new(emulator_config(), &dir_plan).await;
    write(&s.dir.path().join("token"), TOKEN);
    write(&s.dir.path().join("note.txt"), " spaced note \n");
    let token_path = s.dir.path().join("token");
    write(
        &s.dir.path().join("config.yaml"),
        &format!("auth: {{token_file: {}}}\n", token_path.display()),
    );
    let mut cmd = s.exec(&[
        "--config",
        s.dir.path().join("config.yaml").to_str().expect("utf8"),
    ]);
    cmd.env_remove("DEPLOYD_TOKEN");
    let out = output(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = &results(&s.results_dir(), "web")[0];
    let t1 = task(r, T1);
    assert_eq!(t1["status"], "failed");
    assert_eq!(t1["error_code"], "param_unresolved");
    assert!(
        t1["error_msg"]
            .as_str()
            .expect("msg")
            .contains("credentials")
    );
    assert_eq!(
        task(r, T2)["status"],
        "started",
        "the token file still authenticates"
    );
    assert!(!serde_json::to_string(r).expect("json").contains(TOKEN));
    assert!(s.emulator.log().iter().all(|l| !l.body.contains(TOKEN)));
    // An ordinary file is read, relative to the plan, with only its line ending dropped.
    let t2 = s
        .emulator
        .log()
        .into_iter()
        .find(|l| l.task_id == T2)
        .expect("T2 called");
    assert!(
        t2.body
            .contains(r#"{"key": "note", "value": " spaced note ", "type": "text"}"#),
        "{}",
        t2.body
    );
}
