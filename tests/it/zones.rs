//! The fault and crash scenarios against services that write record times in any zone and
//! whose clock is off from the host's, with other callers' records of the same tasks (same
//! params, 20 s before): no task started twice, no deployed task reported `skipped` or
//! `failed`, no foreign record adopted. A few combinations run in every `cargo test`; the soak
//! runs them all (`DEPLOYD_SOAK_ROUNDS=3 cargo test --release --test it soak -- --ignored
//! --nocapture`).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use chrono::{FixedOffset, TimeDelta};
use deployd::emulator::{Emulator, EmulatorConfig};

use crate::helpers::*;

/// The zones of the soak: UTC-5, UTC, UTC+5:45, UTC+8, UTC+14.
const ZONES: [i32; 5] = [-5 * 3600, 0, 5 * 3600 + 45 * 60, 8 * 3600, 14 * 3600];
/// The service's clock against the host's: equal, the host 30 s ahead, the host 60 s behind.
const CLOCKS: [i64; 3] = [0, -30, 60];

/// What a scenario saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Tally {
    /// The result lines of the tasks that broke a promise.
    details: Vec<String>,
    tasks: usize,
    started: usize,
    started_twice: usize,
    deployed_but_not_reported: usize,
    foreign_adopted: usize,
    reported_without_record: usize,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.details.extend(o.details);
        self.tasks += o.tasks;
        self.started += o.started;
        self.started_twice += o.started_twice;
        self.deployed_but_not_reported += o.deployed_but_not_reported;
        self.foreign_adopted += o.foreign_adopted;
        self.reported_without_record += o.reported_without_record;
    }

    fn broken(&self) -> bool {
        self.started_twice
            + self.deployed_but_not_reported
            + self.foreign_adopted
            + self.reported_without_record
            > 0
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tasks, {} started; started twice {}, deployed but reported skipped/failed {}, foreign records adopted {}, reported started without a record of ours {}{}",
            self.tasks,
            self.started,
            self.started_twice,
            self.deployed_but_not_reported,
            self.foreign_adopted,
            self.reported_without_record,
            self.details
                .iter()
                .map(|d| format!("\n  {d}"))
                .collect::<String>()
        )
    }
}

/// A plan with one plan-level param, so that every record carries params to compare.
fn plan_with_param(name: &str, ids: &[String], extra: &str) -> String {
    plan_of(
        name,
        ids,
        &format!("{extra}params:\n  - {{key: v, value: \"1\"}}\n"),
    )
}

fn emulator_in(zone: i32, clock: i64, faults: EmulatorConfig) -> EmulatorConfig {
    EmulatorConfig {
        record_utc_offset: FixedOffset::east_opt(zone).expect("zone"),
        clock_offset: TimeDelta::seconds(clock),
        ..faults
    }
}

/// Another caller's record, with the same params, 20 s before now, for every third task.
fn foreign_records(emulator: &Emulator, tasks: &[String]) -> BTreeSet<String> {
    let before = emulator.now() - TimeDelta::seconds(20);
    tasks
        .iter()
        .step_by(3)
        .map(|t| emulator.insert_record(t, before, &[("v", "1", "text")]))
        .collect()
}

/// Judges a result against what the emulator created.
fn judge(
    result: &serde_json::Value,
    emulator: &Emulator,
    tasks: &[String],
    foreign: &BTreeSet<String>,
) -> Tally {
    let by_task = records_by_task(&emulator.log());
    let mut tally = Tally {
        tasks: tasks.len(),
        ..Tally::default()
    };
    for id in tasks {
        let line = task(result, id);
        let ours: Vec<String> = by_task.get(id).cloned().unwrap_or_default();
        if ours.len() > 1 {
            // A re-send after a lookup that found nothing is allowed to create a second record
            // only if the first call created none; two records of ours is a double deploy.
            tally.started_twice += 1;
            tally
                .details
                .push(format!("started twice ({ours:?}): {line}"));
        }
        match line["status"].as_str() {
            Some("started") => {
                tally.started += 1;
                let reported = line["record_id"].as_str().unwrap_or_default().to_string();
                if foreign.contains(&reported) {
                    tally.foreign_adopted += 1;
                    tally
                        .details
                        .push(format!("adopted a foreign record: {line}"));
                } else if !ours.contains(&reported) {
                    tally.reported_without_record += 1;
                    tally
                        .details
                        .push(format!("reported without a record of ours: {line}"));
                }
            }
            _ => {
                if !ours.is_empty() {
                    tally.deployed_but_not_reported += 1;
                    tally
                        .details
                        .push(format!("deployed ({ours:?}) but reported: {line}"));
                }
            }
        }
    }
    tally
}

