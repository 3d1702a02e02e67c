//! `deployd status [--json]`: each plan's last run and next fire, read from the results, state
//! and plans folders. Read-only: it creates, changes and removes nothing, so an operator can
//! run it beside the daemon (as a member of the group that may read its folders).
//!
//! Where each column comes from: the last run is the newest in the store's index of results
//! (the state folder's is the results folder: `RESULTS/<plan>/<run id>.json`); the next fire
//! of a scheduled plan is computed from the plan file by the daemon's own loader and schedule
//! code; whether a run-once plan's current content already ran is the store's run-once
//! memory; invalid plan files are the daemon's `RESULTS/_invalid/*.txt` reports plus whatever
//! the loader finds wrong now.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::{Exit, process_env};
use crate::cli::StatusArgs;
use crate::plan::Plan;
use crate::plan::load::check_paths;
use crate::results::ts;
use crate::settings::Settings;
use crate::store::Store;
use crate::store::folder::FolderStore;
pub use crate::store::{Counts, LastRun};

/// Everything `deployd status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// When this report was made (RFC 3339 UTC).
    pub generated_at: String,
    /// The plans folder read.
    pub plans_dir: PathBuf,
    /// The results folder read.
    pub results_dir: PathBuf,
    /// The state folder read.
    pub state_dir: PathBuf,
    /// One entry per plan (loaded now, or with results), sorted by name.
    pub plans: Vec<PlanStatus>,
    /// Plan files that do not load, sorted by file name.
    pub invalid: Vec<InvalidFile>,
    /// Folders or files that could not be read (the exit status is then 1).
    pub errors: Vec<String>,
    /// The cluster, when `ha:` is set: nodes, lead, plans that differ (runs come from its
    /// database then, not from this host's folders).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::ha::status::ClusterStatus>,
}

/// One plan's line.
#[derive(Debug, Clone, Serialize)]
pub struct PlanStatus {
    /// Plan name.
    pub plan: String,
    /// The plan file it loads from now; `None` when only results exist (the file was deleted
    /// or is invalid: the daemon may still run its last valid version).
    pub file: Option<String>,
    /// Cron expression, if scheduled.
    pub schedule: Option<String>,
    /// Zone of the schedule, if scheduled.
    pub timezone: Option<String>,
    /// The newest result file, if any.
    pub last_run: Option<LastRun>,
    /// Why the newest result file could not be read.
    pub last_run_error: Option<String>,
    /// Result files kept for this plan.
    pub results: usize,
    /// When it runs next.
    pub next: Next,
}

/// When a plan runs next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Next {
    /// A scheduled plan's next fire time.
    Schedule {
        /// The fire time (RFC 3339 UTC).
        at: String,
    },
    /// A schedule with no fire time within the search horizon.
    NoFireTime,
    /// `enabled: false`.
    Disabled,
    /// A run-once plan whose current content has not run: the daemon runs it when it sees it.
    Pending,
    /// A run-once plan whose current content already ran; it runs again when it changes.
    OnChange {
        /// The run that ran this content.
        run_id: String,
    },
    /// No valid plan file for this name now.
    NotLoaded,
}

/// A plan file that does not load.
#[derive(Debug, Clone, Serialize)]
pub struct InvalidFile {
    /// File name in the plans folder.
    pub file: String,
    /// `daemon` (its `RESULTS/_invalid` report) or `check` (found now by the loader).
    pub source: &'static str,
    /// The problems, one per line, as `deployd check` prints them.
    pub issues: String,
}

/// Runs `deployd status`.
pub async fn status(args: &StatusArgs) -> Exit {
    let settings = match Settings::load(
        args.folders.config.as_deref(),
        &args.folders.overrides(),
        &process_env,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("deployd: bad configuration:\n{e}");
            return Exit::Config;
        }
    };
    let report = match &settings.ha {
        None => {
            gather(
                &settings.plans_dir,
                &settings.results_dir,
                &settings.state_dir,
                Utc::now(),
            )
            .await
        }
        Some(ha) => match gather_cluster(&settings, ha).await {
            Ok(report) => report,
            Err(e) => {
                eprintln!("deployd: the cluster's database: {e}");
                return Exit::Failed;
            }
        },
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("deployd: cannot render the status: {e}");
                return Exit::Failed;
            }
        }
    } else {
        print!("{}", render_table(&report, Utc::now()));
    }
    for e in &report.errors {
        eprintln!("deployd: {e}");
    }
    if report.errors.is_empty() {
        Exit::Ok
    } else {
        Exit::Failed
    }
}

