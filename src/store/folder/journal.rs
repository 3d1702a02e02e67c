//! Run journals in the state folder: one append-only JSON-lines file per run under
//! `STATE/runs/`, locked (`flock`) while its run is alive, removed once the run's result is
//! written. Lines from concurrent tasks are batched: one `fdatasync` covers every line queued
//! meanwhile (group commit), and each writer waits for the sync that covers its line. Reading
//! them back for recovery is [`unfinished`]; what the lines mean is [`crate::journal`].

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::journal::{Entry, Replay, RunHeader, Unfinished};
use crate::results::RunReport;
use crate::store::{JournalAck, JournalWriter, StoreError};

type Ack = oneshot::Sender<Result<(), StoreError>>;

/// Where a run's result is kept when its journal could take no more lines (`<run id>.result.json`
/// beside `<run id>.jsonl`).
fn result_beside(journal: &Path) -> PathBuf {
    journal.with_extension("result.json")
}

fn journal_error(location: &str, source: std::io::Error) -> StoreError {
    StoreError::Journal {
        location: location.to_string(),
        source,
    }
}

/// The journal file of one live run, and the thread that writes it.
pub struct FolderJournal {
    path: PathBuf,
    location: String,
    tx: Option<mpsc::Sender<(Vec<u8>, Ack)>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl FolderJournal {
    /// Creates the journal of a new run in `runs_dir`, locked, with its header durably
    /// written.
    pub fn create(runs_dir: &Path, header: &RunHeader) -> Result<Self, StoreError> {
        let path = runs_dir.join(format!("{}.jsonl", header.run_id));
        let location = path.display().to_string();
        let err = |source| journal_error(&location, source);
        std::fs::create_dir_all(runs_dir).map_err(err)?;
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
            File::open(runs_dir).and_then(|d| d.sync_all())
        })();
        let writer = begun.and_then(|()| {
            let (tx, rx) = mpsc::channel::<(Vec<u8>, Ack)>();
            let location = location.clone();
            std::thread::Builder::new()
                .name("run-journal".into())
                .spawn(move || group_commit(file, &location, rx))
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
            location,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// Stops the writer (after the lines queued) and closes the file, which releases the lock.
    fn close_writer(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for FolderJournal {
    fn drop(&mut self) {
        self.close_writer();
    }
}

#[async_trait::async_trait]
impl JournalWriter for FolderJournal {
    fn location(&self) -> &str {
        &self.location
    }

    fn submit(&self, mut json: Vec<u8>) -> Result<JournalAck, StoreError> {
        json.push(b'\n');
        let (ack, done) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or_else(|| {
            journal_error(&self.location, std::io::Error::other("journal closed"))
        })?;
        tx.send((json, ack)).map_err(|_| {
            journal_error(
                &self.location,
                std::io::Error::other("journal writer stopped"),
            )
        })?;
        Ok(done)
    }

    async fn keep_result(&self, report: &RunReport) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(report)
            .map_err(|e| journal_error(&self.location, std::io::Error::other(e)))?;
        crate::results::write_atomic(&result_beside(&self.path), &bytes, 0o640)?;
        Ok(())
    }

    async fn close(mut self: Box<Self>, _result: Option<&RunReport>) -> Result<(), StoreError> {
        // The result file (when there is one) is the index: the journal only goes.
        self.close_writer();
        remove(&self.path)
    }
}

/// Removes a journal whose run is over, and any result kept beside it.
pub fn remove(journal: &Path) -> Result<(), StoreError> {
    let removed = std::fs::remove_file(journal)
        .map_err(|source| journal_error(&journal.display().to_string(), source));
    let _ = std::fs::remove_file(result_beside(journal));
    removed
}

/// Writes every queued line, syncs once, acknowledges them all; repeats until the sender is
/// gone. Closing the file releases the lock.
fn group_commit(mut file: File, location: &str, rx: mpsc::Receiver<(Vec<u8>, Ack)>) {
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
                let _ = ack.send(Err(journal_error(
                    location,
                    std::io::Error::new(*kind, format!("an earlier write failed: {msg}")),
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
                Err(e) => Err(journal_error(
                    location,
                    std::io::Error::new(e.kind(), e.to_string()),
                )),
            });
        }
    }
}

/// Reads every journal in `runs_dir` whose run is not alive (not locked). A torn last line
/// (a crash in the middle of a write) is ignored; a file without a readable header is reported
/// in the error list and left alone; a file that holds nothing (not even its header) goes.
pub fn unfinished(runs_dir: &Path) -> (Vec<Unfinished>, Vec<String>) {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let Ok(entries) = std::fs::read_dir(runs_dir) else {
        return (found, problems);
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    paths.sort();
    for path in paths {
        // The store's key is the file name (deployd names them `<run id>.jsonl`): it must
        // lead back to this very file when the run is closed.
        if path.file_name().and_then(|n| n.to_str()).is_none() {
            problems.push(format!(
                "{}: not a run journal's name (not UTF-8)",
                path.display()
            ));
            continue;
        }
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
    let mut replay = Replay::new();
    for line in BufReader::new(&file).lines() {
        let Ok(line) = line else { break };
        let Ok(entry) = serde_json::from_str::<Entry>(&line) else {
            break;
        };
        replay.push(entry);
    }
    let key = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(mut run) = replay.finish(key, path.display().to_string())? else {
        // No header and no call (a disk that filled up as it was created): it goes, once.
        drop(file);
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!(
                "removed the run journal {}: it holds no call (its run could not begin)",
                path.display()
            ),
            Err(e) => return Err(format!("holds no call, and cannot be removed: {e}")),
        }
        return Ok(None);
    };
    run.result = run.result.or_else(|| {
        std::fs::read(result_beside(path))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    });
    Ok(Some(run))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::journal::CallClass;
    use crate::results::{ReportParam, RunId, TaskReport, TaskStatus, Trigger};
    use crate::store::RunJournal;

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

    fn create(dir: &Path, header: &RunHeader) -> RunJournal {
        RunJournal::new(Box::new(
            FolderJournal::create(dir, header).expect("create"),
        ))
    }

    fn param(key: &str, value: &str) -> ReportParam {
        ReportParam {
            key: key.into(),
            ty: crate::api::rules::ParamType::Text,
            value: Some(value.into()),
        }
    }

    fn report(h: &RunHeader) -> RunReport {
        RunReport {
            plan: h.plan.clone(),
            plan_file: h.plan_file.clone(),
            plan_sha256: h.plan_sha256.clone(),
            run_id: h.run_id.clone(),
            trigger: h.trigger,
            scheduled_for: None,
            started_at: h.started_at,
            finished_at: Utc::now(),
            status: crate::results::RunStatus::Succeeded,
            summary: RunReport::summarize(&h.tasks),
            tasks: h.tasks.clone(),
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
        let j = create(dir.path(), &compact);
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
        let size = std::fs::metadata(j.location()).expect("size").len();
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
        // Written by the version before shared params: params in every skeleton and line.
        let old = r#"{"type":"run","run_id":"r5","plan":"web","plan_file":"web.yaml","plan_sha256":"ab","trigger":"arrival","scheduled_for":null,"started_at":"2026-01-01T00:00:00Z","tasks":[{"task_id":"a","status":"skipped","record_id":null,"job_name":null,"attempts":0,"http_status":null,"request_id":null,"error_code":null,"error_msg":null,"params":[{"key":"v","type":"text","value":"1"}],"app_component_list":[]}]}
{"type":"task","task_id":"a","status":"started","record_id":"rec","job_name":null,"attempts":1,"http_status":200,"request_id":null,"error_code":null,"error_msg":null,"params":[{"key":"v","type":"text","value":"1"}],"app_component_list":[]}
"#;
        std::fs::write(dir.path().join("r5.jsonl"), old).expect("write");
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
        let j = create(dir.path(), &header("r1"));
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
        let location = j.location().to_string();
        drop(j);
        let (found, problems) = unfinished(dir.path());
        assert!(problems.is_empty());
        let u = &found[0];
        assert_eq!(u.location, location);
        assert_eq!(u.key, "r1.jsonl");
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
        let j = create(dir.path(), &header("r2"));
        j.append(&Entry::Intent {
            task_id: "a".into(),
            attempt: 1,
            sent_at: Utc::now(),
            skew_lo_ms: None,
        })
        .await
        .expect("intent");
        let path = PathBuf::from(j.location());
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"type\":\"outcome\",\"task_id\":\"a\",\"att")
            .expect("torn");
        let (found, _) = unfinished(dir.path());
        assert_eq!(found[0].trails["a"].calls.len(), 1);
        assert_eq!(found[0].trails["a"].calls[0].2, None);

        let h = header("r3");
        let j = create(dir.path(), &h);
        let path = PathBuf::from(j.location());
        j.finish(&report(&h)).await.expect("finish");
        assert!(!path.exists());
        let j = create(dir.path(), &header("r6"));
        let path = PathBuf::from(j.location());
        j.discard().await.expect("discard");
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_result_kept_beside_a_journal_is_read_back_and_goes_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = header("r7");
        let j = create(dir.path(), &h);
        let result = report(&h);
        j.keep_result(&result).await.expect("kept");
        let beside = dir.path().join("r7.result.json");
        assert!(beside.is_file());
        drop(j);
        let (found, problems) = unfinished(dir.path());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(found[0].result.as_ref().map(|r| &r.run_id), Some(&h.run_id));
        remove(&dir.path().join(&found[0].key)).expect("closed");
        assert!(!beside.exists() && !dir.path().join("r7.jsonl").exists());
    }

    #[test]
    fn an_empty_journal_goes_and_a_headless_one_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("r8.jsonl"), "").expect("write");
        let intent = serde_json::to_string(&Entry::Intent {
            task_id: "a".into(),
            attempt: 1,
            sent_at: Utc::now(),
            skew_lo_ms: None,
        })
        .expect("json");
        std::fs::write(dir.path().join("r9.jsonl"), format!("{intent}\n")).expect("write");
        let (found, problems) = unfinished(dir.path());
        assert!(found.is_empty());
        assert!(!dir.path().join("r8.jsonl").exists(), "nothing in it: gone");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("no readable header line"));
    }

    /// After a failed write nothing more is appended: every later entry is refused.
    #[tokio::test]
    async fn a_journal_that_failed_once_refuses_every_later_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = create(dir.path(), &header("r10"));
        let entry = |attempt| Entry::Intent {
            task_id: "a".into(),
            attempt,
            sent_at: Utc::now(),
            skew_lo_ms: None,
        };
        // /dev/full: every write fails with ENOSPC, like a full disk.
        let full = OpenOptions::new().write(true).open("/dev/full");
        let Ok(full) = full else { return };
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::spawn(move || group_commit(full, "full", rx));
        let send = |line: &[u8]| {
            let (ack, done) = oneshot::channel();
            tx.send((line.to_vec(), ack)).expect("send");
            done
        };
        let first = send(b"x\n").await.expect("ack");
        assert!(first.is_err());
        let second = send(b"y\n").await.expect("ack");
        let text = second.expect_err("refused").to_string();
        assert!(text.contains("an earlier write failed"), "{text}");
        drop(tx);
        writer.join().expect("join");
        j.append(&entry(1))
            .await
            .expect("the real one still takes entries");
    }
}
