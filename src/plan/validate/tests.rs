//! Unit tests of the plan rules, through the whole parse (YAML text in, plan or issues out).

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::plan::load::{Loaded, parse_plan};

const ID_A: &str = "d2dc947ec2424d8789bb3984bb3adf45";
const ID_B: &str = "0ee9c8e6a7dc44109541e53c6dccf47c";

fn parse(yaml: &str) -> Result<Loaded, Issues> {
    parse_plan(Path::new("plans/t.yaml"), yaml.as_bytes())
}

fn ok(yaml: &str) -> Loaded {
    match parse(yaml) {
        Ok(loaded) => loaded,
        Err(issues) => panic!("expected a valid plan, got:\n{issues}"),
    }
}

fn errors(yaml: &str) -> Vec<Issue> {
    parse(yaml).expect_err("expected errors").0
}

/// The single error of `yaml`, which must be at `path`.
fn error_at(yaml: &str, path: &str) -> Issue {
    let errs = errors(yaml);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    assert_eq!(errs[0].path, path, "{errs:#?}");
    errs.into_iter().next().expect("one error")
}

/// A plan with one task whose params list is `params` (flow YAML items).
fn with_params(params: &[String]) -> String {
    let mut y = format!("tasks:\n  - task_id: {ID_A}\n    params:\n");
    for p in params {
        y.push_str(&format!("      - {p}\n"));
    }
    y
}

fn literal(loaded: &Loaded, task: usize, key: &str) -> String {
    let p = loaded.plan.tasks[task]
        .params
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no param {key}"));
    match &p.value {
        ParamValue::Literal(s) => s.expose().to_string(),
        other => panic!("not a literal: {other:?}"),
    }
}