/// A cluster node's status: the cluster from its database, the runs from its store, the plans
/// from this host's folder.
async fn gather_cluster(
    settings: &Settings,
    ha: &crate::ha::config::HaSettings,
) -> Result<StatusReport, String> {
    use crate::ha::store::{Connection, Fence, PgStore};
    let password = match &ha.password_file {
        Some(f) => Some(
            crate::api::credentials::read_secret_file(f)
                .map_err(|e| format!("ha.password_file: {e}"))?,
        ),
        None => None,
    };
    let conn = std::sync::Arc::new(Connection::new(
        ha.database.clone(),
        password,
        "deployd status",
    ));
    let cluster = conn
        .within(async {
            let client = conn.client().await.map_err(|e| e.to_string())?;
            crate::ha::status::read(&client, ha.database.to_string()).await
        })
        .await
        .unwrap_or_else(|| Err("the database did not answer within 10 s".into()))?;
    // A store that never leads: it reads, and claims nothing.
    let store = PgStore::open(conn, std::sync::Arc::new(Fence::new("status")))
        .await
        .map_err(|e| e.to_string())?;
    let mut report = gather_from(
        &store,
        &settings.plans_dir,
        &settings.results_dir,
        &settings.state_dir,
        Utc::now(),
    )
    .await;
    report.cluster = Some(cluster);
    Ok(report)
}

/// Reads the three folders (the state and results folders through the state folder's store,
/// which creates nothing). Missing results and state folders mean nothing ran yet; a missing
/// or unreadable plans folder, and any folder that exists but cannot be read, is an error.
pub async fn gather(
    plans_dir: &Path,
    results_dir: &Path,
    state_dir: &Path,
    now: DateTime<Utc>,
) -> StatusReport {
    let store = FolderStore::at(state_dir).with_results(results_dir);
    gather_from(&store, plans_dir, results_dir, state_dir, now).await
}

/// [`gather`] with the runs and the run-once memory read from `store`.
async fn gather_from(
    store: &dyn Store,
    plans_dir: &Path,
    results_dir: &Path,
    state_dir: &Path,
    now: DateTime<Utc>,
) -> StatusReport {
    let mut errors = Vec::new();

    // Plans loaded now, by name.
    let mut loaded: BTreeMap<String, Plan> = BTreeMap::new();
    let mut check_issues: BTreeMap<String, Vec<String>> = BTreeMap::new();
    match std::fs::read_dir(plans_dir) {
        Err(e) => errors.push(format!(
            "cannot read the plans folder {}: {e}",
            plans_dir.display()
        )),
        Ok(_) => {
            let report = check_paths(&[plans_dir.to_path_buf()]);
            for issue in &report.issues {
                let file = issue
                    .file
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                check_issues
                    .entry(file)
                    .or_default()
                    .push(issue.to_string());
            }
            for l in report.plans {
                loaded.insert(l.plan.name.clone(), l.plan);
            }
        }
    }

    // Plans with results, by name.
    let with_results = store.plans_with_results().await.unwrap_or_else(|e| {
        errors.push(e.to_string());
        Vec::new()
    });

    let names: BTreeSet<String> = loaded.keys().cloned().chain(with_results).collect();
    let mut plans = Vec::with_capacity(names.len());
    for name in names {
        plans.push(plan_status(store, &name, loaded.get(&name), now, &mut errors).await);
    }

    let invalid = invalid_files(results_dir, check_issues, &mut errors);
    StatusReport {
        generated_at: ts(&now),
        plans_dir: plans_dir.to_path_buf(),
        results_dir: results_dir.to_path_buf(),
        state_dir: state_dir.to_path_buf(),
        plans,
        invalid,
        errors,
        cluster: None,
    }
}

