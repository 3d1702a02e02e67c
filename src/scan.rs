//! Scanning the plans folder: which plan files are there, which are settled (not being
//! written), and what each holds. Unchanged content (same SHA-256) is not parsed again. A file
//! still being written is reported as `Unsettled`, so a half-written plan never runs.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use sha2::{Digest, Sha256};

use crate::issue::{Issue, Issues};
use crate::plan::catalog::{Seen, Valid};
use crate::plan::load::{is_plan_file_name, parse_plan_file, plan_files_in, read_limited};
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
    cache: HashMap<PathBuf, KnownFile>,
    /// Files that are symlinks or have other hard links: an event about their twin or
    /// target names another path, so a scan of the named files alone could miss their change.
    linked: HashSet<PathBuf>,
}

/// What the scanner remembers of a file it read.
#[derive(Debug)]
struct KnownFile {
    identity: Option<FileIdentity>,
    sha: String,
    outcome: Result<Valid, Issues>,
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
    /// Files left unread because they are still open for writing: an event said so, or (no
    /// event vouching for the file: written before the daemon started, or while events were
    /// lost) `/proc` shows a writer.
    pub being_written: Vec<PathBuf>,
    /// Named files no longer there ([`FolderScanner::scan_named`] only; a full scan's `seen`
    /// says it by leaving them out).
    pub gone: Vec<PathBuf>,
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
        let mut pass = Pass::new(self);
        let mut seen = BTreeMap::new();
        for path in files {
            let look = pass.look(self, &path, full);
            seen.insert(path, look);
        }
        self.cache.retain(|p, _| seen.contains_key(p));
        self.linked.retain(|p| seen.contains_key(p));
        self.complete.retain(|p| seen.contains_key(p));
        Ok(Scan {
            seen,
            recheck_at: pass.recheck_at,
            being_written: pass.being_written,
            gone: Vec::new(),
        })
    }

    /// Looks at the named files of `dir` only (the paths hints named; only their file names
    /// count), at the cost of a few `stat`s each whatever the folder's size. A file that is no
    /// longer there (or is now a folder) is in [`Scan::gone`]. What a hint cannot tell (a
    /// change without an event) is left to the periodic full scan.
    pub fn scan_named(&mut self, dir: &Path, names: &BTreeSet<PathBuf>) -> Scan {
        let mut pass = Pass::new(self);
        let mut seen = BTreeMap::new();
        let mut gone = Vec::new();
        for hinted in names {
            let Some(name) = hinted.file_name() else {
                continue;
            };
            if !is_plan_file_name(&name.to_string_lossy()) {
                continue;
            }
            let path = dir.join(name);
            // What `plan_files_in` would list: any entry but a folder (or a link to one).
            let absent = std::fs::symlink_metadata(&path).is_err();
            if absent || std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                self.cache.remove(&path);
                self.linked.remove(&path);
                self.complete.remove(&path);
                self.open_writes.remove(&path);
                gone.push(path);
                continue;
            }
            let look = pass.look(self, &path, false);
            seen.insert(path, look);
        }
        Scan {
            seen,
            recheck_at: pass.recheck_at,
            being_written: pass.being_written,
            gone,
        }
    }

    /// Whether some plan file is a symlink or hard-linked: a change to it may come with an
    /// event naming another path only, so event-driven scans must look at every file.
    pub fn has_linked_files(&self) -> bool {
        !self.linked.is_empty()
    }

    fn read(&mut self, path: &Path, full: bool) -> Result<Valid, Issues> {
        use std::os::unix::fs::MetadataExt;
        let linked = std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.file_type().is_symlink() || m.nlink() > 1);
        if linked {
            self.linked.insert(path.to_path_buf());
        } else {
            self.linked.remove(path);
        }
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
                return Err(Issues(vec![Issue {
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
            KnownFile {
                identity,
                sha,
                outcome: outcome.clone(),
            },
        );
        outcome
    }
}

/// One scan's shared view: the time it started, when to look again, which files are being
/// written, and the `/proc` view of writers (read once, and only if some file needs it).
struct Pass {
    now: Instant,
    wall: SystemTime,
    recheck_at: Option<Instant>,
    being_written: Vec<PathBuf>,
    writers: Option<HashSet<(u64, u64)>>,
}

impl Pass {
    fn new(scanner: &mut FolderScanner) -> Self {
        let now = Instant::now();
        scanner
            .open_writes
            .retain(|_, at| now.duration_since(*at) < PENDING_WRITE_MAX);
        Self {
            now,
            wall: SystemTime::now(),
            recheck_at: None,
            being_written: Vec::new(),
            writers: None,
        }
    }

    fn later(&mut self, at: Instant) {
        self.recheck_at = Some(self.recheck_at.map_or(at, |r| r.min(at)));
    }

    /// One plan file: unsettled (being written, or too fresh to trust without an event) or
    /// read.
    fn look(&mut self, scanner: &mut FolderScanner, path: &Path, full: bool) -> Seen {
        let now = self.now;
        if let Some(at) = scanner.open_writes.get(path).copied() {
            // Still open for writing: look again once it is closed, or after a while.
            self.later(at + QUIET.max(now.duration_since(at)));
            self.being_written.push(path.to_path_buf());
            return Seen::Unsettled;
        }
        if !scanner.complete.contains(path) {
            // No event vouches for this file: it must have been quiet for a moment.
            let age = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| self.wall.duration_since(m).ok())
                .unwrap_or(QUIET);
            if age < QUIET {
                self.later(now + (QUIET - age));
                return Seen::Unsettled;
            }
            // Quiet, but maybe still open: a writer that paused is not done.
            let writers = self.writers.get_or_insert_with(open_for_writing);
            if file_key(path).is_some_and(|k| writers.contains(&k)) {
                self.later(now + QUIET);
                self.being_written.push(path.to_path_buf());
                return Seen::Unsettled;
            }
        }
        Seen::Read(scanner.read(path, full))
    }
}

