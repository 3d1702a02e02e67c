//! The state folder: the [`Store`] of a single host. The only code that knows its layout:
//!
//! | path | holds |
//! |---|---|
//! | `STATE/lock` | the daemon's `flock`, and its pid (one daemon per state folder) |
//! | `STATE/once/<plan>/<sha256>` | the run-once memory: the run id that ran this content |
//! | `STATE/fires/<plan>.json` | the used fire times, newest [`FIRES_KEPT`] (a damaged one is kept aside as `.json.damaged`) |
//! | `STATE/runs/<run id>.jsonl` | a run's journal ([`journal`]), and `<run id>.result.json` beside a journal that took no more lines |
//! | `STATE/service-zone.json` | the learned zone of the service's record times |
//! | `RESULTS/<plan>/<run id>.json` | the result index is the results folder itself, when the store is told where it is |
//!
//! Every write is durable (temporary file, fsync, rename, folder fsync; the journal
//! `fdatasync`s) before the method returns. The methods do their (short) file I/O on the
//! caller's task, as the state code always did: a thread hop per call would cost more than
//! the syscalls it moves.

pub mod journal;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use super::{
    Claim, Counts, FIRES_KEPT, LastRun, LearnedZone, PlanRuns, RunJournal, Store, StoreError,
};
use crate::journal::{RunHeader, Unfinished};
use crate::results::{RunId, write_atomic};

/// The lock file in the state folder; it holds the holder's pid.
pub const LOCK_FILE: &str = "lock";
/// The file in the state folder that keeps the learned zone.
pub const ZONE_FILE: &str = "service-zone.json";
/// The folder of run journals.
const RUNS_DIR: &str = "runs";

/// The daemon's hold on its state folder, for as long as it lives (released on drop, or by
/// the kernel when the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

/// The state folder (and, for the result index, the results folder).
#[derive(Debug)]
pub struct FolderStore {
    root: PathBuf,
    results: Option<PathBuf>,
    /// Per plan, the used fire times as this process knows them: what it read, plus what it
    /// used since, even when a write failed (the next write carries them again).
    fires: Mutex<HashMap<String, Vec<DateTime<Utc>>>>,
}

