//! The run journal: what a run is about to do and what it learned, made durable before each
//! start call, so that after a crash (kill -9, power loss) the next daemon can finish the run's
//! result from facts instead of guesses. One append-only JSON-lines file per run under
//! `STATE/runs/`, locked (`flock`) while its run is alive, removed once the result file is
//! written. Writes from concurrent tasks are batched: one `fdatasync` covers every line queued
//! meanwhile (group commit), and each writer waits for the sync that covers its line.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::results::{RunId, TaskReport, Trigger};

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
    /// One skeleton per task, in plan order (ids and params, secrets masked).
    pub tasks: Vec<TaskReport>,
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
        /// error), so that recovery can report a started task as started.
        #[serde(default)]
        report: Option<Box<TaskReport>>,
        /// When the answer came (our clock): with the intent's `sent_at`, it bounds when the
        /// service created a record, which teaches the zone of its record times.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answered_at: Option<DateTime<Utc>>,
    },
    /// A task reached its final state in this run.
    Task(Box<TaskReport>),
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
        // The lock tells a starting daemon that this run is alive (in this or another
        // process, e.g. `deployd exec`), so it must not be "recovered" under its feet.
        file.try_lock()
            .map_err(|e| err(std::io::Error::other(e.to_string())))?;
        let mut line =
            serde_json::to_vec(&Entry::Run(Box::new(header.clone()))).map_err(|e| err(e.into()))?;
        line.push(b'\n');
        file.write_all(&line).map_err(err)?;
        file.sync_data().map_err(err)?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(err)?;
        let (tx, rx) = mpsc::channel::<(Vec<u8>, Ack)>();
        let writer = std::thread::Builder::new()
            .name("run-journal".into())
            .spawn(move || group_commit(file, rx))
            .map_err(err)?;
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
            } => {
                trails
                    .entry(task_id)
                    .or_default()
                    .calls
                    .push((attempt, sent_at, None));
            }
            Entry::Outcome {
                task_id,
                attempt,
                class,
                report,
                answered_at,
            } => {
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
        }
    }
    let header = header.ok_or("no readable header line")?;
    Ok(Some(Unfinished {
        path: path.to_path_buf(),
        header,
        trails,
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
        }
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
        })
        .await
        .expect("intent");
        j.append(&Entry::Outcome {
            task_id: "a".into(),
            attempt: 1,
            class: CallClass::Retryable,
            report: None,
            answered_at: None,
        })
        .await
        .expect("outcome");
        j.append(&Entry::Intent {
            task_id: "a".into(),
            attempt: 2,
            sent_at: t0,
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
