//! `RawPlan` -> [`Plan`]: every rule of the plan format, checked at once.
//!
//! [`validate`] walks the whole raw plan and collects every problem with its line, column and
//! field path (`tasks[1].params[0].value`) instead of stopping at the first, so that one
//! `deployd check` shows all of a file's mistakes. Pure: no I/O, no clock. Messages never quote
//! a param value, because it may be a secret.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::raw::{self, MAX_TASKS, RawParam, RawPlan, RawRetry, RawTask, RawValueFrom};
use super::{Overlap, Param, ParamValue, Plan, RetryOverrides, Task};
use crate::api::rules::{self, ParamType};
use crate::issue::{Issue, Issues, line_col};
use crate::schedule::{Schedule, parse_timezone};
use crate::secret::Secret;
use crate::zone::Zone;

/// Most params a plan may hold in total once plan-level params are merged into every task
/// (tasks x merged params): bounds the memory a 1 MiB file can make the daemon allocate.
pub const MAX_TOTAL_PARAMS: usize = 500_000;
/// Most bytes a plan's params may take once plan-level params are merged into every task
/// (64 MiB), counted by [`param_cost`]: what one run's result file, run journal and memory
/// hold of them. A `value_from` is counted at [`crate::api::rules::PARAM_VALUE_MAX`] bytes
/// here and at its real size when a run reads it.
pub const MAX_PARAM_BYTES: usize = 64 * 1024 * 1024;
/// Bytes a result file spends on one param besides its key and value (the pretty-printed JSON
/// object around them).
pub const PARAM_OVERHEAD: usize = 96;

/// What one param costs against [`MAX_PARAM_BYTES`]: its key and value as JSON text (see
/// [`json_len`]) plus [`PARAM_OVERHEAD`].
pub fn param_cost(key: &str, value_json_len: usize) -> usize {
    json_len(key)
        .saturating_add(value_json_len)
        .saturating_add(PARAM_OVERHEAD)
}

/// The length of `s` as the inside of a JSON string written by `serde_json` (quotes and
/// backslashes escaped in 2 bytes, other control characters in 2 or 6, the rest as UTF-8).
pub fn json_len(s: &str) -> usize {
    s.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// Longest plan name.
pub const NAME_MAX: usize = 64;
/// How long a deployment is followed when the plan says `follow: true` without a timeout.
pub const DEFAULT_FOLLOW_TIMEOUT: Duration = Duration::from_secs(3600);

/// Largest `concurrency` accepted, for a plan and for the whole account.
pub const MAX_CONCURRENCY: usize = 10_000;
/// Largest `retry.max_attempts`.
pub const MAX_ATTEMPTS: u64 = 20;
/// Longest duration `retry` accepts (24 h).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// What [`validate`] needs to know about the file besides its parsed content.
#[derive(Debug, Clone, Copy)]
pub struct PlanSource<'a> {
    /// The path messages show.
    pub file: &'a Path,
    /// The file's text, to read scalars exactly as written.
    pub text: &'a str,
    /// The file name (no folder), stored in [`Plan::file_name`].
    pub file_name: &'a str,
    /// The file stem, the default plan name.
    pub file_stem: &'a str,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: &'a str,
}

/// A valid plan and the warnings found on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The plan.
    pub plan: Plan,
    /// Things that are allowed but probably wrong (e.g. a plain-text secret).
    pub warnings: Vec<Issue>,
    /// Every `value_from.file` with where it is written, for the loader's file checks.
    pub value_files: Vec<ValueFileRef>,
}

/// A `value_from.file` as written in a plan, with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueFileRef {
    /// The path as written (relative to the plan's folder unless absolute).
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Field path such as `tasks[0].params[1].value_from.file`.
    pub field: String,
}

