//! Run journals in the state folder: one append-only JSON-lines file per run under
//! `STATE/runs/`, locked (`flock`) while its run is alive, removed once the run's result is
//! written. Lines from concurrent tasks are batched: one `writev` and one `fdatasync` cover
//! every line queued meanwhile (group commit), and each task waits for the sync that covers
//! its line (see [`LINGER`] for the lines no call waits for). Reading
//! them back for recovery is [`unfinished`]; what the lines mean is [`crate::journal`].

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::journal::{Entry, Replay, RunHeader, Unfinished};
use crate::results::RunReport;
use crate::store::{JournalAck, JournalWriter, StoreError};

type Ack = oneshot::Sender<Result<(), StoreError>>;

/// How long the sync of an entry that no call waits for (an answer, a task's end) may wait for
/// one that a call does (an intent), so that both share one `fdatasync`. While calls are being
/// made, an answer is followed by the next call's intent within microseconds (the slot it
/// frees goes to the next task at once); when none comes, the answer is made durable on its
/// own this much later. It is written to the file at once either way, and no intent ever
/// waits for it.
pub const LINGER: Duration = Duration::from_micros(500);

/// One line queued for the writer.
struct Queued {
    /// The entry's JSON and its line end.
    line: Vec<u8>,
    /// A call waits for it: synced at once, taking every line queued before with it.
    urgent: bool,
    ack: Ack,
}

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
    tx: Option<mpsc::Sender<Queued>>,
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
            let (tx, rx) = mpsc::channel::<Queued>();
            let location = location.clone();
            std::thread::Builder::new()
                .name("run-journal".into())
                .spawn(move || group_commit(file, &location, rx, LINGER))
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

    /// Queues a line for the writer.
    fn queue(&self, mut json: Vec<u8>, urgent: bool) -> Result<JournalAck, StoreError> {
        json.push(b'\n');
        let (ack, done) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or_else(|| {
            journal_error(&self.location, std::io::Error::other("journal closed"))
        })?;
        tx.send(Queued {
            line: json,
            urgent,
            ack,
        })
        .map_err(|_| {
            journal_error(
                &self.location,
                std::io::Error::other("journal writer stopped"),
            )
        })?;
        Ok(done)
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

    fn submit(&self, json: Vec<u8>) -> Result<JournalAck, StoreError> {
        self.queue(json, true)
    }

    fn submit_unhurried(&self, json: Vec<u8>) -> Result<JournalAck, StoreError> {
        self.queue(json, false)
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

/// Writes the queued lines, syncs once, acknowledges them all; repeats until the sender is
/// gone (after the last lines). Closing the file releases the lock.
///
/// Lines are written as soon as the writer takes them (every line queued by then, with one
/// `writev`, in order, never copied), so that a killed process leaves them in the file as
/// before; what waits is their `fdatasync`. Lines that include an intent (or any line, once
/// the journal closes) are synced at once: nothing waits for lines to come. Lines no call
/// waits for are synced with the next intent's lines, or `linger` after the first of them.
fn group_commit(
    mut file: impl Durable,
    location: &str,
    rx: mpsc::Receiver<Queued>,
    linger: Duration,
) {
    // After a failed write the file may end in a torn line: nothing more is appended (every
    // later append fails, so no call is made that the journal could not record).
    let mut poisoned: Option<(std::io::ErrorKind, String)> = None;
    let mut lines: Vec<Vec<u8>> = Vec::new();
    // Lines written (or refused) and not yet synced, in order.
    let mut acks: Vec<Ack> = Vec::new();
    let mut urgent = false;
    // When the lines waiting (none of them urgent) are synced anyway.
    let mut linger_until: Option<Instant> = None;
    loop {
        let next = match linger_until {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(until) => rx.recv_timeout(until.saturating_duration_since(Instant::now())),
        };
        let closed = matches!(next, Err(RecvTimeoutError::Disconnected));
        for queued in next
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            urgent |= queued.urgent;
            lines.push(queued.line);
            acks.push(queued.ack);
        }
        if acks.is_empty() {
            if closed {
                return;
            }
            continue;
        }
        let mut result = match &poisoned {
            Some((kind, msg)) => Err(std::io::Error::new(
                *kind,
                format!("an earlier write failed: {msg}"),
            )),
            None => write_lines(&mut file, &lines),
        };
        lines.clear();
        let until = *linger_until.get_or_insert_with(|| Instant::now() + linger);
        if result.is_ok() {
            if !urgent && !closed && Instant::now() < until {
                continue;
            }
            result = file.sync();
        }
        if poisoned.is_none()
            && let Err(e) = &result
        {
            poisoned = Some((e.kind(), e.to_string()));
        }
        (urgent, linger_until) = (false, None);
        for ack in acks.drain(..) {
            let _ = ack.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(journal_error(
                    location,
                    std::io::Error::new(e.kind(), e.to_string()),
                )),
            });
        }
        if closed {
            return;
        }
    }
}

/// What the writer appends to: the journal's file, or a fake in tests.
trait Durable: Write {
    /// Makes what was written durable (`fdatasync` for a file).
    fn sync(&mut self) -> std::io::Result<()>;
}