/// `deployd exec` of 30 tasks under 500/503s, drops before and after processing, and hangs.
async fn faults(zone: i32, clock: i64, salt: u32) -> Tally {
    let emulator = start_emulator(emulator_in(
        zone,
        clock,
        EmulatorConfig {
            error_rate: 0.2,
            drop_before_rate: 0.08,
            drop_after_rate: 0.08,
            hang_rate: 0.02,
            hang_for: Duration::from_secs(2),
            seed: Some(u64::from(salt)),
            ..emulator_config()
        },
    ))
    .await;
    let tasks = task_ids(30, salt);
    let foreign = foreign_records(&emulator, &tasks);
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        &dir.path().join("faults.yaml"),
        &plan_with_param(
            "faults",
            &tasks,
            "retry: {max_attempts: 10, base: 10ms, cap: 100ms, deadline: 2m}\n",
        ),
    );
    write(
        &dir.path().join("config.yaml"),
        "settle: 1s\ntimeouts: {connect: 2s, request: 1s}\n",
    );
    let mut cmd = exec_command(dir.path(), "faults.yaml", &emulator, true);
    cmd.arg("--config")
        .arg(dir.path().join("config.yaml"))
        .args(["--rate", "200", "--burst", "10", "--concurrency", "10"]);
    let out = output(cmd).await;
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = results(&dir.path().join("results"), "faults")
        .pop()
        .expect("a result");
    judge(&r, &emulator, &tasks, &foreign)
}

/// The daemon killed (SIGKILL) while calls are in flight, some answers lost, then restarted:
/// crash recovery looks the unanswered calls up.
async fn crash(zone: i32, clock: i64, salt: u32) -> Tally {
    let emulator = start_emulator(emulator_in(
        zone,
        clock,
        EmulatorConfig {
            latency: Duration::from_millis(300),
            drop_after_rate: 0.15,
            seed: Some(u64::from(salt)),
            ..emulator_config()
        },
    ))
    .await;
    let tasks = task_ids(16, salt);
    let foreign = foreign_records(&emulator, &tasks);
    let root = tempfile::tempdir().expect("tempdir");
    write(
        &root.path().join("plans/crash.yaml"),
        &plan_with_param("crash", &tasks, ""),
    );
    write(&root.path().join("config.yaml"), "settle: 1s\n");
    let spawn = || {
        daemon_command(root.path(), &emulator, "20", "4")
            .arg("--config")
            .arg(root.path().join("config.yaml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn")
    };
    let mut first = spawn();
    wait_for(30, "a few calls", async || emulator.log().len() >= 5).await;
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let mut second = spawn();
    let results_dir = root.path().join("results");
    wait_for(60, "the recovered result", async || {
        results(&results_dir, "crash").len() == 1
    })
    .await;
    second.kill().expect("stop");
    let _ = second.wait();
    let r = &results(&results_dir, "crash")[0];
    assert_eq!(r["status"], "interrupted");
    judge(r, &emulator, &tasks, &foreign)
}

async fn all(cases: Vec<(i32, i64)>, rounds: u32) -> Tally {
    let mut total = Tally::default();
    let mut salt = 0x5000u32;
    for _ in 0..rounds {
        for (zone, clock) in &cases {
            let (zone, clock) = (*zone, *clock);
            salt += 2;
            let (f, c) = tokio::join!(faults(zone, clock, salt), crash(zone, clock, salt + 1));
            assert!(!f.broken(), "faults, zone {zone} s, clock {clock} s: {f}");
            assert!(!c.broken(), "crash, zone {zone} s, clock {clock} s: {c}");
            total.add(f.clone());
            total.add(c.clone());
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_and_crashes_in_other_zones_and_with_a_wrong_host_clock() {
    let total = all(vec![(-5 * 3600, 60), (0, -30)], 1).await;
    assert!(!total.broken(), "{total}");
    assert!(total.started > total.tasks / 2, "most tasks start: {total}");
}

/// The whole soak: every zone with every clock, `DEPLOYD_SOAK_ROUNDS` times (default 1).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a soak: minutes; run by hand"]
async fn soak_every_zone_and_clock() {
    let rounds = std::env::var("DEPLOYD_SOAK_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let cases: Vec<(i32, i64)> = ZONES
        .iter()
        .flat_map(|z| CLOCKS.iter().map(move |c| (*z, *c)))
        .collect();
    let total = all(cases, rounds).await;
    println!("soak, {rounds} round(s) of 15 zone/clock combinations, faults + crash: {total}");
    assert!(!total.broken(), "{total}");
}
