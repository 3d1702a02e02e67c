//! What a plan's params cost a run (issue 10 §3): `deployd exec` of a plan of `--tasks` tasks
//! sharing `--params` plan-level params of `--value-len` characters each, against the emulator
//! running in this process. Prints the result file's size, the run journal's largest size
//! (polled every 2 ms while the run goes, the journal being removed at its end), the peak RSS
//! (GNU time's maximum resident set size) and the elapsed time.
//!
//! Run: `cargo build --release && cargo run --release --example bench_values --
//! [--tasks 1000] [--params 50,7] [--value-len 8000] [--bin PATH]`
//! (`--params` takes a comma-separated list: one exec per entry.)

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let bin = deployd_bin(&args)?;
    let tasks: usize = args.num("--tasks", 1000);
    let value_len: usize = args.num("--value-len", 8000);
    let params: Vec<usize> = args
        .value("--params")
        .unwrap_or("50,7")
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    let emulator = emulator().await?;
    println!("binary: {}", bin.display());
    for n in params {
        exec_once(&bin, &emulator, tasks, n, value_len).await?;
    }
    emulator.shutdown().await;
    Ok(())
}

fn plan(tasks: usize, params: usize, value_len: usize) -> String {
    let value = "v".repeat(value_len);
    let mut yaml = String::from("name: wide\nparams:\n");
    for k in 0..params {
        yaml.push_str(&format!("  - {{key: p{k}, value: \"{value}\"}}\n"));
    }
    yaml.push_str("tasks:\n");
    for i in 0..tasks {
        yaml.push_str(&format!("  - {}\n", task_id(0x3c, i as u64)));
    }
    yaml
}

/// The largest `*.jsonl` file in `dir` now, in bytes.
fn journal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

async fn exec_once(
    bin: &Path,
    emulator: &deployd::emulator::Emulator,
    tasks: usize,
    params: usize,
    value_len: usize,
) -> anyhow::Result<()> {
    let root = temp_root()?;
    let plan_path = root.path().join("wide.yaml");
    let text = plan(tasks, params, value_len);
    std::fs::write(&plan_path, &text)?;
    let time_out = root.path().join("time.txt");
    // To a file: a pipe nobody reads while the run goes would fill and stall the child.
    let stderr_path = root.path().join("stderr.txt");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&time_out)
        .arg(bin)
        .arg("exec")
        .arg(&plan_path)
        .arg("--results-dir")
        .arg(root.path().join("results"))
        .arg("--state-dir")
        .arg(root.path().join("state"))
        .arg("--endpoint")
        .arg(emulator.base_url())
        .arg("--project-id")
        .arg(&emulator.config().project_id)
        .args(["--rate", "10000", "--burst", "1000", "--concurrency", "64"])
        .env("DEPLOYD_TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path)?);
    let calls_before = emulator.log().len();
    let runs = root.path().join("state/runs");
    let t = Instant::now();
    let mut child = cmd.spawn()?;
    let mut journal_peak = 0u64;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        journal_peak = journal_peak.max(journal_bytes(&runs));
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let elapsed = t.elapsed().as_secs_f64();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let calls = emulator.log().len() - calls_before;
    let rss_kib: Option<u64> = std::fs::read_to_string(&time_out)?
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok());
    let result_bytes: u64 = std::fs::read_dir(root.path().join("results/wide"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .sum()
        })
        .unwrap_or(0);
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    println!(
        "{tasks} tasks x {params} params x {value_len} chars (plan file {}): exit {:?}, {calls} calls, {elapsed:.1} s; result file {}; journal peak {}; peak RSS {}",
        mb(text.len() as u64),
        status.code(),
        mb(result_bytes),
        mb(journal_peak),
        rss_kib.map_or("n/a".into(), |k| mb(k * 1024)),
    );
    if status.code() != Some(0) {
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        println!(
            "  first line of stderr: {}",
            first.chars().take(300).collect::<String>()
        );
    }
    Ok(())
}