#[test]
fn full_sample_builds_every_field() {
    let text = include_str!("../../../tests/fixtures/plans/valid-full.yaml");
    let loaded = parse_plan(Path::new("x/valid-full.yaml"), text.as_bytes()).expect("valid");
    let plan = &loaded.plan;
    assert_eq!(plan.name, "nightly-web");
    assert_eq!(plan.file_name, "valid-full.yaml");
    assert_eq!(plan.sha256.len(), 64);
    assert!(
        plan.sha256
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_uppercase())
    );
    let schedule = plan.schedule.as_ref().expect("scheduled");
    assert_eq!(schedule.expr(), "0 30 2 * * *");
    assert_eq!(schedule.timezone().name(), "Europe/Berlin");
    assert!(plan.enabled);
    assert_eq!(plan.overlap, Overlap::Queue);
    assert_eq!(plan.trigger_source.as_deref(), Some("0"));
    assert_eq!(plan.concurrency, NonZeroUsize::new(4));
    assert_eq!(
        plan.retry,
        RetryOverrides {
            max_attempts: Some(3),
            base: Some(Duration::from_millis(500)),
            cap: Some(Duration::from_secs(30)),
            deadline: Some(Duration::from_secs(600)),
        }
    );
    assert_eq!(plan.tasks.len(), 2);
    assert_eq!(plan.tasks[0].task_id, ID_A);
    let keys0: Vec<_> = plan.tasks[0]
        .params
        .iter()
        .map(|p| p.key.as_str())
        .collect();
    assert_eq!(keys0, ["env", "version"]);
    assert_eq!(plan.tasks[0].params[0].ty, ParamType::HostGroup);
    assert_eq!(literal(&loaded, 0, "version"), "1.10");
    // Task 2 overrides `version`: plan params first unless overridden, then its own in order.
    let keys1: Vec<_> = plan.tasks[1]
        .params
        .iter()
        .map(|p| p.key.as_str())
        .collect();
    assert_eq!(keys1, ["env", "version", "db_password", "cert", "dry_run"]);
    assert_eq!(literal(&loaded, 1, "version"), "1.4.2");
    assert_eq!(literal(&loaded, 1, "dry_run"), "no");
    assert_eq!(
        plan.tasks[1].params[2].value,
        ParamValue::Env("DB_PASSWORD".into())
    );
    assert_eq!(
        plan.tasks[1].params[3].value,
        ParamValue::File("secrets/cert.pem".into())
    );
    assert_eq!(
        plan.tasks[1].record_id.as_deref(),
        Some("5b1f2a3c4d5e6f708192a3b4c5d6e7f8")
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn defaults_apply_and_name_is_the_file_stem() {
    let loaded = ok(&format!("tasks: [{ID_A}]"));
    let plan = loaded.plan;
    assert_eq!(plan.name, "t");
    assert_eq!(plan.file_name, "t.yaml");
    assert!(plan.schedule.is_none());
    assert!(plan.enabled);
    assert_eq!(plan.overlap, Overlap::Skip);
    assert_eq!(plan.trigger_source, None);
    assert_eq!(plan.concurrency, None);
    assert_eq!(plan.retry, RetryOverrides::default());
    assert_eq!(plan.tasks[0].params, []);
    assert_eq!(plan.tasks[0].record_id, None);
}

#[test]
fn scalars_are_taken_as_the_text_written() {
    let cases = [
        ("1.10", "1.10"),
        ("no", "no"),
        ("yes", "yes"),
        ("0123", "0123"),
        ("1e3", "1e3"),
        ("0x1F", "0x1F"),
        ("1_000", "1_000"),
        (".inf", ".inf"),
        ("true", "true"),
        ("2001-12-14", "2001-12-14"),
        ("\"\"", ""),
        ("'null'", "null"),
        ("\"a: b\"", "a: b"),
    ];
    for (written, expected) in cases {
        let loaded = ok(&with_params(&[format!("{{key: k, value: {written}}}")]));
        assert_eq!(literal(&loaded, 0, "k"), expected, "value: {written}");
    }
    let loaded = ok(&format!(
        "tasks:\n  - task_id: {ID_A}\n    params:\n      - key: k\n        value: |\n          a\n          b\n"
    ));
    assert_eq!(literal(&loaded, 0, "k"), "a\nb\n");
}

#[test]
fn a_null_value_is_an_error_not_an_empty_text() {
    for null in ["", "~", "null", "Null"] {
        let e = error_at(
            &with_params(&[format!("{{key: k, value: {null}}}")]),
            "tasks[0].params[0].value",
        );
        assert!(e.message.contains("null"), "{e}");
    }
}

#[test]
fn trigger_source_accepts_0_and_1_as_text_or_number() {
    for (written, stored) in [("0", "0"), ("1", "1"), ("\"0\"", "0"), ("'1'", "1")] {
        let plan = ok(&format!("trigger_source: {written}\ntasks: [{ID_A}]")).plan;
        assert_eq!(plan.trigger_source.as_deref(), Some(stored));
    }
    for bad in ["2", "\"01\"", "true", "-1", "0.0"] {
        error_at(
            &format!("trigger_source: {bad}\ntasks: [{ID_A}]"),
            "trigger_source",
        );
    }
}

#[test]
fn param_key_bounds() {
    ok(&with_params(&[format!(
        "{{key: {}, value: v}}",
        "k".repeat(128)
    )]));
    let e = error_at(
        &with_params(&[format!("{{key: {}, value: v}}", "k".repeat(129))]),
        "tasks[0].params[0].key",
    );
    assert!(e.message.contains("128"), "{e}");
    error_at(
        &with_params(&["{key: \"\", value: v}".into()]),
        "tasks[0].params[0].key",
    );
    error_at(
        &with_params(&["{key: \"a/b\", value: v}".into()]),
        "tasks[0].params[0].key",
    );
    ok(&with_params(&["{key: a.b_c-D9, value: v}".into()]));
}

#[test]
fn param_value_bounds_and_template_sequences_never_quote_the_value() {
    ok(&with_params(&[format!(
        "{{key: k, value: {}}}",
        "v".repeat(8192)
    )]));
    let e = error_at(
        &with_params(&[format!("{{key: k, value: {}}}", "v".repeat(8193))]),
        "tasks[0].params[0].value",
    );
    assert!(
        e.message.contains("8192") && !e.message.contains("vvvv"),
        "{e}"
    );
    for seq in ["{{", "{%", "{#"] {
        for value in [
            format!("{seq}secretx"),
            format!("sec{seq}retx"),
            format!("secretx{seq}"),
        ] {
            let e = error_at(
                &with_params(&[format!("{{key: k, value: \"{value}\"}}")]),
                "tasks[0].params[0].value",
            );
            assert!(!e.to_string().contains("secretx"), "{e}");
        }
    }
    ok(&with_params(&["{key: k, value: \"{ { % #\"}".into()]));
}

#[test]
fn id_lengths_and_characters() {
    let id = |n: usize| "a".repeat(n);
    ok(&format!("tasks: [{}]", id(32)));
    for bad in [
        id(31),
        id(33),
        format!("{}-", id(31)),
        format!("{}é", id(31)),
    ] {
        error_at(&format!("tasks: [\"{bad}\"]"), "tasks[0]");
        error_at(
            &format!("tasks:\n  - task_id: \"{bad}\"\n"),
            "tasks[0].task_id",
        );
        error_at(
            &format!("tasks:\n  - task_id: {ID_A}\n    record_id: \"{bad}\"\n"),
            "tasks[0].record_id",
        );
    }
    ok(&format!(
        "tasks:\n  - task_id: {ID_A}\n    record_id: {}\n",
        id(32)
    ));
}

#[test]
fn a_bare_id_that_reads_as_a_number_is_judged_as_written() {
    let digits = "12345678901234567890123456789012";
    let plan = ok(&format!("tasks:\n  - {digits}\n")).plan;
    assert_eq!(plan.tasks[0].task_id, digits);
    // Reads as a float that overflows: still the text as written.
    let exp = "1234e567890123456789012345678901";
    let plan = ok(&format!("tasks:\n  - {exp}\n")).plan;
    assert_eq!(plan.tasks[0].task_id, exp);
    // Through an alias, the anchored text is judged: a duplicate of the first.
    let e = error_at(&format!("tasks:\n  - &n {digits}\n  - *n\n"), "tasks[1]");
    assert!(
        e.message.contains(&format!("{digits} is listed twice")),
        "{e}"
    );
    let e = error_at("tasks:\n  - 0123\n", "tasks[0]");
    assert!(e.message.contains("4 characters"), "{e}");
    error_at("tasks:\n  - yes\n", "tasks[0]");
    error_at("tasks:\n  - ~\n", "tasks[0]");
}

#[test]
fn tasks_are_required_and_not_empty() {
    error_at("name: x\n", "tasks");
    error_at("tasks: []\n", "tasks");
    error_at("tasks:\n", "tasks");
}

#[test]
fn duplicate_task_ids_report_the_second_with_the_first_line() {
    let y = format!("tasks:\n  - {ID_A}\n  - {ID_B}\n  - task_id: {ID_A}\n");
    let e = error_at(&y, "tasks[2].task_id");
    assert_eq!((e.line, e.column), (4, 14));
    assert!(e.message.contains("first at line 2"), "{e}");
}

#[test]
fn duplicate_param_keys_in_one_list_are_errors_but_tasks_override_the_plan() {
    let e = error_at(
        &with_params(&["{key: k, value: a}".into(), "{key: k, value: b}".into()]),
        "tasks[0].params[1].key",
    );
    assert!(e.message.contains("first at line 4"), "{e}");
    error_at(
        &format!("params:\n  - {{key: k, value: a}}\n  - {{key: k, value: b}}\ntasks: [{ID_A}]"),
        "params[1].key",
    );
    let loaded = ok(&format!(
        "params:\n  - {{key: k, value: plan}}\n  - {{key: p, value: plan}}\ntasks:\n  - task_id: {ID_A}\n    params: [{{key: k, value: own}}]\n  - {ID_B}\n"
    ));
    assert_eq!(literal(&loaded, 0, "k"), "own");
    assert_eq!(literal(&loaded, 1, "k"), "plan");
    let keys: Vec<_> = loaded.plan.tasks[0].params.iter().map(|p| &p.key).collect();
    assert_eq!(keys, ["p", "k"]);
}

#[test]
fn value_and_value_from_exactly_one() {
    let e = error_at(
        &with_params(&["{key: k, value: v, value_from: {env: X}}".into()]),
        "tasks[0].params[0]",
    );
    assert!(e.message.contains("both"), "{e}");
    let e = error_at(&with_params(&["{key: k}".into()]), "tasks[0].params[0]");
    assert!(e.message.contains("neither"), "{e}");
    error_at(
        &with_params(&["{key: k, value_from: {env: X, file: y}}".into()]),
        "tasks[0].params[0].value_from",
    );
    error_at(
        &with_params(&["{key: k, value_from: {}}".into()]),
        "tasks[0].params[0].value_from",
    );
    for bad_env in ["\"\"", "1X", "A-B", "\"A B\""] {
        error_at(
            &with_params(&[format!("{{key: k, value_from: {{env: {bad_env}}}}}")]),
            "tasks[0].params[0].value_from.env",
        );
    }
    error_at(
        &with_params(&["{key: k, value_from: {file: \"\"}}".into()]),
        "tasks[0].params[0].value_from.file",
    );
}

#[test]
fn param_types() {
    for ty in ["text", "host_group", "encrypt", "enum"] {
        let loaded = ok(&with_params(&[format!(
            "{{key: k, value_from: {{env: X}}, type: {ty}}}"
        )]));
        assert_eq!(loaded.plan.tasks[0].params[0].ty.as_str(), ty);
    }
    error_at(
        &with_params(&["{key: k, value: v, type: secret}".into()]),
        "tasks[0].params[0].type",
    );
}

#[test]
fn a_literal_encrypt_value_is_a_warning_that_never_quotes_it() {
    let loaded = ok(&with_params(&[
        "{key: pw, value: hunter2, type: encrypt}".into()
    ]));
    assert_eq!(loaded.warnings.len(), 1);
    let w = &loaded.warnings[0];
    assert_eq!(w.path, "tasks[0].params[0].value");
    assert!(w.message.contains("value_from"), "{w}");
    assert!(!w.to_string().contains("hunter2"));
    assert!(!format!("{:?}", loaded.plan).contains("hunter2"));
    // Plan level: once, not once per task.
    let loaded = ok(&format!(
        "params: [{{key: pw, value: hunter2, type: encrypt}}]\ntasks: [{ID_A}, {ID_B}]"
    ));
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(loaded.warnings[0].path, "params[0].value");
    let loaded = ok(&with_params(&[
        "{key: pw, value_from: {env: PW}, type: encrypt}".into(),
    ]));
    assert!(loaded.warnings.is_empty());
}

#[test]
fn schedule_and_timezone() {
    let plan = ok(&format!("schedule: \"*/5 * * * *\"\ntasks: [{ID_A}]")).plan;
    assert_eq!(plan.schedule.expect("parsed").timezone().name(), "UTC");
    ok(&format!(
        "schedule: \"@daily\"\ntimezone: Asia/Shanghai\ntasks: [{ID_A}]"
    ));
    for bad in ["\"61 * * * *\"", "\"not cron\"", "\"\"", "\"* * *\""] {
        error_at(&format!("schedule: {bad}\ntasks: [{ID_A}]"), "schedule");
    }
    error_at(
        &format!("schedule: \"@daily\"\ntimezone: Mars/Olympus\ntasks: [{ID_A}]"),
        "timezone",
    );
    let loaded = ok(&format!("timezone: UTC\ntasks: [{ID_A}]"));
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(loaded.warnings[0].path, "timezone");
}

#[test]
fn plan_names() {
    for good in [
        "a",
        "nightly-web",
        "v1.2_x",
        "A".repeat(64).as_str(),
        "a..b",
    ] {
        assert_eq!(
            ok(&format!("name: \"{good}\"\ntasks: [{ID_A}]")).plan.name,
            good
        );
    }
    for bad in [
        ".",
        "..",
        ".hidden",
        "_invalid",
        "",
        "a/b",
        "../x",
        "a b",
        "é",
        &"A".repeat(65),
    ] {
        error_at(&format!("name: \"{bad}\"\ntasks: [{ID_A}]"), "name");
    }
    // The default name must be valid too.
    let errs = parse_plan(
        Path::new("my plan.yaml"),
        format!("tasks: [{ID_A}]").as_bytes(),
    )
    .expect_err("bad stem")
    .0;
    assert_eq!(errs[0].path, "name");
    assert!(errs[0].message.contains("rename the file"), "{}", errs[0]);
    // An explicit name rescues a bad stem.
    ok(&format!("name: fine\ntasks: [{ID_A}]"));
    assert!(
        parse_plan(
            Path::new("my plan.yaml"),
            format!("name: fine\ntasks: [{ID_A}]").as_bytes()
        )
        .is_ok()
    );
}

#[test]
fn overlap_enabled_and_concurrency() {
    for (w, o) in [
        ("skip", Overlap::Skip),
        ("queue", Overlap::Queue),
        ("allow", Overlap::Allow),
    ] {
        assert_eq!(
            ok(&format!("overlap: {w}\ntasks: [{ID_A}]")).plan.overlap,
            o
        );
    }
    error_at(&format!("overlap: Skip\ntasks: [{ID_A}]"), "overlap");
    assert!(!ok(&format!("enabled: false\ntasks: [{ID_A}]")).plan.enabled);
    error_at(&format!("concurrency: 0\ntasks: [{ID_A}]"), "concurrency");
    let plan = ok(&format!("concurrency: 1\ntasks: [{ID_A}]")).plan;
    assert_eq!(plan.concurrency, NonZeroUsize::new(1));
    // Issue 10: the same range as the daemon's `concurrency`.
    let plan = ok(&format!("concurrency: 10000\ntasks: [{ID_A}]")).plan;
    assert_eq!(plan.concurrency, NonZeroUsize::new(10_000));
    for big in ["10001", "18446744073709551615"] {
        let e = error_at(
            &format!("concurrency: {big}\ntasks: [{ID_A}]"),
            "concurrency",
        );
        assert!(e.message.contains("must be from 1 to 10000"), "{e:?}");
    }
}

#[test]
fn retry_bounds() {
    let retry = |body: &str| format!("retry:\n{body}\ntasks: [{ID_A}]");
    for n in [1, 20] {
        let plan = ok(&retry(&format!("  max_attempts: {n}"))).plan;
        assert_eq!(plan.retry.max_attempts, Some(n));
    }
    for n in [0, 21] {
        error_at(
            &retry(&format!("  max_attempts: {n}")),
            "retry.max_attempts",
        );
    }
    ok(&retry("  base: 1s\n  cap: 1s"));
    error_at(&retry("  base: 2s\n  cap: 1999ms"), "retry.cap");
    error_at(&retry("  unknown: 1"), "retry.unknown");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("24h"), Ok(MAX_DURATION));
    assert_eq!(parse_duration("1d"), Ok(MAX_DURATION));
    for bad in [
        "",
        "10",
        "s",
        "0s",
        "2d",
        "1.5s",
        "-1s",
        "25h",
        "1 s",
        "99999999999999999999h",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn params_after_merge_are_limited_to_500() {
    let plan_params = |n: usize| {
        (0..n)
            .map(|i| format!("  - {{key: p{i}, value: v}}\n"))
            .collect::<String>()
    };
    let y = |plan_n: usize, own: &str| {
        format!(
            "params:\n{}tasks:\n  - task_id: {ID_A}\n    params: [{own}]\n",
            plan_params(plan_n)
        )
    };
    // 499 + 1 own = 500.
    assert_eq!(
        ok(&y(499, "{key: own, value: v}")).plan.tasks[0]
            .params
            .len(),
        500
    );
    // 500 + an override of p0 = still 500.
    ok(&y(500, "{key: p0, value: w}"));
    // 500 + 1 own = 501.
    let e = error_at(&y(500, "{key: own, value: v}"), "tasks[0].params");
    assert!(e.message.contains("501"), "{e}");
}

#[test]
fn at_most_10000_tasks() {
    let ids = |n: usize| {
        (0..n)
            .map(|i| format!("  - a{i:031}\n"))
            .collect::<String>()
    };
    assert_eq!(
        ok(&format!("tasks:\n{}", ids(MAX_TASKS))).plan.tasks.len(),
        MAX_TASKS
    );
    let e = error_at(&format!("tasks:\n{}", ids(MAX_TASKS + 1)), "tasks");
    assert!(e.message.contains("10000"), "{e}");
}

#[test]
fn the_total_of_merged_params_is_bounded() {
    let params: String = (0..500)
        .map(|i| format!("  - {{key: p{i}, value: v}}\n"))
        .collect();
    let n_tasks = MAX_TOTAL_PARAMS / 500 + 1;
    let ids: String = (0..n_tasks).map(|i| format!("  - a{i:031}\n")).collect();
    let errs = errors(&format!("params:\n{params}tasks:\n{ids}"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "tasks");
    assert!(errs[0].message.contains("in total"), "{}", errs[0]);
}

#[test]
fn every_error_of_a_file_is_reported_in_line_order() {
    let text = include_str!("../../../tests/fixtures/plans/invalid-many.yaml");
    let errs = parse_plan(Path::new("invalid-many.yaml"), text.as_bytes())
        .expect_err("invalid")
        .0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "name",
            "schedule",
            "timezone",
            "overlap",
            "trigger_source",
            "concurrency",
            "retry.max_attempts",
            "retry.cap",
            "retry.deadline",
            "params[0].key",
            "tasks[0]",
            "tasks[1].params[0]",
            "tasks[1].params[1]",
            "tasks[1].params[2].value",
            "tasks[1].params[3].value",
            "tasks[2]",
        ]
    );
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
    assert_eq!((errs[0].line, errs[0].column), (2, 7));
}

#[test]
fn issues_display_as_file_line_column_path_message() {
    let with_path = Issue::new(
        Path::new("p/a.yaml"),
        3,
        7,
        "tasks[1].params[0].value",
        "bad",
    );
    assert_eq!(
        with_path.to_string(),
        "p/a.yaml:3:7: tasks[1].params[0].value: bad"
    );
    let no_path = Issue::new(Path::new("a.yaml"), 0, 0, "", "is empty");
    assert_eq!(no_path.to_string(), "a.yaml:1:1: is empty");
    let all = Issues(vec![with_path, no_path]);
    assert_eq!(
        all.to_string(),
        "p/a.yaml:3:7: tasks[1].params[0].value: bad\na.yaml:1:1: is empty"
    );
}

#[test]
fn plans_may_not_read_deployds_own_credentials_from_the_environment() {
    for name in [
        "DEPLOYD_TOKEN",
        "CLOUD_SDK_SK",
        "HUAWEICLOUD_SDK_AK",
        "CREDENTIALS_DIRECTORY",
    ] {
        let text = format!(
            "tasks:\n  - task_id: {ID_A}\n    params: [{{key: k, value_from: {{env: {name}}}}}]\n"
        );
        let issues = errors(&text);
        assert!(
            issues
                .iter()
                .any(|i| i.path.ends_with("value_from.env") || i.message.contains("may not read")),
            "{name}: {issues:?}"
        );
    }
    ok(&format!(
        "tasks:\n  - task_id: {ID_A}\n    params: [{{key: k, value_from: {{env: DB_PASSWORD}}}}]\n"
    ));
}

/// A plan of `tasks` tasks sharing `params` plan params (each `value`, or a `value_from`).
fn wide_plan(tasks: usize, params: usize, value: &str) -> String {
    let mut yaml = String::from("params:\n");
    for k in 0..params {
        yaml.push_str(&format!("  - {{key: p{k}, {value}}}\n"));
    }
    yaml.push_str("tasks:\n");
    for i in 0..tasks {
        yaml.push_str(&format!("  - {i:032x}\n"));
    }
    yaml
}

#[test]
fn issue_10_a_plan_whose_merged_params_exceed_the_budget_is_refused_at_load() {
    // 1,000 tasks x 10 plan params of 8,000 characters: 80 MB once merged, from a 117 KB file.
    let big = format!("value: \"{}\"", "x".repeat(8000));
    let yaml = wide_plan(1000, 10, &big);
    assert!(yaml.len() < 150_000);
    let e = error_at(&yaml, "tasks");
    assert!(
        e.message.contains("67108864 bytes (64 MiB)"),
        "{}",
        e.message
    );
    assert_eq!(e.line, 13, "at the tasks list: {e}");
    // 7 params fit (56 MB).
    let ok_plan = ok(&wide_plan(1000, 7, &big));
    assert_eq!(ok_plan.plan.tasks.len(), 1000);
}

#[test]
fn a_value_from_counts_as_8192_bytes_against_the_budget() {
    let from = "value_from: {env: VERSION}";
    ok(&wide_plan(1000, 8, from));
    let e = error_at(&wide_plan(1000, 9, from), "tasks");
    assert!(
        e.message.contains("a value_from 8192 bytes"),
        "{}",
        e.message
    );
}

#[test]
fn json_len_counts_escapes_as_serde_json_writes_them() {
    for s in [
        "plain",
        "quo\"te",
        "back\\slash",
        "tab\tnl\n",
        "ctl\u{1}\u{7f}",
        "héllo 𝄞",
    ] {
        let written = serde_json::to_string(s).expect("json").len() - 2;
        assert_eq!(json_len(s), written, "{s:?}");
    }
}
