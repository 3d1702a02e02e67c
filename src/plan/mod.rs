//! The validated plan model: what a plan file means once every rule has been checked.
//!
//! Values of these types are only built by [`validate`] (from [`raw`]), so code that holds a
//! [`Plan`] may trust every field: ids are well formed, params are within the API's limits,
//! plan-level params are already merged into each task's, and the schedule parses.

pub mod catalog;
pub mod load;
pub mod raw;
pub mod validate;

use std::num::NonZeroUsize;
use std::path::PathBuf;

use crate::api::rules::ParamType;
use crate::schedule::Schedule;
use crate::secret::Secret;

/// A validated deploy plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Unique name in the plans folder: `[A-Za-z0-9._-]{1,64}`, default the file stem.
    pub name: String,
    /// The file name it was loaded from (no folder), as written into result files.
    pub file_name: String,
    /// Lowercase hex SHA-256 of the file's bytes: the identity of this version of the plan.
    pub sha256: String,
    /// When to fire; `None` means run once on arrival (and again only when the content changes).
    pub schedule: Option<Schedule>,
    /// `false`: loaded and checked, never fired.
    pub enabled: bool,
    /// What a fire does when the previous run of this plan is still going.
    pub overlap: Overlap,
    /// Sent as `trigger_source` when set: `"0"` or `"1"`.
    pub trigger_source: Option<String>,
    /// This plan's calls in flight, within the global limit.
    pub concurrency: Option<NonZeroUsize>,
    /// Retry settings that override the daemon's for this plan.
    pub retry: RetryOverrides,
    /// `follow: true`: poll each started deployment until it ends, for at most this long.
    pub follow: Option<std::time::Duration>,
    /// The tasks to start, in file order, ids unique.
    pub tasks: Vec<Task>,
}

/// What a fire does when the last run of the same plan is still in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlap {
    /// Drop this fire and log it (the default).
    #[default]
    Skip,
    /// Run after the current run ends (at most one waiting).
    Queue,
    /// Run alongside.
    Allow,
}

/// Per-plan retry settings; `None` fields fall back to the daemon's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOverrides {
    /// Attempts per task, first call included (>= 1).
    pub max_attempts: Option<u32>,
    /// First backoff delay.
    pub base: Option<std::time::Duration>,
    /// Largest backoff delay.
    pub cap: Option<std::time::Duration>,
    /// Time budget per task, from its first attempt.
    pub deadline: Option<std::time::Duration>,
}

/// One deployment task to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The deployment task id: 32 letters and digits.
    pub task_id: String,
    /// Plan-level params merged with the task's own (the task's key wins), in a stable order:
    /// plan params first in file order (unless overridden), then the task's own in file order.
    pub params: Vec<Param>,
    /// An earlier deployment record to redeploy (32 letters and digits).
    pub record_id: Option<String>,
}

/// A runtime parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// 1..=128 characters of `[A-Za-z0-9._-]`.
    pub key: String,
    /// The param type, default `text`.
    pub ty: ParamType,
    /// Where the value comes from.
    pub value: ParamValue,
}

/// A param's value: written in the plan, or resolved when the run starts.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// The text written in the file (already checked against the API's value rules).
    /// A `Secret` so that an `encrypt` value never reaches a `Debug` print.
    Literal(Secret),
    /// `value_from: {env: NAME}`.
    Env(String),
    /// `value_from: {file: PATH}`; a relative path is relative to the plan file's folder.
    File(PathBuf),
}