impl Durable for File {
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }
}

/// Appends `lines` in order, with as few `writev` calls as the kernel allows (one, unless a
/// batch holds more than `IOV_MAX` lines or the write is cut short).
fn write_lines(file: &mut impl Write, lines: &[Vec<u8>]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = lines.iter().map(|l| IoSlice::new(l)).collect();
    let mut rest = &mut slices[..];
    // Empty slices at the front would make a zero-length write look like a full disk.
    IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
            done: false,
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
            done: false,
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
        let writer = std::thread::spawn(move || group_commit(full, "full", rx, LINGER));
        let first = queue(&tx, b"x\n", true).await.expect("ack");
        assert!(first.is_err());
        let second = queue(&tx, b"y\n", true).await.expect("ack");
        let text = second.expect_err("refused").to_string();
        assert!(text.contains("an earlier write failed"), "{text}");
        drop(tx);
        writer.join().expect("join");
        j.append(&entry(1))
            .await
            .expect("the real one still takes entries");
    }

    fn queue(tx: &mpsc::Sender<Queued>, line: &[u8], urgent: bool) -> JournalAck {
        let (ack, done) = oneshot::channel();
        tx.send(Queued {
            line: line.to_vec(),
            urgent,
            ack,
        })
        .expect("send");
        done
    }

    /// A sink that records each write call and each sync, and fails where told.
    #[derive(Default, Clone)]
    struct Recorder(std::sync::Arc<std::sync::Mutex<Recorded>>);

    #[derive(Default)]
    struct Recorded {
        bytes: Vec<u8>,
        writes: usize,
        syncs: usize,
        /// Bytes written at each sync.
        synced_at: Vec<usize>,
        fail_write: bool,
        fail_sync: bool,
        /// Most bytes one write call takes (0: all it is given).
        chunk: usize,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            let mut r = self.0.lock().expect("lock");
            r.writes += 1;
            if r.fail_write {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            let limit = if r.chunk == 0 { usize::MAX } else { r.chunk };
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(limit - n);
                r.bytes.extend_from_slice(&b[..take]);
                n += take;
                if n == limit {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Durable for Recorder {
        fn sync(&mut self) -> std::io::Result<()> {
            let mut r = self.0.lock().expect("lock");
            if r.fail_sync {
                return Err(std::io::Error::other("EIO"));
            }
            r.syncs += 1;
            let len = r.bytes.len();
            r.synced_at.push(len);
            Ok(())
        }
    }

    /// Lines queued together go out in one batch: one write call, in order, one sync for all,
    /// each acknowledged once durable. A short write goes on where it stopped.
    #[tokio::test]
    async fn a_batch_is_one_write_in_order_and_one_sync() {
        for chunk in [0, 7] {
            batch_through(chunk).await;
        }
    }

    async fn batch_through(chunk: usize) {
        let sink = Recorder::default();
        sink.0.lock().expect("lock").chunk = chunk;
        let (tx, rx) = mpsc::channel();
        // Queued before the writer starts: one batch, deterministically.
        let lines: Vec<String> = (0..5).map(|i| format!("{{\"line\":{i}}}\n")).collect();
        let acks: Vec<JournalAck> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| queue(&tx, l.as_bytes(), i == 2))
            .collect();
        let writer = {
            let sink = sink.clone();
            std::thread::spawn(move || group_commit(sink, "rec", rx, LINGER))
        };
        for ack in acks {
            ack.await.expect("ack").expect("durable");
        }
        drop(tx);
        writer.join().expect("join");
        let r = sink.0.lock().expect("lock");
        assert_eq!(String::from_utf8_lossy(&r.bytes), lines.concat());
        assert_eq!(r.syncs, 1, "one sync for the batch");
        assert_eq!(r.synced_at, vec![lines.concat().len()]);
        let expected = match chunk {
            0 => 1,
            // The fewest calls that can carry the batch.
            n => lines.concat().len().div_ceil(n),
        };
        assert_eq!(
            r.writes, expected,
            "write calls, at most {chunk} bytes each"
        );
    }

    /// The real file: lines queued together (urgent or not) written as one batch, and every
    /// one of them read back by recovery.
    #[tokio::test]
    async fn a_batch_in_a_real_file_reads_back_line_by_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = header("r11");
        let path = dir.path().join("r11.jsonl");
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .expect("open");
        let mut head = serde_json::to_vec(&Entry::Run(Box::new(h))).expect("json");
        head.push(b'\n');
        file.write_all(&head).expect("header");
        let (tx, rx) = mpsc::channel();
        let t0 = Utc::now();
        let acks: Vec<JournalAck> = (1..=40)
            .map(|attempt| {
                let mut line = serde_json::to_vec(&Entry::Intent {
                    task_id: "a".into(),
                    attempt,
                    sent_at: t0,
                    skew_lo_ms: None,
                })
                .expect("json");
                line.push(b'\n');
                queue(&tx, &line, attempt % 2 == 0)
            })
            .collect();
        let writer = std::thread::spawn(move || group_commit(file, "file", rx, LINGER));
        for ack in acks {
            ack.await.expect("ack").expect("durable");
        }
        drop(tx);
        writer.join().expect("join");
        let (found, problems) = unfinished(dir.path());
        assert!(problems.is_empty(), "{problems:?}");
        let calls: Vec<u32> = found[0].trails["a"].calls.iter().map(|c| c.0).collect();
        assert_eq!(calls, (1..=40).collect::<Vec<_>>());
    }

    /// A line no call waits for is still made durable when nothing follows it (after the
    /// linger) and when the journal closes; one that a call waits for takes it along.
    #[tokio::test]
    async fn lines_no_call_waits_for_are_synced_alone_along_or_at_close() {
        let sink = Recorder::default();
        let (tx, rx) = mpsc::channel();
        let writer = {
            let sink = sink.clone();
            std::thread::spawn(move || group_commit(sink, "rec", rx, LINGER))
        };
        // Alone: acknowledged once synced, whatever the wait.
        queue(&tx, b"a\n", false)
            .await
            .expect("ack")
            .expect("durable");
        assert_eq!(sink.0.lock().expect("lock").synced_at, vec![2]);
        drop(tx);
        writer.join().expect("join");

        // Queued with an urgent line behind it: one sync for both.
        let sink = Recorder::default();
        let (tx, rx) = mpsc::channel();
        let lazy = queue(&tx, b"b\n", false);
        let urgent = queue(&tx, b"c\n", true);
        // And one queued when the journal closes: synced before the writer ends.
        let last = queue(&tx, b"d\n", false);
        drop(tx);
        let writer = {
            let sink = sink.clone();
            std::thread::spawn(move || group_commit(sink, "rec", rx, LINGER))
        };
        for ack in [lazy, urgent, last] {
            ack.await.expect("ack").expect("durable");
        }
        writer.join().expect("join");
        let r = sink.0.lock().expect("lock");
        assert_eq!(r.bytes, b"b\nc\nd\n");
        assert_eq!(r.synced_at, vec![6], "one batch, one sync");
    }

    /// A line no call waits for is in the file before its sync (a killed process leaves it
    /// there, as it always did); its acknowledgement waits for the sync the next intent brings.
    #[tokio::test]
    async fn a_lingering_line_is_written_at_once_and_acknowledged_with_the_next_sync() {
        let sink = Recorder::default();
        let (tx, rx) = mpsc::channel();
        let writer = {
            let sink = sink.clone();
            // A linger no test outlasts: only the intent can end it.
            std::thread::spawn(move || group_commit(sink, "rec", rx, Duration::from_secs(3600)))
        };
        let mut answer = queue(&tx, b"answer\n", false);
        let written = async {
            while sink.0.lock().expect("lock").bytes.is_empty() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), written)
            .await
            .expect("written");
        assert_eq!(sink.0.lock().expect("lock").syncs, 0);
        assert!(
            answer.try_recv().is_err(),
            "not acknowledged before it is durable"
        );
        queue(&tx, b"intent\n", true)
            .await
            .expect("ack")
            .expect("durable");
        answer.await.expect("ack").expect("durable");
        drop(tx);
        writer.join().expect("join");
        let r = sink.0.lock().expect("lock");
        assert_eq!(r.bytes, b"answer\nintent\n");
        assert_eq!((r.writes, r.synced_at.as_slice()), (2, &[14][..]));
    }

    /// A batch whose write or sync fails fails every line in it, and every later line is
    /// refused without a write (the file may end in a torn line).
    #[tokio::test]
    async fn a_failed_batch_fails_all_its_lines_and_poisons_the_rest() {
        for fail_sync in [false, true] {
            let sink = Recorder::default();
            {
                let mut r = sink.0.lock().expect("lock");
                r.fail_write = !fail_sync;
                r.fail_sync = fail_sync;
            }
            let (tx, rx) = mpsc::channel();
            let batch: Vec<JournalAck> = (0..3).map(|i| queue(&tx, b"x\n", i == 1)).collect();
            let writer = {
                let sink = sink.clone();
                std::thread::spawn(move || group_commit(sink, "rec", rx, LINGER))
            };
            for ack in batch {
                let e = ack.await.expect("ack").expect_err("failed").to_string();
                assert!(!e.contains("an earlier write failed"), "{e}");
            }
            let writes = sink.0.lock().expect("lock").writes;
            {
                // The sink works again: the journal still refuses.
                let mut r = sink.0.lock().expect("lock");
                (r.fail_write, r.fail_sync) = (false, false);
            }
            for urgent in [true, false] {
                let e = queue(&tx, b"y\n", urgent)
                    .await
                    .expect("ack")
                    .expect_err("refused")
                    .to_string();
                assert!(e.contains("an earlier write failed"), "{e}");
            }
            drop(tx);
            writer.join().expect("join");
            let r = sink.0.lock().expect("lock");
            assert_eq!(r.writes, writes, "nothing written after the failure");
            assert_eq!(r.syncs, 0);
        }
    }
}
