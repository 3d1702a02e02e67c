//! Benchmark of the high-availability mode against the machine's PostgreSQL (each part on a
//! database of its own, dropped at the end):
//!
//! 1. takeover: two `deployd run` nodes (release binary, lease `--lease` s); the leader is
//!    killed with SIGKILL `--rounds` times (restarted as a follower each time), then paused
//!    with SIGSTOP `--rounds` times (resumed after the takeover): the time from the signal to
//!    the follower's "this node leads now", median and max;
//! 2. journal: `--tasks` start calls at `--concurrency` against `--latency-ms` of emulator
//!    latency, journaled in the state folder and in the database (fenced group commits), three
//!    runs each, and the ratio.
//!
//! Run: `cargo build --release && cargo run --release --example bench_ha -- [--only takeover|journal]`
//! (`DEPLOYD_TEST_POSTGRES` names another server, as for the tests).

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use deployd::emulator::{Emulator, EmulatorConfig};
use deployd::ha::config::Database;
use deployd::ha::connect::connect;
use deployd::ha::lease::{self, LeaseTiming};
use deployd::ha::schema;
use deployd::ha::store::{Connection, Fence, PgStore};
use deployd::secret::Secret;
use support::{Args, DaemonProc};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let only = args.value("--only").map(str::to_string);
    if only.as_deref() != Some("journal") {
        takeover(&args).await?;
    }
    if only.as_deref() != Some("takeover") {
        journal(&args).await?;
    }
    Ok(())
}

/// A database of its own on the test server; dropped by [`drop_db`].
async fn create_db() -> anyhow::Result<Database> {
    let url = std::env::var("DEPLOYD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into());
    let admin = Database::parse(&url).map_err(anyhow::Error::msg)?;
    let client = connect(&admin, None, "bench").await?;
    let name = format!("deployd_bench_{:016x}", rand::random::<u64>());
    client
        .batch_execute(&format!("create database {name}"))
        .await?;
    let mut db = admin;
    db.dbname = name;
    Ok(db)
}

async fn drop_db(db: &Database) -> anyhow::Result<()> {
    let mut admin = db.clone();
    admin.dbname = "postgres".into();
    let client = connect(&admin, None, "bench").await?;
    client
        .batch_execute(&format!(
            "drop database if exists {} with (force)",
            db.dbname
        ))
        .await?;
    Ok(())
}

fn node(
    bin: &Path,
    root: &Path,
    emulator: &Emulator,
    db: &Database,
    name: &str,
    lease: u64,
) -> anyhow::Result<DaemonProc> {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("plans"))?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!("ha:\n  postgres: \"{db}\"\n  node: {name}\n  lease: {lease}s\n"),
    )?;
    DaemonProc::spawn(
        bin,
        &dir,
        emulator,
        &["--config", &config.to_string_lossy()],
    )
}

fn leads(d: &DaemonProc) -> usize {
    d.lines
        .lock()
        .map(|l| {
            l.iter()
                .filter(|(_, line)| line.contains("this node leads now"))
                .count()
        })
        .unwrap_or(0)
}

fn signal(d: &DaemonProc, sig: &str) -> anyhow::Result<()> {
    if !Command::new("kill")
        .args([sig, &d.pid().to_string()])
        .status()?
        .success()
    {
        bail!("kill {sig} failed");
    }
    Ok(())
}

