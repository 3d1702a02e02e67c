//! Benchmark of the real daemon process (`target/release/deployd run`) against the emulator
//! running in this process:
//!
//! 1. idle RSS and CPU seconds per idle minute with `--plans` plans loaded (half scheduled at
//!    `0 0 3 * * *`, half run-once; the run-once plans run at start, and the idle window starts
//!    once every one of them has its result file);
//! 2. time from `mv plan.yaml.tmp plan.yaml` to the plan's first call arriving at the emulator
//!    (`--drops` times, one after the other, in the same folder);
//! 3. how late scheduled fires start: a `* * * * * *` plan, `--fires` fires: the result's
//!    `started_at` minus `scheduled_for`, and the emulator's arrival time minus `scheduled_for`.
//!
//! Run: `cargo build --release && cargo run --release --example bench_daemon --
//! [--plans 1000] [--idle-secs 60] [--drops 20] [--fires 30] [--bin target/release/deployd]`

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use support::*;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let bin = deployd_bin(&args)?;
    let plans: usize = args.num("--plans", 1000);
    let idle_secs: u64 = args.num("--idle-secs", 60);
    let drops: usize = args.num("--drops", 20);
    let fires: usize = args.num("--fires", 30);

    let emulator = emulator().await?;
    let root = temp_root()?;
    let plans_dir = root.path().join("plans");
    let results_dir = root.path().join("results");

    // 1. Idle, with `plans` plans loaded, half of them scheduled.
    let once = plans / 2;
    for i in 0..plans {
        let text = if i < once {
            format!(
                "tasks:\n  - task_id: {}\n    params: [{{key: version, value: \"1.0.{i}\"}}]\n",
                task_id(0x0a, i as u64)
            )
        } else {
            format!(
                "schedule: \"0 0 3 * * *\"\ntimezone: Europe/Berlin\ntasks:\n  - task_id: {}\n    params: [{{key: version, value: \"1.0.{i}\"}}]\n",
                task_id(0x0b, i as u64)
            )
        };
        write_file(
            &plans_dir.join(format!("p{i:05}.yaml")),
            &text,
            Some(Duration::from_secs(5)),
        )?;
    }
    let mut daemon = DaemonProc::spawn(
        &bin,
        root.path(),
        &emulator,
        &["--rate", "1000", "--burst", "50", "--concurrency", "16"],
    )?;
    let (ready_after, loaded) = daemon.ready(120).await?;
    println!(
        "daemon ready after {:.3} s with plans={loaded} (of {plans})",
        ready_after.as_secs_f64()
    );
    let runs_took = wait_for(300, Duration::from_millis(50), "run-once results", || {
        plans_with_results(&results_dir) >= once
    })
    .await?;
    println!(
        "{once} run-once plans ran: every result file written {:.2} s after ready ({} calls)",
        runs_took.as_secs_f64(),
        emulator.log().len()
    );
    // Let the last writes and log lines drain before the window opens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls_before = emulator.log().len();
    let idle = idle_window(&daemon, idle_secs, 30).await?;
    println!(
        "idle: {plans} plans ({once} run-once done, {} scheduled), window {:.1} s: CPU {:.3} s = {:.3} s per idle minute; RSS {} (at the end: {}; peak {}); calls during the window: {}",
        plans - once,
        idle.window,
        idle.cpu,
        idle.cpu_per_min(),
        idle.rss_line(),
        daemon.rss_split()?,
        mib(daemon.hwm_kib()?),
        emulator.log().len() - calls_before
    );

    // 2. mv -> first call.
    let mut lat = Vec::new();
    for i in 0..drops {
        let id = task_id(0x0c, i as u64);
        let at = drop_plan(
            &plans_dir,
            &format!("drop{i:02}"),
            &format!("tasks: [{id}]\n"),
        )?;
        let mut call = None;
        wait_for(
            30,
            Duration::from_millis(2),
            "the dropped plan's call",
            || {
                call = first_call(&emulator, &id);
                call.is_some()
            },
        )
        .await?;
        let call = call.context("call")?;
        lat.push(ms_between(at, call.received_at));
    }
    let (median, max) = median_max(&lat);
    println!(
        "mv -> first call ({drops} drops, {} plans in the folder): median {median:.1} ms, max {max:.1} ms; all: {}",
        plans + drops,
        fmt_list(&lat)
    );

    // 3. Lateness of one-second fires.
    let id = task_id(0x0d, 1);
    drop_plan(
        &plans_dir,
        "every-second",
        &format!("schedule: \"* * * * * *\"\ntasks: [{id}]\n"),
    )?;
    wait_for(
        fires as u64 + 30,
        Duration::from_millis(50),
        "scheduled fires",
        || result_count(&results_dir, "every-second") >= fires,
    )
    .await?;
    std::fs::remove_file(plans_dir.join("every-second.yaml"))?;
    let log = emulator.log();
    let mut start_late = Vec::new();
    let mut call_late = Vec::new();
    let mut fired_at = Vec::new();
    for r in results(&results_dir, "every-second")?.iter().take(fires) {
        let scheduled = time(&r["scheduled_for"])?;
        let started = time(&r["started_at"])?;
        fired_at.push(scheduled);
        start_late.push(ms_between(scheduled, started));
        let record = r["tasks"][0]["record_id"].as_str().unwrap_or_default();
        if let Some(call) = log.iter().find(|c| c.record_id == record) {
            call_late.push(ms_between(scheduled, call.received_at));
        }
    }
    let missed: i64 = fired_at
        .windows(2)
        .map(|w| (w[1] - w[0]).num_seconds() - 1)
        .sum();
    let (sm, sx) = median_max(&start_late);
    let (cm, cx) = median_max(&call_late);
    println!(
        "lateness of {} one-second fires ({missed} fire times skipped between them): run start - scheduled: median {sm:.1} ms, max {sx:.1} ms; call arrival - scheduled: median {cm:.1} ms, max {cx:.1} ms",
        start_late.len()
    );
    println!("  start - scheduled: {}", fmt_list(&start_late));
    println!("  arrival - scheduled: {}", fmt_list(&call_late));

    let problems = daemon.problems();
    let lines = daemon.line_count.lock().map(|c| *c).unwrap_or(0);
    let (stop_took, clean) = daemon.stop(60).await?;
    println!(
        "SIGTERM -> exit {:.3} s (exit 0: {clean}); {lines} log lines, {} at WARN/ERROR",
        stop_took.as_secs_f64(),
        problems.len()
    );
    for p in problems.iter().take(10) {
        println!("  {p}");
    }
    emulator.shutdown().await;
    Ok(())
}

fn time(v: &serde_json::Value) -> anyhow::Result<DateTime<Utc>> {
    let s = v.as_str().context("not a time")?;
    Ok(DateTime::parse_from_rfc3339(s)?.with_timezone(&Utc))
}

fn fmt_list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}
