//! The state folder: the memory of run-once plans, (plan name, content hash) -> run id,
//! written durably before a run's first call so that a restart or a crash never runs the same
//! content twice, and the daemon's lock on the folder (`STATE/lock`, one daemon per state
//! folder). The only module that writes under `STATE/once/`.

use std::path::{Path, PathBuf};

use crate::results::{RunId, write_atomic};

/// Why the state folder could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The folder could not be created or read.
    #[error("state folder {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A durable write failed.
    #[error(transparent)]
    Write(#[from] crate::results::WriteError),
    /// A state file that cannot be read as what it should hold.
    #[error("{path} is damaged ({why})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
        /// When it was last written (every fire time it held is at or before this).
        modified: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Another daemon holds the state folder.
    #[error(
        "the state folder {path} belongs to another running deployd ({holder}); one state folder serves one daemon: stop the other one, or give this one its own --state-dir"
    )]
    Locked {
        /// The state folder.
        path: PathBuf,
        /// Who holds it, as its lock file says.
        holder: String,
    },
}

/// The daemon's hold on its state folder, for as long as it lives (released on drop, or by
/// the kernel when the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

/// Used fire times kept per plan (a clock set back further than this many fires may repeat
/// the oldest).
pub const FIRES_KEPT: usize = 64;

/// The lock file in the state folder; it holds the holder's pid.
pub const LOCK_FILE: &str = "lock";

/// The state folder.
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    /// Opens (creating it if needed, mode 0750) the state folder.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        use std::os::unix::fs::DirBuilderExt;
        for dir in [
            root.to_path_buf(),
            root.join("once"),
            root.join("runs"),
            root.join("fires"),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(&dir)
                .map_err(|source| StateError::Io {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Takes the daemon's lock on the folder (`flock` on `STATE/lock`, which then holds this
    /// process's pid), or says which process holds it.
    pub fn lock_for_daemon(&self) -> Result<StateLock, StateError> {
        use std::io::{Read, Seek, Write};
        let path = self.root.join(LOCK_FILE);
        let io = |source| StateError::Io {
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
            return Err(StateError::Locked {
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

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn once_path(&self, plan: &str, sha256: &str) -> PathBuf {
        // Plan names are `[A-Za-z0-9._-]`, never `.`/`..` (the validator refuses them), so
        // they are safe as folder names.
        self.root.join("once").join(plan).join(sha256)
    }

    /// The run that already ran this content of this run-once plan, if any.
    pub fn ran_once(&self, plan: &str, sha256: &str) -> Result<Option<RunId>, StateError> {
        let path = self.once_path(plan, sha256);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(RunId::from_string(text.trim().to_string()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    fn fires_path(&self, plan: &str) -> PathBuf {
        self.root.join("fires").join(format!("{plan}.json"))
    }

    /// The fire times of a scheduled plan already used (run or skipped), newest last: a fire
    /// time in it never runs again, across disable/enable and restarts, whatever the clock
    /// does. An unreadable file counts as empty (it is logged by the caller).
    pub fn fired(&self, plan: &str) -> Result<Vec<chrono::DateTime<chrono::Utc>>, StateError> {
        let path = self.fires_path(plan);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                let modified = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .map(chrono::DateTime::<chrono::Utc>::from)
                    .ok();
                StateError::Corrupt {
                    path: path.clone(),
                    why: e.to_string(),
                    modified,
                }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Keeps, durably, the fire times of a plan already used (the newest [`FIRES_KEPT`]).
    pub fn record_fired(
        &self,
        plan: &str,
        fired: &[chrono::DateTime<chrono::Utc>],
    ) -> Result<(), StateError> {
        let keep = &fired[fired.len().saturating_sub(FIRES_KEPT)..];
        let bytes = serde_json::to_vec(keep).unwrap_or_default();
        write_atomic(&self.fires_path(plan), &bytes, 0o640)?;
        Ok(())
    }

    /// Records, durably, that this content is being run by `run_id`. Call before any call.
    pub fn record_once(&self, plan: &str, sha256: &str, run_id: &RunId) -> Result<(), StateError> {
        write_atomic(
            &self.once_path(plan, sha256),
            format!("{run_id}\n").as_bytes(),
            0o640,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_fire_times_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path()).expect("open");
        assert!(store.fired("tick").expect("read").is_empty());
        let t0 = chrono::Utc::now();
        let times: Vec<_> = (0..100)
            .map(|i| t0 + chrono::TimeDelta::seconds(i))
            .collect();
        store.record_fired("tick", &times).expect("write");
        let again = StateStore::open(dir.path()).expect("reopen");
        let kept = again.fired("tick").expect("read");
        assert_eq!(kept.len(), FIRES_KEPT);
        assert_eq!(kept.last(), times.last());
    }

    #[test]
    fn one_daemon_per_state_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path()).expect("open");
        let held = store.lock_for_daemon().expect("first");
        let err = StateStore::open(dir.path())
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

    #[test]
    fn once_memory_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path()).expect("open");
        assert_eq!(store.ran_once("web", "abc").expect("read"), None);
        let id = RunId::from_string("20261128T013000Z-00000001".into());
        store.record_once("web", "abc", &id).expect("write");
        let again = StateStore::open(dir.path()).expect("reopen");
        assert_eq!(again.ran_once("web", "abc").expect("read"), Some(id));
        assert_eq!(again.ran_once("web", "def").expect("read"), None);
        assert_eq!(again.ran_once("other", "abc").expect("read"), None);
    }
}