/// Checks every rule of the plan format and builds the [`Plan`], or returns every error.
pub fn validate(raw: RawPlan, src: &PlanSource<'_>) -> Result<Validated, Issues> {
    let mut r = Report {
        file: src.file,
        errors: Vec::new(),
        warnings: Vec::new(),
        value_files: Vec::new(),
    };

    let name = match &raw.name {
        Some(name) => {
            if let Err(e) = check_plan_name(&name.value) {
                r.error(&name.referenced, "name", e);
            }
            name.value.clone()
        }
        None => {
            if let Err(e) = check_plan_name(src.file_stem) {
                r.error_at(
                    1,
                    1,
                    "name",
                    format!(
                        "the default plan name, the file stem {:?}, {e}; rename the file or set `name`",
                        src.file_stem
                    ),
                );
            }
            src.file_stem.to_string()
        }
    };

    let tz = match &raw.timezone {
        Some(zone) => match parse_timezone(&zone.value) {
            Ok(tz) => tz,
            Err(e) => {
                r.error(&zone.referenced, "timezone", e.to_string());
                Zone::utc()
            }
        },
        None => Zone::utc(),
    };
    let schedule = match &raw.schedule {
        Some(expr) => match Schedule::parse(&expr.value, tz) {
            Ok(s) => Some(s),
            Err(e) => {
                r.error(
                    &expr.referenced,
                    "schedule",
                    format!("not a valid cron expression: {e}"),
                );
                None
            }
        },
        None => {
            if let Some(zone) = &raw.timezone {
                r.warn(
                    &zone.referenced,
                    "timezone",
                    "has no effect without `schedule`",
                );
            }
            None
        }
    };

    let overlap = match &raw.overlap {
        None => Overlap::default(),
        Some(o) => match o.value.as_str() {
            "skip" => Overlap::Skip,
            "queue" => Overlap::Queue,
            "allow" => Overlap::Allow,
            other => {
                r.error(
                    &o.referenced,
                    "overlap",
                    format!("must be skip, queue or allow, got {other:?}"),
                );
                Overlap::default()
            }
        },
    };

    let trigger_source = raw.trigger_source.as_ref().map(|t| {
        if let Err(e) = rules::check_trigger_source(&t.value) {
            r.error(&t.referenced, "trigger_source", e);
        }
        t.value.clone()
    });

    let concurrency = raw.concurrency.as_ref().and_then(|c| {
        let max = MAX_CONCURRENCY;
        let n = usize::try_from(c.value)
            .ok()
            .filter(|n| *n <= max)
            .and_then(NonZeroUsize::new);
        if n.is_none() {
            r.error(
                &c.referenced,
                "concurrency",
                format!("must be from 1 to {max}, got {}", c.value),
            );
        }
        n
    });

    let retry = raw
        .retry
        .as_ref()
        .map(|retry| check_retry(&retry.value, &mut r))
        .unwrap_or_default();

    let follow_timeout = raw
        .follow_timeout
        .as_ref()
        .and_then(|t| match parse_duration(&t.value) {
            Ok(d) => Some(d),
            Err(e) => {
                r.error(&t.referenced, "follow_timeout", e);
                None
            }
        });
    let follow = match &raw.follow {
        Some(f) if f.value => Some(follow_timeout.unwrap_or(DEFAULT_FOLLOW_TIMEOUT)),
        _ => {
            if let Some(t) = &raw.follow_timeout {
                r.warn(
                    &t.referenced,
                    "follow_timeout",
                    "has no effect without `follow: true`",
                );
            }
            None
        }
    };

    let plan_params = match &raw.params {
        Some(list) => check_params(&list.value, "params", true, &mut r),
        None => Vec::new(),
    };

    let tasks = check_tasks(&raw, &plan_params, src, &mut r);

    if !r.errors.is_empty() {
        r.errors.sort_by_key(|i| (i.line, i.column));
        return Err(Issues(r.errors));
    }
    r.warnings.sort_by_key(|i| (i.line, i.column));
    Ok(Validated {
        plan: Plan {
            name,
            file_name: src.file_name.to_string(),
            sha256: src.sha256.to_string(),
            schedule,
            enabled: raw.enabled.as_ref().is_none_or(|e| e.value),
            overlap,
            trigger_source,
            concurrency,
            retry,
            follow,
            tasks,
        },
        warnings: r.warnings,
        value_files: r.value_files,
    })
}

/// Checks a plan name: 1-64 characters of `[A-Za-z0-9._-]`, not starting with a dot (so that
/// neither `.` nor `..` nor a hidden name can be used as a folder name).
pub fn check_plan_name(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    if len == 0 {
        return Err("must not be empty".into());
    }
    if len > NAME_MAX {
        return Err(format!(
            "is {len} characters long, at most {NAME_MAX} allowed"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "may only hold letters, digits, '.', '_' and '-', found {c:?}"
        ));
    }
    if name.starts_with('.') {
        return Err("must not start with '.'".into());
    }
    if name == crate::results::INVALID_DIR {
        return Err(format!(
            "{name:?} is reserved (the results folder of invalid plan reports)"
        ));
    }
    Ok(())
}

