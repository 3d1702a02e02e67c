//! Scanning the plans folder: which plan files are there, which are settled (not being
//! written), and what each holds. Unchanged content (same SHA-256) is not parsed again. A file
//! still being written is reported as `Unsettled`, so a half-written plan never runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use sha2::{Digest, Sha256};

use crate::plan::catalog::Seen;
use crate::plan::load::{Loaded, is_plan_file_name, parse_plan, plan_files_in, read_limited};
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
    /// Last parse per file, keyed by content hash.
    cache: HashMap<PathBuf, (String, Result<Loaded, PlanIssues>)>,
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

    /// Scans `dir`. I/O errors on the folder itself are returned; errors on one file become
    /// that file's issue.
    pub fn scan(&mut self, dir: &Path) -> std::io::Result<Scan> {
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
            let outcome = self.read(&path);
            seen.insert(path, Seen::Read(outcome));
        }
        self.cache.retain(|p, _| seen.contains_key(p));
        self.complete.retain(|p| seen.contains_key(p));
        Ok(Scan { seen, recheck_at })
    }

    fn read(&mut self, path: &Path) -> Result<Loaded, PlanIssues> {
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
        if let Some((cached_sha, outcome)) = self.cache.get(path)
            && *cached_sha == sha
        {
            return outcome.clone();
        }
        let outcome = parse_plan(path, &bytes);
        self.cache
            .insert(path.to_path_buf(), (sha, outcome.clone()));
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
