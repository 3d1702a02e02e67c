//! Result files: the `RunReport` model and its durable, atomic write to
//! `RESULTS/<plan>/<run id>.json` (temporary file in the same folder, fsync, rename, folder
//! fsync, mode 0640). The only module that writes result files.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};

use crate::api::types::DeployState;

/// Folder under the results folder holding the errors of invalid plan files (a plan may not
/// take this name).
pub const INVALID_DIR: &str = "_invalid";

/// Mode of result files: owner read/write, group read.
pub const RESULT_FILE_MODE: u32 = 0o640;

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A cron fire.
    Schedule,
    /// A run-once plan arrived or changed.
    Arrival,
    /// `deployd exec`.
    Manual,
}

/// The outcome of a run as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every task started.
    Succeeded,
    /// Some tasks started, some did not.
    Partial,
    /// No task started.
    Failed,
    /// Shutdown or crash before the end.
    Interrupted,
}

/// The outcome of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// A deployment record exists for it.
    Started,
    /// It could not be started.
    Failed,
    /// No call was made (shutdown before its turn).
    Skipped,
}

/// A run id: the UTC start, then a random suffix, so that ids sort by start time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// A new id for a run starting at `at`. The 8 hex digits after the second are the
    /// millisecond (3 digits) then 20 random bits, so that ids sort by start time to the
    /// millisecond and two runs in one millisecond still differ.
    pub fn new(at: DateTime<Utc>) -> Self {
        let millis = at.timestamp_subsec_millis().min(999);
        let random: u32 = rand::random::<u32>() & 0xf_ffff;
        Self(format!(
            "{}-{millis:03x}{random:05x}",
            at.format("%Y%m%dT%H%M%SZ")
        ))
    }

    /// Wraps an id read back from the state folder.
    pub fn from_string(s: String) -> Self {
        Self(s)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Serializes a time as RFC 3339 UTC with milliseconds: `2026-11-28T01:30:00.012Z`.
pub fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn ser_ts<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ts(t))
}

fn ser_opt_ts<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&ts(t)),
        None => s.serialize_none(),
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Counts of task outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Tasks in the plan.
    pub total: usize,
    /// Tasks started.
    pub started: usize,
    /// Tasks failed.
    pub failed: usize,
    /// Tasks skipped.
    pub skipped: usize,
}

/// A param as recorded: `encrypt` values are `"***"`; a value that could not be resolved is null.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReportParam {
    /// Key.
    pub key: String,
    /// Type.
    #[serde(rename = "type")]
    pub ty: crate::api::rules::ParamType,
    /// Value sent (masked for `encrypt`).
    pub value: Option<String>,
}

/// One record created for a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    /// Deployment record id.
    pub record_id: String,
    /// Found in the task's history rather than in a response.
    pub reconciled: bool,
}

/// Where a followed deployment ended (`follow: true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowOutcome {
    /// Last state seen.
    pub final_state: DeployState,
    /// Seconds from start to the end (or to giving up).
    pub duration_secs: f64,
}

/// One task's line in a result file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Deployment task id.
    pub task_id: String,
    /// Outcome.
    pub status: TaskStatus,
    /// The record id the API returned (or that the history showed).
    pub record_id: Option<String>,
    /// Job name from the response.
    pub job_name: Option<String>,
    /// Start calls made.
    pub attempts: u32,
    /// HTTP status of the last call.
    pub http_status: Option<u16>,
    /// `X-Request-Id` of the last call.
    pub request_id: Option<String>,
    /// Error code of the last call (or of the local failure).
    pub error_code: Option<String>,
    /// Error message of the last call (or of the local failure).
    pub error_msg: Option<String>,
    /// Params sent.
    pub params: Vec<ReportParam>,
    /// `app_component_list` from the response.
    pub app_component_list: Vec<serde_json::Value>,
    /// The record came from the task's history (after an unknown outcome).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reconciled: bool,
    /// Every record known to exist for this task when there is more than one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<RecordRef>,
    /// Calls whose outcome was unknown (timeout or connection lost after sending) and had to
    /// be looked up or re-sent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown_outcomes: u32,
    /// Where the deployment ended, when followed.
    #[serde(default, skip_serializing_if = "Option::is_none", flatten)]
    pub follow: Option<FollowOutcome>,
}

