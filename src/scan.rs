//! Scanning the plans folder: which plan files are there, which are settled (not being
//! written), and what each holds. Unchanged content (same SHA-256) is not parsed again. A file
//! still being written is reported as `Unsettled`, so a half-written plan never runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use sha2::{Digest, Sha256};

use crate::plan::catalog::{Seen, Valid};
use crate::plan::load::{is_plan_file_name, parse_plan_file, plan_files_in, read_limited};
use crate::plan::{PlanIssue, PlanIssues};
use crate::watcher::HintKind;

/// A file written without an event telling it is complete must be this old to be read.
pub const QUIET: Duration = Duration::from_secs(1);
/// A write still open after this long is no longer waited for (a lost close event).
const PENDING_WRITE_MAX: Duration = Duration::from_secs(600);

/// The scanner's memory between scans.
#[derive(Debug, Default)]
pub struct FolderScanner {
    /// Files written to and not yet closed, with when the last write was seen.
    open_writes: HashMap<PathBuf, Instant>,
    /// Files known complete (closed after writing, or renamed in) since their last write.
    complete: HashSet<PathBuf>,
    /// Last parse per file, with the file's identity and content hash.
    cache: HashMap<PathBuf, Cached>,
}

/// What the scanner remembers of a file it read.
#[derive(Debug)]
struct Cached {
    identity: Option<FileIdentity>,
    sha: String,
    outcome: Result<Valid, PlanIssues>,
}

/// Size, inode and nanosecond change times: when all are equal, the content is taken as
/// unchanged without reading it (event-driven scans only; full scans always read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    len: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileIdentity {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            len: m.len(),
            ino: m.ino(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The result of one scan.
#[derive(Debug)]
pub struct Scan {
    /// Every plan file present.
    pub seen: BTreeMap<PathBuf, Seen>,
    /// When to look again because some file was not settled.
    pub recheck_at: Option<Instant>,
}

impl FolderScanner {
    /// A scanner with no memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes note of a watcher hint.
    pub fn note(&mut self, path: PathBuf, kind: HintKind) {
        match kind {
            HintKind::Written => {
                self.complete.remove(&path);
                self.open_writes.insert(path, Instant::now());
            }
            HintKind::Closed | HintKind::RenamedIn => {
                self.open_writes.remove(&path);
                self.complete.insert(path);
            }
            HintKind::Gone => {
                self.open_writes.remove(&path);
                self.complete.remove(&path);
            }
        }
    }

    /// Forgets what events said (after lost events): settledness falls back to file age.
    pub fn forget_hints(&mut self) {
        self.open_writes.clear();
        self.complete.clear();
    }

    /// Scans `dir`. A `full` scan reads and hashes every file; otherwise a file whose size,
    /// inode and change times are those of the last read is not read again (so a folder event
    /// costs a `stat` per file, not a read). I/O errors on the folder itself are returned;
    /// errors on one file become that file's issue.
    pub fn scan(&mut self, dir: &Path, full: bool) -> std::io::Result<Scan> {
        let files = plan_files_in(dir)?;
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut seen = BTreeMap::new();
        let mut recheck_at: Option<Instant> = None;
        let mut later =
            |at: Instant| recheck_at = Some(recheck_at.map_or(at, |r: Instant| r.min(at)));
        self.open_writes
            .retain(|_, at| now.duration_since(*at) < PENDING_WRITE_MAX);
        for path in files {
            if let Some(at) = self.open_writes.get(&path) {
                // Still open for writing: look again once it is closed, or after a while.
                later(*at + QUIET.max(now.duration_since(*at)));
                seen.insert(path, Seen::Unsettled);
                continue;
            }
            if !self.complete.contains(&path) {
                // No event vouches for this file: it must have been quiet for a moment.
                let age = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| wall.duration_since(m).ok())
                    .unwrap_or(QUIET);
                if age < QUIET {
                    later(now + (QUIET - age));
                    seen.insert(path, Seen::Unsettled);
                    continue;
                }
            }
            let outcome = self.read(&path, full);
            seen.insert(path, Seen::Read(outcome));
        }
        self.cache.retain(|p, _| seen.contains_key(p));
        self.complete.retain(|p| seen.contains_key(p));
        Ok(Scan { seen, recheck_at })
    }

    fn read(&mut self, path: &Path, full: bool) -> Result<Valid, PlanIssues> {
        let identity = FileIdentity::of(path);
        if !full
            && let Some(cached) = self.cache.get(path)
            && identity.is_some()
            && cached.identity == identity
        {
            return cached.outcome.clone();
        }
        let bytes = match read_limited(path) {
            Ok(b) => b,
            Err(message) => {
                self.cache.remove(path);
                return Err(PlanIssues(vec![PlanIssue {
                    file: path.to_path_buf(),
                    line: 1,
                    column: 1,
                    path: String::new(),
                    message,
                }]));
            }
        };
        let sha = hex::encode(Sha256::digest(&bytes));
        if let Some(cached) = self.cache.get_mut(path)
            && cached.sha == sha
        {
            cached.identity = identity;
            return cached.outcome.clone();
        }
        let outcome = parse_plan_file(path, &bytes).map(Valid::from);
        self.cache.insert(
            path.to_path_buf(),
            Cached {
                identity,
                sha,
                outcome: outcome.clone(),
            },
        );
        outcome
    }
}

