//! Operating deployd: `deployd status` after real runs, and the completions and man pages
//! that packages install, all through the real binary.

use chrono::Utc;
use deployd::schedule::Schedule;
use serde_json::Value;

use crate::helpers::*;

/// A temporary install: plans, results and state folders.
struct Folders {
    dir: tempfile::TempDir,
}

impl Folders {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("plans")).expect("mkdir");
        Self { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `deployd <command> --plans-dir .. --results-dir .. --state-dir ..`.
    fn with_folders(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = deployd();
        cmd.args(args)
            .arg("--plans-dir")
            .arg(self.path("plans"))
            .arg("--results-dir")
            .arg(self.path("results"))
            .arg("--state-dir")
            .arg(self.path("state"));
        cmd
    }
}

/// The table row of `plan`.
fn row<'a>(table: &'a str, plan: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(plan))
        .unwrap_or_else(|| panic!("no row for {plan} in\n{table}"))
}

const NIGHTLY: &str = "0 30 2 * * *";

#[test]
fn status_after_exec_shows_the_last_run_and_the_next_fire() {
    let f = Folders::new();
    write(&f.path("plans/web.yaml"), &format!("tasks: [{T1}, {T2}]\n"));
    write(
        &f.path("plans/nightly.yaml"),
        &format!("schedule: \"{NIGHTLY}\"\ntimezone: Europe/Berlin\ntasks: [{T3}]\n"),
    );
    write(&f.path("plans/broken.yaml"), "tasks: [not-a-task-id]\n");
    // What the daemon leaves for a file it found invalid.
    write(
        &f.path("results/_invalid/gone.yaml.txt"),
        "plans/gone.yaml:2:3: tasks[0]: task id must be 32 letters and digits\n",
    );

    let mut exec = f.with_folders(&["exec", "--emulator"]);
    exec.arg(f.path("plans/web.yaml"));
    let (code, stdout, stderr) = run_to_end(exec);
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let results = results(&f.path("results"), "web");
    assert_eq!(results.len(), 1);
    let run_id = results[0]["run_id"].as_str().expect("run id").to_string();

    let zone = "Europe/Berlin".parse().expect("zone");
    let schedule = Schedule::parse(NIGHTLY, zone).expect("schedule");
    let before = schedule.next_after(Utc::now()).expect("a fire time");
    let (code, table, stderr) = run_to_end(f.with_folders(&["status"]));
    let after = schedule.next_after(Utc::now()).expect("a fire time");
    assert_eq!(code, Some(0), "{table}\n{stderr}");

    let web = row(&table, "web");
    let cells: Vec<&str> = web.split_whitespace().collect();
    assert_eq!(cells[1], "succeeded", "{web}");
    assert!(web.contains("ago)"), "{web}");
    // started, failed, skipped, then the run id.
    let i = cells
        .iter()
        .position(|c| *c == run_id)
        .expect("run id in the row");
    assert_eq!(cells[i - 3..i], ["2", "0", "0"], "{web}");
    assert!(web.contains("pending"), "{web}");
    let nightly = row(&table, "nightly");
    assert!(nightly.contains("never"), "{nightly}");
    let shown = |t: chrono::DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%SZ").to_string();
    assert!(
        nightly.contains(&shown(before)) || nightly.contains(&shown(after)),
        "{nightly}"
    );
    assert!(table.contains("2 invalid plan files"), "{table}");
    assert!(table.contains("broken.yaml: "), "{table}");
    assert!(table.contains("gone.yaml: plans/gone.yaml:2:3"), "{table}");

    let (code, json, stderr) = run_to_end(f.with_folders(&["status", "--json"]));
    assert_eq!(code, Some(0), "{stderr}");
    let v: Value = serde_json::from_str(&json).expect("JSON");
    let plans = v["plans"].as_array().expect("plans");
    let names: Vec<&str> = plans.iter().filter_map(|p| p["plan"].as_str()).collect();
    assert_eq!(names, ["nightly", "web"]);
    let web = &plans[1];
    assert_eq!(web["last_run"]["run_id"], run_id.as_str());
    assert_eq!(web["last_run"]["status"], "succeeded");
    assert_eq!(web["last_run"]["trigger"], "manual");
    assert_eq!(
        web["last_run"]["summary"],
        serde_json::json!({"total": 2, "started": 2, "failed": 0, "skipped": 0})
    );
    assert_eq!(web["last_run"]["started_at"], results[0]["started_at"]);
    assert_eq!(web["results"], 1);
    assert_eq!(web["next"]["kind"], "pending");
    let next = &plans[0]["next"];
    assert_eq!(next["kind"], "schedule");
    let at = next["at"].as_str().expect("at");
    assert!(
        [before, after]
            .iter()
            .any(|t| deployd::results::ts(t) == at),
        "{at} is neither {before} nor {after}"
    );
    assert_eq!(plans[0]["timezone"], "Europe/Berlin");
    let invalid: Vec<(&str, &str)> = v["invalid"]
        .as_array()
        .expect("invalid")
        .iter()
        .map(|i| {
            (
                i["file"].as_str().expect("file"),
                i["source"].as_str().expect("source"),
            )
        })
        .collect();
    assert_eq!(invalid, [("broken.yaml", "check"), ("gone.yaml", "daemon")]);
    assert_eq!(v["errors"], serde_json::json!([]));
}

