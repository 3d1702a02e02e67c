//! Value resolution on real files, FIFOs and devices (no mocked file system).

use std::os::unix::fs::symlink;
use std::process::Command;

use super::*;
use crate::api::rules::PARAM_VALUE_MAX;
use crate::plan::load::parse_plan;

const T1: &str = "d2dc947ec2424d8789bb3984bb3adf45";
const T2: &str = "0ee9c8e6a7dc44109541e53c6dccf47c";

fn plan(yaml: &str) -> Plan {
    parse_plan(Path::new("p.yaml"), yaml.as_bytes())
        .expect("valid plan")
        .plan
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs")
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

#[tokio::test]
async fn each_file_is_read_once_and_every_task_gets_that_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("version.txt"), "1.0.0\n").expect("write");
    let p = plan(&format!(
        "params: [{{key: version, value_from: {{file: version.txt}}}}]\ntasks: [{T1}, {T2}]\n"
    ));
    let snap = Snapshot::take(&p, dir.path(), &[], VALUE_FILE_TIMEOUT).await;
    // The file changes after the snapshot: no task sees the new content.
    std::fs::write(dir.path().join("version.txt"), "2.0.0\n").expect("rewrite");
    for t in &p.tasks {
        let r = snap.resolve(t).expect("resolved");
        assert_eq!(r[0].value.expose(), "1.0.0");
        assert_eq!(snap.report_params(t)[0].value.as_deref(), Some("1.0.0"));
    }
    assert_eq!(snap.values.len(), 1, "one distinct source, read once");
}

#[tokio::test]
async fn a_missing_file_fails_only_the_tasks_using_it_naming_param_and_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = plan(&format!(
        "tasks:\n  - task_id: {T1}\n    params: [{{key: license, value_from: {{file: nope.txt}}}}]\n  - {T2}\n"
    ));
    let snap = Snapshot::take(&p, dir.path(), &[], VALUE_FILE_TIMEOUT).await;
    let e = snap.resolve(&p.tasks[0]).err().expect("unresolved");
    assert_eq!(e.code, "param_unresolved");
    assert!(e.message.contains("\"license\""), "{}", e.message);
    assert!(e.message.contains("nope.txt"), "{}", e.message);
    assert_eq!(snap.report_params(&p.tasks[0])[0].value, None);
    assert!(snap.resolve(&p.tasks[1]).is_ok());
}

