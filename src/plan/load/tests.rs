//! Tests of the input guards, YAML-level errors and plan discovery.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;

const ID_A: &str = "d2dc947ec2424d8789bb3984bb3adf45";

fn parse_err(bytes: &[u8]) -> Issue {
    let issues = parse_plan(Path::new("p.yaml"), bytes)
        .expect_err("must fail")
        .0;
    assert_eq!(issues.len(), 1, "{issues:#?}");
    issues.into_iter().next().expect("one issue")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/plans")
}

#[test]
fn size_limit_on_both_sides() {
    let head = format!("tasks: [{ID_A}]\n#");
    let mut at_limit = head.clone().into_bytes();
    at_limit.resize(MAX_PLAN_BYTES, b'x');
    parse_plan(Path::new("p.yaml"), &at_limit).expect("exactly 1 MiB is fine");
    at_limit.push(b'x');
    let e = parse_err(&at_limit);
    assert!(
        e.message.contains("1048576") && e.message.contains("1 MiB"),
        "{e}"
    );
}

#[test]
fn load_refuses_a_file_over_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.yaml");
    fs::write(&path, vec![b'#'; MAX_PLAN_BYTES + 1]).expect("write");
    let e = load_plan_file(&path).expect_err("too big").0;
    assert!(e[0].message.contains("1 MiB"), "{}", e[0]);
    assert_eq!(e[0].file, path);
}

#[test]
fn empty_files() {
    for text in ["", "\n\n", "# only\n# comments\n", "---\n", "~\n", "null"] {
        let e = parse_err(text.as_bytes());
        assert!(e.message.contains("empty"), "{text:?}: {e}");
        assert_eq!((e.line, e.column, e.path.as_str()), (1, 1, ""));
    }
}

#[test]
fn garbage_bytes_and_binary_files() {
    let e = parse_err(b"tasks:\n  - \xff\xfe\x00garbage");
    assert!(e.message.contains("UTF-8"), "{e}");
    assert_eq!((e.line, e.column), (2, 5));
    let e = parse_err(b"tasks: [a]\n\x00\x01\x02");
    assert!(e.message.contains("NUL"), "{e}");
    assert_eq!((e.line, e.column), (2, 1));
    // Random-looking bytes never panic.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..200 {
        let bytes: Vec<u8> = (0..64)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed & 0xff) as u8
            })
            .collect();
        assert!(parse_plan(Path::new("p.yaml"), &bytes).is_err());
    }
}

#[test]
fn the_document_must_be_a_mapping() {
    let e = parse_err(b"# plan\n- a\n- b\n");
    assert!(e.message.contains("found a list"), "{e}");
    assert_eq!((e.line, e.column), (2, 1));
    let e = parse_err(b"just text");
    assert!(e.message.contains("found a text"), "{e}");
    let e = parse_err(b"42");
    assert!(e.message.contains("found a number"), "{e}");
}

#[test]
fn one_document_only() {
    let e = parse_err(format!("tasks: [{ID_A}]\n---\ntasks: [{ID_A}]\n").as_bytes());
    assert!(e.message.contains("single YAML document"), "{e}");
    assert_eq!(e.line, 2);
    // Leading `---` and a trailing `...` are one document.
    parse_plan(
        Path::new("p.yaml"),
        format!("---\ntasks: [{ID_A}]\n...\n").as_bytes(),
    )
    .expect("one document");
}

#[test]
fn yaml_errors_have_location_and_path() {
    let e = parse_err(format!("tasks:\n  - task_id: {ID_A}\n    task_id: {ID_A}\n").as_bytes());
    assert_eq!((e.line, e.column), (3, 5));
    assert_eq!(e.path, "tasks[0].task_id");
    assert!(e.message.contains("duplicate key `task_id`"), "{e}");

    let e = parse_err(format!("name: a\ntasks: [{ID_A}]\nname: b\n").as_bytes());
    assert_eq!((e.line, e.column, e.path.as_str()), (3, 1, "name"));

    let e = parse_err(format!("tasks: [{ID_A}]\nschedul: x\n").as_bytes());
    assert_eq!((e.line, e.column, e.path.as_str()), (2, 1, "schedul"));
    assert!(e.message.contains("unknown field `schedul`") && e.message.contains("schedule"));

    let e = parse_err(
        format!(
            "tasks:\n  - task_id: {ID_A}\n    params:\n      - {{key: a, value: b, valu: c}}\n"
        )
        .as_bytes(),
    );
    assert_eq!((e.line, e.column), (4, 28));
    assert_eq!(e.path, "tasks[0].params[0].valu");

    let e = parse_err(
        format!("tasks:\n  - task_id: {ID_A}\n    params:\n      - {{key: a, value_from: {{envv: X}}}}\n")
            .as_bytes(),
    );
    assert_eq!(e.path, "tasks[0].params[0].value_from.envv");
}

