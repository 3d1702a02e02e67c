//! Benchmark: one plan of N tasks against the emulator with a fixed latency, every call
//! journaled in a state folder, measured two ways.
//!
//! 1. **Elapsed**, in this process (the headline figure, as in earlier releases): the executor
//!    `deployd exec` uses, with its limits and run journal in a temporary state folder,
//!    against an in-process emulator; the run's time against the ideal
//!    (`TASKS / CONCURRENCY * LATENCY`). Twice: **cold**, a fresh executor as `deployd exec`
//!    has (its credentials are unproven, so the first call goes alone and the others wait for
//!    its answer, `api::guard`: one latency more than the ideal), and **warm**, after a
//!    one-task run on the same executor, as a daemon's runs after its first. Each is followed
//!    by where the time beyond the ideal went, seen from the service: the mean "cycle" (a
//!    call's arrival minus the arrival of the call CONCURRENCY places before it, minus the
//!    latency: the answer's way back, the next call's intent made durable, its way out), the
//!    start (the journal's creation) and the end, and the most calls in flight it saw.
//! 2. **Client CPU per start call**: the real binary, `deployd exec PLAN` (the release build
//!    next to this example, `target/release/deployd`: build it first, or pass `--bin PATH`),
//!    against `deployd emulator` in another process, so the emulator's CPU is not counted
//!    (in the in-process run it shares the client's two cores and threads). The figure is the
//!    whole `exec` process's user + system CPU time (from `/proc/PID/stat`, read once it has
//!    exited and before it is reaped; clock ticks of 10 ms), divided by the number of start
//!    calls: start-up, reading the plan, the journal, the HTTP client, the result file and
//!    the progress lines (stderr to `/dev/null`) are all in it (a one-task `exec` costs under
//!    10 ms of it). The run's own time (from its result file) and the process's wall time are
//!    printed too. CPU time per call depends on the machine's state (an idle machine's
//!    wake-ups cost more than a busy one's): compare builds run one after the other.
//!
//! Run: `cargo build --release && cargo run --release --example bench_exec -- [TASKS]
//! [CONCURRENCY] [LATENCY_MS] [RATE] [BURST] [--bin PATH] [--emulator-bin PATH]
//! [--only inproc|process] [--no-journal]` (defaults: 1000 50 50 10000 50: the ideal is 1.0 s;
//! `--emulator-bin` serves the second figure with another build's emulator, to compare two
//! clients against the same service; `--no-journal` runs the in-process figure without a
//! state folder, to see what the journal costs).

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use deployd::emulator::{Emulator, EmulatorConfig};
use deployd::secret::Secret;

/// What the benchmark runs.
struct Bench {
    tasks: usize,
    concurrency: usize,
    latency: Duration,
    rate: f64,
    burst: u32,
}

impl Bench {
    fn ideal(&self) -> f64 {
        let ideal = self.tasks as f64 / self.concurrency as f64 * self.latency.as_secs_f64();
        ideal.max((self.tasks as f64 - f64::from(self.burst)).max(0.0) / self.rate)
    }