impl TaskReport {
    /// A task with no call made yet.
    pub fn new(task_id: impl Into<String>, status: TaskStatus, params: Vec<ReportParam>) -> Self {
        Self {
            task_id: task_id.into(),
            status,
            record_id: None,
            job_name: None,
            attempts: 0,
            http_status: None,
            request_id: None,
            error_code: None,
            error_msg: None,
            params,
            app_component_list: Vec::new(),
            reconciled: false,
            records: Vec::new(),
            unknown_outcomes: 0,
            follow: None,
        }
    }
}

/// One run of one plan: the content of a result file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Plan name.
    pub plan: String,
    /// Plan file name.
    pub plan_file: String,
    /// SHA-256 of the plan file's bytes.
    pub plan_sha256: String,
    /// Run id.
    pub run_id: RunId,
    /// What started it.
    pub trigger: Trigger,
    /// The fire time, for scheduled runs.
    #[serde(serialize_with = "ser_opt_ts")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Start.
    #[serde(serialize_with = "ser_ts")]
    pub started_at: DateTime<Utc>,
    /// End.
    #[serde(serialize_with = "ser_ts")]
    pub finished_at: DateTime<Utc>,
    /// Outcome.
    pub status: RunStatus,
    /// Counts.
    pub summary: Summary,
    /// One entry per task, in plan order.
    pub tasks: Vec<TaskReport>,
}

impl RunReport {
    /// Counts the tasks' outcomes.
    pub fn summarize(tasks: &[TaskReport]) -> Summary {
        let count = |s| tasks.iter().filter(|t| t.status == s).count();
        Summary {
            total: tasks.len(),
            started: count(TaskStatus::Started),
            failed: count(TaskStatus::Failed),
            skipped: count(TaskStatus::Skipped),
        }
    }

    /// The run status from the tasks' outcomes, `interrupted` if the run was cut short.
    pub fn status_for(summary: &Summary, interrupted: bool) -> RunStatus {
        if interrupted {
            RunStatus::Interrupted
        } else if summary.started == summary.total {
            RunStatus::Succeeded
        } else if summary.started == 0 {
            RunStatus::Failed
        } else {
            RunStatus::Partial
        }
    }

    /// The path of this report under `results_dir`.
    pub fn path_in(&self, results_dir: &Path) -> PathBuf {
        results_dir
            .join(&self.plan)
            .join(format!("{}.json", self.run_id))
    }
}