/// Device and inode of a file.
fn file_key(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Device and inode of every regular file some process has open for writing, as far as
/// `/proc` lets this process see (its own user's processes, or all of them as root).
pub fn open_for_writing() -> HashSet<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for proc_entry in procs.flatten() {
        let name = proc_entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(meta) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let info = proc_entry.path().join("fdinfo").join(fd.file_name());
            let writable = std::fs::read_to_string(info).ok().and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            });
            // O_ACCMODE: 0 is read-only, 1 write-only, 2 read-write.
            if writable.is_some_and(|flags| flags & 0o3 != 0) {
                out.insert((meta.dev(), meta.ino()));
            }
        }
    }
    out
}

/// Whether a hint's path concerns a plan file in `dir`.
pub fn concerns_plans(dir: &Path, path: &Path) -> bool {
    // Judged by the lossy name, as `plan_files_in` does: a name that is not UTF-8 is a plan
    // file the loader reports, so its events count too.
    path.parent() == Some(dir)
        && path
            .file_name()
            .is_some_and(|n| is_plan_file_name(&n.to_string_lossy()))
}

#[cfg(test)]
mod open_writer_tests {
    use super::*;

    #[test]
    fn a_quiet_file_still_open_for_writing_is_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.yaml");
        let mut file = std::fs::File::create(&path).expect("create");
        std::io::Write::write_all(&mut file, b"tasks:\n  - d2dc947ec2424d8789bb3984bb3adf45\n")
            .expect("write");
        // Older than the quiet time, as after a writer's pause.
        let old = std::time::SystemTime::now() - Duration::from_secs(5);
        file.set_modified(old).expect("mtime");
        let mut scanner = FolderScanner::new();
        let scan = scanner.scan(dir.path(), true).expect("scan");
        assert!(matches!(scan.seen.get(&path), Some(Seen::Unsettled)));
        assert_eq!(scan.being_written, vec![path.clone()]);
        drop(file);
        let scan = scanner.scan(dir.path(), true).expect("scan");
        assert!(matches!(scan.seen.get(&path), Some(Seen::Read(Ok(_)))));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const PLAN: &str = "tasks: [d2dc947ec2424d8789bb3984bb3adf45]\n";

    fn read_ok(scan: &Scan, path: &Path) -> bool {
        matches!(scan.seen.get(path), Some(Seen::Read(Ok(_))))
    }

    /// Issue 10: events on a plan file whose name is not UTF-8 count (its report comes at
    /// once, not at the next periodic rescan).
    #[test]
    fn names_that_are_not_utf8_concern_the_plans_folder() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let dir = Path::new("/plans");
        assert!(concerns_plans(
            dir,
            &dir.join(OsStr::from_bytes(b"caf\xe9.yaml"))
        ));
        assert!(!concerns_plans(
            dir,
            &dir.join(OsStr::from_bytes(b".caf\xe9.yaml"))
        ));
        assert!(!concerns_plans(
            dir,
            &dir.join(OsStr::from_bytes(b"caf\xe9.txt"))
        ));
        assert!(concerns_plans(dir, &dir.join("cafe.yaml")));
    }

    /// A look at named files reads those only: a file not named is not even listed, a named
    /// file that went is gone, a named folder is not a plan, and settledness still holds.
    #[tokio::test]
    async fn a_named_look_reads_only_the_named_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, c, d) = (
            dir.path().join("a.yaml"),
            dir.path().join("b.yaml"),
            dir.path().join("c.yaml"),
            dir.path().join("d.yaml"),
        );
        std::fs::write(&a, PLAN).expect("write");
        std::fs::write(&b, PLAN).expect("write");
        std::fs::create_dir(&d).expect("mkdir");
        let mut scanner = FolderScanner::new();
        scanner.note(a.clone(), HintKind::RenamedIn);
        scanner.note(c.clone(), HintKind::Gone);
        // Hints may name the file under another spelling of the folder: the name counts.
        let names: BTreeSet<PathBuf> = [
            PathBuf::from("/elsewhere/a.yaml"),
            c.clone(),
            d.clone(),
            dir.path().join("notes.txt"),
        ]
        .into();
        let scan = scanner.scan_named(dir.path(), &names);
        assert!(read_ok(&scan, &a), "named and complete: read");
        assert!(!scan.seen.contains_key(&b), "not named: not looked at");
        assert_eq!(scan.gone, vec![c.clone(), d.clone()]);
        // A named file still being written is unsettled, as in a full scan.
        scanner.note(b.clone(), HintKind::Written);
        let scan = scanner.scan_named(dir.path(), &[b.clone()].into());
        assert!(matches!(scan.seen.get(&b), Some(Seen::Unsettled)));
        assert_eq!(scan.being_written, vec![b]);
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
