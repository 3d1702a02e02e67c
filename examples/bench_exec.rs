//! Benchmark: one plan of N tasks against the emulator with a fixed latency, as `deployd exec`
//! runs it (same executor, same limits, the run journal in a temporary state folder), and the
//! elapsed time against the ideal.
//!
//! Run: `cargo run --release --example bench_exec -- [TASKS] [CONCURRENCY] [LATENCY_MS] [RATE] [BURST]`
//! (defaults: 1000 50 50 10000 50: the ideal is TASKS / CONCURRENCY * LATENCY = 1.0 s).

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use deployd::emulator::{Emulator, EmulatorConfig};
use deployd::secret::Secret;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: f64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let tasks = arg(0, 1000.0) as usize;
    let concurrency = arg(1, 50.0) as usize;
    let latency = Duration::from_millis(arg(2, 50.0) as u64);
    let rate = arg(3, 10_000.0);
    let burst = arg(4, 50.0) as u32;

    let config = EmulatorConfig {
        tokens: vec![Secret::new(support::TOKEN)],
        latency,
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::start(config, "127.0.0.1:0".parse()?).await?;
    let mut yaml = String::from("name: bench\ntasks:\n");
    for i in 0..tasks {
        yaml.push_str(&format!(
            "  - task_id: {i:032x}\n    params: [{{key: version, value: \"1.0.{i}\"}}]\n"
        ));
    }
    // With a state folder, as `deployd exec` and the daemon run: every call is journaled.
    let state = tempfile::tempdir()?;
    let (report, elapsed) = support::run_in_process(
        &emulator,
        &yaml,
        &support::exec_settings(rate, burst, concurrency, Some(state.path().to_path_buf()))?,
    )
    .await?;
    let elapsed = elapsed.as_secs_f64();
    let ideal = tasks as f64 / concurrency as f64 * latency.as_secs_f64();
    let ideal = ideal.max((tasks as f64 - f64::from(burst)).max(0.0) / rate);
    println!(
        "tasks={tasks} concurrency={concurrency} latency={}ms rate={rate}/s burst={burst}",
        latency.as_millis()
    );
    println!(
        "started={} failed={} calls={}",
        report.summary.started,
        report.summary.failed,
        emulator.log().len()
    );
    println!(
        "elapsed={elapsed:.3}s ideal={ideal:.3}s ratio={:.3}",
        elapsed / ideal
    );
    emulator.shutdown().await;
    Ok(())
}
