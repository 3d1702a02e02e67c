//! Shared pieces of the daemon benchmarks: the release binary as a child process, its stderr
//! watched for "daemon ready", /proc figures (RSS, peak RSS, CPU time), plan files, result
//! files, the emulator's log, and small statistics.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use deployd::emulator::{Emulator, EmulatorConfig, LoggedRequest};
use deployd::secret::Secret;

/// The token the benchmark emulator accepts (passed to the daemon as `DEPLOYD_TOKEN`).
pub const TOKEN: &str = "bench-token-0123456789";

/// The `deployd` release binary next to this example (`target/release/deployd`), or `--bin`.
pub fn deployd_bin(args: &Args) -> anyhow::Result<PathBuf> {
    let path = match args.value("--bin") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe()?;
            // target/release/examples/bench_x -> target/release/deployd
            exe.parent()
                .and_then(Path::parent)
                .map(|d| d.join("deployd"))
                .context("no parent folder for the example binary")?
        }
    };
    if !path.is_file() {
        bail!(
            "{} not found: run `cargo build --release` first (or pass --bin PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// `--name value` flags, as simple as the benchmarks need.
pub struct Args(Vec<String>);

impl Args {
    /// The process arguments.
    pub fn from_env() -> Self {
        Self(std::env::args().skip(1).collect())
    }

    /// The value after `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.0.get(i + 1))
            .map(String::as_str)
    }

    /// A number after `name`, or `default`.
    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        self.value(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
}

/// An emulator accepting [`TOKEN`], on a free loopback port, no latency.
pub async fn emulator() -> anyhow::Result<Emulator> {
    let config = EmulatorConfig {
        tokens: vec![Secret::new(TOKEN)],
        ..EmulatorConfig::default()
    };
    Ok(Emulator::start(config, "127.0.0.1:0".parse()?).await?)
}

/// A task id (32 hex digits) from a namespace and a number.
pub fn task_id(ns: u32, i: u64) -> String {
    format!("{ns:08x}{i:024x}")
}

/// Writes `text` to `path`. With `age` (bulk set-up before the daemon starts), backdates its
/// mtime so that the first scan takes it as settled (a file seen only by a rescan must be 1 s
/// old); without, fsyncs it (a plan about to be renamed into a watched folder).
pub fn write_file(path: &Path, text: &str, age: Option<Duration>) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(text.as_bytes())?;
    match age {
        Some(age) => f.set_modified(SystemTime::now() - age)?,
        None => f.sync_all()?,
    }
    Ok(())
}

/// Drops a plan the documented way: write `NAME.yaml.tmp`, fsync, then rename to `NAME.yaml`.
/// Returns the wall time just before the rename.
pub fn drop_plan(dir: &Path, name: &str, text: &str) -> anyhow::Result<DateTime<Utc>> {
    let tmp = dir.join(format!("{name}.yaml.tmp"));
    write_file(&tmp, text, None)?;
    let at = Utc::now();
    std::fs::rename(&tmp, dir.join(format!("{name}.yaml")))?;
    Ok(at)
}

/// The number of result files of a plan.
pub fn result_count(results: &Path, plan: &str) -> usize {
    std::fs::read_dir(results.join(plan))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

/// Every result file of a plan, parsed, oldest first.
pub fn results(results: &Path, plan: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(results.join(plan))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| Ok(serde_json::from_slice(&std::fs::read(p)?)?))
        .collect()
}

/// The number of plans under `results` that have at least one result file.
pub fn plans_with_results(results: &Path) -> usize {
    std::fs::read_dir(results)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('_'))
                .filter(|e| {
                    std::fs::read_dir(e.path()).is_ok_and(|mut f| {
                        f.any(|x| {
                            x.is_ok_and(|x| x.path().extension().is_some_and(|e| e == "json"))
                        })
                    })
                })
                .count()
        })
        .unwrap_or(0)
}