#[test]
fn wrong_types_are_reported_without_quoting_values() {
    let cases = [
        ("concurrency: many\ntasks: [ID]", "concurrency", 1),
        ("enabled: maybe\ntasks: [ID]", "enabled", 1),
        ("tasks: {a: 1}", "tasks", 1),
        ("params: secretvalue\ntasks: [ID]", "params", 1),
        (
            "tasks:\n  - task_id: ID\n    params: [{key: k, value: [secretvalue]}]",
            "tasks[0].params[0].value",
            3,
        ),
        ("tasks:\n  - [ID]", "tasks[0]", 2),
        ("retry: 5\ntasks: [ID]", "retry", 1),
        (
            "tasks:\n  - task_id: ID\n    params: [{key: k, value_from: secretvalue}]",
            "tasks[0].params[0].value_from",
            3,
        ),
    ];
    for (yaml, path, line) in cases {
        let e = parse_err(yaml.replace("ID", ID_A).as_bytes());
        assert_eq!((e.path.as_str(), e.line), (path, line), "{yaml}: {e}");
        assert!(!e.message.contains("secretvalue"), "{e}");
    }
}

#[test]
fn billion_laughs_is_refused_quickly() {
    let mut y = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 9].join(",");
        y.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
    }
    y.push_str("tasks: *i\n");
    let started = Instant::now();
    parse_err(y.as_bytes());
    // The same bomb where the document is allowed to hold it: under `params`.
    let mut y = String::from("params: &p0\n  - {key: a, value: b}\n  - {key: c, value: d}\n");
    y.push_str(&format!(
        "tasks:\n  - task_id: {ID_A}\n    params: &p1 [*p0, *p0]\n"
    ));
    parse_err(y.as_bytes());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn alias_expansion_is_bounded_by_named_limits() {
    // Reusing one anchor in many tasks is fine.
    let refs: String = (0..200)
        .map(|i| format!("  - {{task_id: a{i:031}, params: *p}}\n"))
        .collect();
    let y = format!("params: &p [{{key: k, value: v}}]\ntasks:\n{refs}");
    let loaded = parse_plan(Path::new("p.yaml"), y.as_bytes()).expect("aliases are fine");
    assert_eq!(loaded.plan.tasks[199].params.len(), 1);

    // More alias references than allowed.
    let many: String = (0..=MAX_ALIASES).map(|_| "  - *t\n").collect();
    let y = format!("tasks:\n  - &t {ID_A}\n{many}");
    let e = parse_err(y.as_bytes());
    assert!(
        e.message
            .contains(&format!("more than {MAX_ALIASES} YAML aliases")),
        "{e}"
    );

    // Few aliases that replay a large list: refused by the replay limit.
    let big: String = (0..1000)
        .map(|i| format!("      - {{key: k{i}, value: v}}\n"))
        .collect();
    let tasks: String = (0..90)
        .map(|i| format!("  - {{task_id: a{i:031}, params: *p}}\n"))
        .collect();
    let y = format!(
        "tasks:\n  - task_id: b{:031}\n    params: &p\n{big}{tasks}",
        0
    );
    let e = parse_err(y.as_bytes());
    assert!(
        e.message
            .contains(&format!("more than {MAX_REPLAYED_EVENTS} events")),
        "{e}"
    );
}

#[test]
fn deep_nesting_names_the_limit() {
    let flow = format!("tasks: {}{}\n", "[".repeat(200), "]".repeat(200));
    let e = parse_err(flow.as_bytes());
    assert!(e.message.contains("deeper than 16"), "{e}");
    let mut block = String::from("tasks:\n");
    for depth in 1..100 {
        block.push_str(&"  ".repeat(depth));
        block.push_str("- \n");
    }
    parse_err(block.as_bytes());
}

#[test]
fn a_symbolic_document_cannot_smuggle_merge_keys_past_unknown_fields() {
    let y = format!("tasks:\n  - &t {{task_id: {ID_A}}}\n  - <<: *t\n    bogus: 1\n");
    let e = parse_err(y.as_bytes());
    assert!(e.message.contains("bogus"), "{e}");
}

#[test]
fn plan_file_names() {
    for good in [
        "a.yaml",
        "a.yml",
        "nightly-web.yaml",
        "x.tmp.yaml",
        "#a.yaml",
    ] {
        assert!(is_plan_file_name(good), "{good}");
    }
    for bad in [
        ".a.yaml",
        ".yaml",
        "a.yaml~",
        "a.yaml.swp",
        ".a.yaml.swp",
        "a.yaml.tmp",
        "#a.yaml#",
        "a.json",
        "a.YAML",
        "a",
        "yaml",
        "a.yaml.bak",
    ] {
        assert!(!is_plan_file_name(bad), "{bad}");
    }
}