/// Waits until `d` has led `times` times in all; when it did.
async fn led(d: &DaemonProc, times: usize, secs: u64) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while leads(d) < times {
        if Instant::now() > deadline {
            bail!("no takeover within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lines = d.lines.lock().map_err(|_| anyhow::anyhow!("lock"))?;
    lines
        .iter()
        .filter(|(_, line)| line.contains("this node leads now"))
        .nth(times - 1)
        .map(|(at, _)| *at)
        .context("the line")
}

async fn takeover(args: &Args) -> anyhow::Result<()> {
    let bin = support::deployd_bin(args)?;
    let rounds: usize = args.num("--rounds", 10);
    let lease: u64 = args.num("--lease", 5);
    let db = create_db().await?;
    let emulator = support::emulator().await?;
    let root = support::temp_root()?;
    let mut nodes = [
        node(&bin, root.path(), &emulator, &db, "a", lease)?,
        node(&bin, root.path(), &emulator, &db, "b", lease)?,
    ];
    let mut led_count = [0usize; 2];
    led(&nodes[0], 1, 60)
        .await
        .with_context(|| format!("the first lead: {}", dump(&nodes)))?;
    led_count[0] = 1;
    nodes[1].ready(30).await?;
    let mut leader = 0;
    let mut kills = Vec::new();
    for _ in 0..rounds {
        let other = 1 - leader;
        let t0 = Instant::now();
        signal(&nodes[leader], "-KILL")?;
        led_count[other] += 1;
        let at = led(&nodes[other], led_count[other], 60)
            .await
            .with_context(|| format!("kill round {}: {}", kills.len(), dump(&nodes)))?;
        kills.push(at.duration_since(t0).as_secs_f64());
        // The killed node comes back as a follower.
        let name = if leader == 0 { "a" } else { "b" };
        nodes[leader] = node(&bin, root.path(), &emulator, &db, name, lease)?;
        led_count[leader] = 0;
        nodes[leader].ready(30).await?;
        leader = other;
    }
    let mut pauses = Vec::new();
    for _ in 0..rounds {
        let other = 1 - leader;
        let t0 = Instant::now();
        signal(&nodes[leader], "-STOP")?;
        led_count[other] += 1;
        let at = led(&nodes[other], led_count[other], 60)
            .await
            .with_context(|| format!("pause round {}: {}", pauses.len(), dump(&nodes)))?;
        pauses.push(at.duration_since(t0).as_secs_f64());
        signal(&nodes[leader], "-CONT")?;
        // The old leader steps down on its own when it wakes.
        let old = &nodes[leader];
        let deadline = Instant::now() + Duration::from_secs(30);
        while !old
            .lines
            .lock()
            .map(|l| {
                l.iter()
                    .any(|(at, line)| *at > t0 && line.contains("steps down"))
            })
            .unwrap_or(false)
        {
            if Instant::now() > deadline {
                bail!("the resumed leader did not step down");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        leader = other;
    }
    let (kill_median, kill_max) = support::median_max(&kills);
    let (pause_median, pause_max) = support::median_max(&pauses);
    println!(
        "takeover after SIGKILL of the leader, {rounds} rounds, lease {lease} s: median {kill_median:.2} s, max {kill_max:.2} s (goal: at most {} s)",
        lease + 1
    );
    println!(
        "takeover after SIGSTOP of the leader, {rounds} rounds, lease {lease} s: median {pause_median:.2} s, max {pause_max:.2} s; each resumed leader stepped down"
    );
    for n in nodes {
        n.stop(30).await?;
    }
    drop_db(&db).await?;
    Ok(())
}

async fn journal(args: &Args) -> anyhow::Result<()> {
    let tasks: usize = args.num("--tasks", 1000);
    let concurrency: usize = args.num("--concurrency", 50);
    let latency = Duration::from_millis(args.num("--latency-ms", 50));
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
    let db = create_db().await?;
    let mut client = connect(&db, None, "bench").await?;
    schema::migrate(&mut client).await?;
    // One node leading for the whole benchmark (a long lease: no renewal needed).
    let timing = LeaseTiming {
        lease: Duration::from_secs(300),
    };
    let held = lease::try_acquire(&client, "bench", timing, tokio::time::Instant::now())
        .await
        .map_err(anyhow::Error::msg)?
        .context("the lead")?;
    let fence = Arc::new(Fence::new("bench"));
    fence.lead(held.epoch, held.calls_until);
    let conn = Arc::new(Connection::new(db.clone(), None, "bench"));
    let pg: deployd::store::SharedStore = Arc::new(PgStore::open(conn, fence).await?);

    let mut folder_times = Vec::new();
    let mut pg_times = Vec::new();
    for _ in 0..3 {
        for (store, times) in [(None, &mut folder_times), (Some(pg.clone()), &mut pg_times)] {
            let state = tempfile::tempdir()?;
            let settings = support::exec_settings(
                10_000.0,
                u32::try_from(concurrency).unwrap_or(50),
                concurrency,
                Some(state.path().to_path_buf()),
            )?;
            let (report, elapsed) =
                support::run_in_process_with(&emulator, &yaml, &settings, store).await?;
            if report.summary.started != tasks {
                bail!("{} of {tasks} started", report.summary.started);
            }
            times.push(elapsed.as_secs_f64());
        }
    }
    let ideal = tasks as f64 / concurrency as f64 * latency.as_secs_f64();
    let folder = support::median_max(&folder_times).0;
    let database = support::median_max(&pg_times).0;
    println!(
        "{tasks} calls, concurrency {concurrency}, latency {} ms (ideal {ideal:.2} s): state folder {} s, database {} s (median of 3): the database costs {:.3}x the state folder (goal: at most 1.10x)",
        latency.as_millis(),
        fmt_times(&folder_times),
        fmt_times(&pg_times),
        database / folder
    );
    drop(client);
    drop_db(&db).await?;
    Ok(())
}

/// The lines each node kept, for an error.
fn dump(nodes: &[DaemonProc]) -> String {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let lines = n.lines.lock().map(|l| l.clone()).unwrap_or_default();
            let text: Vec<String> = lines.iter().map(|(_, l)| l.clone()).collect();
            format!("node {i}:\n{}", text.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn fmt_times(times: &[f64]) -> String {
    times
        .iter()
        .map(|t| format!("{t:.3}"))
        .collect::<Vec<_>>()
        .join("/")
}
