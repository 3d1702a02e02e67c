//! Attacks on the event-driven scan (`FolderScanner::scan_named` + `Catalog::apply_named`): a
//! folder event looks at the files it names only. What a change of one file does to another
//! file, or to the plan-name ownership of a file not named, is where it can go wrong.

use std::path::Path;
use std::process::{Child, Stdio};

use crate::helpers::*;

fn start(
    root: &Path,
    emulator: &deployd::emulator::Emulator,
) -> (Child, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut child = daemon_command(root, emulator, "100", "4")
        .env("RUST_LOG", "deployd=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = capture_stderr(&mut child);
    (child, log)
}

fn calls(emulator: &deployd::emulator::Emulator, task: &str) -> usize {
    emulator.log().iter().filter(|l| l.task_id == task).count()
}

/// Writes `text` to `path` by `mv`, as the README says to drop a plan.
fn drop_plan(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    write(&tmp, text);
    std::fs::rename(&tmp, path).expect("mv");
}

fn stop(child: &mut Child) {
    kill(child, "-TERM");
    let _ = child.wait();
}

/// Seen before the fix: `b.yaml` is a hard link of `a.yaml` (same inode). Rewriting `b.yaml` in place
/// (`cat > b.yaml`, which an event names) changes `a.yaml` too: plan `b` runs the new content at
/// once, plan `a` not before the 60 s rescan. Before the change, the event's scan `stat`ed every
/// file and saw `a.yaml`'s new ctime/size. Fix belongs in `FolderScanner::scan_named`
/// (src/scan.rs): also look at the files that shared the named file's inode (the cache knows
/// their identities), or fall back to a full `stat` scan when a named file has `nlink > 1`.
/// Fixed: the scanner remembers plan files that are symlinks or hard-linked; while there are
/// any, an event's scan takes every file (a `stat` each), as before the named scans.
#[tokio::test(flavor = "multi_thread")]
async fn a_hard_linked_plan_edited_through_its_twin_changes_at_once() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    write(&plans.join("a.yaml"), &format!("tasks:\n  - {T1}\n"));
    std::fs::hard_link(plans.join("a.yaml"), plans.join("b.yaml")).expect("ln");
    let (mut child, _log) = start(root.path(), &emulator);
    wait_for(20, "a and b ran T1", async || calls(&emulator, T1) == 2).await;
    // In place, through b's name: one inode, both names.
    std::fs::write(plans.join("b.yaml"), format!("tasks:\n  - {T2}\n")).expect("write");
    wait_for(10, "b ran T2", async || calls(&emulator, T2) >= 1).await;
    let both = async || calls(&emulator, T2) == 2;
    let ok = holds_within(10, both).await;
    stop(&mut child);
    assert!(
        ok,
        "a.yaml (same inode as b.yaml) still runs its old content 10 s after the edit"
    );
}

/// Seen before the fix: `a.yaml` is a symlink to `b.yaml` in the same folder. Replacing `b.yaml` (`mv` of a new
/// version, the documented way) changes what `a.yaml` reads, but the event names `b.yaml`
/// only: plan `a` keeps the old content until the 60 s rescan. Before, the event's scan
/// `stat`ed `a.yaml` (following the link) and saw the new inode. Fix belongs in
/// `FolderScanner::scan_named` (src/scan.rs): also look at cached files that are symlinks
/// (or whose resolved path is a named file).
/// Fixed: as above (a symlinked plan file makes event scans look at every file).
#[tokio::test(flavor = "multi_thread")]
async fn a_symlinked_plan_follows_its_replaced_target_at_once() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    write(&plans.join("b.yaml"), &format!("tasks:\n  - {T1}\n"));
    std::os::unix::fs::symlink("b.yaml", plans.join("a.yaml")).expect("ln -s");
    let (mut child, _log) = start(root.path(), &emulator);
    wait_for(20, "a and b ran T1", async || calls(&emulator, T1) == 2).await;
    drop_plan(&plans.join("b.yaml"), &format!("tasks:\n  - {T2}\n"));
    wait_for(10, "b ran T2", async || calls(&emulator, T2) >= 1).await;
    let ok = holds_within(10, async || calls(&emulator, T2) >= 2).await;
    stop(&mut child);
    assert!(
        ok,
        "a.yaml -> b.yaml still runs b's old content 10 s after b was replaced"
    );
}