async fn plan_status(
    store: &dyn Store,
    name: &str,
    plan: Option<&Plan>,
    now: DateTime<Utc>,
    errors: &mut Vec<String>,
) -> PlanStatus {
    let runs = store.plan_runs(name).await.unwrap_or_else(|e| {
        errors.push(e.to_string());
        crate::store::PlanRuns::default()
    });
    let (last_run, last_run_error) = match runs.last {
        None => (None, None),
        Some(Ok(run)) => (Some(run), None),
        Some(Err(e)) => (None, Some(e)),
    };
    let next = match plan {
        None => Next::NotLoaded,
        Some(p) if !p.enabled => Next::Disabled,
        Some(p) => match &p.schedule {
            Some(s) => match s.next_after(now) {
                Some(t) => Next::Schedule { at: ts(&t) },
                None => Next::NoFireTime,
            },
            None => match store.ran_once(name, &p.sha256).await {
                Ok(Some(run_id)) => Next::OnChange {
                    run_id: run_id.to_string(),
                },
                Ok(None) => Next::Pending,
                Err(e) => {
                    errors.push(e.to_string());
                    Next::Pending
                }
            },
        },
    };
    PlanStatus {
        plan: name.to_string(),
        file: plan.map(|p| p.file_name.clone()),
        schedule: plan.and_then(|p| p.schedule.as_ref().map(|s| s.expr().to_string())),
        timezone: plan.and_then(|p| p.schedule.as_ref().map(|s| s.timezone().to_string())),
        last_run,
        last_run_error,
        results: runs.count,
        next,
    }
}

/// The daemon's `RESULTS/_invalid/<file>.txt` reports, then the files the loader refuses now
/// that have no such report.
fn invalid_files(
    results_dir: &Path,
    mut check_issues: BTreeMap<String, Vec<String>>,
    errors: &mut Vec<String>,
) -> Vec<InvalidFile> {
    let dir = results_dir.join(crate::results::INVALID_DIR);
    let mut found = BTreeMap::new();
    match std::fs::read_dir(&dir) {
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {}
        Err(e) => errors.push(format!("cannot read {}: {e}", dir.display())),
        Ok(entries) => {
            for entry in entries.flatten() {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                let Some(file) = name.strip_suffix(".txt") else {
                    continue;
                };
                if file.is_empty() || name.starts_with('.') {
                    continue;
                }
                match std::fs::read_to_string(entry.path()) {
                    Ok(text) => {
                        check_issues.remove(file);
                        found.insert(
                            file.to_string(),
                            InvalidFile {
                                file: file.to_string(),
                                source: "daemon",
                                issues: text.trim_end().to_string(),
                            },
                        );
                    }
                    Err(e) => errors.push(format!("cannot read {}: {e}", entry.path().display())),
                }
            }
        }
    }
    for (file, issues) in check_issues {
        found.insert(
            file.clone(),
            InvalidFile {
                file,
                source: "check",
                issues: issues.join("\n"),
            },
        );
    }
    found.into_values().collect()
}

/// The table `deployd status` prints.
pub fn render_table(report: &StatusReport, now: DateTime<Utc>) -> String {
    let mut out = report
        .cluster
        .as_ref()
        .map_or_else(String::new, render_cluster);
    out.push_str(&render_plans(report, now));
    out
}