impl FolderStore {
    /// Opens (creating it if needed, mode 0750) the state folder, as the daemon does.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        for dir in [
            root.to_path_buf(),
            root.join("once"),
            root.join(RUNS_DIR),
            root.join("fires"),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(&dir)
                .map_err(|source| StoreError::Io {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(Self::at(root))
    }

    /// The state folder at `root`, created only as far as something is written (`deployd
    /// exec` journals its run there; `deployd status` creates nothing).
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            results: None,
            fires: Mutex::new(HashMap::new()),
        }
    }

    /// This store with the results folder as its index of results (without one, the index
    /// is empty).
    pub fn with_results(mut self, results_dir: &Path) -> Self {
        self.results = Some(results_dir.to_path_buf());
        self
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the daemon's lock on the folder (`flock` on `STATE/lock`, which then holds this
    /// process's pid), or says which process holds it.
    pub fn lock_for_daemon(&self) -> Result<StateLock, StoreError> {
        use std::io::{Read, Seek, Write};
        let path = self.root.join(LOCK_FILE);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if file.try_lock().is_err() {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim() {
                "" => "a process that has not written its pid yet".to_string(),
                pid => format!("pid {pid}"),
            };
            return Err(StoreError::Locked {
                path: self.root.clone(),
                holder,
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io)?;
        Ok(StateLock { _file: file })
    }

    fn once_path(&self, plan: &str, sha256: &str) -> PathBuf {
        // Plan names are `[A-Za-z0-9._-]`, never `.`/`..` (the validator refuses them), so
        // they are safe as folder names.
        self.root.join("once").join(plan).join(sha256)
    }

    fn fires_path(&self, plan: &str) -> PathBuf {
        self.root.join("fires").join(format!("{plan}.json"))
    }

    fn runs_dir(&self) -> PathBuf {
        self.root.join(RUNS_DIR)
    }

    fn ran_once_now(&self, plan: &str, sha256: &str) -> Result<Option<RunId>, StoreError> {
        let path = self.once_path(plan, sha256);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(RunId::from_string(text.trim().to_string()))),
            // No memory can be there (`once/<plan>` is not a folder): not run.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                Ok(None)
            }
            Err(source) => Err(StoreError::Read {
                what: path.display().to_string(),
                source,
            }),
        }
    }

    /// Reads `fires/<plan>.json`; a damaged file is set aside (`.json.damaged`), so that it
    /// is reported once and kept for a person to look at.
    fn read_fires(&self, plan: &str) -> Result<Vec<DateTime<Utc>>, StoreError> {
        let path = self.fires_path(plan);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                let modified = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .map(DateTime::<Utc>::from)
                    .ok();
                let _ = std::fs::rename(&path, path.with_extension("json.damaged"));
                StoreError::Corrupt {
                    what: path.display().to_string(),
                    why: e.to_string(),
                    modified,
                }
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// The result file of an unfinished journal's run, when it is written (a whole result
    /// of that very run), in the results folder this store indexes.
    fn written_result(&self, run: &Unfinished) -> Option<PathBuf> {
        let results = self.results.as_ref()?;
        let path = results
            .join(&run.header.plan)
            .join(format!("{}.json", run.header.run_id));
        let head = read_last_run(&path).ok()?;
        (head.run_id == run.header.run_id.as_str()).then_some(path)
    }

    fn fires(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<DateTime<Utc>>>> {
        self.fires.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl Store for FolderStore {
    async fn ran_once(&self, plan: &str, sha256: &str) -> Result<Option<RunId>, StoreError> {
        self.ran_once_now(plan, sha256)
    }

    async fn claim_once(
        &self,
        plan: &str,
        sha256: &str,
        run_id: &RunId,
    ) -> Result<Claim, StoreError> {
        // Read, then write: one daemon per folder (its lock), so nothing writes in between.
        match self.ran_once_now(plan, sha256)? {
            Some(by) if by != *run_id => return Ok(Claim::Taken(Some(by))),
            _ => {}
        }
        write_atomic(
            &self.once_path(plan, sha256),
            format!("{run_id}\n").as_bytes(),
            0o640,
        )?;
        Ok(Claim::Won)
    }

    async fn fired(&self, plan: &str) -> Result<Vec<DateTime<Utc>>, StoreError> {
        let read = self.read_fires(plan);
        self.fires().insert(
            plan.to_string(),
            read.as_ref().map(Vec::clone).unwrap_or_default(),
        );
        read
    }

    async fn claim_fire(&self, plan: &str, at: DateTime<Utc>) -> Result<Claim, StoreError> {
        let mut fires = self.fires();
        if !fires.contains_key(plan) {
            // Not read yet in this process: what cannot be read counts as nothing used
            // (`fired` reports why).
            let read = self.read_fires(plan).unwrap_or_default();
            fires.insert(plan.to_string(), read);
        }
        let used = fires.entry(plan.to_string()).or_default();
        if used.contains(&at) {
            return Ok(Claim::Taken(None));
        }
        used.push(at);
        let excess = used.len().saturating_sub(FIRES_KEPT);
        used.drain(..excess);
        let bytes = serde_json::to_vec(&*used).unwrap_or_default();
        write_atomic(&self.fires_path(plan), &bytes, 0o640)?;
        Ok(Claim::Won)
    }

    async fn create_journal(&self, header: &RunHeader) -> Result<RunJournal, StoreError> {
        journal::FolderJournal::create(&self.runs_dir(), header)
            .map(|j| RunJournal::new(Box::new(j)))
    }

    async fn unfinished(&self) -> (Vec<Unfinished>, Vec<String>) {
        let (runs, problems) = journal::unfinished(&self.runs_dir());
        // A journal whose run's result file is written is over, whatever the journal says:
        // the result was made durable before the journal was removed, and that removal may
        // not have reached the disk (a power loss, a kill between the two). Finishing it again
        // would overwrite the true result with an `interrupted` one.
        let runs = runs
            .into_iter()
            .filter(|run| match self.written_result(run) {
                Some(path) => {
                    match journal::remove(&self.runs_dir().join(&run.key)) {
                        Ok(()) => tracing::info!(
                            plan = %run.header.plan,
                            run_id = %run.header.run_id,
                            "removed the run journal {}: its run ended, and its result {} is written",
                            run.location,
                            path.display()
                        ),
                        Err(e) => tracing::warn!(
                            "the run's result {} is written; cannot remove the {e}",
                            path.display()
                        ),
                    }
                    false
                }
                None => true,
            })
            .collect();
        (runs, problems)
    }

    async fn close_unfinished(
        &self,
        run: &Unfinished,
        _result: &crate::results::RunReport,
    ) -> Result<(), StoreError> {
        journal::remove(&self.runs_dir().join(&run.key))
    }

    fn learned_zone(&self) -> Result<Option<LearnedZone>, StoreError> {
        let path = self.root.join(ZONE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        what: path.display().to_string(),
                        why: e.to_string(),
                        modified: None,
                    })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read {
                what: path.display().to_string(),
                source,
            }),
        }
    }

    fn keep_learned_zone(&self, zone: &LearnedZone) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(zone).unwrap_or_default();
        write_atomic(&self.root.join(ZONE_FILE), &bytes, 0o640)?;
        Ok(())
    }

    async fn plans_with_results(&self) -> Result<Vec<String>, StoreError> {
        let Some(results) = &self.results else {
            return Ok(Vec::new());
        };
        let entries = match std::fs::read_dir(results) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Read {
                    what: format!("the results folder {}", results.display()),
                    source,
                });
            }
        };
        let mut plans = Vec::new();
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.')
                || name == crate::results::INVALID_DIR
                || !entry.path().is_dir()
            {
                continue;
            }
            plans.push(name);
        }
        plans.sort();
        Ok(plans)
    }

    async fn plan_runs(&self, plan: &str) -> Result<PlanRuns, StoreError> {
        let Some(results) = &self.results else {
            return Ok(PlanRuns::default());
        };
        let dir = results.join(plan);
        let mut run_ids = result_run_ids(&dir).map_err(|source| StoreError::Read {
            what: dir.display().to_string(),
            source,
        })?;
        run_ids.sort();
        let last = run_ids.last().map(|id| {
            let path = dir.join(format!("{id}.json"));
            read_last_run(&path).map_err(|e| format!("{}: {e}", path.display()))
        });
        Ok(PlanRuns {
            count: run_ids.len(),
            last,
        })
    }
}