/// Seen before the fix: `a.yaml` holds `name: web`, `b.yaml` also claims `web` (refused: a conflict), then
/// `b.yaml` turns invalid (a YAML error; it keeps its last valid version, as the README says).
/// `rm a.yaml`: the event's scan removes `web` and nothing else happens — until the 60 s rescan,
/// which hands `web` to b's last valid version and runs it (T2) with no change made at that
/// moment. Before the change, the scan of the `rm` did it at once. Either way the outcome of an
/// event's scan must be the one a full scan gives. Cause: `Catalog::update`
/// (src/plan/catalog.rs) drops b from `conflicts` when b turns invalid (b is stale, `web` is not
/// touched by an invalid read), so b is then neither the provider nor in conflict although its
/// `last_valid` still claims `web`; the later `rm a.yaml` looks for claimants among the
/// provider, the conflicts and the files seen only, and misses b. Fix: keep a file whose
/// `last_valid` claims a name among the candidates (touch its old name when its read fails,
/// or keep its conflict entry while its last valid plan stands).
/// Fixed: a file whose read fails has the name of its last valid version decided again
/// (`Catalog::update`), so it stays in conflict and takes the name when the holder goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_name_passes_as_a_full_scan_would_when_its_holder_goes() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    write(
        &plans.join("a.yaml"),
        &format!("name: web\ntasks:\n  - {T1}\n"),
    );
    let (mut child, log) = start(root.path(), &emulator);
    wait_for(20, "web ran T1", async || calls(&emulator, T1) == 1).await;
    drop_plan(
        &plans.join("b.yaml"),
        &format!("name: web\ntasks:\n  - {T2}\n"),
    );
    let b_report = root.path().join("results/_invalid/b.yaml.txt");
    wait_for(10, "b's conflict reported", async || {
        std::fs::read_to_string(&b_report).is_ok_and(|t| t.contains("also used by"))
    })
    .await;
    drop_plan(&plans.join("b.yaml"), "name: web\ntasks: [\n");
    wait_for(10, "b's YAML error reported", async || {
        std::fs::read_to_string(&b_report).is_ok_and(|t| !t.contains("also used by"))
    })
    .await;
    std::fs::remove_file(plans.join("a.yaml")).expect("rm");
    wait_for(10, "the rm seen", async || {
        logged(&log, "plan removed") || calls(&emulator, T2) >= 1
    })
    .await;
    // What a full scan decides: b's last valid version provides `web` (and runs, run-once).
    let ok = holds_within(10, async || calls(&emulator, T2) >= 1).await;
    // A SIGHUP (a full scan) now changes what the event's scan left.
    if !ok {
        kill(&child, "-HUP");
        wait_for(
            10,
            "the SIGHUP's full scan runs web from b's last valid version",
            async || calls(&emulator, T2) >= 1,
        )
        .await;
    }
    stop(&mut child);
    assert!(
        ok,
        "after rm a.yaml, web stayed without a provider until a full scan gave it to b.yaml's last valid version"
    );
}

/// Held (all pass on 1876582^ and on main): renames inside the folder, a move out of it, `rm`, a vim-style save (swap file, backup
/// rename, new file), `cp` over an existing plan, a `touch`: each is picked up at once by the
/// event's scan, with the right content, and a deleted plan stops firing.
#[tokio::test(flavor = "multi_thread")]
async fn everyday_file_operations_are_picked_up_at_once() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    write(&plans.join("a.yaml"), &format!("tasks:\n  - {T1}\n"));
    write(
        &plans.join("tick.yaml"),
        &format!("schedule: \"* * * * * *\"\ntasks:\n  - {T4}\n"),
    );
    let (mut child, log) = start(root.path(), &emulator);
    let results_dir = root.path().join("results");
    wait_for(20, "a ran", async || results(&results_dir, "a").len() == 1).await;
    wait_for(20, "tick fires", async || {
        results(&results_dir, "tick").len() >= 2
    })
    .await;
    // mv a.yaml b.yaml: plan b (same content, new name) runs, plan a goes.
    std::fs::rename(plans.join("a.yaml"), plans.join("b.yaml")).expect("mv");
    wait_for(10, "b ran", async || results(&results_dir, "b").len() == 1).await;
    // cp over b.yaml (open, truncate, write, close): the new content runs.
    std::fs::copy(
        {
            write(&outside.join("src.yaml"), &format!("tasks:\n  - {T2}\n"));
            outside.join("src.yaml")
        },
        plans.join("b.yaml"),
    )
    .expect("cp");
    wait_for(10, "b ran T2", async || calls(&emulator, T2) == 1).await;
    // vim: write .b.yaml.swp, rename b.yaml to b.yaml~, write a new b.yaml, remove the backup.
    write(&plans.join(".b.yaml.swp"), "swap");
    std::fs::rename(plans.join("b.yaml"), plans.join("b.yaml~")).expect("backup");
    write(&plans.join("b.yaml"), &format!("tasks:\n  - {T3}\n"));
    std::fs::remove_file(plans.join("b.yaml~")).expect("rm backup");
    std::fs::remove_file(plans.join(".b.yaml.swp")).expect("rm swap");
    wait_for(10, "b ran T3", async || calls(&emulator, T3) == 1).await;
    // touch: no new content, no run.
    let f = std::fs::File::options()
        .write(true)
        .open(plans.join("b.yaml"))
        .expect("open");
    f.set_modified(std::time::SystemTime::now()).expect("touch");
    drop(f);
    // mv out of the folder: the scheduled plan stops firing.
    std::fs::rename(plans.join("tick.yaml"), outside.join("tick.yaml")).expect("mv out");
    wait_for(10, "tick removed", async || logged(&log, "plan removed")).await;
    let ticks = calls(&emulator, T4);
    // A sentinel proves the loop went on for a while after.
    drop_plan(
        &plans.join("s1.yaml"),
        &format!("tasks:\n  - {T1}\n  - {T2}\n"),
    );
    wait_for(10, "s1", async || results(&results_dir, "s1").len() == 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    // rm: b goes too (its run-once is done; no error, no report left).
    std::fs::remove_file(plans.join("b.yaml")).expect("rm");
    wait_for(10, "b removed", async || {
        logged(&log, "plan removed") && count_logged(&log, "plan removed") >= 2
    })
    .await;
    stop(&mut child);
    assert!(
        calls(&emulator, T4) <= ticks + 1,
        "tick kept firing after it left the folder"
    );
    assert_eq!(calls(&emulator, T3), 1, "touch ran b again");
    assert!(!results_dir.join("_invalid").join("b.yaml.txt").exists());
}

