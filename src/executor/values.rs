//! `value_from` resolution: owns reading the environment variables and value files a plan
//! names, once per run, into a [`Snapshot`] that gives every task of the run the same value.
//!
//! A value file is read as a regular file only: paths under `/proc`, `/sys` and `/dev` are
//! refused, lexically, after resolving symlinks, and again on the handle actually opened
//! (`/proc/self/fd/N`), whose type is checked with `fstat` before a byte is read. The file is
//! opened `O_NONBLOCK` (a FIFO or device can never block the open), at most 8192 characters
//! (the API's limit) plus one are read, on a thread of its own and with a timeout, so that a
//! hostile or stuck file can neither hang nor swell the daemon. Messages name the param and
//! the path or variable, never a value. It does not call the API nor write anything.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::api::rules::{self, PARAM_VALUE_MAX, ParamType};
use crate::plan::validate::{MAX_PARAM_BYTES, param_cost};
use crate::plan::{ParamValue, Plan, Task};
use crate::results::ReportParam;
use crate::secret::Secret;

/// How long reading one value file may take before the tasks using it fail.
pub const VALUE_FILE_TIMEOUT: Duration = Duration::from_secs(5);
/// Folders whose files are never a param value: the kernel's views of processes (deployd's
/// own environment, `/proc/self/environ`), of the system, and devices.
pub const REFUSED_ROOTS: [&str; 3] = ["/proc", "/sys", "/dev"];
/// Value files read at once by one run.
const PARALLEL_READS: usize = 8;
/// Reader threads that may be stuck at once (a read that outlived its timeout keeps its
/// thread until the kernel returns); beyond this, new reads fail at once instead of piling up.
const MAX_STUCK_READERS: usize = 32;

/// Reader threads alive now, in the whole process.
static READERS: AtomicUsize = AtomicUsize::new(0);

/// A param with its value resolved for this run.
pub struct Resolved {
    /// Key.
    pub key: String,
    /// Type.
    pub ty: ParamType,
    /// The value to send.
    pub value: Secret,
}

/// Why a task's params could not be resolved; no call is made for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// The result's `error_code`.
    pub code: &'static str,
    /// The result's `error_msg`: names the param and the path or variable, never a value.
    pub message: String,
}

/// Where a `value_from` reads (a file path already joined to the plan's folder).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Env(String),
    File(PathBuf),
}

/// Every `value_from` of one run, read once when the run starts.
pub struct Snapshot {
    plan_dir: PathBuf,
    values: HashMap<Source, Result<Secret, String>>,
    /// Set when the values read make the plan's params larger than [`MAX_PARAM_BYTES`]: the
    /// whole run is refused (no task is called).
    too_large: Option<String>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("sources", &self.values.len())
            .field("too_large", &self.too_large.is_some())
            .finish()
    }
}

impl Snapshot {
    /// Reads each distinct environment variable and file the plan names, once. Files are
    /// read concurrently, each off the runtime's workers and within `timeout`; `forbidden`
    /// lists deployd's own secret files and folders.
    pub async fn take(
        plan: &Plan,
        plan_dir: &Path,
        forbidden: &[PathBuf],
        timeout: Duration,
    ) -> Self {
        let mut sources: HashSet<Source> = HashSet::new();
        for p in plan.tasks.iter().flat_map(|t| &t.params) {
            if let Some(s) = source(&p.value, plan_dir) {
                sources.insert(s);
            }
        }
        let mut values = HashMap::with_capacity(sources.len());
        let gate = Arc::new(Semaphore::new(PARALLEL_READS));
        let forbidden: Arc<[PathBuf]> = forbidden.into();
        let mut reads = tokio::task::JoinSet::new();
        for s in sources {
            match s {
                Source::Env(name) => {
                    let v = read_env(&name);
                    values.insert(Source::Env(name), v);
                }
                Source::File(path) => {
                    let (gate, forbidden) = (gate.clone(), forbidden.clone());
                    reads.spawn(async move {
                        let _permit = gate.acquire_owned().await;
                        let reader = {
                            let (path, forbidden) = (path.clone(), forbidden.clone());
                            move || read_value_file(&path, &forbidden)
                        };
                        let v = off_runtime(&path, timeout, reader).await.and_then(|text| {
                            check_value(&text)
                                .map(|()| Secret::new(text))
                                .map_err(|e| format!("the content of {} {e}", path.display()))
                        });
                        (Source::File(path), v)
                    });
                }
            }
        }
        while let Some(done) = reads.join_next().await {
            if let Ok((s, v)) = done {
                values.insert(s, v);
            }
        }
        let mut snapshot = Self {
            plan_dir: plan_dir.to_path_buf(),
            values,
            too_large: None,
        };
        snapshot.too_large = snapshot.check_size(plan);
        snapshot
    }