/// Run ids of the result files in a plan's results folder (missing folder: none).
fn result_run_ids(dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if let Some(id) = name.strip_suffix(".json")
            && crate::retention::run_id_start(id).is_some()
            && entry.path().is_file()
        {
            ids.push(id.to_string());
        }
    }
    Ok(ids)
}

/// Bytes of a result file read at most to find the fields `status` shows. The daemon writes
/// them first, before `tasks` (which can be large: 10,000 tasks with their params), so a few
/// hundred bytes normally suffice; a file that does not give them within this is reported.
pub const RESULT_READ_LIMIT: u64 = 4 << 20;

/// The fields `status` shows of a result file, parsed from its start: reading stops at
/// `tasks` once they are all known, and never goes beyond [`RESULT_READ_LIMIT`] bytes, so a
/// huge (or endless) file costs neither time nor memory.
fn read_last_run(path: &Path) -> Result<LastRun, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let reader = std::io::BufReader::new(file.take(RESULT_READ_LIMIT));
    let found = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_reader(reader);
    let parsed = serde::Deserializer::deserialize_map(&mut de, HeadVisitor { found: &found });
    if let Some(head) = found.into_inner() {
        return Ok(head);
    }
    match parsed {
        Ok(head) => Ok(head),
        Err(e) if e.is_eof() && size > RESULT_READ_LIMIT => Err(format!(
            "not read: {size} bytes, and its summary is not within the first {} MiB",
            RESULT_READ_LIMIT >> 20
        )),
        Err(e) => Err(format!("not a result file: {e}")),
    }
}

/// Collects the fields of [`LastRun`] from a result file's top-level object, and stops at
/// `tasks` (through `found`, with an error that ends the parse) once they are all known.
struct HeadVisitor<'a> {
    found: &'a std::cell::RefCell<Option<LastRun>>,
}

