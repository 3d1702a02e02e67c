//! The run journal: what a run is about to do and what it learned, made durable before each
//! start call, so that after a crash (kill -9, power loss) the next daemon can finish the run's
//! result from facts instead of guesses. One append-only JSON-lines file per run under
//! `STATE/runs/`, locked (`flock`) while its run is alive, removed once the result file is
//! written. Writes from concurrent tasks are batched: one `fdatasync` covers every line queued
//! meanwhile (group commit), and each writer waits for the sync that covers its line.
//!
//! A value is written once where once will do: the header stores each distinct param once
//! (`params`) and each task's list as indices into it (`task_params`), and the task lines of
//! later entries leave `params` out (empty); [`unfinished`] puts them back from the header.
//! Journals written before (every skeleton and entry with its params) are read as they are.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::results::{ReportParam, RunId, TaskReport, Trigger};

/// What is known about a run when it starts: enough to write its result without the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHeader {
    /// Run id.
    pub run_id: RunId,
    /// Plan name.
    pub plan: String,
    /// Plan file name.
    pub plan_file: String,
    /// Plan content hash.
    pub plan_sha256: String,
    /// What started it.
    pub trigger: Trigger,
    /// Fire time of a scheduled run.
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// One skeleton per task, in plan order (ids and params, secrets masked). Once
    /// [`RunHeader::share_params`] has run, their params are empty and live in `params`.
    pub tasks: Vec<TaskReport>,
    /// Every distinct param of the run, once (absent in journals of older versions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<ReportParam>,
    /// Per task (plan order), its params as indices into `params`; empty when the skeletons
    /// hold their params themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_params: Vec<Vec<u32>>,
}

impl RunHeader {
    /// Moves the skeletons' params into the shared table: each distinct param is stored
    /// once, each task keeps indices. A plan's params repeated for every task then cost the
    /// journal one copy, not one per task.
    pub fn share_params(&mut self) {
        let mut index: std::collections::HashMap<ReportParam, u32> =
            std::collections::HashMap::new();
        let mut refs = Vec::with_capacity(self.tasks.len());
        for task in &mut self.tasks {
            let list = std::mem::take(&mut task.params)
                .into_iter()
                .map(|p| {
                    let next = u32::try_from(index.len()).unwrap_or(u32::MAX);
                    *index.entry(p).or_insert(next)
                })
                .collect();
            refs.push(list);
        }
        let mut table: Vec<(ReportParam, u32)> = index.into_iter().collect();
        table.sort_unstable_by_key(|(_, i)| *i);
        self.params = table.into_iter().map(|(p, _)| p).collect();
        self.task_params = refs;
    }

    /// Puts each skeleton's params back from the shared table (a header of an older version,
    /// without one, is left as it is).
    pub fn expand_params(&mut self) -> Result<(), String> {
        if self.task_params.is_empty() {
            return Ok(());
        }
        if self.task_params.len() != self.tasks.len() {
            return Err(format!(
                "the header lists params for {} tasks, but {} tasks",
                self.task_params.len(),
                self.tasks.len()
            ));
        }
        for (task, refs) in self.tasks.iter_mut().zip(&self.task_params) {
            task.params = refs
                .iter()
                .map(|&i| {
                    self.params
                        .get(i as usize)
                        .cloned()
                        .ok_or_else(|| format!("the header refers to a param #{i} it lacks"))
                })
                .collect::<Result<_, _>>()?;
        }
        self.params = Vec::new();
        self.task_params = Vec::new();
        Ok(())
    }
}

/// How one start call ended, as far as the journal needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallClass {
    /// A record id came back.
    Started,
    /// Certainly not processed.
    Retryable,
    /// Refused.
    Final,
    /// Sent, answer lost: may have created a record.
    Unknown,
}