/// Parses a plan duration (see [`crate::duration::parse_duration`]): more than zero, at most
/// `MAX_DURATION`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = crate::duration::parse_duration(text)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    if d > MAX_DURATION {
        return Err(format!(
            "is longer than the {}h allowed",
            MAX_DURATION.as_secs() / 3600
        ));
    }
    Ok(d)
}

/// Collects errors and warnings with the file they belong to.
struct Report<'a> {
    file: &'a Path,
    errors: Vec<Issue>,
    warnings: Vec<Issue>,
    value_files: Vec<ValueFileRef>,
}

impl Report<'_> {
    fn error(&mut self, at: &Location, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Issue::at(self.file, at, path, message));
    }

    fn error_at(
        &mut self,
        line: usize,
        column: usize,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors
            .push(Issue::new(self.file, line, column, path, message));
    }

    fn warn(&mut self, at: &Location, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Issue::at(self.file, at, path, message));
    }
}

/// 1-based (line, column) of a location; an unknown location is 1:1.
fn check_retry(raw: &RawRetry, r: &mut Report<'_>) -> RetryOverrides {
    let mut out = RetryOverrides::default();
    if let Some(n) = &raw.max_attempts {
        match u32::try_from(n.value) {
            Ok(v) if (1..=MAX_ATTEMPTS).contains(&n.value) => out.max_attempts = Some(v),
            _ => r.error(
                &n.referenced,
                "retry.max_attempts",
                format!("must be from 1 to {MAX_ATTEMPTS}, got {}", n.value),
            ),
        }
    }
    let mut duration = |field: &Option<Spanned<String>>, name: &str| {
        let d = field.as_ref()?;
        match parse_duration(&d.value) {
            Ok(v) => Some(v),
            Err(e) => {
                r.error(&d.referenced, format!("retry.{name}"), e);
                None
            }
        }
    };
    out.base = duration(&raw.base, "base");
    out.cap = duration(&raw.cap, "cap");
    out.deadline = duration(&raw.deadline, "deadline");
    if let (Some(base), Some(cap), Some(at)) = (out.base, out.cap, raw.cap.as_ref())
        && cap < base
    {
        r.error(
            &at.referenced,
            "retry.cap",
            format!("must not be shorter than retry.base ({base:?}), got {cap:?}"),
        );
    }
    out
}

/// Checks one params list; returns its valid params in file order.
fn check_params(
    list: &[Spanned<RawParam>],
    prefix: &str,
    plan_level: bool,
    r: &mut Report<'_>,
) -> Vec<Param> {
    let mut out = Vec::with_capacity(list.len());
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (j, item) in list.iter().enumerate() {
        let path = format!("{prefix}[{j}]");
        let p = &item.value;
        let mut ok = true;

        let key = &p.key.value;
        if let Err(e) = rules::check_param_key(key) {
            r.error(&p.key.referenced, format!("{path}.key"), e);
            ok = false;
        } else {
            let (line, _) = line_col(&p.key.referenced);
            if let Some(first) = seen.insert(key.as_str(), line) {
                r.error(
                    &p.key.referenced,
                    format!("{path}.key"),
                    format!("key {key:?} appears twice in this list; first at line {first}"),
                );
                // Keep the first line for a third occurrence's message.
                seen.insert(key.as_str(), first);
                ok = false;
            }
        }

        let ty = match &p.ty {
            None => ParamType::default(),
            Some(t) => match ParamType::from_wire(&t.value) {
                Some(ty) => ty,
                None => {
                    r.error(
                        &t.referenced,
                        format!("{path}.type"),
                        format!(
                            "must be text, host_group, encrypt or enum, got {:?}",
                            t.value
                        ),
                    );
                    ok = false;
                    ParamType::default()
                }
            },
        };

        let value = match (&p.value, &p.value_from) {
            (Some(_), Some(_)) => {
                r.error(
                    &item.referenced,
                    &path,
                    "gives both `value` and `value_from`; give exactly one",
                );
                None
            }
            (None, None) => {
                r.error(
                    &item.referenced,
                    &path,
                    "gives neither `value` nor `value_from`; give exactly one",
                );
                None
            }
            (Some(v), None) => match &v.value {
                None => {
                    r.error(
                        &v.referenced,
                        format!("{path}.value"),
                        "is empty (null); write the value, or \"\" for an empty text",
                    );
                    None
                }
                Some(text) => match rules::check_param_value(text) {
                    Err(e) => {
                        r.error(&v.referenced, format!("{path}.value"), e);
                        None
                    }
                    Ok(()) => {
                        if ty == ParamType::Encrypt {
                            let scope = if plan_level {
                                " (given to every task)"
                            } else {
                                ""
                            };
                            r.warn(
                                &v.referenced,
                                format!("{path}.value"),
                                format!(
                                    "an `encrypt` param with a literal value is a plain-text secret in the plan file{scope}; prefer value_from: {{env: NAME}} or {{file: PATH}}"
                                ),
                            );
                        }
                        Some(ParamValue::Literal(Secret::new(text.clone())))
                    }
                },
            },
            (None, Some(from)) => check_value_from(&from.value, &from.referenced, &path, r),
        };

        if let (true, Some(value)) = (ok, value) {
            out.push(Param {
                key: key.clone(),
                ty,
                value,
            });
        }
    }
    out
}

