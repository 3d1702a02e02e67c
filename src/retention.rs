//! Result retention (`keep_results` in the config): which result files of one plan are old
//! enough to remove, and their removal.
//!
//! Only `RESULTS/<plan>/<run id>.json` regular files are ever removed: never the plan's newest
//! result, never a file of another plan, never anything whose name is not a run id (temporary
//! files, notes an operator left), never through a symlink. Age is read from the run id (the
//! UTC start time), not from the file's mtime, which copies and backups change. The choice of
//! what to remove ([`select`]) is pure; [`prune`] adds the folder listing and the removal.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::NaiveDateTime;

/// How many result files of each plan to keep. The default keeps everything.
///
/// A file is removed when it is beyond the newest `count` **or** its run started more than
/// `age` ago; the newest file of a plan is kept whatever its age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    count: Option<NonZeroUsize>,
    age: Option<Duration>,
}

/// Why a `keep_results` setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `count: 0`.
    #[error("count must be at least 1 (the newest result of a plan is always kept)")]
    ZeroCount,
    /// `age: 0s`.
    #[error("age must be longer than 0")]
    ZeroAge,
    /// Neither field given.
    #[error("give count, age or both (leave keep_results out to keep every result)")]
    Empty,
}

impl RetentionPolicy {
    /// Keeps every result file.
    pub const KEEP_ALL: Self = Self {
        count: None,
        age: None,
    };

    /// A policy from `keep_results: {count, age}`; at least one must be given.
    pub fn try_new(count: Option<usize>, age: Option<Duration>) -> Result<Self, PolicyError> {
        let count = match count {
            None => None,
            Some(n) => Some(NonZeroUsize::new(n).ok_or(PolicyError::ZeroCount)?),
        };
        if age.is_some_and(|a| a.is_zero()) {
            return Err(PolicyError::ZeroAge);
        }
        if count.is_none() && age.is_none() {
            return Err(PolicyError::Empty);
        }
        Ok(Self { count, age })
    }

    /// Most result files kept per plan, if limited.
    pub fn count(&self) -> Option<NonZeroUsize> {
        self.count
    }

    /// Oldest run kept (by start time), if limited.
    pub fn age(&self) -> Option<Duration> {
        self.age
    }

    /// Whether this policy never removes anything.
    pub fn keeps_all(&self) -> bool {
        self.count.is_none() && self.age.is_none()
    }
}

