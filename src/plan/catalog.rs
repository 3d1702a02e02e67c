//! The set of loaded plans and the pure diff that drives the scheduler: added, changed,
//! removed, became invalid. A file that becomes invalid keeps its last valid version active;
//! two files claiming one plan name are both reported and neither takes the other's place.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Plan;
use crate::issue::{Issue, Issues};

/// A valid plan as read from its file, cheap to clone (shared, never copied per scan).
#[derive(Debug, Clone, PartialEq)]
pub struct Valid {
    /// The plan.
    pub plan: Arc<Plan>,
    /// The loader's warnings about it.
    pub warnings: Arc<[Issue]>,
}

impl From<super::load::Loaded> for Valid {
    fn from(loaded: super::load::Loaded) -> Self {
        Self {
            plan: Arc::new(loaded.plan),
            warnings: loaded.warnings.into(),
        }
    }
}

/// What a scan saw for one plan file.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // short-lived, one per file per scan
pub enum Seen {
    /// The file was stable and read: its loader outcome.
    Read(Result<Valid, Issues>),
    /// The file is still being written: keep whatever was known about it.
    Unsettled,
}

/// The changes one scan made.
#[derive(Debug, Default)]
pub struct Diff {
    /// Plans that appeared (by name).
    pub added: Vec<Arc<Plan>>,
    /// Plans whose content changed: (old, new).
    pub changed: Vec<(Arc<Plan>, Arc<Plan>)>,
    /// Plans that are gone (file deleted, or the file now holds another name).
    pub removed: Vec<Arc<Plan>>,
    /// Files that turned invalid in this scan (their last valid plan, if any, stays active).
    pub became_invalid: Vec<(PathBuf, Option<Arc<Plan>>)>,
}

impl Diff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.became_invalid.is_empty()
    }
}

#[derive(Debug, Clone)]
struct FileEntry {
    /// The last outcome of reading the file.
    issues: Option<Issues>,
    /// The last valid plan read from this file.
    last_valid: Option<Arc<Plan>>,
    /// Warnings of the last valid read.
    warnings: Arc<[Issue]>,
}

/// Loaded plans, by file and by name.
#[derive(Debug, Default)]
pub struct Catalog {
    files: BTreeMap<PathBuf, FileEntry>,
    /// name -> (file, plan) of every active plan.
    active: BTreeMap<String, (PathBuf, Arc<Plan>)>,
    /// Files refused because another file holds their plan name: file -> issue.
    conflicts: BTreeMap<PathBuf, Issues>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Active plans by name.
    pub fn active(&self) -> impl Iterator<Item = &Arc<Plan>> {
        self.active.values().map(|(_, p)| p)
    }