#[test]
fn plan_files_in_lists_plans_only_sorted() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in [
        "b.yml",
        "a.yaml",
        ".hidden.yaml",
        "a.yaml~",
        "#a.yaml#",
        "x.swp",
        "notes.txt",
    ] {
        fs::write(dir.path().join(name), "x").expect("write");
    }
    fs::create_dir(dir.path().join("folder.yaml")).expect("mkdir");
    fs::create_dir(dir.path().join("sub")).expect("mkdir");
    fs::write(dir.path().join("sub/c.yaml"), "x").expect("write");
    let found = plan_files_in(dir.path()).expect("list");
    assert_eq!(found, [dir.path().join("a.yaml"), dir.path().join("b.yml")]);
}

#[cfg(unix)]
#[test]
fn load_reads_regular_files_and_symlinks_to_them_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real.yaml");
    fs::write(&real, format!("tasks: [{ID_A}]\n")).expect("write");
    let link = dir.path().join("link.yaml");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let loaded = load_plan_file(&link).expect("a link to a file is followed");
    assert_eq!(loaded.plan.name, "link");
    assert_eq!(loaded.plan.file_name, "link.yaml");

    let to_dir = dir.path().join("to-dir.yaml");
    std::os::unix::fs::symlink(dir.path(), &to_dir).expect("symlink");
    let e = load_plan_file(&to_dir).expect_err("dir").0;
    assert!(e[0].message.contains("not a regular file"), "{}", e[0]);
    let e = load_plan_file(dir.path()).expect_err("dir").0;
    assert!(e[0].message.contains("not a regular file"), "{}", e[0]);

    let dangling = dir.path().join("dangling.yaml");
    std::os::unix::fs::symlink(dir.path().join("gone"), &dangling).expect("symlink");
    let e = load_plan_file(&dangling).expect_err("dangling").0;
    assert!(e[0].message.contains("cannot read"), "{}", e[0]);

    let e = load_plan_file(Path::new("/dev/null"))
        .expect_err("device")
        .0;
    assert!(e[0].message.contains("not a regular file"), "{}", e[0]);
}

#[test]
fn same_content_same_hash_and_hash_of_the_bytes() {
    let bytes = format!("tasks: [{ID_A}]\n");
    let a = parse_plan(Path::new("a.yaml"), bytes.as_bytes()).expect("valid");
    assert_eq!(a.plan.sha256, hex::encode(Sha256::digest(bytes.as_bytes())));
    let b = parse_plan(Path::new("a.yaml"), format!("{bytes}\n").as_bytes()).expect("valid");
    assert_ne!(a.plan.sha256, b.plan.sha256);
}

#[test]
fn fixtures_valid_and_invalid() {
    let files = plan_files_in(&fixtures()).expect("fixtures");
    assert!(files.len() >= 8);
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let result = load_plan_file(&file);
        if name.starts_with("valid") {
            assert!(
                result.is_ok(),
                "{name}: {}",
                result.err().map(|e| e.to_string()).unwrap_or_default()
            );
        } else {
            let issues = result.expect_err(name).0;
            assert!(
                issues
                    .iter()
                    .all(|i| i.file == file && i.line >= 1 && i.column >= 1)
            );
        }
    }
}

#[test]
fn check_paths_expands_folders_and_reports_missing_paths() {
    let report = check_paths(&[fixtures(), PathBuf::from("/no/such/plan.yaml")]);
    let names: Vec<&str> = report.plans.iter().map(|l| l.plan.name.as_str()).collect();
    assert_eq!(names, ["nightly-web", "valid-minimal", "valid-scalars"]);
    let missing = report
        .issues
        .iter()
        .find(|i| i.file == Path::new("/no/such/plan.yaml"))
        .expect("missing path reported");
    assert!(missing.message.contains("no such file"), "{missing}");
    for bad in [
        "invalid-many.yaml",
        "invalid-empty.yaml",
        "invalid-not-mapping.yaml",
    ] {
        assert!(
            report.issues.iter().any(|i| i.file.ends_with(bad)),
            "{bad} not reported"
        );
    }
}

#[test]
fn check_paths_checks_explicit_files_even_with_ignored_names_and_dedupes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let odd = dir.path().join("draft.yaml~");
    fs::write(&odd, format!("tasks: [{ID_A}]\n")).expect("write");
    let report = check_paths(&[dir.path().to_path_buf(), odd.clone(), odd.clone()]);
    assert_eq!(report.plans.len(), 1, "{:?}", report.issues);
    assert!(report.issues.is_empty());
}