/// Polls `cond` every `every` until it holds; fails after `secs` seconds.
pub async fn wait_for(
    secs: u64,
    every: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > Duration::from_secs(secs) {
            bail!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
    Ok(start.elapsed())
}

/// The first request the emulator accepted for `task_id`.
pub fn first_call(emulator: &Emulator, task_id: &str) -> Option<LoggedRequest> {
    emulator.log().into_iter().find(|r| r.task_id == task_id)
}

/// A `deployd run` child process with its stderr watched.
pub struct DaemonProc {
    child: Child,
    /// When the process was spawned.
    pub spawned: Instant,
    /// Lines that matter (ready, warnings, errors, panics), with when they were read.
    pub lines: Arc<Mutex<Vec<(Instant, String)>>>,
    /// Every stderr line counted.
    pub line_count: Arc<Mutex<u64>>,
}

impl DaemonProc {
    /// Spawns `deployd run` on `root/{plans,results,state}` against `emulator`.
    pub fn spawn(
        bin: &Path,
        root: &Path,
        emulator: &Emulator,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--plans-dir")
            .arg(root.join("plans"))
            .arg("--results-dir")
            .arg(root.join("results"))
            .arg("--state-dir")
            .arg(root.join("state"))
            .arg("--endpoint")
            .arg(emulator.base_url())
            .arg("--project-id")
            .arg(&emulator.config().project_id)
            .args(extra);
        Self::spawn_cmd(cmd)
    }

    fn spawn_cmd(mut cmd: Command) -> anyhow::Result<Self> {
        cmd.env("DEPLOYD_TOKEN", TOKEN)
            .env_remove("DEPLOYD_TOKEN_FILE")
            .env_remove("CLOUD_SDK_AK")
            .env_remove("CLOUD_SDK_SK")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = cmd.spawn().context("spawning deployd")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let line_count = Arc::new(Mutex::new(0u64));
        let (l2, c2) = (lines.clone(), line_count.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let now = Instant::now();
                if let Ok(mut c) = c2.lock() {
                    *c += 1;
                }
                let keep = [
                    "daemon ready",
                    "leads now",
                    "WARN",
                    "ERROR",
                    "panicked",
                    "bye",
                ]
                .iter()
                .any(|k| line.contains(k));
                if keep && let Ok(mut l) = l2.lock() {
                    l.push((now, line));
                }
            }
        });
        Ok(Self {
            child,
            spawned,
            lines,
            line_count,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the "daemon ready" line: time since spawn and its `plans=` count.
    /// Fails at once if the process exits first, with its error lines.
    pub async fn ready(&mut self, secs: u64) -> anyhow::Result<(Duration, usize)> {
        let mut found = None;
        let mut exited = None;
        wait_for(secs, Duration::from_millis(5), "daemon ready", || {
            found = self.lines.lock().ok().and_then(|l| {
                l.iter()
                    .find(|(_, line)| line.contains("daemon ready"))
                    .cloned()
            });
            exited = self.child.try_wait().ok().flatten();
            found.is_some() || exited.is_some()
        })
        .await?;
        if let (None, Some(status)) = (&found, exited) {
            // Let the reader thread take the last lines.
            tokio::time::sleep(Duration::from_millis(100)).await;
            bail!(
                "deployd exited ({status}) before it was ready:\n{}",
                self.problems().join("\n")
            );
        }
        let (at, line) = found.context("ready line")?;
        let plans = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("plans="))
            .and_then(|n| n.parse().ok())
            .context("no plans= in the ready line")?;
        Ok((at.duration_since(self.spawned), plans))
    }

    /// Lines logged at WARN or ERROR level, or holding "panicked".
    pub fn problems(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|(_, s)| {
                        s.contains("WARN") || s.contains("ERROR") || s.contains("panicked")
                    })
                    .map(|(_, s)| s.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// VmRSS, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// The RSS's parts at this moment: anonymous (heap, stacks) and file-backed (the binary's
    /// code and read-only data, libc), as "anon A + file F MiB" from `/proc/PID/status`.
    pub fn rss_split(&self) -> anyhow::Result<String> {
        let anon = proc_status_kib(self.pid(), "RssAnon")?;
        let file = proc_status_kib(self.pid(), "RssFile")?;
        Ok(format!("anon {} + file {}", mib(anon), mib(file)))
    }

    /// VmHWM (peak RSS), in KiB.
    pub fn hwm_kib(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid(), "VmHWM")
    }

    /// User + system CPU time so far.
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_time(self.pid())
    }

    /// SIGTERM, then waits for the exit (at most `secs`, then SIGKILL). Returns the time the
    /// shutdown took and whether it exited 0.
    pub async fn stop(mut self, secs: u64) -> anyhow::Result<(Duration, bool)> {
        let t = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let mut exit = None;
        let waited = wait_for(secs, Duration::from_millis(10), "daemon exit", || {
            exit = self.child.try_wait().ok().flatten();
            exit.is_some()
        })
        .await;
        if waited.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            bail!("the daemon did not exit within {secs} s of SIGTERM");
        }
        Ok((t.elapsed(), exit.is_some_and(|s| s.success())))
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `/proc/PID/status` field in KiB.
pub fn proc_status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// utime + stime of a process, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let (user, sys) = cpu_split(pid)?;
    Ok(user + sys)
}

/// utime and stime of a process, from `/proc/PID/stat` (in clock ticks, 10 ms).
pub fn cpu_split(pid: u32) -> anyhow::Result<(Duration, Duration)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = text.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<Duration> {
        let n = fields.get(i).context("short stat")?.parse::<u64>()?;
        Ok(Duration::from_secs_f64(n as f64 / clock_ticks() as f64))
    };
    // utime is field 14, stime 15: indexes 11 and 12 counting from field 3.
    Ok((ticks(11)?, ticks(12)?))
}

/// `getconf CLK_TCK` (100 on Linux almost everywhere).
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Median and max of samples (milliseconds).
pub fn median_max(samples: &[f64]) -> (f64, f64) {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    (median, v[v.len() - 1])
}

/// KiB as MiB text.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Milliseconds between two instants of wall time.
pub fn ms_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