/// Held: two files claim one name; the holder is edited to another name or removed, and the
/// rival takes the name at once; its conflict report goes, and `deployd check` agrees.
#[tokio::test(flavor = "multi_thread")]
async fn a_rival_takes_a_freed_name_at_once() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    let invalid = root.path().join("results/_invalid");
    write(
        &plans.join("a.yaml"),
        &format!("name: web\ntasks:\n  - {T1}\n"),
    );
    let (mut child, _log) = start(root.path(), &emulator);
    wait_for(20, "web ran T1", async || calls(&emulator, T1) == 1).await;
    drop_plan(
        &plans.join("b.yaml"),
        &format!("name: web\ntasks:\n  - {T2}\n"),
    );
    wait_for(10, "b's conflict", async || {
        invalid.join("b.yaml.txt").exists()
    })
    .await;
    // The holder is edited to another name: b takes web.
    drop_plan(
        &plans.join("a.yaml"),
        &format!("name: other\ntasks:\n  - {T1}\n"),
    );
    wait_for(10, "b runs as web", async || calls(&emulator, T2) == 1).await;
    wait_for(10, "b's report goes", async || {
        !invalid.join("b.yaml.txt").exists()
    })
    .await;
    // c claims web against b (refused); b is removed: c takes web.
    drop_plan(
        &plans.join("c.yaml"),
        &format!("name: web\ntasks:\n  - {T3}\n"),
    );
    wait_for(10, "c's conflict", async || {
        invalid.join("c.yaml.txt").exists()
    })
    .await;
    std::fs::remove_file(plans.join("b.yaml")).expect("rm");
    wait_for(10, "c runs as web", async || calls(&emulator, T3) == 1).await;
    wait_for(10, "c's report goes", async || {
        !invalid.join("c.yaml.txt").exists()
    })
    .await;
    stop(&mut child);
    // `deployd check` agrees: no conflict left.
    let mut check = deployd();
    check.arg("check").arg(&plans);
    let out = output(check).await;
    assert!(out.status.success(), "{}", both_streams(&out));
}

/// Held: a burst of 500 plan files dropped at once (more events than the debounce gathers) is
/// read whole: every plan runs once.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_files_all_run() {
    let emulator = start_emulator(emulator_config()).await;
    let root = tempfile::tempdir().expect("tempdir");
    let plans = root.path().join("plans");
    std::fs::create_dir_all(&plans).expect("mkdir");
    let (mut child, _log) = start(root.path(), &emulator);
    wait_for(20, "the daemon is up", async || {
        root.path().join("results").exists()
    })
    .await;
    let ids = task_ids(500, 91);
    for (i, id) in ids.iter().enumerate() {
        drop_plan(
            &plans.join(format!("p{i}.yaml")),
            &format!("tasks:\n  - {id}\n"),
        );
    }
    let ids2 = ids.clone();
    wait_for(60, "every plan ran", async || {
        let log = emulator.log();
        ids2.iter().all(|id| log.iter().any(|l| &l.task_id == id))
    })
    .await;
    stop(&mut child);
}