    /// The active plan with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<Plan>> {
        self.active.get(name).map(|(_, p)| p)
    }

    /// The file an active plan was loaded from.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.active.get(name).map(|(f, _)| f.as_path())
    }

    /// Every file currently invalid, with its problems (for `RESULTS/_invalid/` and status).
    pub fn invalid_files(&self) -> BTreeMap<PathBuf, Issues> {
        let mut out: BTreeMap<PathBuf, Issues> = self
            .files
            .iter()
            .filter_map(|(f, e)| e.issues.clone().map(|i| (f.clone(), i)))
            .collect();
        for (f, i) in &self.conflicts {
            out.entry(f.clone()).or_insert_with(|| i.clone());
        }
        out
    }

    /// Applies a scan of the whole folder (`seen` holds every plan file present) and returns
    /// what changed.
    pub fn apply(&mut self, seen: BTreeMap<PathBuf, Seen>) -> Diff {
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|f| !seen.contains_key(*f))
            .cloned()
            .collect();
        // Every name is looked at again: a full scan also settles what events missed.
        let touched: BTreeSet<String> = self
            .active
            .keys()
            .cloned()
            .chain(
                self.files
                    .values()
                    .filter_map(|e| e.last_valid.as_ref().map(|p| p.name.clone())),
            )
            .collect();
        let files: BTreeSet<PathBuf> = self.files.keys().cloned().collect();
        self.update(seen, &gone, touched, files)
    }

    /// Applies a look at some files only: `seen` for those present, `gone` for those no longer
    /// there; every other file is as it was. Its cost is that of the named files and the names
    /// they held or hold, not of the folder.
    pub fn apply_named(&mut self, seen: BTreeMap<PathBuf, Seen>, gone: &[PathBuf]) -> Diff {
        self.update(seen, gone, BTreeSet::new(), BTreeSet::new())
    }

    /// Takes the files seen and gone, then decides again who provides each name they held or
    /// hold (and every name in `touched`); `stale` files have their conflicts judged again.
    fn update(
        &mut self,
        seen: BTreeMap<PathBuf, Seen>,
        gone: &[PathBuf],
        mut touched: BTreeSet<String>,
        mut stale: BTreeSet<PathBuf>,
    ) -> Diff {
        let mut diff = Diff::default();
        // 1. Update the per-file view, and the index of which files claim which name.
        for file in gone {
            if let Some(entry) = self.files.remove(file)
                && let Some(old) = entry.last_valid
            {
                touched.insert(old.name.clone());
            }
            stale.insert(file.clone());
        }
        for (file, seen) in seen {
            let Seen::Read(outcome) = seen else {
                continue;
            };
            stale.insert(file.clone());
            let entry = self.files.entry(file.clone()).or_insert(FileEntry {
                issues: None,
                last_valid: None,
                warnings: Arc::from(Vec::new()),
            });
            match outcome {
                Ok(valid) => {
                    if let Some(old) = &entry.last_valid {
                        touched.insert(old.name.clone());
                    }
                    touched.insert(valid.plan.name.clone());
                    entry.issues = None;
                    entry.last_valid = Some(valid.plan);
                    entry.warnings = valid.warnings;
                }
                Err(issues) => {
                    // Its last valid version still claims its name: decided again with it.
                    if let Some(old) = &entry.last_valid {
                        touched.insert(old.name.clone());
                    }
                    if entry.issues.is_none() {
                        diff.became_invalid
                            .push((file.clone(), entry.last_valid.clone()));
                    }
                    entry.issues = Some(issues);
                }
            }
        }
        // The files that may claim a touched name: every file claiming a name is its active
        // provider or in conflict for it, or was just seen (kept true by each update).
        let mut candidates: BTreeSet<PathBuf> = stale.clone();
        candidates.extend(self.conflicts.keys().cloned());
        for name in &touched {
            if let Some((file, _)) = self.active.get(name) {
                candidates.insert(file.clone());
            }
        }
        let mut claims: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for file in candidates {
            if let Some(plan) = self.files.get(&file).and_then(|e| e.last_valid.as_ref())
                && touched.contains(&plan.name)
            {
                claims.entry(plan.name.clone()).or_default().push(file);
            }
        }
        for file in &stale {
            self.conflicts.remove(file);
        }

        // 2. Which file provides each touched name: files whose last valid plan claims it.
        // 3. The diff of the active set, by name (in name order, as the sets are sorted).
        for name in touched {
            let files: Vec<PathBuf> = claims.remove(&name).unwrap_or_default();
            for f in &files {
                self.conflicts.remove(f);
            }
            let owner = if files.len() <= 1 {
                files.first().cloned()
            } else {
                // The file that already provides the name keeps it; a newcomer never takes
                // its place, and without an incumbent nobody gets it.
                let incumbent = self
                    .active
                    .get(&name)
                    .map(|(f, _)| f.clone())
                    .filter(|f| files.contains(f));
                for f in files.iter().filter(|f| Some(*f) != incumbent.as_ref()) {
                    let others: Vec<String> = files
                        .iter()
                        .filter(|o| *o != f)
                        .map(|o| o.display().to_string())
                        .collect();
                    let issue = Issue {
                        file: f.clone(),
                        line: 1,
                        column: 1,
                        path: "name".into(),
                        message: format!(
                            "plan name {name:?} is also used by {}; plan names must be unique in the folder (set `name:` in one of them)",
                            others.join(", ")
                        ),
                    };
                    self.conflicts.insert(f.clone(), Issues(vec![issue]));
                }
                incumbent
            };
            let next = owner.and_then(|file| {
                self.files
                    .get(&file)
                    .and_then(|e| e.last_valid.clone())
                    .map(|plan| (file, plan))
            });
            match (self.active.get(&name), next) {
                (None, Some(next)) => {
                    diff.added.push(next.1.clone());
                    self.active.insert(name, next);
                }
                (Some((_, old)), Some(next)) => {
                    if old.sha256 != next.1.sha256 || old.file_name != next.1.file_name {
                        diff.changed.push((old.clone(), next.1.clone()));
                    }
                    self.active.insert(name, next);
                }
                (Some((_, old)), None) => {
                    diff.removed.push(old.clone());
                    self.active.remove(&name);
                }
                (None, None) => {}
            }
        }
        diff
    }

    /// Warnings of the valid files.
    pub fn warnings(&self) -> impl Iterator<Item = &Issue> {
        self.files.values().flat_map(|e| e.warnings.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Overlap, RetryOverrides, Task};

    fn plan(name: &str, file: &str, sha: &str) -> Valid {
        Valid {
            plan: Arc::new(Plan {
                name: name.into(),
                file_name: file.into(),
                sha256: sha.into(),
                schedule: None,
                enabled: true,
                overlap: Overlap::Skip,
                trigger_source: None,
                concurrency: None,
                retry: RetryOverrides::default(),
                follow: None,
                tasks: vec![Task {
                    task_id: "a".repeat(32),
                    params: vec![],
                    record_id: None,
                }],
            }),
            warnings: Arc::from(Vec::new()),
        }
    }

    fn bad(file: &str) -> Issues {
        Issues(vec![Issue {
            file: file.into(),
            line: 1,
            column: 1,
            path: "tasks".into(),
            message: "broken".into(),
        }])
    }

    fn scan(items: Vec<(&str, Seen)>) -> BTreeMap<PathBuf, Seen> {
        items
            .into_iter()
            .map(|(f, s)| (PathBuf::from(f), s))
            .collect()
    }

    fn names(plans: &[Arc<Plan>]) -> Vec<&str> {
        plans.iter().map(|p| p.name.as_str()).collect()
    }

    /// A look at some files changes those only, and gives the same diff a full scan would.
    #[test]
    fn a_named_look_changes_only_the_named_files() {
        let mut full = Catalog::new();
        let mut named = Catalog::new();
        let start = || {
            scan(vec![
                ("a.yaml", Seen::Read(Ok(plan("a", "a.yaml", "1")))),
                ("b.yaml", Seen::Read(Ok(plan("b", "b.yaml", "1")))),
            ])
        };
        full.apply(start());
        named.apply(start());
        // b changed, c arrived, a was deleted.
        let d_full = full.apply(scan(vec![
            ("b.yaml", Seen::Read(Ok(plan("b", "b.yaml", "2")))),
            ("c.yaml", Seen::Read(Ok(plan("c", "c.yaml", "1")))),
        ]));
        let d_named = named.apply_named(
            scan(vec![
                ("b.yaml", Seen::Read(Ok(plan("b", "b.yaml", "2")))),
                ("c.yaml", Seen::Read(Ok(plan("c", "c.yaml", "1")))),
            ]),
            &[PathBuf::from("a.yaml")],
        );
        for d in [&d_full, &d_named] {
            assert_eq!(names(&d.added), ["c"]);
            assert_eq!(d.changed.len(), 1);
            assert_eq!(names(&d.removed), ["a"]);
        }
        // Files not named stay as they were.
        let d = named.apply_named(BTreeMap::new(), &[]);
        assert!(d.is_empty());
        assert_eq!(named.active().count(), 2);
        // A name taken by a newcomer while its incumbent is not looked at stays the incumbent's.
        let d = named.apply_named(
            scan(vec![("d.yaml", Seen::Read(Ok(plan("b", "d.yaml", "9"))))]),
            &[],
        );
        assert!(d.added.is_empty() && d.changed.is_empty(), "{d:?}");
        assert_eq!(named.file_of("b"), Some(Path::new("b.yaml")));
        assert!(named.invalid_files().contains_key(Path::new("d.yaml")));
        // The newcomer takes another name: its conflict goes, its plan comes.
        let d = named.apply_named(
            scan(vec![("d.yaml", Seen::Read(Ok(plan("e", "d.yaml", "9"))))]),
            &[],
        );
        assert_eq!(names(&d.added), ["e"]);
        assert!(
            named.invalid_files().is_empty(),
            "{:?}",
            named.invalid_files()
        );
        // Back to the taken name, then the incumbent's file goes: the name passes to it.
        named.apply_named(
            scan(vec![("d.yaml", Seen::Read(Ok(plan("b", "d.yaml", "9"))))]),
            &[],
        );
        assert_eq!(named.file_of("b"), Some(Path::new("b.yaml")));
        let d = named.apply_named(BTreeMap::new(), &[PathBuf::from("b.yaml")]);
        assert_eq!(d.changed.len(), 1, "{d:?}");
        assert_eq!(named.file_of("b"), Some(Path::new("d.yaml")));
        assert!(named.get("e").is_none());
        assert!(named.invalid_files().is_empty());
        // A full scan agrees with what the named looks built.
        let d = named.apply(scan(vec![
            ("c.yaml", Seen::Read(Ok(plan("c", "c.yaml", "1")))),
            ("d.yaml", Seen::Read(Ok(plan("b", "d.yaml", "9")))),
        ]));
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn added_changed_removed() {
        let mut c = Catalog::new();
        let d = c.apply(scan(vec![(
            "a.yaml",
            Seen::Read(Ok(plan("a", "a.yaml", "1"))),
        )]));
        assert_eq!(names(&d.added), ["a"]);
        let d = c.apply(scan(vec![(
            "a.yaml",
            Seen::Read(Ok(plan("a", "a.yaml", "1"))),
        )]));
        assert!(d.is_empty(), "same content is no change");
        let d = c.apply(scan(vec![(
            "a.yaml",
            Seen::Read(Ok(plan("a", "a.yaml", "2"))),
        )]));
        assert_eq!(d.changed.len(), 1);
        assert_eq!(d.changed[0].1.sha256, "2");
        let d = c.apply(scan(vec![]));
        assert_eq!(names(&d.removed), ["a"]);
        assert_eq!(c.active().count(), 0);
    }

    #[test]
    fn invalid_keeps_the_last_valid_version() {
        let mut c = Catalog::new();
        c.apply(scan(vec![(
            "a.yaml",
            Seen::Read(Ok(plan("a", "a.yaml", "1"))),
        )]));
        let d = c.apply(scan(vec![("a.yaml", Seen::Read(Err(bad("a.yaml"))))]));
        assert_eq!(d.became_invalid.len(), 1);
        assert!(d.removed.is_empty() && d.changed.is_empty());
        assert_eq!(c.get("a").expect("still active").sha256, "1");
        assert_eq!(c.invalid_files().len(), 1);
        // Fixed: the invalid entry goes away, the new version replaces the old one.
        let d = c.apply(scan(vec![(
            "a.yaml",
            Seen::Read(Ok(plan("a", "a.yaml", "3"))),
        )]));
        assert_eq!(d.changed.len(), 1);
        assert!(c.invalid_files().is_empty());
        // Deleted while invalid: the kept version goes too.
        c.apply(scan(vec![("a.yaml", Seen::Read(Err(bad("a.yaml"))))]));
        let d = c.apply(scan(vec![]));
        assert_eq!(names(&d.removed), ["a"]);
        assert!(c.invalid_files().is_empty());
    }

    #[test]
    fn a_new_invalid_file_is_reported_without_a_plan() {
        let mut c = Catalog::new();
        let d = c.apply(scan(vec![("x.yaml", Seen::Read(Err(bad("x.yaml"))))]));
        assert_eq!(d.became_invalid, vec![(PathBuf::from("x.yaml"), None)]);
        assert!(d.added.is_empty());
    }

    #[test]
    fn unsettled_files_keep_their_state() {
        let mut c = Catalog::new();
        c.apply(scan(vec![(
            "a.yaml",
            Seen::Read(Ok(plan("a", "a.yaml", "1"))),
        )]));
        let d = c.apply(scan(vec![("a.yaml", Seen::Unsettled)]));
        assert!(d.is_empty());
        assert!(c.get("a").is_some());
        let d = c.apply(scan(vec![("b.yaml", Seen::Unsettled)]));
        assert_eq!(
            names(&d.removed),
            ["a"],
            "a file gone from the folder is removed"
        );
        assert_eq!(
            c.active().count(),
            0,
            "an unsettled new file is not a plan yet"
        );
    }

    #[test]
    fn duplicate_names_neither_replaces_the_other() {
        let mut c = Catalog::new();
        c.apply(scan(vec![(
            "a.yaml",
            Seen::Read(Ok(plan("web", "a.yaml", "1"))),
        )]));
        let d = c.apply(scan(vec![
            ("a.yaml", Seen::Read(Ok(plan("web", "a.yaml", "1")))),
            ("b.yaml", Seen::Read(Ok(plan("web", "b.yaml", "2")))),
        ]));
        assert!(d.is_empty(), "the incumbent stays: {d:?}");
        assert_eq!(c.file_of("web"), Some(Path::new("a.yaml")));
        let invalid = c.invalid_files();
        assert!(invalid[Path::new("b.yaml")].to_string().contains("a.yaml"));

        // Both new at once: nobody gets the name, both are reported.
        let mut c = Catalog::new();
        let d = c.apply(scan(vec![
            ("a.yaml", Seen::Read(Ok(plan("web", "a.yaml", "1")))),
            ("b.yaml", Seen::Read(Ok(plan("web", "b.yaml", "2")))),
        ]));
        assert!(d.added.is_empty());
        assert_eq!(c.invalid_files().len(), 2);
    }
}