/// A fresh temporary root with `plans/`, `results/`, `state/`.
pub fn temp_root() -> anyhow::Result<tempfile::TempDir> {
    let root = tempfile::tempdir()?;
    for d in ["plans", "results", "state"] {
        std::fs::create_dir_all(root.path().join(d))?;
    }
    Ok(root)
}

/// What an idle window measured.
pub struct Idle {
    /// The window's length, in seconds.
    pub window: f64,
    /// CPU seconds (user + system) spent in the window.
    pub cpu: f64,
    /// RSS in KiB at the start, then every `every_secs`.
    pub rss: Vec<u64>,
    /// The sampling interval, in seconds.
    pub every_secs: u64,
}

impl Idle {
    /// CPU seconds per idle minute.
    pub fn cpu_per_min(&self) -> f64 {
        self.cpu / self.window * 60.0
    }

    /// The RSS samples as `a -> b -> c MiB`.
    pub fn rss_line(&self) -> String {
        let v: Vec<String> = self
            .rss
            .iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect();
        format!("every {} s: {} MiB", self.every_secs, v.join(" -> "))
    }
}

/// Watches an idle daemon for `secs` seconds, sampling RSS every `every_secs`.
pub async fn idle_window(d: &DaemonProc, secs: u64, every_secs: u64) -> anyhow::Result<Idle> {
    let cpu0 = d.cpu()?;
    let t = Instant::now();
    let mut rss = vec![d.rss_kib()?];
    let mut next = every_secs.max(1);
    while next <= secs {
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            t + Duration::from_secs(next),
        ))
        .await;
        rss.push(d.rss_kib()?);
        next += every_secs.max(1);
    }
    if t.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            t + Duration::from_secs(secs),
        ))
        .await;
    }
    Ok(Idle {
        window: t.elapsed().as_secs_f64(),
        cpu: (d.cpu()? - cpu0).as_secs_f64(),
        rss,
        every_secs: every_secs.max(1),
    })
}

/// Settings as `deployd exec --rate R --burst B --concurrency C` reads them, journaling in
/// `state_dir` (no journal without one).
pub fn exec_settings(
    rate: f64,
    burst: u32,
    concurrency: usize,
    state_dir: Option<PathBuf>,
) -> anyhow::Result<deployd::settings::Settings> {
    use deployd::settings::{Overrides, RawConfig, Settings};
    let overrides = Overrides {
        rate: Some(rate),
        burst: Some(burst),
        concurrency: Some(concurrency),
        state_dir: state_dir.clone(),
        ..Overrides::default()
    };
    let mut settings = Settings::from_raw(RawConfig::default(), &overrides, &|_| None, None)?;
    settings.executor.state_dir = state_dir;
    Ok(settings)
}

/// Runs a plan (YAML text) in this process, as `deployd exec` does (the executor `settings`
/// describe, with its limits and run journal), against `emulator`, authenticated with
/// [`TOKEN`]. Returns the report and the time the run itself took (set-up excluded).
pub async fn run_in_process(
    emulator: &Emulator,
    yaml: &str,
    settings: &deployd::settings::Settings,
) -> anyhow::Result<(deployd::results::RunReport, Duration)> {
    run_in_process_with(emulator, yaml, settings, None).await
}

/// [`run_in_process`] journaling in `store` instead of the settings' state folder.
pub async fn run_in_process_with(
    emulator: &Emulator,
    yaml: &str,
    settings: &deployd::settings::Settings,
    store: Option<deployd::store::SharedStore>,
) -> anyhow::Result<(deployd::results::RunReport, Duration)> {
    let mut runs = run_plans_in_process(emulator, &[yaml], settings, store).await?;
    runs.pop().context("no run")
}

/// Runs plans (YAML texts) one after the other on one executor, as one daemon process would
/// (what the first run learned, such as credentials that work, the later ones know), against
/// `emulator`. Returns each run's report and time.
pub async fn run_plans_in_process(
    emulator: &Emulator,
    yamls: &[&str],
    settings: &deployd::settings::Settings,
    store: Option<deployd::store::SharedStore>,
) -> anyhow::Result<Vec<(deployd::results::RunReport, Duration)>> {
    use deployd::api::client::{ClientOptions, DeployClient, Endpoint};
    use deployd::api::credentials::Credentials;
    use deployd::executor::{NoObserver, RunRequest, StopTokens};
    use deployd::results::{RunId, Trigger};

    let client = DeployClient::new(
        Endpoint::parse(&emulator.base_url())?,
        Credentials::Token(Secret::new(TOKEN)),
        ClientOptions::default(),
    )?;
    let executor = match store {
        Some(store) => settings.executor(client).with_store(Some(store)),
        None => settings.executor(client),
    };
    let mut runs = Vec::new();
    for yaml in yamls {
        let plan = deployd::plan::load::parse_plan("bench.yaml".as_ref(), yaml.as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .plan;
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
        runs.push((report, clock.elapsed()));
    }
    Ok(runs)
}