fn check_value_from(
    from: &RawValueFrom,
    at: &Location,
    path: &str,
    r: &mut Report<'_>,
) -> Option<ParamValue> {
    let path = format!("{path}.value_from");
    match (&from.env, &from.file) {
        (Some(_), Some(_)) => {
            r.error(at, path, "gives both `env` and `file`; give exactly one");
            None
        }
        (None, None) => {
            r.error(at, path, "gives neither `env` nor `file`; give exactly one");
            None
        }
        (Some(env), None) => match check_env_name(&env.value) {
            Ok(()) => Some(ParamValue::Env(env.value.clone())),
            Err(e) => {
                r.error(&env.referenced, format!("{path}.env"), e);
                None
            }
        },
        (None, Some(file)) => {
            if file.value.is_empty() {
                r.error(
                    &file.referenced,
                    format!("{path}.file"),
                    "must not be empty",
                );
                None
            } else if file.value.contains('\0') {
                r.error(
                    &file.referenced,
                    format!("{path}.file"),
                    "must not contain a NUL character",
                );
                None
            } else {
                let (line, column) = line_col(&file.referenced);
                r.value_files.push(ValueFileRef {
                    path: PathBuf::from(&file.value),
                    line,
                    column,
                    field: format!("{path}.file"),
                });
                Some(ParamValue::File(PathBuf::from(&file.value)))
            }
        }
    }
}

/// Checks an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("must not be empty".into()),
        Some(c) if c.is_ascii_digit() => {
            return Err("must not start with a digit".into());
        }
        _ => {}
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(format!(
            "may only hold letters, digits and '_', found {c:?}"
        ));
    }
    if let Some(prefix) = RESERVED_ENV_PREFIXES.iter().find(|p| name.starts_with(*p)) {
        return Err(format!(
            "{prefix}* variables hold deployd's own credentials and settings; a plan may not read them"
        ));
    }
    if name == "CREDENTIALS_DIRECTORY" {
        return Err("is deployd's credentials folder; a plan may not read it".into());
    }
    Ok(())
}

/// Environment variables a plan may not read: deployd's credentials and the vendor SDK's.
pub const RESERVED_ENV_PREFIXES: [&str; 3] = ["DEPLOYD_", "CLOUD_SDK_", "HUAWEICLOUD_SDK_"];

