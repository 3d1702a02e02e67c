//! Scale benchmark of the real daemon process (`target/release/deployd`) against the emulator
//! running in this process:
//!
//! 1. a folder of `--plans` plans (all scheduled, one task each): time from spawn to "daemon
//!    ready" (every plan loaded and armed), RSS, CPU per idle minute (the periodic rescan reads
//!    every file), and `mv` -> first call in that folder;
//! 2. a plan of `--tasks` tasks: `deployd exec` peak RSS (VmHWM, from GNU time's maximum
//!    resident set size when `/usr/bin/time` exists) and elapsed time;
//! 3. the same plan as a run-once plan in one daemon, run `--runs` times (its content changes
//!    each time): RSS after each run, to show that memory does not grow with past runs.
//!
//! Run: `cargo build --release && cargo run --release --example bench_scale --
//! [--plans 10000] [--idle-secs 60] [--rescan SECS] [--tasks 10000] [--runs 5] [--only load|exec|runs]`

#[path = "support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use support::*;

/// Limits generous enough that the emulator and the machine, not the rate limiter, set the pace.
const FAST: [&str; 6] = ["--rate", "10000", "--burst", "1000", "--concurrency", "64"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let bin = deployd_bin(&args)?;
    let only = args.value("--only");
    let emulator = emulator().await?;
    if only.is_none_or(|o| o == "load") {
        load(&args, &bin, &emulator).await?;
    }
    if only.is_none_or(|o| o == "exec") {
        exec(&args, &bin, &emulator).await?;
    }
    if only.is_none_or(|o| o == "runs") {
        runs(&args, &bin, &emulator).await?;
    }
    emulator.shutdown().await;
    Ok(())
}

/// A plan of `tasks` tasks, each with one param; `salt` changes the content.
fn big_plan(tasks: usize, salt: usize) -> String {
    let mut yaml = format!("# content {salt}\ntasks:\n");
    for i in 0..tasks {
        yaml.push_str(&format!(
            "  - task_id: {}\n    params: [{{key: version, value: \"1.0.{i}\"}}]\n",
            task_id(0x1b, i as u64)
        ));
    }
    yaml
}