#[test]
fn two_plans_with_one_name_in_a_folder_are_both_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("a.yaml"),
        format!("name: web\ntasks: [{ID_A}]\n"),
    )
    .expect("w");
    fs::write(dir.path().join("web.yml"), format!("tasks: [{ID_A}]\n")).expect("w");
    fs::write(dir.path().join("other.yaml"), format!("tasks: [{ID_A}]\n")).expect("w");
    let report = check_paths(&[dir.path().to_path_buf()]);
    let names: Vec<&str> = report.plans.iter().map(|l| l.plan.name.as_str()).collect();
    assert_eq!(names, ["other"]);
    assert_eq!(report.issues.len(), 2, "{:#?}", report.issues);
    assert!(report.issues[0].file.ends_with("a.yaml"));
    assert!(report.issues[0].message.contains("web.yml"));
    assert!(report.issues[1].file.ends_with("web.yml"));
    assert_eq!(report.issues[1].path, "name");
    // Other folders may reuse a name.
    let other = tempfile::tempdir().expect("tempdir");
    fs::write(other.path().join("web.yaml"), format!("tasks: [{ID_A}]\n")).expect("w");
    let report = check_paths(&[dir.path().join("web.yml"), other.path().join("web.yaml")]);
    assert_eq!(report.plans.len(), 2, "{:#?}", report.issues);
}

/// Issue 10: a plan file whose name is not UTF-8 is listed and reported as invalid, with its
/// name shown lossily, instead of being skipped silently.
#[cfg(unix)]
#[test]
fn a_file_name_that_is_not_utf8_is_listed_and_reported() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join(OsStr::from_bytes(b"caf\xe9.yaml"));
    let plan = format!("name: cafe\ntasks: [{ID_A}]\n");
    fs::write(&bad, &plan).expect("write");
    fs::write(dir.path().join(OsStr::from_bytes(b"caf\xe9.swp")), "x").expect("write");
    fs::write(dir.path().join("ok.yaml"), format!("tasks: [{ID_A}]\n")).expect("write");
    let found = plan_files_in(dir.path()).expect("list");
    assert_eq!(found, [bad.clone(), dir.path().join("ok.yaml")]);

    // Valid content with an explicit name: the file name alone makes it invalid.
    let Issues(issues) = load_plan_file(&bad).expect_err("invalid");
    assert_eq!(issues.len(), 1, "{issues:#?}");
    let line = issues[0].to_string();
    assert!(line.contains("caf\u{FFFD}.yaml:1:1: "), "{line}");
    assert!(line.contains("not valid UTF-8"), "{line}");
    // The content's own problems are reported with it.
    let Issues(issues) = parse_plan(&bad, b"tasks: [x]\n").expect_err("invalid");
    assert!(issues.len() >= 2, "{issues:#?}");

    let report = check_paths(&[dir.path().to_path_buf()]);
    assert_eq!(report.plans.len(), 1);
    assert_eq!(report.issues.len(), 1);
    assert_eq!(report.issues[0].file, bad);
}

#[test]
fn issue_10_value_files_under_proc_sys_dev_or_not_regular_are_refused_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero")).expect("symlink");
    fs::write(dir.path().join("ok.txt"), "1.0").expect("write");
    let plan = dir.path().join("p.yaml");
    fs::write(
        &plan,
        format!(
            "params:\n  - {{key: env, value_from: {{file: /proc/self/environ}}}}\ntasks:\n  - task_id: {ID_A}\n    params:\n      - {{key: a, value_from: {{file: zero}}}}\n      - {{key: b, value_from: {{file: ok.txt}}}}\n      - {{key: c, value_from: {{file: missing.txt}}}}\n      - {{key: d, value_from: {{file: .}}}}\n"
        ),
    )
    .expect("write");
    let issues = load_plan_file(&plan).expect_err("refused").0;
    let shown: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
    assert_eq!(issues.len(), 3, "{shown:#?}");
    let p = plan.display();
    assert!(
        shown[0].starts_with(&format!(
            "{p}:2:35: params[0].value_from.file: /proc/self/environ is under /proc"
        )),
        "{shown:#?}"
    );
    assert!(
        shown[1].starts_with(&format!("{p}:6:37: tasks[0].params[0].value_from.file: ")),
        "{shown:#?}"
    );
    assert!(shown[1].contains("resolves to /dev/zero"), "{shown:#?}");
    assert!(
        shown[2].contains("tasks[0].params[3].value_from.file") && shown[2].contains("a folder"),
        "{shown:#?}"
    );
    // `deployd check` reports the same.
    let report = check_paths(std::slice::from_ref(&plan));
    assert_eq!(report.issues, issues);
}
