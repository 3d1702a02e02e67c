//! "Never twice" does not depend on the service's zone nor on the host's clock: lost answers
//! are reconciled against emulators that write record times in UTC-5, UTC, UTC+5:45, UTC+8
//! and UTC+14, with the service's clock 30 s behind and 60 s ahead of the host's, with
//! another caller's records next to ours.

use std::collections::BTreeMap;

use chrono::{FixedOffset, TimeDelta};
use deployd::emulator::{EmulatorConfig, ScriptedFault};

use crate::helpers::*;

/// The zones the service might write record times in.
const ZONES: [i32; 5] = [-5 * 3600, 0, 5 * 3600 + 45 * 60, 8 * 3600, 14 * 3600];

/// One exec against an emulator writing times in `zone` with its clock `offset` seconds ahead
/// of ours; returns a description of every broken promise.
async fn case(zone_secs: i32, offset_secs: i64, salt: u32) -> Vec<String> {
    use ScriptedFault::{DropAfter, DropBefore};
    let t = task_ids(6, salt);
    let script = vec![
        // The very first answer is lost: the zone is not known yet, and another caller's
        // record with other params sits 20 s before it.
        (t[0].clone(), DropAfter),
        // Lost after the zone is learned, with another caller's record 20 s before carrying
        // the same params: only the time tells them apart.
        (t[2].clone(), DropAfter),
        // Lost before the service saw it: nothing to find, sent again once.
        (t[3].clone(), DropBefore),
        (t[4].clone(), DropAfter),
        (t[5].clone(), DropAfter),
    ];
    let emulator = start_emulator(EmulatorConfig {
        record_utc_offset: FixedOffset::east_opt(zone_secs).expect("zone"),
        clock_offset: TimeDelta::seconds(offset_secs),
        start_script: script,
        ..emulator_config()
    })
    .await;
    let twenty_before = emulator.now() - TimeDelta::seconds(20);
    let foreign_a = emulator.insert_record(&t[0], twenty_before, &[("version", "0.9.0", "text")]);
    let foreign_c = emulator.insert_record(&t[2], twenty_before, &[("version", "1.0.0", "text")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut plan = String::from(
        "name: zones\nconcurrency: 1\nparams:\n  - {key: version, value: \"1.0.0\"}\ntasks:\n",
    );
    for id in &t {
        plan.push_str(&format!("  - {id}\n"));
    }
    write(&dir.path().join("zones.yaml"), &plan);
    write(&dir.path().join("config.yaml"), "settle: 1s\n");
    let mut cmd = exec_command(dir.path(), "zones.yaml", &emulator, true);
    cmd.arg("--config")
        .arg(dir.path().join("config.yaml"))
        .args(["--rate", "100", "--concurrency", "4"]);
    let out = output(cmd).await;
    let label = format!("zone {zone_secs:+} s, service clock {offset_secs:+} s");
    let mut broken = Vec::new();
    if out.status.code() != Some(0) {
        broken.push(format!(
            "{label}: exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let Some(r) = results(&dir.path().join("results"), "zones").pop() else {
        broken.push(format!("{label}: no result"));
        return broken;
    };
    let mine: BTreeMap<String, Vec<String>> = {
        let mut map = BTreeMap::<String, Vec<String>>::new();
        for entry in emulator.log() {
            map.entry(entry.task_id.clone())
                .or_default()
                .push(entry.record_id.clone());
        }
        map
    };
    for id in &t {
        let line = task(&r, id);
        let created = mine.get(id).cloned().unwrap_or_default();
        if created.len() != 1 {
            broken.push(format!(
                "{label}: task {id} created {} records",
                created.len()
            ));
        }
        if line["status"] != "started" {
            broken.push(format!("{label}: task {id} reported {line}"));
            continue;
        }
        let reported = line["record_id"].as_str().unwrap_or_default().to_string();
        if reported == foreign_a || reported == foreign_c {
            broken.push(format!(
                "{label}: task {id} adopted another caller's record"
            ));
        }
        if created.first() != Some(&reported) {
            broken.push(format!(
                "{label}: task {id} reported {reported}, created {created:?}"
            ));
        }
    }
    let learned: Option<serde_json::Value> =
        std::fs::read(dir.path().join("state/service-zone.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
    if learned.as_ref().and_then(|l| l["utc_offset_secs"].as_i64()) != Some(i64::from(zone_secs)) {
        broken.push(format!("{label}: learned {learned:?}"));
    }
    broken
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_answers_are_reconciled_in_every_zone() {
    let mut cases = tokio::task::JoinSet::new();
    for (i, zone) in ZONES.into_iter().enumerate() {
        cases.spawn(case(zone, 0, 0x100 + i as u32));
    }
    let mut broken = Vec::new();
    while let Some(done) = cases.join_next().await {
        broken.extend(done.expect("case"));
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_answers_are_reconciled_whatever_the_host_clock_says() {
    let mut cases = tokio::task::JoinSet::new();
    // The host 30 s ahead of the service (its clock -30 s from ours), and 60 s behind.
    for (i, (zone, offset)) in [(0, -30), (8 * 3600, -30), (-5 * 3600, 60), (8 * 3600, 60)]
        .into_iter()
        .enumerate()
    {
        cases.spawn(case(zone, offset, 0x200 + i as u32));
    }
    let mut broken = Vec::new();
    while let Some(done) = cases.join_next().await {
        broken.extend(done.expect("case"));
    }
    assert!(broken.is_empty(), "{broken:#?}");
}