/// One line of a journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    /// The first line.
    Run(Box<RunHeader>),
    /// A start call is about to be sent.
    Intent {
        /// Task.
        task_id: String,
        /// 1-based call number.
        attempt: u32,
        /// Time just before sending.
        sent_at: DateTime<Utc>,
        /// The lower bound of the service's clock minus ours when it was sent, in ms, if
        /// measured: the send on the service's clock, whatever the host's clock does later.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skew_lo_ms: Option<i64>,
    },
    /// A start call ended.
    Outcome {
        /// Task.
        task_id: String,
        /// Call number.
        attempt: u32,
        /// What the answer means.
        class: CallClass,
        /// The task's line as it stands after this answer (status, record id, HTTP status,
        /// error), so that recovery can report a started task as started. Written without
        /// its params (they are in the header).
        #[serde(default, serialize_with = "lean_opt")]
        report: Option<Box<TaskReport>>,
        /// When the answer came (our clock): with the intent's `sent_at`, it bounds when the
        /// service created a record, which teaches the zone of its record times.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answered_at: Option<DateTime<Utc>>,
        /// The lower bound of the service's clock minus ours after this answer, in ms, if
        /// measured: it places on the service's clock the sends of this run's calls that went
        /// out before any answer had measured it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skew_lo_ms: Option<i64>,
    },
    /// A task reached its final state in this run (written without its params).
    Task(#[serde(serialize_with = "lean_box")] Box<TaskReport>),
    /// The run's whole result, when its file could not be written (a full results disk): the
    /// next start writes this, with its true status, instead of `interrupted`.
    Result(Box<crate::results::RunReport>),
}

/// A task's line without its params (the header has them): `params` is written empty.
fn lean<S: serde::Serializer>(report: &TaskReport, s: S) -> Result<S::Ok, S::Error> {
    // Destructured in full so that a field added to `TaskReport` must be added here too.
    let TaskReport {
        task_id,
        status,
        record_id,
        job_name,
        attempts,
        http_status,
        request_id,
        error_code,
        error_msg,
        params: _,
        app_component_list,
        reconciled,
        records,
        unknown_outcomes,
        follow,
    } = report;
    #[derive(Serialize)]
    struct Lean<'a> {
        task_id: &'a str,
        status: &'a crate::results::TaskStatus,
        record_id: &'a Option<String>,
        job_name: &'a Option<String>,
        attempts: &'a u32,
        http_status: &'a Option<u16>,
        request_id: &'a Option<String>,
        error_code: &'a Option<String>,
        error_msg: &'a Option<String>,
        params: [(); 0],
        app_component_list: &'a [serde_json::Value],
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        reconciled: bool,
        #[serde(skip_serializing_if = "no_records")]
        records: &'a [crate::results::RecordRef],
        #[serde(skip_serializing_if = "is_zero")]
        unknown_outcomes: u32,
        #[serde(flatten)]
        follow: &'a Option<crate::results::FollowOutcome>,
    }
    Lean {
        task_id,
        status,
        record_id,
        job_name,
        attempts,
        http_status,
        request_id,
        error_code,
        error_msg,
        params: [],
        app_component_list,
        reconciled: *reconciled,
        records,
        unknown_outcomes: *unknown_outcomes,
        follow,
    }
    .serialize(s)
}

fn no_records(r: &&[crate::results::RecordRef]) -> bool {
    r.is_empty()
}

#[allow(clippy::borrowed_box)] // the field's type, as serde hands it over
fn lean_box<S: serde::Serializer>(report: &Box<TaskReport>, s: S) -> Result<S::Ok, S::Error> {
    lean(report, s)
}

fn lean_opt<S: serde::Serializer>(
    report: &Option<Box<TaskReport>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match report {
        Some(r) => s.serialize_some(&LeanRef(r)),
        None => s.serialize_none(),
    }
}

struct LeanRef<'a>(&'a TaskReport);
impl Serialize for LeanRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        lean(self.0, s)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Why the journal could not be written.
#[derive(Debug, thiserror::Error)]
#[error("run journal {path}: {source}")]
pub struct JournalError {
    /// The journal file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

type Ack = oneshot::Sender<std::io::Result<()>>;

/// The journal of one live run. Dropping it without [`RunJournal::finish`] leaves the file
/// for recovery (that is what a crash does too).
pub struct RunJournal {
    path: PathBuf,
    tx: Option<mpsc::Sender<(Vec<u8>, Ack)>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RunJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunJournal")
            .field("path", &self.path)
            .finish()
    }
}

/// Where a run's result is kept when its journal could take no more lines (`<run id>.result.json`
/// beside `<run id>.jsonl`).
pub fn result_beside(journal: &Path) -> PathBuf {
    journal.with_extension("result.json")
}

/// The folder of run journals under a state folder.
pub fn runs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