async fn load(
    args: &Args,
    bin: &std::path::Path,
    emulator: &deployd::emulator::Emulator,
) -> anyhow::Result<()> {
    let plans: usize = args.num("--plans", 10_000);
    let idle_secs: u64 = args.num("--idle-secs", 60);
    let root = temp_root()?;
    let plans_dir = root.path().join("plans");
    let t = Instant::now();
    for i in 0..plans {
        let text = format!(
            "schedule: \"0 0 3 * * *\"\ntimezone: Europe/Berlin\ntasks:\n  - task_id: {}\n    params: [{{key: version, value: \"1.0.{i}\"}}]\n",
            task_id(0x1a, i as u64)
        );
        write_file(
            &plans_dir.join(format!("p{i:05}.yaml")),
            &text,
            Some(Duration::from_secs(5)),
        )?;
    }
    println!("wrote {plans} plans in {:.2} s", t.elapsed().as_secs_f64());
    // `--rescan SECS`: a shorter periodic rescan, to see whether rescans cost memory.
    let config = root.path().join("config.yaml");
    let rescan: Option<u64> = args.value("--rescan").and_then(|v| v.parse().ok());
    std::fs::write(
        &config,
        rescan.map_or(String::new(), |s| format!("rescan_interval: {s}s\n")),
    )?;
    let config_arg = config.to_string_lossy().into_owned();
    let mut flags = FAST.to_vec();
    flags.extend(["--config", config_arg.as_str()]);
    let mut daemon = DaemonProc::spawn(bin, root.path(), emulator, &flags)?;
    let (ready_after, loaded) = daemon.ready(300).await?;
    let rss_ready = daemon.rss_kib()?;
    let cpu_load = daemon.cpu()?;
    println!(
        "load: {loaded} plans ready {:.3} s after spawn (CPU {:.2} s); RSS {} at ready",
        ready_after.as_secs_f64(),
        cpu_load.as_secs_f64(),
        mib(rss_ready)
    );
    if loaded != plans {
        bail!("the daemon loaded {loaded} plans of {plans}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = idle_window(&daemon, idle_secs, args.num("--sample-secs", 30)).await?;
    println!(
        "idle with {plans} plans, window {:.1} s: CPU {:.3} s = {:.3} s per idle minute; RSS {} (at the end: {}; peak {})",
        idle.window,
        idle.cpu,
        idle.cpu_per_min(),
        idle.rss_line(),
        daemon.rss_split()?,
        mib(daemon.hwm_kib()?)
    );
    let mut lat = Vec::new();
    for i in 0..5u64 {
        let id = task_id(0x1c, i);
        let at = drop_plan(&plans_dir, &format!("drop{i}"), &format!("tasks: [{id}]\n"))?;
        let mut call = None;
        wait_for(
            60,
            Duration::from_millis(5),
            "the dropped plan's call",
            || {
                call = first_call(emulator, &id);
                call.is_some()
            },
        )
        .await?;
        lat.push(ms_between(at, call.context("call")?.received_at));
    }
    let (median, max) = median_max(&lat);
    println!(
        "mv -> first call with {plans} plans in the folder (5 drops): median {median:.1} ms, max {max:.1} ms"
    );
    let (stop, clean) = daemon.stop(60).await?;
    println!(
        "SIGTERM -> exit {:.3} s (exit 0: {clean})",
        stop.as_secs_f64()
    );
    Ok(())
}

async fn exec(
    args: &Args,
    bin: &std::path::Path,
    emulator: &deployd::emulator::Emulator,
) -> anyhow::Result<()> {
    let tasks: usize = args.num("--tasks", 10_000);
    let root = temp_root()?;
    let plan = root.path().join("plans/big.yaml");
    write_file(&plan, &big_plan(tasks, 0), None)?;
    let gnu_time = std::path::Path::new("/usr/bin/time");
    let time_out = root.path().join("time.txt");
    let mut cmd = if gnu_time.is_file() {
        let mut c = Command::new(gnu_time);
        c.arg("-f")
            .arg("%M %e %U %S")
            .arg("-o")
            .arg(&time_out)
            .arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.arg("exec")
        .arg(&plan)
        .arg("--results-dir")
        .arg(root.path().join("results"))
        .arg("--state-dir")
        .arg(root.path().join("state"))
        .arg("--endpoint")
        .arg(emulator.base_url())
        .arg("--project-id")
        .arg(&emulator.config().project_id)
        .args(FAST)
        .env("DEPLOYD_TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let calls_before = emulator.log().len();
    let t = Instant::now();
    let mut child = cmd.spawn()?;
    // Also sample VmHWM of the process (GNU time's child when wrapped) as a fallback.
    let mut peak_sampled = 0u64;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        for pid in deployd_pids(child.id()) {
            if let Ok(h) = proc_status_kib(pid, "VmHWM") {
                peak_sampled = peak_sampled.max(h);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let elapsed = t.elapsed().as_secs_f64();
    let calls = emulator.log().len() - calls_before;
    let gnu = std::fs::read_to_string(&time_out).unwrap_or_default();
    let max_rss_kib: Option<u64> = gnu
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    println!(
        "exec of a {tasks}-task plan: exit {:?}, {calls} calls, {elapsed:.2} s; peak RSS {} (GNU time: {}; user+sys s: {})",
        status.code(),
        mib(peak_sampled),
        max_rss_kib.map_or("n/a".into(), mib),
        gnu.lines()
            .last()
            .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join("+"))
            .unwrap_or_default()
    );
    Ok(())
}

/// The process itself, and its children (the binary under GNU time).
fn deployd_pids(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids
}

async fn runs(
    args: &Args,
    bin: &std::path::Path,
    emulator: &deployd::emulator::Emulator,
) -> anyhow::Result<()> {
    let tasks: usize = args.num("--tasks", 10_000);
    let runs: usize = args.num("--runs", 5);
    let root = temp_root()?;
    let plans_dir = root.path().join("plans");
    let results_dir = root.path().join("results");
    let mut daemon = DaemonProc::spawn(bin, root.path(), emulator, &FAST)?;
    daemon.ready(60).await?;
    println!(
        "daemon with an empty folder: RSS {}",
        mib(daemon.rss_kib()?)
    );
    let mut after = Vec::new();
    for n in 1..=runs {
        let at = Instant::now();
        drop_plan(&plans_dir, "big", &big_plan(tasks, n))?;
        wait_for(
            600,
            Duration::from_millis(20),
            "the big plan's result",
            || result_count(&results_dir, "big") >= n,
        )
        .await?;
        let took = at.elapsed().as_secs_f64();
        // The result file is written last; give the run's task a moment to be dropped.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = daemon.rss_kib()?;
        after.push(rss);
        let last = results(&results_dir, "big")?.pop().context("a result")?;
        println!(
            "run {n}: {tasks} tasks, status {}, {took:.2} s from mv to result; RSS after {} (peak so far {})",
            last["status"],
            mib(rss),
            mib(daemon.hwm_kib()?)
        );
    }
    if let (Some(first), Some(last)) = (after.first(), after.last()) {
        println!(
            "RSS after run 1 -> run {runs}: {} -> {} ({:+.1} MiB)",
            mib(*first),
            mib(*last),
            (*last as f64 - *first as f64) / 1024.0
        );
    }
    let problems = daemon.problems();
    let (stop, clean) = daemon.stop(60).await?;
    println!(
        "SIGTERM -> exit {:.3} s (exit 0: {clean}); {} WARN/ERROR lines",
        stop.as_secs_f64(),
        problems.len()
    );
    for p in problems.iter().take(10) {
        println!("  {p}");
    }
    Ok(())
}