/// The cluster's lines: the lead, the nodes, the plans that differ.
fn render_cluster(c: &crate::ha::status::ClusterStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = match &c.lead {
        Some(l) if l.expires_in_secs > 0.0 => writeln!(
            out,
            "cluster {}: leader {} (epoch {}, lease {:.1} s left)",
            c.database, l.holder, l.epoch, l.expires_in_secs
        ),
        Some(l) => writeln!(
            out,
            "cluster {}: NO LEADER (the lease of {} expired {:.0} s ago)",
            c.database, l.holder, -l.expires_in_secs
        ),
        None => writeln!(out, "cluster {}: no node has led yet", c.database),
    };
    for n in &c.nodes {
        let _ = writeln!(
            out,
            "  node {}: deployd {}, heartbeat {:.0} s ago, {} plans",
            n.node, n.version, n.heartbeat_age_secs, n.plans
        );
    }
    for d in &c.divergent {
        let versions: Vec<String> = d
            .content
            .iter()
            .map(|(node, sha)| format!("{node} {}", &sha[..sha.len().min(12)]))
            .collect();
        let _ = writeln!(
            out,
            "  plan {} differs between nodes: {}",
            d.plan,
            versions.join(", ")
        );
    }
    out.push('\n');
    out
}

fn render_plans(report: &StatusReport, now: DateTime<Utc>) -> String {
    let mut rows: Vec<[String; 8]> = vec![[
        "PLAN".into(),
        "LAST RUN".into(),
        "WHEN".into(),
        "STARTED".into(),
        "FAILED".into(),
        "SKIPPED".into(),
        "RUN ID".into(),
        "NEXT".into(),
    ]];
    for p in &report.plans {
        let next = match &p.next {
            Next::Schedule { at } => DateTime::parse_from_rfc3339(at)
                .map_or_else(|_| at.clone(), |t| when(t.to_utc(), now)),
            Next::NoFireTime => "no fire time within 5 years".into(),
            Next::Disabled => "disabled".into(),
            Next::Pending => "pending (run-once, not run yet)".into(),
            Next::OnChange { .. } => "when changed (run-once, ran)".into(),
            Next::NotLoaded => "not loaded (no valid plan file)".into(),
        };
        let row = match (&p.last_run, &p.last_run_error) {
            (Some(r), _) => [
                p.plan.clone(),
                r.status.clone(),
                when(r.started_at, now),
                r.summary.started.to_string(),
                r.summary.failed.to_string(),
                r.summary.skipped.to_string(),
                r.run_id.clone(),
                next,
            ],
            (None, Some(_)) => [
                p.plan.clone(),
                "unreadable".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                next,
            ],
            (None, None) => [
                p.plan.clone(),
                "never".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                next,
            ],
        };
        rows.push(row);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if report.plans.is_empty() {
        out.push_str("(no plans and no results yet)\n");
    }
    for p in &report.plans {
        if let Some(e) = &p.last_run_error {
            out.push_str(&format!("{}: newest result unreadable: {e}\n", p.plan));
        }
    }
    if !report.invalid.is_empty() {
        out.push_str(&format!(
            "\n{} invalid plan file{} (not run; `deployd check {}` shows every error):\n",
            report.invalid.len(),
            if report.invalid.len() == 1 { "" } else { "s" },
            report.plans_dir.display()
        ));
        for f in &report.invalid {
            let mut lines = f.issues.lines();
            let first = lines.next().unwrap_or_default();
            let more = lines.count();
            let more = if more == 0 {
                String::new()
            } else {
                format!(" (+{more} more)")
            };
            out.push_str(&format!("  {}: {first}{more}\n", f.file));
        }
    }
    out
}

/// `2026-11-28 01:30:00Z (3h ago)` / `(in 16h)`.
fn when(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let delta = t - now;
    let rel = if delta >= TimeDelta::zero() {
        format!("in {}", span(delta))
    } else {
        format!("{} ago", span(-delta))
    };
    format!("{} ({rel})", t.format("%Y-%m-%d %H:%M:%SZ"))
}

/// A rough span: `45s`, `12m`, `5h`, `3d`.
fn span(d: TimeDelta) -> String {
    let s = d.num_seconds();
    match s {
        ..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    fn result_json(run_id: &str, status: &str, started: usize, failed: usize) -> String {
        format!(
            r#"{{"plan": "web", "plan_file": "web.yaml", "plan_sha256": "x", "run_id": "{run_id}",
               "trigger": "manual", "scheduled_for": null,
               "started_at": "2026-05-01T08:00:00.012Z", "finished_at": "2026-05-01T08:00:02.480Z",
               "status": "{status}",
               "summary": {{"total": {}, "started": {started}, "failed": {failed}, "skipped": 0}},
               "tasks": []}}"#,
            started + failed
        )
    }

    const T1: &str = "d2dc947ec2424d8789bb3984bb3adf45";

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-05-01T09:00:00Z")
            .expect("time")
            .to_utc()
    }

    #[test]
    fn spans_and_times() {
        assert_eq!(span(TimeDelta::seconds(45)), "45s");
        assert_eq!(span(TimeDelta::minutes(12)), "12m");
        assert_eq!(span(TimeDelta::hours(5)), "5h");
        assert_eq!(span(TimeDelta::days(3)), "3d");
        let t = now() - TimeDelta::hours(3);
        assert_eq!(when(t, now()), "2026-05-01 06:00:00Z (3h ago)");
        assert_eq!(
            when(now() + TimeDelta::minutes(5), now()),
            "2026-05-01 09:05:00Z (in 5m)"
        );
    }

    #[tokio::test]
    async fn every_source_is_shown() {
        let root = tempfile::tempdir().expect("tempdir");
        let (plans, results, state) = (
            root.path().join("plans"),
            root.path().join("results"),
            root.path().join("state"),
        );
        write(&plans.join("web.yaml"), &format!("tasks: [{T1}]\n"));
        write(
            &plans.join("nightly.yaml"),
            &format!("schedule: \"0 30 2 * * *\"\ntimezone: Europe/Berlin\ntasks: [{T1}]\n"),
        );
        write(
            &plans.join("off.yaml"),
            &format!("schedule: \"@daily\"\nenabled: false\ntasks: [{T1}]\n"),
        );
        write(&plans.join("bad.yaml"), "tasks: [nope]\n");
        write(
            &results.join("web/20260501T080000Z-00100001.json"),
            &result_json("20260501T080000Z-00100001", "succeeded", 1, 0),
        );
        write(
            &results.join("web/20260430T080000Z-00100001.json"),
            &result_json("20260430T080000Z-00100001", "failed", 0, 1),
        );
        write(&results.join("web/notes.json"), "not a result");
        write(
            &results.join("gone/20260101T000000Z-0.json"),
            &result_json("20260101T000000Z-0", "partial", 1, 1),
        );
        write(
            &results.join("_invalid/old.yaml.txt"),
            "old.yaml:1:1: tasks: x\nmore\n",
        );

        let r = gather(&plans, &results, &state, now()).await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let names: Vec<&str> = r.plans.iter().map(|p| p.plan.as_str()).collect();
        assert_eq!(names, ["gone", "nightly", "off", "web"]);

        let web = &r.plans[3];
        let last = web.last_run.as_ref().expect("last run");
        assert_eq!(last.run_id, "20260501T080000Z-00100001");
        assert_eq!(
            (last.status.as_str(), last.summary.started),
            ("succeeded", 1)
        );
        assert_eq!(web.results, 2);
        assert_eq!(web.next, Next::Pending);

        // 02:30 Berlin (CEST) is 00:30Z; at 09:00Z the next is tomorrow's.
        assert_eq!(
            r.plans[1].next,
            Next::Schedule {
                at: "2026-05-02T00:30:00.000Z".into()
            }
        );
        assert!(r.plans[1].last_run.is_none());
        assert_eq!(r.plans[2].next, Next::Disabled);
        assert_eq!(r.plans[0].next, Next::NotLoaded);
        assert_eq!(r.plans[0].file, None);

        let invalid: Vec<(&str, &str)> = r
            .invalid
            .iter()
            .map(|f| (f.file.as_str(), f.source))
            .collect();
        assert_eq!(invalid, [("bad.yaml", "check"), ("old.yaml", "daemon")]);

        // Once the state remembers web's content, it waits for a change.
        let sha = check_paths(&[plans.join("web.yaml")]).plans[0]
            .plan
            .sha256
            .clone();
        let id = crate::results::RunId::from_string("20260501T080000Z-00100001".into());
        FolderStore::at(&state)
            .claim_once("web", &sha, &id)
            .await
            .expect("remembered");
        let r = gather(&plans, &results, &state, now()).await;
        assert_eq!(
            r.plans[3].next,
            Next::OnChange {
                run_id: "20260501T080000Z-00100001".into()
            }
        );

        let table = render_table(&r, now());
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("PLAN "), "{table}");
        assert!(
            lines[4].contains("succeeded")
                && lines[4].contains("(59m ago)")
                && lines[4].contains("20260501T080000Z-00100001")
                && lines[4].contains("when changed"),
            "{table}"
        );
        assert!(lines[2].contains("never") && lines[2].contains("2026-05-02 00:30:00Z (in 15h)"));
        assert!(table.contains("2 invalid plan files"), "{table}");
        assert!(
            table.contains("old.yaml: old.yaml:1:1: tasks: x (+1 more)"),
            "{table}"
        );
    }

    #[tokio::test]
    async fn nothing_yet_is_fine_but_a_missing_plans_folder_is_not() {
        let root = tempfile::tempdir().expect("tempdir");
        let plans = root.path().join("plans");
        std::fs::create_dir(&plans).expect("mkdir");
        let r = gather(
            &plans,
            &root.path().join("r"),
            &root.path().join("s"),
            now(),
        )
        .await;
        assert!(r.errors.is_empty() && r.plans.is_empty() && r.invalid.is_empty());
        assert!(render_table(&r, now()).contains("no plans and no results yet"));

        let r = gather(
            &root.path().join("nope"),
            &root.path().join("r"),
            &root.path().join("s"),
            now(),
        )
        .await;
        assert_eq!(r.errors.len(), 1);
        assert!(r.errors[0].contains("plans folder"), "{:?}", r.errors);
    }

    /// Issue 11: a 4 GiB newest result file took 17 s and 4.2 GB to show one line.
    #[tokio::test]
    async fn a_huge_newest_result_is_read_only_as_far_as_its_summary() {
        let root = tempfile::tempdir().expect("tempdir");
        let plans = root.path().join("plans");
        std::fs::create_dir(&plans).expect("mkdir");
        let results = root.path().join("results");
        let head = result_json("20260501T080000Z-1", "partial", 3, 1);
        let head = head.trim_end().trim_end_matches('}').trim_end();
        let head = head.strip_suffix("\"tasks\": []").expect("tasks last");
        let path = results.join("web/20260501T080000Z-1.json");
        write(&path, &format!("{head}\"tasks\": ["));
        // 4 GiB, sparse: what follows the summary is never read.
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        file.set_len(4 << 30).expect("sparse file");
        let started = std::time::Instant::now();
        let r = gather(&plans, &results, &root.path().join("s"), now()).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let last = r.plans[0].last_run.as_ref().expect("read");
        assert_eq!((last.status.as_str(), last.summary.started), ("partial", 3));

        // A file whose summary is not within the first 4 MiB is reported, not read.
        let path = results.join("web/20260502T080000Z-1.json");
        let mut text = String::from("{\"tasks\": [");
        text.push_str(&" ".repeat(5 << 20));
        write(&path, &text);
        let r = gather(&plans, &results, &root.path().join("s"), now()).await;
        let error = r.plans[0].last_run_error.as_deref().expect("reported");
        assert!(error.contains("not within the first 4 MiB"), "{error}");
    }

    #[tokio::test]
    async fn a_corrupt_newest_result_is_reported_not_fatal() {
        let root = tempfile::tempdir().expect("tempdir");
        let plans = root.path().join("plans");
        std::fs::create_dir(&plans).expect("mkdir");
        let results = root.path().join("results");
        write(
            &results.join("web/20260501T080000Z-1.json"),
            "{\"truncated\": ",
        );
        let r = gather(&plans, &results, &root.path().join("s"), now()).await;
        assert!(r.errors.is_empty());
        assert!(r.plans[0].last_run.is_none());
        assert!(
            r.plans[0]
                .last_run_error
                .as_deref()
                .is_some_and(|e| e.contains("not a result file"))
        );
        assert!(render_table(&r, now()).contains("unreadable"));
    }
}