    fn plan_yaml(&self) -> String {
        let mut yaml = String::from("name: bench\ntasks:\n");
        for i in 0..self.tasks {
            yaml.push_str(&format!(
                "  - task_id: {i:032x}\n    params: [{{key: version, value: \"1.0.{i}\"}}]\n"
            ));
        }
        yaml
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = support::Args::from_env();
    // Positional numbers: every argument that is neither a flag nor a flag's value.
    let all: Vec<String> = std::env::args().skip(1).collect();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < all.len() {
        if all[i] == "--no-journal" {
            i += 1;
        } else if all[i].starts_with("--") {
            i += 2;
        } else {
            positional.push(all[i].clone());
            i += 1;
        }
    }
    let arg = |i: usize, default: f64| {
        positional
            .get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let bench = Bench {
        tasks: arg(0, 1000.0) as usize,
        concurrency: arg(1, 50.0) as usize,
        latency: Duration::from_millis(arg(2, 50.0) as u64),
        rate: arg(3, 10_000.0),
        burst: arg(4, 50.0) as u32,
    };
    let only = flags.value("--only");
    println!(
        "tasks={} concurrency={} latency={}ms rate={}/s burst={}",
        bench.tasks,
        bench.concurrency,
        bench.latency.as_millis(),
        bench.rate,
        bench.burst
    );
    if only.is_none_or(|o| o == "inproc") {
        in_process(&bench, all.iter().any(|a| a == "--no-journal")).await?;
    }
    if only.is_none_or(|o| o == "process") {
        let bin = support::deployd_bin(&flags)?;
        let emulator_bin = flags
            .value("--emulator-bin")
            .map_or_else(|| bin.clone(), std::path::PathBuf::from);
        separate_process(&bench, &bin, &emulator_bin)?;
    }
    Ok(())
}

/// The run's elapsed time, executor and emulator in this process (`no_journal`: without a
/// state folder, to see what the journal costs). Twice: cold, as `deployd exec` runs (a new
/// process: the credentials are unproven, so the first call goes alone and the others wait for
/// its answer, see `api::guard`), and warm, after a one-task run on the same executor (as a
/// daemon's runs after its first).
async fn in_process(bench: &Bench, no_journal: bool) -> anyhow::Result<()> {
    let config = EmulatorConfig {
        tokens: vec![Secret::new(support::TOKEN)],
        latency: bench.latency,
        ..EmulatorConfig::default()
    };
    let state = tempfile::tempdir()?;
    let settings = support::exec_settings(
        bench.rate,
        bench.burst,
        bench.concurrency,
        (!no_journal).then(|| state.path().to_path_buf()),
    )?;
    let plan = bench.plan_yaml();
    let warm_up = "name: warm-up\ntasks:\n  - ffffffffffffffffffffffffffffffff\n";
    for (name, plans) in [
        ("cold", vec![plan.as_str()]),
        ("warm", vec![warm_up, &plan]),
    ] {
        // A fresh emulator each time: its log holds this run's calls only.
        let emulator = Emulator::start(config.clone(), "127.0.0.1:0".parse()?).await?;
        let mut runs = support::run_plans_in_process(&emulator, &plans, &settings, None).await?;
        let (report, elapsed) = runs.pop().context("no run")?;
        let mut log = emulator.log();
        log.retain(|r| r.task_id != "ffffffffffffffffffffffffffffffff");
        report_run(bench, name, no_journal, &report, elapsed, &log);
        println!(
            "  the most calls in flight the service saw: {} (limit {})",
            emulator.stats().max_in_flight,
            bench.concurrency
        );
        emulator.shutdown().await;
    }
    Ok(())
}

/// Prints one in-process run's figures.
fn report_run(
    bench: &Bench,
    name: &str,
    no_journal: bool,
    report: &deployd::results::RunReport,
    elapsed: Duration,
    log: &[deployd::emulator::LoggedRequest],
) {
    let elapsed = elapsed.as_secs_f64();
    let ideal = bench.ideal();
    println!(
        "{name}, in process{}: started={} failed={} calls={} elapsed={elapsed:.3}s ideal={ideal:.3}s ratio={:.3}",
        if no_journal { " (no journal)" } else { "" },
        report.summary.started,
        report.summary.failed,
        log.len(),
        elapsed / ideal
    );
    // Where the time beyond the ideal goes, seen from the service: a call arrives one
    // latency plus this after the call CONCURRENCY places before it (its slot's previous
    // call): the answer's way back, the journal's intent, the next call's way out.
    let mut arrivals: Vec<_> = log.iter().map(|r| r.received_at).collect();
    arrivals.sort();
    let latency_ms = bench.latency.as_secs_f64() * 1000.0;
    let gaps: Vec<f64> = arrivals
        .iter()
        .zip(arrivals.iter().skip(bench.concurrency))
        .map(|(a, b)| support::ms_between(*a, *b) - latency_ms)
        .collect();
    let (Some(first), Some(last)) = (arrivals.first(), arrivals.last()) else {
        return;
    };
    if gaps.is_empty() {
        return;
    }
    let (median, max) = support::median_max(&gaps);
    let c = bench.concurrency.min(arrivals.len()) - 1;
    println!(
        "  cycle beyond the latency: mean {:.2} ms, median {median:.2}, max {max:.2}; first call {:.1} ms after the start, first {} calls within {:.1} ms, the end {:.1} ms after the last call's latency",
        gaps.iter().sum::<f64>() / gaps.len() as f64,
        support::ms_between(report.started_at, *first),
        c + 1,
        support::ms_between(*first, arrivals[c]),
        support::ms_between(*last, report.finished_at) - latency_ms,
    );
}

/// `deployd exec` against `deployd emulator`, each its own process: the client's CPU.
fn separate_process(
    bench: &Bench,
    bin: &std::path::Path,
    emulator_bin: &std::path::Path,
) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let plan = root.path().join("bench.yaml");
    std::fs::write(&plan, bench.plan_yaml())?;

    let mut emulator = Command::new(emulator_bin)
        .args([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--token",
            support::TOKEN,
        ])
        .arg("--latency-ms")
        .arg(bench.latency.as_millis().to_string())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning deployd emulator")?;
    let mut lines = BufReader::new(emulator.stdout.take().context("emulator stdout")?).lines();
    let url = lines
        .next()
        .context("the emulator printed nothing")??
        .strip_prefix("emulator listening on ")
        .context("no address line from the emulator")?
        .to_string();

    let spawned = Instant::now();
    let mut exec = Command::new(bin)
        .arg("exec")
        .arg(&plan)
        .arg("--endpoint")
        .arg(&url)
        .arg("--state-dir")
        .arg(root.path().join("state"))
        .arg("--results-dir")
        .arg(root.path().join("results"))
        .args(["--rate", &bench.rate.to_string()])
        .args(["--burst", &bench.burst.to_string()])
        .args(["--concurrency", &bench.concurrency.to_string()])
        .env("DEPLOYD_TOKEN", support::TOKEN)
        .env_remove("DEPLOYD_TOKEN_FILE")
        .env_remove("CLOUD_SDK_AK")
        .env_remove("CLOUD_SDK_SK")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning deployd exec")?;
    let pid = exec.id();
    // The summary is short (started tasks are not listed above 50 tasks): the pipe holds it.
    let (cpu, user, sys) = loop {
        if let Some(times) = zombie_times(pid)? {
            break times;
        }
        if spawned.elapsed() > Duration::from_secs(300) {
            let _ = exec.kill();
            bail!("deployd exec still running after 300 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall = spawned.elapsed();
    let mut stdout = String::new();
    exec.stdout
        .take()
        .context("exec stdout")?
        .read_to_string(&mut stdout)?;
    let status = exec.wait()?;
    let _ = Command::new("kill")
        .args(["-TERM", &emulator.id().to_string()])
        .status();
    let _ = emulator.wait();
    let run_line = stdout
        .lines()
        .find(|l| l.starts_with("run "))
        .unwrap_or("(no summary line)");
    if !status.success() {
        bail!("deployd exec failed ({status}):\n{stdout}");
    }
    let per_call = cpu.as_secs_f64() * 1000.0 / bench.tasks as f64;
    // The run's own time to the millisecond, from its result file.
    let result = std::fs::read_dir(root.path().join("results/bench"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .context("no result file")?;
    let result: deployd::results::RunReport = serde_json::from_slice(&std::fs::read(result)?)?;
    let run = (result.finished_at - result.started_at)
        .to_std()
        .unwrap_or_default()
        .as_secs_f64();
    println!(
        "separate process: run={run:.3}s ratio={:.3}; {run_line}",
        run / bench.ideal()
    );
    println!(
        "exec process: wall={:.3}s cpu={:.0}ms (user {:.0}ms, sys {:.0}ms) cpu_per_call={per_call:.3}ms",
        wall.as_secs_f64(),
        cpu.as_secs_f64() * 1000.0,
        user.as_secs_f64() * 1000.0,
        sys.as_secs_f64() * 1000.0,
    );
    Ok(())
}

/// The CPU time (user + system, user, system) of a process that has exited and is not reaped
/// yet, or `None` while it runs.
fn zombie_times(pid: u32) -> anyhow::Result<Option<(Duration, Duration, Duration)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = text.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() != Some(&"Z") {
        return Ok(None);
    }
    let (user, sys) = support::cpu_split(pid)?;
    Ok(Some((user + sys, user, sys)))
}
