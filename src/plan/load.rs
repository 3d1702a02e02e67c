//! Reading plan files: bytes -> YAML -> [`RawPlan`](super::raw::RawPlan) -> [`Plan`], with
//! every problem turned into a [`Issue`] at its line and column.
//!
//! [`parse_plan`] is pure (bytes in, plan or issues out) and holds the input guards: size,
//! UTF-8, binary content, a single YAML document that is a mapping, and serde-saphyr budgets
//! against alias bombs and deep nesting. [`load_plan_file`] and [`check_paths`] add the thin
//! file-system layer: size-limited reads of regular files, plan discovery in folders, and
//! [`check_value_files`] (no `value_from.file` under `/proc`, `/sys` or `/dev`).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Plan;
use super::raw::RawDocument;
use super::validate::{PlanSource, ValueFileRef, validate};
use crate::issue::{Issue, Issues};
use crate::yaml::{self, first_node_position, position_after};
#[cfg(test)]
use crate::yaml::{MAX_ALIASES, MAX_REPLAYED_EVENTS};

/// Largest plan file accepted, in bytes (1 MiB).
pub const MAX_PLAN_BYTES: usize = 1024 * 1024;

/// Plans as YAML files: their budget and how messages name them.
const PLAN_FILE: yaml::Kind = yaml::Kind {
    noun: "a plan file",
    max_bytes: MAX_PLAN_BYTES,
    too_large: too_large_message,
};

/// A plan that passed every check, and the warnings found on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The validated plan.
    pub plan: Plan,
    /// Allowed but probably wrong things, such as a plain-text `encrypt` value.
    pub warnings: Vec<Issue>,
    /// Every `value_from.file` with its place, for [`check_value_files`].
    pub value_files: Vec<ValueFileRef>,
}

/// Parses and validates the bytes of a plan file. Pure.
///
/// `path` is what messages show; the default plan name is its file stem, `plan.file_name` its
/// file name and `plan.sha256` the hex SHA-256 of `bytes`. A file name that is not UTF-8 makes
/// the plan invalid (its name could not be shown, nor its results folder named, faithfully),
/// reported with the content's own problems.
pub fn parse_plan(path: &Path, bytes: &[u8]) -> Result<Loaded, Issues> {
    let name_issue = path.file_name().filter(|n| n.to_str().is_none()).map(|_| {
        Issue::new(
            path,
            1,
            1,
            "",
            "the file name is not valid UTF-8 (shown with \u{FFFD} for the bad bytes); \
                 rename the file",
        )
    });
    let Some(name_issue) = name_issue else {
        return parse_plan_bytes(path, bytes);
    };
    let mut issues = vec![name_issue];
    if let Err(Issues(found)) = parse_plan_bytes(path, bytes) {
        issues.extend(found);
    }
    Err(Issues(issues))
}

/// [`parse_plan`] without the file name check.
fn parse_plan_bytes(path: &Path, bytes: &[u8]) -> Result<Loaded, Issues> {
    let whole_file = |line: usize, column: usize, message: String| {
        Issues(vec![Issue::new(path, line, column, "", message)])
    };
    if bytes.len() > MAX_PLAN_BYTES {
        return Err(whole_file(1, 1, too_large_message()));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let (line, column) = position_after(std::str::from_utf8(valid).unwrap_or_default());
            return Err(whole_file(
                line,
                column,
                "is not UTF-8 text (a binary file, or another encoding); a plan is a UTF-8 YAML file"
                    .into(),
            ));
        }
    };
    if let Some(at) = text.find('\0') {
        let (line, column) = position_after(&text[..at]);
        return Err(whole_file(
            line,
            column,
            "holds a NUL character: a binary file, not a YAML plan".into(),
        ));
    }

    let raw = match serde_saphyr::from_str_with_options::<RawDocument>(
        text,
        yaml::options(&PLAN_FILE),
    ) {
        Ok(RawDocument::Plan(raw)) => raw,
        Ok(RawDocument::Empty) => {
            return Err(whole_file(
                1,
                1,
                "is empty: a plan is a YAML mapping with at least `tasks`".into(),
            ));
        }
        Ok(RawDocument::NotMapping(kind)) => {
            let (line, column) = first_node_position(text);
            return Err(whole_file(
                line,
                column,
                format!(
                    "a plan is a YAML mapping of fields (`name`, `schedule`, `tasks`, ...), found {kind}"
                ),
            ));
        }
        Err(e) => return Err(Issues(vec![yaml::issue(path, text, &e, &PLAN_FILE)])),
    };

    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file_stem = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sha256 = hex::encode(Sha256::digest(bytes));
    let validated = validate(
        *raw,
        &PlanSource {
            file: path,
            text,
            file_name: &file_name,
            file_stem: &file_stem,
            sha256: &sha256,
        },
    )?;
    Ok(Loaded {
        plan: validated.plan,
        warnings: validated.warnings,
        value_files: validated.value_files,
    })
}