impl<'de> serde::de::Visitor<'de> for HeadVisitor<'_> {
    type Value = LastRun;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a result file (a JSON object)")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<LastRun, A::Error> {
        use serde::de::{Error, IgnoredAny};
        let mut run_id = None;
        let mut status = None;
        let mut trigger = None;
        let mut started_at = None;
        let mut finished_at = None;
        let mut summary = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "run_id" => run_id = Some(map.next_value()?),
                "status" => status = Some(map.next_value()?),
                "trigger" => trigger = Some(map.next_value()?),
                "started_at" => started_at = Some(map.next_value()?),
                "finished_at" => finished_at = Some(map.next_value()?),
                "summary" => summary = Some(map.next_value()?),
                "tasks"
                    if run_id.is_some()
                        && status.is_some()
                        && trigger.is_some()
                        && started_at.is_some()
                        && finished_at.is_some()
                        && summary.is_some() =>
                {
                    *self.found.borrow_mut() = Some(LastRun {
                        run_id: run_id.take().unwrap_or_default(),
                        status: status.take().unwrap_or_default(),
                        trigger: trigger.take().unwrap_or_default(),
                        started_at: started_at.take().unwrap_or_default(),
                        finished_at: finished_at.take().unwrap_or_default(),
                        summary: summary.take().unwrap_or(Counts {
                            total: 0,
                            started: 0,
                            failed: 0,
                            skipped: 0,
                        }),
                    });
                    // Everything needed is known: the tasks are not read.
                    return Err(A::Error::custom("enough read"));
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(LastRun {
            run_id: run_id.ok_or_else(|| A::Error::missing_field("run_id"))?,
            status: status.ok_or_else(|| A::Error::missing_field("status"))?,
            trigger: trigger.ok_or_else(|| A::Error::missing_field("trigger"))?,
            started_at: started_at.ok_or_else(|| A::Error::missing_field("started_at"))?,
            finished_at: finished_at.ok_or_else(|| A::Error::missing_field("finished_at"))?,
            summary: summary.ok_or_else(|| A::Error::missing_field("summary"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FolderStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FolderStore::open(dir.path()).expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn used_fire_times_survive_reopening() {
        let (dir, store) = store();
        assert!(store.fired("tick").await.expect("read").is_empty());
        let t0 = Utc::now();
        let times: Vec<_> = (0..100)
            .map(|i| t0 + chrono::TimeDelta::seconds(i))
            .collect();
        for t in &times {
            assert_eq!(
                store.claim_fire("tick", *t).await.expect("write"),
                Claim::Won
            );
        }
        assert_eq!(
            store.claim_fire("tick", times[99]).await.expect("write"),
            Claim::Taken(None),
            "a fire time is claimed once"
        );
        let again = FolderStore::open(dir.path()).expect("reopen");
        let kept = again.fired("tick").await.expect("read");
        assert_eq!(kept.len(), FIRES_KEPT);
        assert_eq!(kept.last(), times.last());
        assert_eq!(kept.first(), times.get(100 - FIRES_KEPT));
    }

    #[tokio::test]
    async fn a_damaged_fires_memory_is_reported_once_and_kept_aside() {
        let (dir, store) = store();
        let path = dir.path().join("fires/tick.json");
        std::fs::write(&path, "[\"2026-").expect("write");
        match store.fired("tick").await {
            Err(StoreError::Corrupt { what, modified, .. }) => {
                assert_eq!(what, path.display().to_string());
                assert!(modified.is_some());
            }
            other => panic!("{other:?}"),
        }
        assert!(dir.path().join("fires/tick.json.damaged").is_file());
        assert!(store.fired("tick").await.expect("read").is_empty());
        let t = Utc::now();
        assert_eq!(
            store.claim_fire("tick", t).await.expect("write"),
            Claim::Won
        );
        assert_eq!(store.fired("tick").await.expect("read"), vec![t]);
    }

    #[tokio::test]
    async fn a_fire_time_that_could_not_be_written_is_carried_by_the_next_write() {
        let (dir, store) = store();
        store.fired("tick").await.expect("read");
        let t0 = Utc::now();
        let fires = dir.path().join("fires");
        std::fs::remove_dir(&fires).expect("rm");
        std::fs::write(&fires, "not a folder").expect("block");
        assert!(store.claim_fire("tick", t0).await.is_err());
        std::fs::remove_file(&fires).expect("unblock");
        let t1 = t0 + chrono::TimeDelta::seconds(1);
        assert_eq!(
            store.claim_fire("tick", t1).await.expect("write"),
            Claim::Won
        );
        let again = FolderStore::open(dir.path()).expect("reopen");
        assert_eq!(again.fired("tick").await.expect("read"), vec![t0, t1]);
    }

    #[test]
    fn one_daemon_per_state_folder() {
        let (dir, store) = store();
        let held = store.lock_for_daemon().expect("first");
        let err = FolderStore::open(dir.path())
            .expect("open")
            .lock_for_daemon()
            .expect_err("second");
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(held);
        assert!(store.lock_for_daemon().is_ok());
    }

    #[tokio::test]
    async fn once_memory_is_claimed_once_and_survives_reopening() {
        let (dir, store) = store();
        assert_eq!(store.ran_once("web", "abc").await.expect("read"), None);
        let id = RunId::from_string("20261128T013000Z-00000001".into());
        let other = RunId::from_string("20261128T013001Z-00000002".into());
        assert_eq!(
            store.claim_once("web", "abc", &id).await.expect("claim"),
            Claim::Won
        );
        assert_eq!(
            store.claim_once("web", "abc", &id).await.expect("again"),
            Claim::Won,
            "the same run claiming again keeps it"
        );
        assert_eq!(
            store.claim_once("web", "abc", &other).await.expect("other"),
            Claim::Taken(Some(id.clone()))
        );
        let again = FolderStore::open(dir.path()).expect("reopen");
        assert_eq!(again.ran_once("web", "abc").await.expect("read"), Some(id));
        assert_eq!(again.ran_once("web", "def").await.expect("read"), None);
        assert_eq!(again.ran_once("other", "abc").await.expect("read"), None);
    }

    #[tokio::test]
    async fn a_store_at_a_missing_folder_creates_nothing_to_answer() {
        let root = tempfile::tempdir().expect("tempdir");
        let state = root.path().join("state");
        let store = FolderStore::at(&state).with_results(&root.path().join("results"));
        assert_eq!(store.ran_once("web", "abc").await.expect("read"), None);
        assert!(store.plans_with_results().await.expect("index").is_empty());
        let runs = store.plan_runs("web").await.expect("index");
        assert_eq!((runs.count, runs.last.is_none()), (0, true));
        assert!(store.learned_zone().expect("facts").is_none());
        assert!(store.unfinished().await.0.is_empty());
        assert!(!state.exists() && !root.path().join("results").exists());
    }

    #[test]
    fn the_learned_zone_is_kept() {
        let (dir, store) = store();
        let zone = LearnedZone {
            utc_offset_secs: 8 * 3600,
            learned_at: Utc::now(),
            record_id: "r1".into(),
        };
        store.keep_learned_zone(&zone).expect("write");
        assert!(dir.path().join(ZONE_FILE).is_file());
        let again = FolderStore::at(dir.path());
        assert_eq!(again.learned_zone().expect("read"), Some(zone));
    }

    #[tokio::test]
    async fn the_result_index_is_the_results_folder() {
        let root = tempfile::tempdir().expect("tempdir");
        let results = root.path().join("results");
        let write = |rel: &str, text: &str| {
            let path = results.join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        let result = |run_id: &str| {
            format!(
                r#"{{"run_id": "{run_id}", "status": "succeeded", "trigger": "manual",
                   "started_at": "2026-05-01T08:00:00Z", "finished_at": "2026-05-01T08:00:02Z",
                   "summary": {{"total": 1, "started": 1, "failed": 0, "skipped": 0}}, "tasks": []}}"#
            )
        };
        write("web/20260430T080000Z-1.json", &result("20260430T080000Z-1"));
        write("web/20260501T080000Z-1.json", &result("20260501T080000Z-1"));
        write("web/notes.json", "not a result");
        write("_invalid/x.yaml.txt", "x");
        write("broken/20260501T080000Z-2.json", "{\"truncated\": ");
        let store = FolderStore::at(&root.path().join("state")).with_results(&results);
        assert_eq!(
            store.plans_with_results().await.expect("index"),
            ["broken", "web"]
        );
        let web = store.plan_runs("web").await.expect("index");
        assert_eq!(web.count, 2);
        let last = web.last.expect("some").expect("readable");
        assert_eq!(last.run_id, "20260501T080000Z-1");
        let broken = store.plan_runs("broken").await.expect("index");
        let why = broken.last.expect("some").expect_err("unreadable");
        assert!(why.contains("not a result file"), "{why}");
    }
}
