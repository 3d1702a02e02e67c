//! Benchmark: rate precision. N tasks at `--rate R --burst B` against the emulator (no
//! latency); the emulator's arrival times give the achieved rate and the largest number of
//! calls in any 100 ms window and in any one emission interval (1/R).
//!
//! Run: `cargo run --release --example bench_rate -- [TASKS] [RATE] [BURST] [CONCURRENCY]`
//! (defaults: 200 50 1 8).

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: f64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let tasks = arg(0, 200.0) as usize;
    let rate = arg(1, 50.0);
    let burst = arg(2, 1.0) as u32;
    let concurrency = arg(3, 8.0) as usize;

    let emulator = support::emulator().await?;
    let mut yaml = String::from("name: rate\ntasks:\n");
    for i in 0..tasks {
        yaml.push_str(&format!("  - {i:032x}\n"));
    }
    let (report, _) = support::run_in_process(
        &emulator,
        &yaml,
        &support::exec_settings(rate, burst, concurrency, None)?,
    )
    .await?;

    let mut arrivals: Vec<i64> = emulator
        .log()
        .iter()
        .map(|l| l.received_at.timestamp_micros())
        .collect();
    arrivals.sort_unstable();
    let span = (arrivals[arrivals.len() - 1] - arrivals[0]) as f64 / 1e6;
    // After the first burst the pace is the rate: (n - burst) calls over the span.
    let achieved = (arrivals.len() as f64 - f64::from(burst)) / span;
    let max_in = |window: Duration| {
        let w = window.as_micros() as i64;
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..arrivals.len() {
            while arrivals[hi] - arrivals[lo] >= w {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    };
    let interval = Duration::from_secs_f64(1.0 / rate);
    let allowed_100ms = f64::from(burst) + rate * 0.1;
    println!(
        "tasks={tasks} rate={rate}/s burst={burst} concurrency={concurrency} started={}",
        report.summary.started
    );
    println!(
        "achieved={achieved:.2}/s ({:+.2}% of the setting) span={span:.3}s",
        (achieved / rate - 1.0) * 100.0
    );
    println!(
        "max calls in any 100ms window={} (GCRA allows {allowed_100ms:.0})",
        max_in(Duration::from_millis(100))
    );
    let mut gaps: Vec<i64> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    println!(
        "inter-arrival gap: median={:.1}ms min={:.1}ms (emission interval {:.1}ms)",
        gaps[gaps.len() / 2] as f64 / 1e3,
        gaps[0] as f64 / 1e3,
        interval.as_secs_f64() * 1e3
    );
    emulator.shutdown().await;
    Ok(())
}