fn check_tasks(
    raw: &RawPlan,
    plan_params: &[Param],
    src: &PlanSource<'_>,
    r: &mut Report<'_>,
) -> Vec<Task> {
    let Some(list) = &raw.tasks else {
        r.error_at(
            1,
            1,
            "tasks",
            "is missing; a plan lists at least one task id under `tasks`",
        );
        return Vec::new();
    };
    if list.value.is_empty() {
        r.error(&list.referenced, "tasks", "must list at least one task");
        return Vec::new();
    }
    if list.value.len() > MAX_TASKS {
        r.error(
            &list.referenced,
            "tasks",
            format!(
                "lists {} tasks, at most {MAX_TASKS} allowed; split the plan",
                list.value.len()
            ),
        );
        return Vec::new();
    }

    let mut tasks = Vec::with_capacity(list.value.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut total_params = 0usize;
    let mut total_reported = false;
    let cost = |p: &Param| {
        let value_len = match &p.value {
            ParamValue::Literal(v) => json_len(v.expose()),
            ParamValue::Env(_) | ParamValue::File(_) => rules::PARAM_VALUE_MAX,
        };
        param_cost(&p.key, value_len)
    };
    let plan_costs: Vec<usize> = plan_params.iter().map(cost).collect();
    let mut total_bytes = 0usize;
    let mut bytes_reported = false;
    for (i, item) in list.value.iter().enumerate() {
        let path = format!("tasks[{i}]");
        let (id, id_at, id_path, own_params, record_id) = match &item.value {
            RawTask::Id(id) => (id.clone(), item.referenced, path.clone(), None, None),
            RawTask::NonText => {
                // `defined`: through an alias, the text is at the anchored scalar.
                let text = raw::source_text(src.text, &item.defined)
                    .unwrap_or_default()
                    .to_string();
                (text, item.referenced, path.clone(), None, None)
            }
            RawTask::Null => {
                r.error(&item.referenced, &path, "is empty; write a task id");
                continue;
            }
            RawTask::Entry(entry) => (
                entry.task_id.value.clone(),
                entry.task_id.referenced,
                format!("{path}.task_id"),
                entry.params.as_ref(),
                entry.record_id.as_ref(),
            ),
        };

        let mut ok = true;
        if let Err(e) = rules::check_id(&id) {
            r.error(&id_at, &id_path, format!("task id {e}"));
            ok = false;
        } else {
            let (line, _) = line_col(&id_at);
            if let Some(&first) = seen.get(&id) {
                r.error(
                    &id_at,
                    &id_path,
                    format!("task id {id} is listed twice; first at line {first}"),
                );
                ok = false;
            } else {
                seen.insert(id.clone(), line);
            }
        }

        let record_id = record_id.and_then(|rid| match rules::check_id(&rid.value) {
            Ok(()) => Some(rid.value.clone()),
            Err(e) => {
                r.error(
                    &rid.referenced,
                    format!("{path}.record_id"),
                    format!("record id {e}"),
                );
                ok = false;
                None
            }
        });

        let own = match own_params {
            Some(list) => {
                let before = r.errors.len();
                let own = check_params(&list.value, &format!("{path}.params"), false, r);
                ok &= r.errors.len() == before;
                own
            }
            None => Vec::new(),
        };

        // Count before building, so that a hostile file cannot make us allocate
        // tasks x params copies before the limit is checked.
        let own_keys: HashSet<&str> = own.iter().map(|p| p.key.as_str()).collect();
        let inherited = plan_params
            .iter()
            .filter(|p| !own_keys.contains(p.key.as_str()))
            .count();
        let merged = inherited + own.len();
        if merged > rules::PARAMS_MAX {
            let at = own_params.map_or(item.referenced, |l| l.referenced);
            r.error(
                &at,
                format!("{path}.params"),
                format!(
                    "the task has {merged} params with the plan's, at most {} allowed",
                    rules::PARAMS_MAX
                ),
            );
            ok = false;
        }
        total_params = total_params.saturating_add(merged);
        let task_bytes = plan_params
            .iter()
            .zip(&plan_costs)
            .filter(|(p, _)| !own_keys.contains(p.key.as_str()))
            .map(|(_, c)| *c)
            .chain(own.iter().map(cost))
            .fold(0usize, usize::saturating_add);
        total_bytes = total_bytes.saturating_add(task_bytes);
        // Checked task by task, like the count above, so that a plan over the budget is
        // refused before it has allocated much more than the budget.
        if total_bytes > MAX_PARAM_BYTES {
            if !bytes_reported {
                r.error(
                    &list.referenced,
                    "tasks",
                    format!(
                        "the plan's params take more than the budget of {MAX_PARAM_BYTES} bytes (64 MiB) once plan params are merged into every task (the first {} of its {} tasks already take {total_bytes}); the budget bounds a run's result file, journal and memory (each param counts its key and value as JSON plus {PARAM_OVERHEAD} bytes, a value_from {} bytes); split the plan or shorten the values",
                        i + 1,
                        list.value.len(),
                        rules::PARAM_VALUE_MAX
                    ),
                );
                bytes_reported = true;
            }
            ok = false;
        }
        if total_params > MAX_TOTAL_PARAMS {
            if !total_reported {
                r.error(
                    &list.referenced,
                    "tasks",
                    format!(
                        "the plan holds more than {MAX_TOTAL_PARAMS} params in total (tasks x params, plan params counted once per task); split the plan"
                    ),
                );
                total_reported = true;
            }
            ok = false;
        }

        if ok && r.errors.is_empty() {
            let mut params = Vec::with_capacity(merged);
            params.extend(
                plan_params
                    .iter()
                    .filter(|p| !own_keys.contains(p.key.as_str()))
                    .cloned(),
            );
            params.extend(own);
            tasks.push(Task {
                task_id: id,
                params,
                record_id,
            });
        }
    }
    tasks
}

#[cfg(test)]
mod tests;
