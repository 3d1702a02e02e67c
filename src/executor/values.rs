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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::api::rules::{self, ParamType};
use crate::plan::validate::{MAX_PARAM_BYTES, param_cost};
use crate::plan::{ParamValue, Plan, Task};
use crate::results::ReportParam;
use crate::secret::Secret;
use crate::value_files::read_value_file;
#[cfg(test)]
use crate::value_files::{check_at_load, refused_root, strip_one_newline};

/// How long reading one value file may take before the tasks using it fail.
pub const VALUE_FILE_TIMEOUT: Duration = Duration::from_secs(5);
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

#[cfg(test)]
mod tests;