/// Why pruning could not look at a plan's results.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The plan name could leave its folder (`..`, `a/b`, hidden names, empty).
    #[error("plan name {0:?} is not a safe folder name; its results are left alone")]
    UnsafePlanName(String),
    /// `RESULTS/<plan>` is a symlink or not a folder.
    #[error("{0} is not a plain folder (a symlink or a file); its results are left alone")]
    NotAFolder(PathBuf),
    /// The folder could not be listed.
    #[error("cannot list {path}: {source}")]
    List {
        /// The folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The start time of a run from its id (`20261128T013000Z-3f9a1c2b`), or `None` if `name` is
/// not a run id. The suffix is 1-16 lowercase hex digits.
pub fn run_id_start(name: &str) -> Option<SystemTime> {
    let (stamp, suffix) = name.split_once('-')?;
    let suffix_ok = (1..=16).contains(&suffix.len())
        && suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if stamp.len() != 16 || !suffix_ok {
        return None;
    }
    let at = NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()?;
    Some(SystemTime::from(at.and_utc()))
}

/// The run id of a result file name (`<run id>.json`), if it is one.
fn result_run_id(file_name: &str) -> Option<(&str, SystemTime)> {
    let id = file_name.strip_suffix(".json")?;
    run_id_start(id).map(|start| (id, start))
}

/// A run dated more than this after now was started while the clock was ahead: it is not
/// "newer" than anything, and is left alone.
pub const FUTURE_SLACK: Duration = Duration::from_secs(60);

/// Which of a plan's runs to remove. Pure.
///
/// `runs` are (run id, start time) in any order; the result lists run ids, oldest first. The
/// newest run (greatest id: ids sort by start time) is never in it. Runs dated in the future
/// (started while the clock was ahead) neither count among the newest nor are removed; with
/// `clock_trusted` false (the wall clock jumped lately), nothing is removed for its age.
pub fn select<'a>(
    runs: &[(&'a str, SystemTime)],
    policy: &RetentionPolicy,
    now: SystemTime,
    clock_trusted: bool,
) -> Vec<&'a str> {
    if policy.keeps_all() {
        return Vec::new();
    }
    let horizon = now.checked_add(FUTURE_SLACK).unwrap_or(now);
    let mut sorted: Vec<(&'a str, SystemTime)> = runs
        .iter()
        .filter(|(_, start)| *start <= horizon)
        .copied()
        .collect();
    // Newest first.
    sorted.sort_by(|a, b| b.0.cmp(a.0));
    sorted.dedup_by(|a, b| a.0 == b.0);
    let cutoff = policy
        .age
        .filter(|_| clock_trusted)
        .and_then(|age| now.checked_sub(age));
    let mut doomed: Vec<&'a str> = sorted
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(index, (_, start))| {
            let beyond_count = policy.count.is_some_and(|n| *index >= n.get());
            let too_old = cutoff.is_some_and(|cutoff| *start < cutoff);
            beyond_count || too_old
        })
        .map(|(_, (id, _))| *id)
        .collect();
    doomed.reverse();
    doomed
}

/// Whether `plan` can name a folder under the results folder without leaving it.
fn safe_plan_name(plan: &str) -> bool {
    !plan.is_empty()
        && !plan.starts_with('.')
        && plan
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Removes the result files of `plan` that `policy` no longer keeps; returns the files
/// removed, oldest first.
///
/// Call after each run of the plan. Only regular files named `<run id>.json` directly in
/// `results_dir/<plan>` are candidates; a symlinked plan folder is refused. A file that cannot
/// be removed is logged and skipped (the next prune tries again); one already gone is fine.
pub fn prune(
    results_dir: &Path,
    plan: &str,
    policy: &RetentionPolicy,
    now: SystemTime,
    clock_trusted: bool,
    just_written: Option<&str>,
) -> Result<Vec<PathBuf>, RetentionError> {
    if policy.keeps_all() {
        return Ok(Vec::new());
    }
    if !safe_plan_name(plan) {
        return Err(RetentionError::UnsafePlanName(plan.to_string()));
    }
    let dir = results_dir.join(plan);
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(RetentionError::NotAFolder(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(RetentionError::List { path: dir, source }),
    }
    let list_err = |source| RetentionError::List {
        path: dir.clone(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        // `file_type` does not follow symlinks: a symlink is never a candidate.
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    let runs: Vec<(&str, SystemTime)> = names.iter().filter_map(|n| result_run_id(n)).collect();
    let mut removed = Vec::new();
    // The result just written is never removed, even if its run started before others
    // (`overlap: allow`) or its id is not the greatest (a clock set back).
    for id in select(&runs, policy, now, clock_trusted)
        .into_iter()
        .filter(|id| Some(*id) != just_written)
    {
        let path = dir.join(format!("{id}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(plan, "cannot remove old result {}: {e}", path.display()),
        }
    }
    if !removed.is_empty() {
        tracing::info!(
            plan,
            removed = removed.len(),
            "old result files removed (keep_results)"
        );
    }
    Ok(removed)
}

/// Applies `keep` to one plan's result files after one of its runs wrote `just_written`, at
/// the current time, by age only while the wall clock is trusted (not just after a jump);
/// logs why it could not ([`prune`] logs what it removed).
pub fn prune_results(results_dir: &Path, plan: &str, keep: &RetentionPolicy, just_written: &str) {
    if let Err(e) = prune(
        results_dir,
        plan,
        keep,
        SystemTime::now(),
        crate::wall_clock::trusted(),
        Some(just_written),
    ) {
        tracing::warn!(plan, "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// A run id `days` days before 2026-06-01T00:00:00Z.
    fn id(days: u64, suffix: &str) -> String {
        let t = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
            .expect("time")
            .to_utc()
            - chrono::TimeDelta::days(days as i64);
        format!("{}-{suffix}", t.format("%Y%m%dT%H%M%SZ"))
    }

    fn now() -> SystemTime {
        run_id_start(&id(0, "0")).expect("parses")
    }

    fn policy(count: Option<usize>, age: Option<Duration>) -> RetentionPolicy {
        RetentionPolicy::try_new(count, age).expect("valid")
    }

    /// A plan folder with result files `days` old; returns its path.
    fn folder(root: &Path, plan: &str, days: &[u64]) -> PathBuf {
        let dir = root.join(plan);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for d in days {
            std::fs::write(dir.join(format!("{}.json", id(*d, "0a1b2c3d"))), "{}").expect("write");
        }
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Issue 11: results dated in the future (a run while the clock was ahead) are not the
    /// newest, and a clock that just jumped removes nothing for its age.
    #[test]
    fn future_runs_and_a_jumped_clock_remove_nothing_real() {
        let future: Vec<String> = (1..=3)
            .map(|d| {
                let t = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
                    .expect("time")
                    .to_utc()
                    + chrono::TimeDelta::days(d);
                format!("{}-f{d}", t.format("%Y%m%dT%H%M%SZ"))
            })
            .collect();
        let real: Vec<String> = (0..5u64).map(|d| id(d, "a")).collect();
        let names: Vec<String> = future.iter().chain(&real).cloned().collect();
        let runs: Vec<(&str, SystemTime)> = names
            .iter()
            .map(|n| (n.as_str(), run_id_start(n).expect("id")))
            .collect();
        // count 3: the three newest real ones stay, the future ones are neither counted nor
        // removed.
        let doomed = select(&runs, &policy(Some(3), None), now(), true);
        assert_eq!(doomed, vec![real[4].as_str(), real[3].as_str()]);
        // age 2 days with the clock 30 days ahead: everything looks old, but the clock just
        // jumped, so nothing goes.
        let ahead = now() + 30 * DAY;
        assert!(select(&runs, &policy(None, Some(2 * DAY)), ahead, false).is_empty());
        assert!(!select(&runs, &policy(None, Some(2 * DAY)), ahead, true).is_empty());
    }

    #[test]
    fn policy_validation() {
        assert_eq!(
            RetentionPolicy::try_new(Some(0), None),
            Err(PolicyError::ZeroCount)
        );
        assert_eq!(
            RetentionPolicy::try_new(None, Some(Duration::ZERO)),
            Err(PolicyError::ZeroAge)
        );
        assert_eq!(
            RetentionPolicy::try_new(None, None),
            Err(PolicyError::Empty)
        );
        let p = policy(Some(3), Some(DAY));
        assert_eq!(p.count().map(NonZeroUsize::get), Some(3));
        assert_eq!(p.age(), Some(DAY));
        assert!(RetentionPolicy::default().keeps_all());
        assert!(!p.keeps_all());
    }

    #[test]
    fn run_ids_are_recognised_strictly() {
        assert!(run_id_start("20261128T013000Z-3f9a1c2b").is_some());
        assert!(run_id_start("20261128T013000Z-00a00001").is_some());
        for bad in [
            "20261128T013000Z",
            "20261128T013000Z-",
            "20261128T013000Z-XYZ",
            "20261328T013000Z-3f9a1c2b",
            "2026-11-28-3f9a1c2b",
            "../20261128T013000Z-3f",
            "notes",
        ] {
            assert!(run_id_start(bad).is_none(), "{bad}");
        }
        let t = run_id_start("19700101T000100Z-0").expect("parses");
        assert_eq!(t, SystemTime::UNIX_EPOCH + Duration::from_secs(60));
    }

    #[test]
    fn select_by_count_age_and_both() {
        let ids: Vec<String> = [0, 1, 2, 5, 40].iter().map(|d| id(*d, "1")).collect();
        let runs: Vec<(&str, SystemTime)> = ids
            .iter()
            .map(|i| (i.as_str(), run_id_start(i).expect("id")))
            .collect();
        let by_count = select(&runs, &policy(Some(2), None), now(), true);
        assert_eq!(
            by_count,
            vec![ids[4].as_str(), ids[3].as_str(), ids[2].as_str()]
        );
        let by_age = select(&runs, &policy(None, Some(3 * DAY)), now(), true);
        assert_eq!(by_age, vec![ids[4].as_str(), ids[3].as_str()]);
        // Either limit removes: 4 kept by count, but the 40-day one is too old.
        let both = select(&runs, &policy(Some(4), Some(30 * DAY)), now(), true);
        assert_eq!(both, vec![ids[4].as_str()]);
        assert!(select(&runs, &RetentionPolicy::KEEP_ALL, now(), true).is_empty());
    }

    #[test]
    fn the_newest_is_kept_however_old() {
        let ids: Vec<String> = [400, 500].iter().map(|d| id(*d, "1")).collect();
        let runs: Vec<(&str, SystemTime)> = ids
            .iter()
            .map(|i| (i.as_str(), run_id_start(i).expect("id")))
            .collect();
        assert_eq!(
            select(&runs, &policy(Some(1), Some(DAY)), now(), true),
            vec![ids[1].as_str()]
        );
        // A clock far in the past or future changes nothing about the newest.
        assert_eq!(
            select(
                &runs,
                &policy(None, Some(DAY)),
                SystemTime::UNIX_EPOCH,
                true
            ),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn the_result_just_written_is_never_pruned() {
        let root = tempfile::tempdir().expect("tempdir");
        // Oldest first: 3, 2, 1 days ago. The run that just ended started 3 days ago
        // (overlap: allow, or a clock set back): count 1 would remove it.
        folder(root.path(), "web", &[3, 2, 1]);
        let just = id(3, "0a1b2c3d");
        let removed = prune(
            root.path(),
            "web",
            &policy(Some(1), None),
            now(),
            true,
            Some(&just),
        )
        .expect("prune");
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert!(
            root.path()
                .join("web")
                .join(format!("{just}.json"))
                .exists()
        );
    }

    #[test]
    fn prune_removes_only_this_plans_old_results() {
        let root = tempfile::tempdir().expect("tempdir");
        let web = folder(root.path(), "web", &[0, 1, 2, 3, 50]);
        let other = folder(root.path(), "other", &[10, 20, 30]);
        // Things that are not result files stay, whatever their age.
        std::fs::write(web.join("notes.json"), "x").expect("write");
        std::fs::write(web.join(".tmp-20200101T000000Z-1.json"), "x").expect("write");
        std::fs::write(web.join(format!("{}.txt", id(90, "1"))), "x").expect("write");
        std::fs::create_dir(web.join(format!("{}.json", id(95, "1")))).expect("mkdir");

        let removed = prune(
            root.path(),
            "web",
            &policy(Some(2), None),
            now(),
            true,
            None,
        )
        .expect("prune");
        let removed_names: Vec<String> = removed
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            removed_names,
            vec![
                format!("{}.json", id(50, "0a1b2c3d")),
                format!("{}.json", id(3, "0a1b2c3d")),
                format!("{}.json", id(2, "0a1b2c3d")),
            ]
        );
        let left = names(&web);
        assert!(left.contains(&format!("{}.json", id(0, "0a1b2c3d"))));
        assert!(left.contains(&format!("{}.json", id(1, "0a1b2c3d"))));
        for kept in ["notes.json", ".tmp-20200101T000000Z-1.json"] {
            assert!(left.contains(&kept.to_string()), "{kept} removed");
        }
        assert_eq!(left.len(), 6, "{left:?}");
        assert_eq!(names(&other).len(), 3, "another plan's results untouched");

        // Idempotent.
        assert!(
            prune(
                root.path(),
                "web",
                &policy(Some(2), None),
                now(),
                true,
                None
            )
            .expect("prune")
            .is_empty()
        );
    }

    #[test]
    fn prune_by_age_keeps_the_newest_even_if_old() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = folder(root.path(), "web", &[100, 200]);
        let removed = prune(
            root.path(),
            "web",
            &policy(None, Some(30 * DAY)),
            now(),
            true,
            None,
        )
        .expect("ok");
        assert_eq!(removed.len(), 1);
        assert_eq!(names(&dir), vec![format!("{}.json", id(100, "0a1b2c3d"))]);
    }

    #[test]
    fn prune_never_follows_symlinks() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let target = folder(outside.path(), "victim", &[5, 6, 7]);
        let results = root.path().join("results");
        std::fs::create_dir(&results).expect("mkdir");
        // A plan folder that is a symlink to somewhere else.
        std::os::unix::fs::symlink(&target, results.join("linked")).expect("symlink");
        let e = prune(
            &results,
            "linked",
            &policy(Some(1), None),
            now(),
            true,
            None,
        )
        .expect_err("refused");
        assert!(matches!(e, RetentionError::NotAFolder(_)), "{e}");
        assert_eq!(names(&target).len(), 3);

        // Symlinked result files inside a real plan folder are not candidates either.
        let web = folder(&results, "web", &[0]);
        for (i, f) in names(&target).iter().enumerate() {
            std::os::unix::fs::symlink(
                target.join(f),
                web.join(format!("{}.json", id(10 + i as u64, "1"))),
            )
            .expect("symlink");
        }
        let removed =
            prune(&results, "web", &policy(Some(1), None), now(), true, None).expect("prune");
        assert!(removed.is_empty(), "{removed:?}");
        assert_eq!(names(&target).len(), 3);
        assert_eq!(names(&web).len(), 4);
    }

    #[test]
    fn unsafe_names_and_missing_folders() {
        let root = tempfile::tempdir().expect("tempdir");
        folder(root.path(), "web", &[1, 2]);
        for bad in ["..", ".", "", "a/b", "/etc", ".hidden", "../web"] {
            let e =
                prune(root.path(), bad, &policy(Some(1), None), now(), true, None).expect_err(bad);
            assert!(matches!(e, RetentionError::UnsafePlanName(_)), "{bad}: {e}");
        }
        assert!(
            prune(
                root.path(),
                "never-ran",
                &policy(Some(1), None),
                now(),
                true,
                None
            )
            .expect("ok")
            .is_empty()
        );
        assert!(
            prune(
                root.path(),
                "web",
                &RetentionPolicy::KEEP_ALL,
                now(),
                true,
                None
            )
            .expect("ok")
            .is_empty()
        );
        assert_eq!(names(&root.path().join("web")).len(), 2);
    }
}