impl RunJournal {
    /// Creates the journal of a new run, locked, with its header durably written.
    pub fn create(state_dir: &Path, header: &RunHeader) -> Result<Self, JournalError> {
        let dir = runs_dir(state_dir);
        let path = dir.join(format!("{}.jsonl", header.run_id));
        let err = |source| JournalError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(err)?;
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        let begun = (|| {
            // The lock tells a starting daemon that this run is alive (in this or another
            // process, e.g. `deployd exec`), so it must not be "recovered" under its feet.
            file.try_lock()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut line = serde_json::to_vec(&Entry::Run(Box::new(header.clone())))?;
            line.push(b'\n');
            file.write_all(&line)?;
            file.sync_data()?;
            File::open(&dir).and_then(|d| d.sync_all())
        })();
        let writer = begun.and_then(|()| {
            let (tx, rx) = mpsc::channel::<(Vec<u8>, Ack)>();
            std::thread::Builder::new()
                .name("run-journal".into())
                .spawn(move || group_commit(file, rx))
                .map(|writer| (tx, writer))
        });
        let (tx, writer) = match writer {
            Ok(w) => w,
            Err(e) => {
                // A journal that could not begin holds nothing: it does not stay behind (a full
                // disk would otherwise leave one per fire, reported at every start).
                let _ = std::fs::remove_file(&path);
                return Err(err(e));
            }
        };
        Ok(Self {
            path,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an entry and waits until it is on disk.
    pub async fn append(&self, entry: &Entry) -> Result<(), JournalError> {
        let err = |source| JournalError {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(entry).map_err(|e| err(e.into()))?;
        line.push(b'\n');
        let (ack, done) = oneshot::channel();
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| err(std::io::Error::other("journal closed")))?;
        tx.send((line, ack))
            .map_err(|_| err(std::io::Error::other("journal writer stopped")))?;
        done.await
            .map_err(|_| err(std::io::Error::other("journal writer stopped")))?
            .map_err(err)
    }

    /// The run's result is written: the journal is no longer needed.
    pub fn finish(mut self) -> Result<(), JournalError> {
        self.close();
        std::fs::remove_file(&self.path).map_err(|source| JournalError {
            path: self.path.clone(),
            source,
        })
    }

    fn close(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for RunJournal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Writes every queued line, syncs once, acknowledges them all; repeats until the sender is
/// gone. Closing the file releases the lock.
fn group_commit(mut file: File, rx: mpsc::Receiver<(Vec<u8>, Ack)>) {
    // After a failed write the file may end in a torn line: nothing more is appended (every
    // later append fails, so no call is made that the journal could not record).
    let mut poisoned: Option<(std::io::ErrorKind, String)> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        if let Some((kind, msg)) = &poisoned {
            for (_, ack) in batch {
                let _ = ack.send(Err(std::io::Error::new(
                    *kind,
                    format!("an earlier write failed: {msg}"),
                )));
            }
            continue;
        }
        let mut result = Ok(());
        for (line, _) in &batch {
            if let Err(e) = file.write_all(line) {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() {
            result = file.sync_data();
        }
        if let Err(e) = &result {
            poisoned = Some((e.kind(), e.to_string()));
        }
        for (_, ack) in batch {
            let _ = ack.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

/// What an unfinished journal says about one task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskTrail {
    /// The final report, if the task finished before the crash.
    pub done: Option<TaskReport>,
    /// The task's line after its last answered call.
    pub last_answer: Option<TaskReport>,
    /// Calls made: (attempt, sent_at, class if an answer came).
    pub calls: Vec<(u32, DateTime<Utc>, Option<CallClass>)>,
    /// Records this task's calls created, with the call's send and answer times.
    pub created: Vec<(String, DateTime<Utc>, DateTime<Utc>)>,
    /// The earliest send instant on the service's clock, per attempt, where the skew was
    /// measured at the send.
    pub service_sent: BTreeMap<u32, DateTime<Utc>>,
}

impl TaskTrail {
    /// The earliest send time of a call that may have created a record (no answer, or an
    /// unknown one).
    pub fn uncertain_since(&self) -> Option<DateTime<Utc>> {
        self.calls
            .iter()
            .filter(|(_, _, class)| matches!(class, None | Some(CallClass::Unknown)))
            .map(|(_, at, _)| *at)
            .min()
    }

    /// The earliest send of a call that may have created a record on the service's clock,
    /// when every such call kept its skew.
    pub fn uncertain_since_service(&self) -> Option<DateTime<Utc>> {
        let uncertain: Vec<u32> = self
            .calls
            .iter()
            .filter(|(_, _, class)| matches!(class, None | Some(CallClass::Unknown)))
            .map(|(attempt, _, _)| *attempt)
            .collect();
        if uncertain.is_empty() {
            return None;
        }
        uncertain
            .iter()
            .map(|a| self.service_sent.get(a).copied())
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .min()
    }
}

/// An unfinished run read back from its journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Unfinished {
    /// The journal file.
    pub path: PathBuf,
    /// The header.
    pub header: RunHeader,
    /// Per task id.
    pub trails: BTreeMap<String, TaskTrail>,
    /// The run's result, if it ended and only its file could not be written.
    pub result: Option<crate::results::RunReport>,
}

/// Reads every journal in `STATE/runs/` whose run is not alive (not locked). A torn last line
/// (a crash in the middle of a write) is ignored; a file without a readable header is reported
/// in the error list and left alone.
pub fn unfinished(state_dir: &Path) -> (Vec<Unfinished>, Vec<String>) {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let Ok(entries) = std::fs::read_dir(runs_dir(state_dir)) else {
        return (found, problems);
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    paths.sort();
    for path in paths {
        match read_one(&path) {
            Ok(Some(u)) => found.push(u),
            Ok(None) => {}
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    (found, problems)
}

fn read_one(path: &Path) -> Result<Option<Unfinished>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    if file.try_lock().is_err() {
        // Alive in another process (or this one).
        return Ok(None);
    }
    let mut header: Option<RunHeader> = None;
    let mut trails: BTreeMap<String, TaskTrail> = BTreeMap::new();
    let mut result = None;
    // The first skew this run measured, and the calls sent before it was measured.
    let mut run_skew_lo_ms: Option<i64> = None;
    let mut unmeasured: Vec<(String, u32, DateTime<Utc>)> = Vec::new();
    for line in BufReader::new(&file).lines() {
        let Ok(line) = line else { break };
        let Ok(entry) = serde_json::from_str::<Entry>(&line) else {
            break;
        };
        match entry {
            Entry::Run(h) => header = Some(*h),
            Entry::Intent {
                task_id,
                attempt,
                sent_at,
                skew_lo_ms,
            } => {
                run_skew_lo_ms = run_skew_lo_ms.or(skew_lo_ms);
                if skew_lo_ms.is_none() {
                    unmeasured.push((task_id.clone(), attempt, sent_at));
                }
                let trail = trails.entry(task_id).or_default();
                trail.calls.push((attempt, sent_at, None));
                if let Some(ms) = skew_lo_ms
                    && let Some(at) =
                        sent_at.checked_add_signed(chrono::TimeDelta::milliseconds(ms))
                {
                    trail.service_sent.insert(attempt, at);
                }
            }
            Entry::Outcome {
                task_id,
                attempt,
                class,
                report,
                answered_at,
                skew_lo_ms,
            } => {
                run_skew_lo_ms = run_skew_lo_ms.or(skew_lo_ms);
                let trail = trails.entry(task_id).or_default();
                let mut sent_at = None;
                if let Some(call) = trail.calls.iter_mut().find(|c| c.0 == attempt) {
                    call.2 = Some(class);
                    sent_at = Some(call.1);
                }
                if let (Some(sent), Some(answered), Some(id)) = (
                    sent_at,
                    answered_at,
                    report.as_ref().and_then(|r| r.record_id.clone()),
                ) && class == CallClass::Started
                {
                    trail.created.push((id, sent, answered));
                }
                if let Some(report) = report {
                    trail.last_answer = Some(*report);
                }
            }
            Entry::Task(report) => {
                let id = report.task_id.clone();
                trails.entry(id).or_default().done = Some(*report);
            }
            Entry::Result(report) => result = Some(*report),
        }
    }
    let Some(mut header) = header else {
        // The header is written (and synced) before anything else: a journal without one
        // (a disk that filled up as it was created) holds no call. It goes, once.
        if trails.is_empty() {
            drop(file);
            match std::fs::remove_file(path) {
                Ok(()) => tracing::info!(
                    "removed the run journal {}: it holds no call (its run could not begin)",
                    path.display()
                ),
                Err(e) => return Err(format!("holds no call, and cannot be removed: {e}")),
            }
            return Ok(None);
        }
        return Err("no readable header line".into());
    };
    header.expand_params()?;
    // Task lines written without their params get them back from the header.
    let skeletons: std::collections::HashMap<&str, &TaskReport> = header
        .tasks
        .iter()
        .map(|t| (t.task_id.as_str(), t))
        .collect();
    for (id, trail) in &mut trails {
        for report in [trail.done.as_mut(), trail.last_answer.as_mut()]
            .into_iter()
            .flatten()
        {
            if report.params.is_empty()
                && let Some(skeleton) = skeletons.get(id.as_str())
            {
                report.params = skeleton.params.clone();
            }
        }
    }
    drop(skeletons);
    // Calls sent before any answer measured the skew are placed on the service's clock with
    // the first skew this run measured (the host's clock is taken as not stepped within the
    // run; a step across the crash is what the stored skew is for).
    if let Some(ms) = run_skew_lo_ms {
        for (task_id, attempt, sent_at) in unmeasured {
            if let (Some(trail), Some(at)) = (
                trails.get_mut(&task_id),
                sent_at.checked_add_signed(chrono::TimeDelta::milliseconds(ms)),
            ) {
                trail.service_sent.entry(attempt).or_insert(at);
            }
        }
    }
    let result = result.or_else(|| {
        std::fs::read(result_beside(path))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    });
    Ok(Some(Unfinished {
        path: path.to_path_buf(),
        header,
        trails,
        result,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::TaskStatus;

    fn header(run: &str) -> RunHeader {
        RunHeader {
            run_id: RunId::from_string(run.into()),
            plan: "web".into(),
            plan_file: "web.yaml".into(),
            plan_sha256: "ab".into(),
            trigger: Trigger::Arrival,
            scheduled_for: None,
            started_at: Utc::now(),
            tasks: vec![
                TaskReport::new("a", TaskStatus::Skipped, vec![]),
                TaskReport::new("b", TaskStatus::Skipped, vec![]),
            ],
            params: Vec::new(),
            task_params: Vec::new(),
        }
    }

    fn param(key: &str, value: &str) -> ReportParam {
        ReportParam {
            key: key.into(),
            ty: crate::api::rules::ParamType::Text,
            value: Some(value.into()),
        }
    }

    /// 100 tasks sharing 5 big plan params, each with one own param.
    fn shared_header(run: &str) -> RunHeader {
        let big = "x".repeat(8000);
        let mut h = header(run);
        h.tasks = (0..100)
            .map(|i| {
                let mut params: Vec<ReportParam> =
                    (0..5).map(|k| param(&format!("p{k}"), &big)).collect();
                params.push(param("version", &format!("1.0.{i}")));
                TaskReport::new(format!("t{i}"), TaskStatus::Skipped, params)
            })
            .collect();
        h
    }

    #[tokio::test]
    async fn params_are_written_once_and_read_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let full = shared_header("r4");
        let mut compact = full.clone();
        compact.share_params();
        assert_eq!(compact.params.len(), 5 + 100, "each distinct param once");
        assert!(compact.tasks.iter().all(|t| t.params.is_empty()));
        let j = RunJournal::create(dir.path(), &compact).expect("create");
        let mut done = full.tasks[3].clone();
        done.status = TaskStatus::Started;
        done.record_id = Some("rec".into());
        j.append(&Entry::Intent {
            task_id: "t3".into(),
            attempt: 1,
            sent_at: Utc::now(),
            skew_lo_ms: None,
        })
        .await
        .expect("intent");
        j.append(&Entry::Outcome {
            task_id: "t3".into(),
            attempt: 1,
            class: CallClass::Started,
            report: Some(Box::new(done.clone())),
            answered_at: None,
            skew_lo_ms: None,
        })
        .await
        .expect("outcome");
        j.append(&Entry::Task(Box::new(done.clone())))
            .await
            .expect("task");
        let size = std::fs::metadata(j.path()).expect("size").len();
        // 5 x 8 KB once, not 100 x 5 x 8 KB in the header and again in each task line.
        assert!(size < 100_000, "journal of {size} bytes");
        drop(j);
        let (found, problems) = unfinished(dir.path());
        assert!(problems.is_empty(), "{problems:?}");
        let u = &found[0];
        assert_eq!(u.header.tasks, full.tasks, "skeletons whole again");
        assert_eq!(u.trails["t3"].done.as_ref(), Some(&done));
        assert_eq!(u.trails["t3"].last_answer.as_ref(), Some(&done));
    }

    #[test]
    fn a_journal_of_the_older_format_is_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(runs_dir(dir.path())).expect("mkdir");
        // Written by the version before shared params: params in every skeleton and line.
        let old = r#"{"type":"run","run_id":"r5","plan":"web","plan_file":"web.yaml","plan_sha256":"ab","trigger":"arrival","scheduled_for":null,"started_at":"2026-01-01T00:00:00Z","tasks":[{"task_id":"a","status":"skipped","record_id":null,"job_name":null,"attempts":0,"http_status":null,"request_id":null,"error_code":null,"error_msg":null,"params":[{"key":"v","type":"text","value":"1"}],"app_component_list":[]}]}
{"type":"task","task_id":"a","status":"started","record_id":"rec","job_name":null,"attempts":1,"http_status":200,"request_id":null,"error_code":null,"error_msg":null,"params":[{"key":"v","type":"text","value":"1"}],"app_component_list":[]}
"#;
        std::fs::write(runs_dir(dir.path()).join("r5.jsonl"), old).expect("write");
        let (found, problems) = unfinished(dir.path());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(found[0].header.tasks[0].params, vec![param("v", "1")]);
        let done = found[0].trails["a"].done.as_ref().expect("done");
        assert_eq!(done.record_id.as_deref(), Some("rec"));
        assert_eq!(done.params, vec![param("v", "1")]);
    }

    #[tokio::test]
    async fn a_dropped_journal_is_read_back_with_every_fact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = RunJournal::create(dir.path(), &header("r1")).expect("create");
        let t0 = Utc::now();
        j.append(&Entry::Intent {
            task_id: "a".into(),
            attempt: 1,
            sent_at: t0,
            skew_lo_ms: None,
        })
        .await
        .expect("intent");
        j.append(&Entry::Outcome {
            task_id: "a".into(),
            attempt: 1,
            class: CallClass::Retryable,
            report: None,
            answered_at: None,
            skew_lo_ms: None,
        })
        .await
        .expect("outcome");
        j.append(&Entry::Intent {
            task_id: "a".into(),
            attempt: 2,
            sent_at: t0,
            skew_lo_ms: None,
        })
        .await
        .expect("intent");
        let mut done = TaskReport::new("b", TaskStatus::Started, vec![]);
        done.record_id = Some("r".into());
        j.append(&Entry::Task(Box::new(done.clone())))
            .await
            .expect("task");
        // Alive: not recovered.
        assert!(
            unfinished(dir.path()).0.is_empty(),
            "a live journal is locked"
        );
        drop(j);
        let (found, problems) = unfinished(dir.path());
        assert!(problems.is_empty());
        let u = &found[0];
        assert_eq!(u.header.plan, "web");
        assert_eq!(
            u.trails["a"].calls,
            vec![(1, t0, Some(CallClass::Retryable)), (2, t0, None)]
        );
        assert_eq!(u.trails["a"].uncertain_since(), Some(t0));
        assert_eq!(u.trails["b"].done.as_ref(), Some(&done));
    }

    #[tokio::test]
    async fn a_torn_last_line_is_ignored_and_finish_removes_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = RunJournal::create(dir.path(), &header("r2")).expect("create");
        j.append(&Entry::Intent {
            task_id: "a".into(),
            attempt: 1,
            sent_at: Utc::now(),
            skew_lo_ms: None,
        })
        .await
        .expect("intent");
        let path = j.path().to_path_buf();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"type\":\"outcome\",\"task_id\":\"a\",\"att")
            .expect("torn");
        let (found, _) = unfinished(dir.path());
        assert_eq!(found[0].trails["a"].calls.len(), 1);
        assert_eq!(found[0].trails["a"].calls[0].2, None);

        let j = RunJournal::create(dir.path(), &header("r3")).expect("create");
        let path = j.path().to_path_buf();
        j.finish().expect("finish");
        assert!(!path.exists());
    }
}