/// Whether a hint's path concerns a plan file in `dir`.
pub fn concerns_plans(dir: &Path, path: &Path) -> bool {
    path.parent() == Some(dir)
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_plan_file_name)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const PLAN: &str = "tasks: [d2dc947ec2424d8789bb3984bb3adf45]\n";

    fn read_ok(scan: &Scan, path: &Path) -> bool {
        matches!(scan.seen.get(path), Some(Seen::Read(Ok(_))))
    }

    #[tokio::test]
    async fn a_file_open_for_writing_is_unsettled_until_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, PLAN).expect("write");
        let mut scanner = FolderScanner::new();
        scanner.note(path.clone(), HintKind::Written);
        let scan = scanner.scan(dir.path(), false).expect("scan");
        assert!(matches!(scan.seen.get(&path), Some(Seen::Unsettled)));
        assert!(scan.recheck_at.is_some(), "a recheck is scheduled");
        scanner.note(path.clone(), HintKind::Closed);
        let scan = scanner.scan(dir.path(), false).expect("scan");
        assert!(read_ok(&scan, &path), "closed after writing: complete");
    }

    #[tokio::test]
    async fn a_fresh_file_without_events_waits_for_quiet_and_a_rename_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh = dir.path().join("fresh.yaml");
        let moved = dir.path().join("moved.yaml");
        std::fs::write(&fresh, PLAN).expect("write");
        std::fs::write(&moved, PLAN).expect("write");
        let mut scanner = FolderScanner::new();
        scanner.note(moved.clone(), HintKind::RenamedIn);
        let scan = scanner.scan(dir.path(), false).expect("scan");
        assert!(
            matches!(scan.seen.get(&fresh), Some(Seen::Unsettled)),
            "written under a second ago"
        );
        assert!(
            read_ok(&scan, &moved),
            "renamed in: complete by construction"
        );
    }

    #[tokio::test]
    async fn an_edit_is_seen_by_an_event_scan_through_the_file_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, PLAN).expect("write");
        let mut scanner = FolderScanner::new();
        scanner.note(path.clone(), HintKind::Closed);
        let first = scanner.scan(dir.path(), false).expect("scan");
        let Some(Seen::Read(Ok(a))) = first.seen.get(&path) else {
            panic!("read")
        };
        let a = a.plan.sha256.clone();
        // Same size, new content.
        std::fs::write(&path, PLAN.replace("d2dc", "e2dc")).expect("write");
        scanner.note(path.clone(), HintKind::Closed);
        let second = scanner.scan(dir.path(), false).expect("scan");
        let Some(Seen::Read(Ok(b))) = second.seen.get(&path) else {
            panic!("read")
        };
        assert_ne!(a, b.plan.sha256, "the change was read");
        // Unchanged: the very same shared plan comes back.
        let third = scanner.scan(dir.path(), false).expect("scan");
        let Some(Seen::Read(Ok(c))) = third.seen.get(&path) else {
            panic!("read")
        };
        assert!(Arc::ptr_eq(&b.plan, &c.plan), "not parsed again");
    }
}