/// [`parse_plan`], then [`check_value_files`] against the plan file's folder: what the
/// daemon and `deployd check` load.
pub fn parse_plan_file(path: &Path, bytes: &[u8]) -> Result<Loaded, Issues> {
    let loaded = parse_plan(path, bytes)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    check_value_files(path, &loaded, dir)?;
    Ok(loaded)
}

/// Refuses `value_from.file` paths that are, or resolve to, files under `/proc`, `/sys` or
/// `/dev`, or that exist and are not regular files (see
/// [`crate::value_files::check_at_load`]); relative paths start at `plan_dir`. A run
/// checks again when it opens the file.
pub fn check_value_files(path: &Path, loaded: &Loaded, plan_dir: &Path) -> Result<(), Issues> {
    let issues: Vec<Issue> = loaded
        .value_files
        .iter()
        .filter_map(|f| {
            let full = if f.path.is_absolute() {
                f.path.clone()
            } else {
                plan_dir.join(&f.path)
            };
            crate::value_files::check_at_load(&full)
                .err()
                .map(|why| Issue::new(path, f.line, f.column, f.field.clone(), why))
        })
        .collect();
    if issues.is_empty() {
        Ok(())
    } else {
        Err(Issues(issues))
    }
}

/// Reads a plan file and parses it with [`parse_plan_file`].
///
/// Only regular files are read (a symlink is followed only to a regular file), and never more
/// than [`MAX_PLAN_BYTES`] + 1 bytes.
pub fn load_plan_file(path: &Path) -> Result<Loaded, Issues> {
    let bytes =
        read_limited(path).map_err(|message| Issues(vec![Issue::new(path, 1, 1, "", message)]))?;
    parse_plan_file(path, &bytes)
}

/// Whether a file name is a plan by the contract: ends in `.yaml` or `.yml`, is not hidden and
/// is not an editor leftover (`*~`, `*.swp`, `*.tmp`, `#*#`).
pub fn is_plan_file_name(name: &str) -> bool {
    let leftover = name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".tmp")
        || (name.len() >= 2 && name.starts_with('#') && name.ends_with('#'));
    let stem = name
        .strip_suffix(".yaml")
        .or_else(|| name.strip_suffix(".yml"));
    !name.starts_with('.') && !leftover && stem.is_some_and(|s| !s.is_empty())
}

/// The plan files directly in `dir` (not in sub-folders), sorted by name.
///
/// Folders are skipped even when their name looks like a plan; anything else with a plan file
/// name is listed, so that [`load_plan_file`] can report what is wrong with it.
pub fn plan_files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        // A name that is not UTF-8 is judged by its lossy form (`caf\u{FFFD}.yaml`) and listed,
        // so that the loader reports it instead of it being ignored silently.
        let name = entry.file_name();
        if !is_plan_file_name(&name.to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// The outcome of `deployd check PATH...`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    /// The valid plans, in the order found.
    pub plans: Vec<Loaded>,
    /// Every error found, in every file.
    pub issues: Vec<Issue>,
}