/// Why a result file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write result file {path}: {source}")]
pub struct WriteError {
    /// The file (or folder) involved.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// Writes `report` atomically and durably; returns the path written.
pub fn write_report(results_dir: &Path, report: &RunReport) -> Result<PathBuf, WriteError> {
    let mut bytes = serde_json::to_vec_pretty(report).map_err(|e| WriteError {
        path: report.path_in(results_dir),
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    let target = report.path_in(results_dir);
    write_atomic(&target, &bytes, RESULT_FILE_MODE)?;
    Ok(target)
}

/// Writes `bytes` to `target` so that readers see the old file or the whole new one, never a
/// part, and the new one survives a power loss once this returns: a temporary file in the
/// same folder, `sync_all`, mode set, rename over the target, then an fsync of the folder.
pub fn write_atomic(target: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError { path, source }
    };
    create_dir_all_durable(dir).map_err(err(dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(err(dir))?;
    tmp.write_all(bytes).map_err(err(tmp.path()))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err(target))?;
    tmp.as_file().sync_all().map_err(err(target))?;
    tmp.persist(target).map_err(|e| WriteError {
        path: target.to_path_buf(),
        source: e.error,
    })?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir))?;
    Ok(())
}

/// `create_dir_all`, then an fsync of the parent of every folder it created, so that a new
/// folder (`RESULTS/<plan>/`, `STATE/once/<plan>/`) survives a power loss with its content.
pub fn create_dir_all_durable(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.as_os_str().is_empty() && !cur.exists() {
        missing.push(cur);
        match cur.parent() {
            Some(parent) => cur = parent,
            None => break,
        }
    }
    for created in missing.into_iter().rev() {
        match fs::create_dir(created) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let parent = created
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> RunReport {
        let t = DateTime::parse_from_rfc3339("2026-11-28T01:30:00.012Z")
            .expect("date")
            .with_timezone(&Utc);
        let mut task = TaskReport::new(
            "d2dc947ec2424d8789bb3984bb3adf45",
            TaskStatus::Started,
            vec![],
        );
        task.record_id = Some("0ee9c8e6a7dc44109541e53c6dccf47c".into());
        task.attempts = 1;
        task.http_status = Some(200);
        let tasks = vec![task];
        let summary = RunReport::summarize(&tasks);
        RunReport {
            plan: "nightly-web".into(),
            plan_file: "nightly-web.yaml".into(),
            plan_sha256: "ab".into(),
            run_id: RunId::new(t),
            trigger: Trigger::Schedule,
            scheduled_for: Some(t),
            started_at: t,
            finished_at: t,
            status: RunReport::status_for(&summary, false),
            summary,
            tasks,
        }
    }

    #[test]
    fn run_ids_sort_within_a_second() {
        let t = |ms| {
            DateTime::parse_from_rfc3339(&format!("2026-11-28T01:30:00.{ms:03}Z"))
                .expect("d")
                .with_timezone(&Utc)
        };
        let ids: Vec<RunId> = [0, 1, 15, 16, 255, 256, 999]
            .into_iter()
            .map(|ms| RunId::new(t(ms)))
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn run_ids_sort_by_time() {
        let a = RunId::new(
            DateTime::parse_from_rfc3339("2026-11-28T01:30:00Z")
                .expect("d")
                .with_timezone(&Utc),
        );
        let b = RunId::new(
            DateTime::parse_from_rfc3339("2026-11-28T01:30:01Z")
                .expect("d")
                .with_timezone(&Utc),
        );
        assert!(a < b);
        assert!(a.as_str().starts_with("20261128T013000Z-"));
        assert_eq!(a.as_str().len(), "20261128T013000Z-3f9a1c2b".len());
    }

    #[test]
    fn json_shape_matches_the_contract() {
        let v = serde_json::to_value(report()).expect("serializes");
        assert_eq!(v["scheduled_for"], "2026-11-28T01:30:00.012Z");
        assert_eq!(v["trigger"], "schedule");
        assert_eq!(v["status"], "succeeded");
        assert_eq!(
            v["summary"],
            serde_json::json!({"total":1,"started":1,"failed":0,"skipped":0})
        );
        let task = &v["tasks"][0];
        assert_eq!(
            task["error_code"],
            serde_json::Value::Null,
            "nulls are written, not omitted"
        );
        assert!(task.get("reconciled").is_none());
        assert!(task.get("records").is_none());
        assert_eq!(task["app_component_list"], serde_json::json!([]));
    }

    #[test]
    fn statuses() {
        let s = |total, started| Summary {
            total,
            started,
            failed: total - started,
            skipped: 0,
        };
        assert_eq!(RunReport::status_for(&s(2, 2), false), RunStatus::Succeeded);
        assert_eq!(RunReport::status_for(&s(2, 1), false), RunStatus::Partial);
        assert_eq!(RunReport::status_for(&s(2, 0), false), RunStatus::Failed);
        assert_eq!(
            RunReport::status_for(&s(2, 2), true),
            RunStatus::Interrupted
        );
    }

    #[test]
    fn written_atomically_with_mode_0640_and_no_leftovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = report();
        let path = write_report(dir.path(), &r).expect("written");
        assert_eq!(
            path,
            dir.path()
                .join("nightly-web")
                .join(format!("{}.json", r.run_id))
        );
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let back: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
        assert_eq!(back["run_id"], r.run_id.as_str());
        let names: Vec<_> = fs::read_dir(path.parent().expect("dir"))
            .expect("ls")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left behind: {names:?}");
    }
}