    /// The params to send for `task`, or why it cannot be called.
    pub fn resolve(&self, task: &Task) -> Result<Vec<Resolved>, Unresolved> {
        if let Some(why) = &self.too_large {
            return Err(Unresolved {
                code: "params_too_large",
                message: why.clone(),
            });
        }
        task.params
            .iter()
            .map(|p| {
                let value = match &p.value {
                    ParamValue::Literal(v) => v.clone(),
                    other => self.read(other).cloned().map_err(|e| Unresolved {
                        code: "param_unresolved",
                        message: format!("param {:?}: {e}", p.key),
                    })?,
                };
                Ok(Resolved {
                    key: p.key.clone(),
                    ty: p.ty,
                    value,
                })
            })
            .collect()
    }

    /// The value read for a `value_from`.
    fn read(&self, value: &ParamValue) -> Result<&Secret, String> {
        let s = source(value, &self.plan_dir).ok_or("not a value_from")?;
        match self.values.get(&s) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(e.clone()),
            None => Err("its value was not read".into()),
        }
    }

    /// `task`'s params as a result file shows them: the value read (masked for `encrypt`),
    /// or null where it could not be read.
    pub fn report_params(&self, task: &Task) -> Vec<ReportParam> {
        task.params
            .iter()
            .map(|p| {
                let value = match &p.value {
                    ParamValue::Literal(v) => Some(v),
                    other => self.read(other).ok(),
                };
                ReportParam {
                    key: p.key.clone(),
                    ty: p.ty,
                    value: value.map(|v| {
                        if p.ty == ParamType::Encrypt {
                            super::MASK.to_string()
                        } else {
                            v.expose().to_string()
                        }
                    }),
                }
            })
            .collect()
    }

    /// The plan's merged params with the values read must still fit [`MAX_PARAM_BYTES`]
    /// (the loader counted each `value_from` at 8192 bytes; a file of multi-byte characters
    /// can be larger).
    fn check_size(&self, plan: &Plan) -> Option<String> {
        let mut lens: HashMap<&Source, usize> = HashMap::new();
        let mut total = 0usize;
        for p in plan.tasks.iter().flat_map(|t| &t.params) {
            let value_len = match &p.value {
                ParamValue::Literal(v) => crate::plan::validate::json_len(v.expose()),
                other => {
                    let Some(s) = source(other, &self.plan_dir) else {
                        continue;
                    };
                    let Some((s, v)) = self.values.get_key_value(&s) else {
                        continue;
                    };
                    *lens.entry(s).or_insert_with(|| {
                        v.as_ref()
                            .map_or(0, |v| crate::plan::validate::json_len(v.expose()))
                    })
                }
            };
            total = total.saturating_add(param_cost(&p.key, value_len));
        }
        (total > MAX_PARAM_BYTES).then(|| {
            format!(
                "not called: with the values read at the start of the run, the plan's params total {total} bytes (plan params counted once per task), above the budget of {MAX_PARAM_BYTES} bytes (64 MiB); shorten the value files or split the plan"
            )
        })
    }
}

fn source(value: &ParamValue, plan_dir: &Path) -> Option<Source> {
    match value {
        ParamValue::Literal(_) => None,
        ParamValue::Env(name) => Some(Source::Env(name.clone())),
        ParamValue::File(path) => Some(Source::File(if path.is_absolute() {
            path.clone()
        } else {
            plan_dir.join(path)
        })),
    }
}

fn read_env(name: &str) -> Result<Secret, String> {
    let value = std::env::var(name)
        .map_err(|_| format!("environment variable {name} is not set (or not UTF-8)"))?;
    check_value(&value).map_err(|e| format!("the value of environment variable {name} {e}"))?;
    Ok(Secret::new(value))
}

/// The API's value rules, on a value read at run time (the message never quotes it).
fn check_value(value: &str) -> Result<(), String> {
    rules::check_param_value(value)
}

/// The refused root `path` is under (`/proc`, `/sys`, `/dev`), compared by components.
pub fn refused_root(path: &Path) -> Option<&'static str> {
    REFUSED_ROOTS
        .into_iter()
        .find(|root| path.starts_with(root))
}