#[tokio::test]
async fn an_encrypt_value_is_masked_in_reports_and_never_in_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pw"), "hunter2{{x").expect("write");
    std::fs::write(dir.path().join("pw2"), "hunter3").expect("write");
    let p = plan(&format!(
        "tasks:\n  - task_id: {T1}\n    params: [{{key: a, value_from: {{file: pw}}, type: encrypt}}]\n  - task_id: {T2}\n    params: [{{key: b, value_from: {{file: pw2}}, type: encrypt}}]\n"
    ));
    let snap = Snapshot::take(&p, dir.path(), &[], VALUE_FILE_TIMEOUT).await;
    let e = snap
        .resolve(&p.tasks[0])
        .err()
        .expect("template syntax refused");
    assert!(!e.message.contains("hunter2"), "{}", e.message);
    assert!(e.message.contains("{{"), "{}", e.message);
    assert_eq!(
        snap.report_params(&p.tasks[1])[0].value.as_deref(),
        Some("***")
    );
    assert!(!format!("{snap:?}").contains("hunter3"));
}

#[test]
fn proc_sys_dev_are_refused_lexically_through_dots_and_through_symlinks() {
    for path in [
        "/proc/self/environ",
        "/proc/1/environ",
        "/sys/kernel/hostname",
        "/dev/zero",
        "/tmp/../proc/self/environ",
        "/./dev/null",
    ] {
        let e = check_at_load(Path::new(path)).expect_err(path);
        assert!(e.contains("regular files only"), "{path}: {e}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("env");
    symlink("/proc/self/environ", &link).expect("symlink");
    let e = check_at_load(&link).expect_err("a link into /proc");
    assert!(e.contains("resolves to /proc/"), "{e}");
    let e = read_value_file(&link, &[]).expect_err("refused at run time too");
    assert!(e.contains("/proc"), "{e}");
    // A folder whose name merely starts like a refused one is fine.
    assert_eq!(refused_root(Path::new("/procfs/x")), None);
    assert_eq!(refused_root(Path::new("/devices")), None);
}

#[test]
fn a_fifo_a_folder_and_a_device_link_are_refused_without_blocking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    // No writer: a blocking open would hang here forever.
    let e = read_value_file(&fifo, &[]).expect_err("a FIFO");
    assert!(e.contains("FIFO"), "{e}");
    let e = check_at_load(&fifo).expect_err("a FIFO at load");
    assert!(e.contains("regular files only"), "{e}");
    let e = read_value_file(dir.path(), &[]).expect_err("a folder");
    assert!(e.contains("a folder"), "{e}");
    let zero = dir.path().join("zero");
    symlink("/dev/zero", &zero).expect("symlink");
    let e = read_value_file(&zero, &[]).expect_err("/dev/zero");
    assert!(e.contains("/dev"), "{e}");
    // Missing at load time is not an error (the run checks again).
    assert!(check_at_load(&dir.path().join("later.txt")).is_ok());
}

#[test]
fn at_most_8192_characters_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v");
    let max = "é".repeat(PARAM_VALUE_MAX);
    std::fs::write(&path, format!("{max}\r\n")).expect("write");
    assert_eq!(read_value_file(&path, &[]).expect("8192 characters"), max);
    std::fs::write(&path, "x".repeat(PARAM_VALUE_MAX + 1)).expect("write");
    let e = read_value_file(&path, &[]).expect_err("8193 characters");
    assert!(e.contains("more than 8192 characters"), "{e}");
    // A huge file is not read whole.
    let f = std::fs::File::create(&path).expect("create");
    f.set_len(1 << 30).expect("sparse 1 GiB");
    let e = read_value_file(&path, &[]).expect_err("1 GiB");
    assert!(e.contains("more than 8192 characters"), "{e}");
    std::fs::write(&path, [0xff, 0xfe]).expect("write");
    assert!(
        read_value_file(&path, &[])
            .expect_err("binary")
            .contains("not UTF-8")
    );
}

#[test]
fn deployds_own_credential_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).expect("mkdir");
    std::fs::write(creds.join("sk"), "secret").expect("write");
    let e = read_value_file(&creds.join("sk"), std::slice::from_ref(&creds)).expect_err("sk");
    assert!(e.contains("credentials"), "{e}");
}

#[tokio::test]
async fn a_read_that_outlives_its_timeout_fails_and_does_not_hold_the_caller() {
    let started = std::time::Instant::now();
    let e = off_runtime(Path::new("slow"), Duration::from_millis(100), || {
        std::thread::sleep(Duration::from_secs(3));
        Ok("late".into())
    })
    .await
    .expect_err("timed out");
    assert!(e.contains("took longer than 0.1 s"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn values_that_make_the_plan_exceed_the_budget_refuse_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 2,100 tasks x 8,192 four-byte characters: 8,192 "bytes" each at load, 4x that read.
    std::fs::write(dir.path().join("big"), "𝄞".repeat(PARAM_VALUE_MAX)).expect("write");
    let mut yaml = String::from("params: [{key: v, value_from: {file: big}}]\ntasks:\n");
    for i in 0..2100u32 {
        yaml.push_str(&format!("  - {i:032x}\n"));
    }
    let p = plan(&yaml);
    let snap = Snapshot::take(&p, dir.path(), &[], VALUE_FILE_TIMEOUT).await;
    let e = snap.resolve(&p.tasks[0]).err().expect("too large");
    assert_eq!(e.code, "params_too_large");
    assert!(e.message.contains("67108864"), "{}", e.message);
}

#[test]
fn one_trailing_newline_is_dropped() {
    assert_eq!(strip_one_newline("abc\n".into()), "abc");
    assert_eq!(strip_one_newline("abc\r\n".into()), "abc");
    assert_eq!(strip_one_newline("abc\n\n".into()), "abc\n");
    assert_eq!(strip_one_newline("abc".into()), "abc");
}