#[test]
fn status_works_before_any_run_and_fails_on_unreadable_folders() {
    let f = Folders::new();
    write(&f.path("plans/web.yaml"), &format!("tasks: [{T1}]\n"));
    // The folders come from the config file when no flag is given.
    write(
        &f.path("config.yaml"),
        &format!(
            "plans_dir: {}\nresults_dir: {}\nstate_dir: {}\n",
            f.path("plans").display(),
            f.path("results").display(),
            f.path("state").display()
        ),
    );
    let mut cmd = deployd();
    cmd.arg("status").arg("--config").arg(f.path("config.yaml"));
    let (code, table, stderr) = run_to_end(cmd);
    assert_eq!(code, Some(0), "{table}\n{stderr}");
    assert!(row(&table, "web").contains("never"), "{table}");
    assert!(
        !f.path("results").exists() && !f.path("state").exists(),
        "status creates nothing"
    );

    // A results "folder" that is a file cannot be read: exit 1, and still a table.
    write(&f.path("results"), "not a folder");
    let (code, table, stderr) = run_to_end(f.with_folders(&["status"]));
    assert_eq!(code, Some(1), "{table}\n{stderr}");
    assert!(
        stderr.contains("cannot read the results folder"),
        "{stderr}"
    );
    assert!(row(&table, "web").contains("pending"), "{table}");

    let mut cmd = deployd();
    cmd.args(["status", "--plans-dir"]).arg(f.path("nowhere"));
    let (code, _, stderr) = run_to_end(cmd);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot read the plans folder"), "{stderr}");

    // A bad config is a configuration error, as for the other commands.
    write(&f.path("bad.yaml"), "keep_results: {count: 0}\n");
    let mut cmd = deployd();
    cmd.arg("status").arg("--config").arg(f.path("bad.yaml"));
    let (code, _, stderr) = run_to_end(cmd);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("keep_results"), "{stderr}");
}

const COMMANDS: [&str; 6] = ["run", "check", "exec", "next", "status", "schema"];

#[test]
fn completions_name_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let mut cmd = deployd();
        cmd.args(["generate", "completions", shell]);
        let (code, script, stderr) = run_to_end(cmd);
        assert_eq!(code, Some(0), "{shell}: {stderr}");
        assert!(script.len() > 1000, "{shell}: {script}");
        for c in COMMANDS {
            assert!(script.contains(c), "{shell} completion lacks {c}");
        }
        assert!(
            script.contains("results-dir"),
            "{shell} completion lacks options"
        );
    }
    let out = tempfile::tempdir().expect("tempdir");
    let mut cmd = deployd();
    cmd.args(["generate", "completions", "bash", "--out"])
        .arg(out.path());
    let (code, printed, stderr) = run_to_end(cmd);
    assert_eq!(code, Some(0), "{stderr}");
    let file = out.path().join("deployd.bash");
    assert_eq!(printed.trim(), file.display().to_string());
    assert!(
        std::fs::read_to_string(&file)
            .expect("written")
            .contains("status")
    );
}

#[test]
fn man_pages_cover_every_command() {
    let mut cmd = deployd();
    cmd.args(["generate", "man"]);
    let (code, page, stderr) = run_to_end(cmd);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        page.starts_with(".ie") || page.contains(".TH deployd 1"),
        "{page}"
    );
    for c in COMMANDS {
        assert!(
            page.contains(&format!("deployd\\-{c}(1)")),
            "deployd.1 lacks {c}"
        );
    }

    let out = tempfile::tempdir().expect("tempdir");
    let mut cmd = deployd();
    cmd.args(["generate", "man", "--out"]).arg(out.path());
    let (code, _, stderr) = run_to_end(cmd);
    assert_eq!(code, Some(0), "{stderr}");
    let page = |name: &str| std::fs::read_to_string(out.path().join(name));
    assert!(
        page("deployd.1")
            .expect("deployd.1")
            .contains(".TH deployd 1")
    );
    for c in COMMANDS {
        let text = page(&format!("deployd-{c}.1")).unwrap_or_else(|e| panic!("{c}: {e}"));
        assert!(text.contains(".SH NAME"), "{c}");
    }
    let status = page("deployd-status.1").expect("status page");
    assert!(
        status.contains("\\-\\-json") && status.contains("\\-\\-results\\-dir"),
        "{status}"
    );
    assert!(
        page("deployd-generate.1").is_err(),
        "the hidden command gets no page"
    );
}