/// Checks files and folders as `deployd check` does.
///
/// Folders expand to their plan files ([`plan_files_in`]); a path given as a file is checked
/// even if its name would be ignored in a folder; a missing path is an issue. Two plans with
/// the same name in one folder are both reported and neither is returned, as the daemon would
/// run neither.
pub fn check_paths(paths: &[PathBuf]) -> CheckReport {
    let mut issues = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut add = |file: PathBuf, files: &mut Vec<PathBuf>| {
        let key = fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
        if seen.insert(key) {
            files.push(file);
        }
    };
    for path in paths {
        match fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                issues.push(Issue::new(path, 1, 1, "", "no such file or folder"));
            }
            Err(e) => issues.push(Issue::new(path, 1, 1, "", format!("cannot read: {e}"))),
            Ok(meta) if meta.is_dir() => match plan_files_in(path) {
                Ok(found) => found.into_iter().for_each(|f| add(f, &mut files)),
                Err(e) => {
                    issues.push(Issue::new(path, 1, 1, "", format!("cannot list: {e}")));
                }
            },
            Ok(_) => add(path.clone(), &mut files),
        }
    }

    // (folder, plan name) -> files loaded with that name.
    let mut by_name: BTreeMap<(PathBuf, String), Vec<(PathBuf, Loaded)>> = BTreeMap::new();
    let mut order = Vec::new();
    for file in files {
        match load_plan_file(&file) {
            Ok(loaded) => {
                let folder = file
                    .parent()
                    .map(|p| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()))
                    .unwrap_or_default();
                let key = (folder, loaded.plan.name.clone());
                if !by_name.contains_key(&key) {
                    order.push(key.clone());
                }
                by_name.entry(key).or_default().push((file, loaded));
            }
            Err(Issues(found)) => issues.extend(found),
        }
    }

    let mut plans = Vec::new();
    for key in order {
        let Some(group) = by_name.remove(&key) else {
            continue;
        };
        if group.len() == 1 {
            plans.extend(group.into_iter().map(|(_, loaded)| loaded));
            continue;
        }
        for (file, _) in &group {
            let others: Vec<String> = group
                .iter()
                .filter(|(other, _)| other != file)
                .map(|(other, _)| other.display().to_string())
                .collect();
            issues.push(Issue::new(
                file,
                1,
                1,
                "name",
                format!(
                    "plan name {:?} is also used by {} in the same folder; names must be unique, so neither runs",
                    key.1,
                    others.join(", ")
                ),
            ));
        }
    }
    CheckReport { plans, issues }
}

fn too_large_message() -> String {
    format!(
        "is larger than {MAX_PLAN_BYTES} bytes (1 MiB), the limit for a plan file; split the plan"
    )
}

/// Reads a plan file's bytes: a regular file (a symlink only if it points to one), not
/// writable by every user, at most `MAX_PLAN_BYTES + 1` bytes (the parser reports the size).
pub fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let not_regular = "is not a regular file (a plan must be a regular file, or a symlink to one)";
    // `metadata` follows symlinks: a link to a regular file is fine, a link to a FIFO or a
    // device is refused before opening it (opening a FIFO could block).
    let meta = fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err(not_regular.into());
    }
    let file = fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    // The file may have been swapped between the two calls: check what was opened.
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err(not_regular.into());
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
    if mode & 0o002 != 0 {
        return Err(format!(
            "is writable by every user (mode {:o}): whoever can write a plan can deploy, so it is refused; `chmod o-w` it",
            mode & 0o7777
        ));
    }
    if meta.len() > MAX_PLAN_BYTES as u64 {
        return Err(too_large_message());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0) + 1);
    file.take(MAX_PLAN_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests;
