//! Benchmark: one plan of N tasks against the emulator with a fixed latency, as `deployd exec`
//! runs it (same executor, same limits, the run journal in a temporary state folder), and the
//! elapsed time against the ideal.
//!
//! Run: `cargo run --release --example bench_exec -- [TASKS] [CONCURRENCY] [LATENCY_MS] [RATE] [BURST]`
//! (defaults: 1000 50 50 10000 50: the ideal is TASKS / CONCURRENCY * LATENCY = 1.0 s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use deployd::api::client::{ClientOptions, DeployClient, Endpoint};
use deployd::api::credentials::Credentials;
use deployd::emulator::{Emulator, EmulatorConfig};
use deployd::executor::limits::Limits;
use deployd::executor::{Executor, ExecutorSettings, NoObserver, RunRequest, StopTokens};
use deployd::plan::load::parse_plan;
use deployd::results::{RunId, Trigger};
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

    let token = "bench-token";
    let config = EmulatorConfig {
        tokens: vec![Secret::new(token)],
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
    let plan = parse_plan("bench.yaml".as_ref(), yaml.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .plan;

    let client = DeployClient::new(
        Endpoint::parse(&emulator.base_url())?,
        Credentials::Token(Secret::new(token)),
        ClientOptions::default(),
    )?;
    let limits = Arc::new(Limits::new(rate, burst, concurrency)?);
    // With a state folder, as `deployd exec` and the daemon run: every call is journaled.
    let state = tempfile::tempdir()?;
    let settings = ExecutorSettings {
        state_dir: Some(state.path().to_path_buf()),
        ..ExecutorSettings::default()
    };
    let executor = Executor::new(client, limits, settings);
    let started_at = Utc::now();
    let req = RunRequest {
        plan: Arc::new(plan),
        plan_dir: ".".into(),
        trigger: Trigger::Manual,
        scheduled_for: None,
        run_id: RunId::new(started_at),
        started_at,
    };
    let clock = Instant::now();
    let report = executor
        .run(req, StopTokens::default(), Arc::new(NoObserver))
        .await
        .report;
    let elapsed = clock.elapsed().as_secs_f64();
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