/// `path` with `.` and `..` folded without touching the file system (`/tmp/../proc` is
/// `/proc`), so that a refused folder cannot hide behind a detour.
fn fold_dots(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn refused_message(path: &Path, resolved: Option<&Path>, root: &str) -> String {
    let what = match resolved {
        Some(r) if r != path => format!(
            "{} resolves to {}, under {root}",
            path.display(),
            r.display()
        ),
        _ => format!("{} is under {root}", path.display()),
    };
    format!(
        "{what}: value_from.file reads regular files only, never under /proc, /sys or /dev (they expose the daemon's own environment and devices)"
    )
}

/// Refuses a path that is, or resolves through symlinks to, a file under a refused root.
fn check_path(path: &Path) -> Result<(), String> {
    let folded = fold_dots(path);
    if let Some(root) = refused_root(&folded) {
        return Err(refused_message(path, None, root));
    }
    if let Ok(real) = std::fs::canonicalize(path)
        && let Some(root) = refused_root(&real)
    {
        return Err(refused_message(path, Some(&real), root));
    }
    Ok(())
}

/// The kind of a file that is not a regular file, for messages.
fn kind_of(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a folder"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Opens a value file for reading, never blocking: the path must not lead under a refused
/// root nor into `forbidden`, checked on the handle actually opened, and it must be a
/// regular file (`fstat` on that handle).
fn open_checked(path: &Path, forbidden: &[PathBuf]) -> Result<File, OpenError> {
    check_path(path).map_err(OpenError::Refused)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO or a device never blocks the open; a regular file reads as usual.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(OpenError::Io)?;
    {
        use std::os::fd::AsRawFd;
        // What was opened, whatever symlinks were swapped meanwhile.
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .or_else(|_| std::fs::canonicalize(path))
            .map_err(|e| OpenError::Refused(format!("cannot resolve {}: {e}", path.display())))?;
        if let Some(root) = refused_root(&opened) {
            return Err(OpenError::Refused(refused_message(
                path,
                Some(&opened),
                root,
            )));
        }
        let forbidden_hit = forbidden
            .iter()
            .filter_map(|f| std::fs::canonicalize(f).ok())
            .any(|f| opened.starts_with(&f));
        if forbidden_hit {
            return Err(OpenError::Refused(format!(
                "{} holds deployd's own credentials; a plan may not read it",
                path.display()
            )));
        }
    }
    let meta = file.metadata().map_err(OpenError::Io)?;
    if !meta.file_type().is_file() {
        return Err(OpenError::Refused(format!(
            "{} is {}; value_from.file reads regular files only",
            path.display(),
            kind_of(&meta.file_type())
        )));
    }
    Ok(file)
}

enum OpenError {
    /// The path may never be read.
    Refused(String),
    /// It could not be opened (missing, no permission...).
    Io(std::io::Error),
}

/// Checks a `value_from.file` path when the plan is loaded: refused if it is, or resolves
/// to, a file under `/proc`, `/sys` or `/dev`, or is there and not a regular file. A file
/// that is missing or unreadable now is not an error here (it may be there when a run
/// starts, which checks everything again).
pub fn check_at_load(path: &Path) -> Result<(), String> {
    match open_checked(path, &[]) {
        Ok(_) | Err(OpenError::Io(_)) => Ok(()),
        Err(OpenError::Refused(why)) => Err(why),
    }
}

/// Reads a value file (blocking, but never on a FIFO or device): at most
/// [`PARAM_VALUE_MAX`] characters, one trailing newline dropped.
pub fn read_value_file(path: &Path, forbidden: &[PathBuf]) -> Result<String, String> {
    let file = open_checked(path, forbidden).map_err(|e| match e {
        OpenError::Refused(why) => why,
        OpenError::Io(e) => format!("cannot read {}: {e}", path.display()),
    })?;
    // 8192 characters take at most 4 x 8192 bytes, plus a line ending: reading one more
    // character's worth tells "too long" without reading the rest (`/dev/zero`-like files).
    let cap = (PARAM_VALUE_MAX + 1) * 4;
    let mut bytes = Vec::with_capacity(4096);
    file.take(cap as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let too_long = || {
        format!(
            "{} holds more than {PARAM_VALUE_MAX} characters, the API's limit for a param value",
            path.display()
        )
    };
    if bytes.len() >= cap {
        return Err(too_long());
    }
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let text = strip_one_newline(text);
    if text.chars().count() > PARAM_VALUE_MAX {
        return Err(too_long());
    }
    Ok(text)
}

/// `read` (a [`read_value_file`] of `path`) on a thread of its own, given up after `timeout`.
///
/// Not `spawn_blocking`: a read stuck in the kernel (a hung network file system) would keep
/// the runtime from shutting down, since tokio waits for its blocking threads; a detached
/// thread does not hold the daemon's exit. Stuck threads are counted and capped.
async fn off_runtime(
    path: &Path,
    timeout: Duration,
    read: impl FnOnce() -> Result<String, String> + Send + 'static,
) -> Result<String, String> {
    if READERS.fetch_add(1, Ordering::SeqCst) >= MAX_STUCK_READERS {
        READERS.fetch_sub(1, Ordering::SeqCst);
        return Err(format!(
            "cannot read {}: {MAX_STUCK_READERS} earlier value file reads are still stuck",
            path.display()
        ));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("value-file".into())
        .spawn(move || {
            let _ = tx.send(read());
            READERS.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        READERS.fetch_sub(1, Ordering::SeqCst);
        return Err(format!("cannot read {}: {e}", path.display()));
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(format!(
            "cannot read {}: the reader stopped",
            path.display()
        )),
        Err(_) => Err(format!(
            "reading {} took longer than {} s; given up",
            path.display(),
            timeout.as_secs_f64()
        )),
    }
}

/// A file's value without the one line ending editors add.
fn strip_one_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

#[cfg(test)]
mod tests;
