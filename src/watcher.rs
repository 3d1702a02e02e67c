//! Watching the plans folder with `notify`: the folder itself (editors replace files by
//! rename), each event turned into a small `Hint` on a bounded channel. Hints are only hints:
//! the daemon rescans the folder and compares content. The callback never blocks; when the
//! channel is full it raises a flag that makes the next scan a full one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Capacity of the hint channel; beyond it hints collapse into one rescan.
const HINT_CAPACITY: usize = 1024;

/// What an event says about one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintKind {
    /// Created or written: may still be in progress.
    Written,
    /// A writer closed the file: its content is complete.
    Closed,
    /// Renamed into place: complete by construction (`mv plan.yaml.tmp plan.yaml`).
    RenamedIn,
    /// Removed or renamed away.
    Gone,
}

/// A message from the watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Something happened to this path.
    Path(PathBuf, HintKind),
    /// Events may have been lost (inotify overflow, watcher error): rescan everything.
    Rescan(String),
}

/// The watcher: dropping it stops watching.
pub struct FolderWatcher {
    _inner: RecommendedWatcher,
    overflowed: Arc<AtomicBool>,
}

impl FolderWatcher {
    /// Starts watching `dir` (not recursive). Hints arrive on the returned receiver.
    pub fn start(dir: &Path) -> notify::Result<(Self, mpsc::Receiver<Hint>)> {
        let (tx, rx) = mpsc::channel(HINT_CAPACITY);
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = overflowed.clone();
        let mut inner = notify::recommended_watcher(move |res: notify::Result<Event>| {
            for hint in hints_of(res) {
                if tx.try_send(hint).is_err() {
                    flag.store(true, Ordering::Relaxed);
                }
            }
        })?;
        inner.watch(dir, RecursiveMode::NonRecursive)?;
        Ok((
            Self {
                _inner: inner,
                overflowed,
            },
            rx,
        ))
    }

    /// Whether hints were dropped since the last call (then a full rescan is due).
    pub fn take_overflow(&self) -> bool {
        self.overflowed.swap(false, Ordering::Relaxed)
    }
}

/// Turns one notify callback into hints. Reads (including our own) are ignored, otherwise
/// every scan would trigger the next one.
pub fn hints_of(res: notify::Result<Event>) -> Vec<Hint> {
    let event = match res {
        Ok(e) => e,
        Err(e) => return vec![Hint::Rescan(format!("watcher error: {e}"))],
    };
    if event.need_rescan() {
        return vec![Hint::Rescan(
            "the kernel dropped events (queue overflow)".into(),
        )];
    }
    let kind = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => HintKind::Closed,
        EventKind::Access(_) => return Vec::new(),
        EventKind::Create(_)
        | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Other) => {
            HintKind::Written
        }
        EventKind::Modify(ModifyKind::Metadata(_)) => return Vec::new(),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => HintKind::RenamedIn,
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => HintKind::Gone,
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            // [from, to]: the To half also arrives on its own; the From half too.
            return Vec::new();
        }
        EventKind::Modify(ModifyKind::Name(_)) => HintKind::Written,
        EventKind::Remove(_) => HintKind::Gone,
        EventKind::Any | EventKind::Other => {
            return vec![Hint::Rescan("unclassified event".into())];
        }
    };
    event
        .paths
        .into_iter()
        .map(|p| Hint::Path(p, kind))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, Flag};

    #[test]
    fn classifies_events() {
        let ev = |kind| Ok(Event::new(kind).add_path(PathBuf::from("/p/a.yaml")));
        let path = |k| vec![Hint::Path(PathBuf::from("/p/a.yaml"), k)];
        assert_eq!(
            hints_of(ev(EventKind::Create(CreateKind::File))),
            path(HintKind::Written)
        );
        assert_eq!(
            hints_of(ev(EventKind::Modify(ModifyKind::Data(DataChange::Any)))),
            path(HintKind::Written)
        );
        assert_eq!(
            hints_of(ev(EventKind::Access(AccessKind::Close(AccessMode::Write)))),
            path(HintKind::Closed)
        );
        assert_eq!(
            hints_of(ev(EventKind::Access(AccessKind::Close(AccessMode::Read)))),
            vec![]
        );
        assert_eq!(
            hints_of(ev(EventKind::Modify(ModifyKind::Name(RenameMode::To)))),
            path(HintKind::RenamedIn)
        );
        assert_eq!(
            hints_of(ev(EventKind::Modify(ModifyKind::Name(RenameMode::From)))),
            path(HintKind::Gone)
        );
        assert_eq!(
            hints_of(ev(EventKind::Remove(notify::event::RemoveKind::File))),
            path(HintKind::Gone)
        );
        let overflow = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert!(matches!(
            hints_of(Ok(overflow)).as_slice(),
            [Hint::Rescan(_)]
        ));
    }

    #[tokio::test]
    async fn sees_a_rename_into_the_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_w, mut rx) = FolderWatcher::start(dir.path()).expect("watch");
        std::fs::write(dir.path().join("p.yaml.tmp"), "x").expect("write");
        std::fs::rename(dir.path().join("p.yaml.tmp"), dir.path().join("p.yaml")).expect("mv");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let target = dir.path().join("p.yaml");
        loop {
            let hint = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("hint before the deadline");
            if hint == Some(Hint::Path(target.clone(), HintKind::RenamedIn)) {
                break;
            }
        }
    }
}
