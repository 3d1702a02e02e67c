//! The daemon's wiring and its one controller loop.
//!
//! Theory of operation: a single controller task owns the catalog of plans, the armed
//! schedules and the set of runs in progress. Everything else sends it messages: the folder
//! watcher (hints), the signal futures (stop, reload), finished runs (their join handles).
//! The controller sleeps until the earliest of: the next fire time, a due rescan, or one
//! minute (so a wall-clock jump or a suspend is noticed). Runs are spawned tasks that run the
//! executor and write their own result file; the controller only decides *when* a plan runs.
//!
//! Shutdown: the `shutdown` token stops the loop; runs in progress get `stop` (no new calls,
//! retries included), then after `shutdown_grace` `abort` (calls in flight abandoned); every
//! run writes its result (`interrupted` when cut short) before `run` returns.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::executor::{Executor, NoObserver, RunRequest, StopTokens};
use crate::plan::catalog::{Catalog, Diff};
use crate::plan::{Overlap, Plan};
use crate::results::{RunId, Trigger, write_atomic};
use crate::scan::{FolderScanner, concerns_plans};
use crate::settings::Settings;
use crate::store::folder::FolderStore;
use crate::store::{Claim, SharedStore};
use crate::watcher::{FolderWatcher, Hint};

/// Hints are collected this long before a rescan, so a burst of events costs one scan.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// The controller looks at the wall clock at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Longest wait at start-up for plan files still being written.
const STARTUP_SETTLE: Duration = Duration::from_secs(5);
/// A fire found later than this (suspend, clock jump) is not run; the next one is armed.
const MISSED_FIRE: Duration = Duration::from_secs(60);
/// Attempts to begin a run (journal, run-once memory) before it gets a `failed` result.
const BEGIN_ATTEMPTS: u32 = 5;
/// How often a run-once plan that could not begin is tried again after its failed result.
const BEGIN_RETRY_MAX: Duration = Duration::from_secs(60);
/// How often a result the results folder refused is tried again.
const UNWRITTEN_RETRY: Duration = Duration::from_secs(10);
/// The first pause before trying to begin a run again (doubling: 1, 2, 4, 8 s).
const BEGIN_BACKOFF: Duration = Duration::from_secs(1);

/// How a run's task ended.
enum RunEnd {
    /// It ran and wrote its result.
    Ran,
    /// It ran, but its result file could not be written (kept in its journal too).
    Unwritten(Box<crate::executor::FinishedRun>),
    /// It could not begin (values, journal or run-once memory), and called nothing: why.
    NotBegun(Pending, String),
}

/// A run that is due but not started yet: waiting for a run slot, or to be tried again.
struct Pending {
    plan: Arc<Plan>,
    trigger: Trigger,
    scheduled_for: Option<DateTime<Utc>>,
    /// Failed attempts to begin it so far.
    attempt: u32,
}

/// `max_runs` when the config does not set it: what the open-files limit allows (each run
/// holds its journal open, and a writer thread), keeping half the limit (at most 128) for
/// everything else, within 2..=256.
pub fn default_max_runs() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let reserve = (soft / 2).min(128);
    usize::try_from(soft.saturating_sub(reserve) / 8)
        .unwrap_or(256)
        .clamp(2, 256)
}

/// Waits for a store call made by the controller's synchronous decisions (arrival, fires,
/// retries). They need the answer before deciding, and the call is short (a file read or a
/// durable write; on a database, the round trip the decision needs anyway): this worker blocks
/// for it while the runtime's other workers go on. Needs the multi-threaded runtime, which
/// `deployd run` uses.
fn wait_for<F: std::future::Future>(call: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(call))
}

/// The `failed` result of a run that could not begin: every task uncalled, with the cause.
fn not_begun(pending: &Pending, cause: &str) -> crate::results::RunReport {
    use crate::results::{RunReport, TaskReport, TaskStatus};
    let now = Utc::now();
    let tasks: Vec<TaskReport> = pending
        .plan
        .tasks
        .iter()
        .map(|t| {
            let mut r = TaskReport::new(&t.task_id, TaskStatus::Failed, Vec::new());
            r.error_code = Some("run_not_begun".into());
            r.error_msg = Some(format!("not called: the run could not begin ({cause})"));
            r
        })
        .collect();
    let summary = RunReport::summarize(&tasks);
    RunReport {
        plan: pending.plan.name.clone(),
        plan_file: pending.plan.file_name.clone(),
        plan_sha256: pending.plan.sha256.clone(),
        run_id: RunId::new(now),
        trigger: pending.trigger,
        scheduled_for: pending.scheduled_for,
        started_at: now,
        finished_at: now,
        status: RunReport::status_for(&summary, false),
        summary,
        tasks,
    }
}

/// What the daemon needs, built and validated by the caller.
pub struct DaemonParts {
    /// Validated settings.
    pub settings: Settings,
    /// Runs plans.
    pub executor: Executor,
}

/// Rebuilds the parts from the config on SIGHUP; an error keeps the old ones.
pub type Reloader = Box<dyn FnMut() -> anyhow::Result<DaemonParts> + Send>;

/// Control inputs of a daemon.
pub struct Control {
    /// Cancelled to shut down.
    pub shutdown: CancellationToken,
    /// One message per reload request (SIGHUP).
    pub reload: mpsc::Receiver<()>,
    /// Called once the plans are loaded and schedules armed (systemd `READY=1`).
    pub on_ready: Box<dyn FnOnce() + Send>,
    /// Called with a one-line status whenever it changes (systemd `STATUS=`).
    pub on_status: Box<dyn FnMut(&str) + Send>,
    /// Called at least every `interval` from the controller loop (systemd `WATCHDOG=1`).
    pub watchdog: Option<(Duration, Box<dyn FnMut() + Send>)>,
}

/// A plan's schedule state.
struct Armed {
    plan: Arc<Plan>,
    next: Option<DateTime<Utc>>,
}

/// What the controller keeps about one plan's runs.
#[derive(Default)]
struct RunSlots {
    running: usize,
    /// One fire waiting for the current run to end (`overlap: queue`, and arrivals).
    queued: Option<(Arc<Plan>, Trigger, Option<DateTime<Utc>>)>,
}

struct Controller {
    settings: Settings,
    executor: Executor,
    store: SharedStore,
    catalog: Catalog,
    scanner: FolderScanner,
    armed: BTreeMap<String, Armed>,
    slots: HashMap<String, RunSlots>,
    runs: JoinSet<RunEnd>,
    /// Plan name of each run task, so that even a run that panicked frees its plan's slot.
    run_names: HashMap<tokio::task::Id, String>,
    stop: StopTokens,
    /// Invalid-file reports currently written, file name -> text.
    invalid_written: BTreeMap<String, String>,
    status: String,
    /// Runs alive at once, all plans together.
    max_runs: usize,
    /// Runs due while `max_runs` were going, in the order they became due.
    admission: std::collections::VecDeque<Pending>,
    /// Runs that could not begin, and when to try again.
    retries: Vec<(Instant, Pending)>,
    /// Fire times already used per plan (kept in the state folder too).
    fires_used: HashMap<String, Vec<DateTime<Utc>>>,
    /// Per plan whose memory of used fire times was damaged: no fire at or before this.
    fires_floor: HashMap<String, DateTime<Utc>>,
    /// Runs that ended but whose result file could not be written yet, and when to try next.
    unwritten: Vec<crate::executor::FinishedRun>,
    unwritten_retry: Option<Instant>,
}

/// Runs the daemon until `control.shutdown` is cancelled. Returns after every run in progress
/// has written its result.
pub async fn run(
    parts: DaemonParts,
    mut control: Control,
    mut reloader: Option<Reloader>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let DaemonParts { settings, executor } = parts;
    let folder = FolderStore::open(&settings.state_dir).context("cannot open the state folder")?;
    // Held until this function returns: a second daemon on the folder refuses to start.
    let _state_lock = folder.lock_for_daemon()?;
    let store: SharedStore = Arc::new(folder.with_results(&settings.results_dir));
    std::fs::create_dir_all(&settings.results_dir).with_context(|| {
        format!(
            "cannot create the results folder {}",
            settings.results_dir.display()
        )
    })?;
    let configured_plans = settings.plans_dir.clone();
    let mut plans_dir = std::fs::canonicalize(&configured_plans).with_context(|| {
        format!(
            "the plans folder {} is not usable",
            settings.plans_dir.display()
        )
    })?;
    check_folder_permissions(&plans_dir).map_err(anyhow::Error::msg)?;
    let (mut watcher, mut hints) = start_watcher(&plans_dir);
    // A plans folder that is a symlink (git-sync, capistrano: `plans -> rev2`, swapped by
    // rename) is resolved again at every scan; its parent is watched for the swap.
    let (_link_watcher, mut link_hints) = match std::fs::symlink_metadata(&configured_plans) {
        Ok(m) if m.file_type().is_symlink() => match configured_plans.parent() {
            Some(parent) => start_watcher(parent),
            None => (None, None),
        },
        _ => (None, None),
    };

    let mut c = Controller {
        settings,
        executor,
        store,
        catalog: Catalog::new(),
        scanner: FolderScanner::new(),
        armed: BTreeMap::new(),
        slots: HashMap::new(),
        runs: JoinSet::new(),
        run_names: HashMap::new(),
        stop: StopTokens::default(),
        invalid_written: BTreeMap::new(),
        status: String::new(),
        max_runs: 0,
        admission: std::collections::VecDeque::new(),
        retries: Vec::new(),
        fires_used: HashMap::new(),
        fires_floor: HashMap::new(),
        unwritten: Vec::new(),
        unwritten_retry: None,
    };
    c.max_runs = c.settings.max_runs.unwrap_or_else(default_max_runs);
    info!(
        max_runs = c.max_runs,
        "runs alive at once, all plans together"
    );
    // Before anything fires: runs a crash left unfinished get their result files.
    crate::recovery::recover(
        c.store.as_ref(),
        &c.settings.results_dir,
        &c.executor,
        &control.shutdown,
    )
    .await;

    let mut scan_at = None;
    // Event-driven scans trust unchanged file identities; the periodic scan, SIGHUP and lost
    // events read every file again.
    let mut full_scan = false;
    let mut periodic = Instant::now() + c.settings.rescan_interval;
    if control.shutdown.is_cancelled() {
        // Stopped during crash recovery: nothing is loaded, so nothing starts.
        c.shutdown().await;
        return Ok(());
    }
    c.rescan(&plans_dir, &mut scan_at, true);
    // Files written just before the start are not settled yet: give them their quiet time
    // (bounded) so that READY means "the plans are loaded".
    let settle_by = Instant::now() + STARTUP_SETTLE;
    while let Some(at) = scan_at.filter(|at| *at <= settle_by) {
        scan_at = None;
        tokio::select! {
            _ = control.shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(at) => {}
        }
        if control.shutdown.is_cancelled() {
            break;
        }
        c.rescan(&plans_dir, &mut scan_at, false);
    }
    info!(
        plans = c.catalog.active().count(),
        scheduled = c.armed.len(),
        plans_dir = %plans_dir.display(),
        "daemon ready"
    );
    (control.on_ready)();
    c.report_status(&mut control.on_status);
    let mut next_watchdog = control
        .watchdog
        .as_ref()
        .map(|(every, _)| Instant::now() + *every);

    let mut clock = crate::wall_clock::JumpDetector::new();
    // The first look of the retention's own jump check.
    crate::wall_clock::trusted();
    loop {
        let now_wall = Utc::now();
        let now = Instant::now();
        let mut wake = now + MAX_SLEEP;
        if let Some(fire) = c.armed.values().filter_map(|a| a.next).min() {
            let until = (fire - now_wall).to_std().unwrap_or(Duration::ZERO);
            wake = wake.min(now + until);
        }
        if let Some(at) = scan_at {
            wake = wake.min(at);
        }
        if let Some(at) = c.retries.iter().map(|(at, _)| *at).min() {
            wake = wake.min(at);
        }
        if let Some(at) = c.unwritten_retry.filter(|_| !c.unwritten.is_empty()) {
            wake = wake.min(at);
        }
        wake = wake.min(periodic);
        if let Some(at) = next_watchdog {
            wake = wake.min(at);
        }

        tokio::select! {
            biased;
            _ = control.shutdown.cancelled() => break,
            // Finished runs are reaped before anything else can starve them (a flood of SIGHUPs or folder events).
            Some(done) = c.runs.join_next_with_id(), if !c.runs.is_empty() => {
                c.run_ended(done);
            }
            hint = recv_hint(&mut link_hints) => match hint {
                Some(Hint::Path(path, _)) if path.file_name() == configured_plans.file_name() => {
                    debug!(path = %path.display(), "the plans folder's link changed");
                    scan_at = Some(Instant::now() + DEBOUNCE);
                    full_scan = true;
                }
                Some(_) => {}
                None => link_hints = None,
            },
            hint = recv_hint(&mut hints) => match hint {
                Some(Hint::Path(path, kind)) => {
                    if concerns_plans(&plans_dir, &path) {
                        debug!(path = %path.display(), ?kind, "folder event");
                        c.scanner.note(path, kind);
                        scan_at = Some(scan_at.map_or(Instant::now() + DEBOUNCE, |a| a.min(Instant::now() + DEBOUNCE)));
                    }
                }
                Some(Hint::Rescan(why)) => {
                    warn!("{why}: rescanning the plans folder");
                    c.scanner.forget_hints();
                    scan_at = Some(Instant::now());
                    full_scan = true;
                }
                None => {
                    warn!("the folder watcher stopped; relying on periodic rescans until it can be restarted");
                    hints = None;
                    watcher = None;
                }
            },
            Some(()) = control.reload.recv() => {
                // Requests that piled up meanwhile are served by this one reload.
                while control.reload.try_recv().is_ok() {}
                info!("SIGHUP: reloading the configuration and rescanning plans");
                if let Some(reload) = reloader.as_mut() {
                    match reload() {
                        Ok(parts) => c.apply_config(parts),
                        Err(e) => error!("the new configuration is invalid; keeping the old one: {e:#}"),
                    }
                }
                // Events were not lost: what they say of files still being written stands.
                scan_at = Some(Instant::now());
                full_scan = true;
            },
            _ = tokio::time::sleep_until(wake) => {}
        }

        // Before anything reads the wall clock's word: was it stepped while we slept?
        if let Some(jump) = clock.check() {
            warn!(
                jump = %crate::wall_clock::describe(jump),
                "the wall clock jumped by {} (it reads {} now): schedules are re-armed, and results are not removed by age for an hour",
                crate::wall_clock::describe(jump),
                crate::results::ts(&Utc::now())
            );
            crate::wall_clock::note_jump();
            c.rearm_after_jump();
        }
        if let Some(w) = &watcher
            && w.take_overflow()
        {
            warn!("folder events were dropped (too many at once): rescanning");
            c.scanner.forget_hints();
            scan_at = Some(Instant::now());
            full_scan = true;
        }
        if Instant::now() >= periodic {
            periodic = Instant::now() + c.settings.rescan_interval;
            scan_at = Some(Instant::now());
            full_scan = true;
            if watcher.is_none() {
                (watcher, hints) = start_watcher(&plans_dir);
            }
        }
        if scan_at.is_some_and(|at| Instant::now() >= at) {
            scan_at = None;
            match std::fs::canonicalize(&configured_plans) {
                Ok(now_at) if now_at != plans_dir => {
                    info!(
                        "the plans folder {} now leads to {} (was {}): reading and watching the new folder",
                        configured_plans.display(),
                        now_at.display(),
                        plans_dir.display()
                    );
                    plans_dir = now_at;
                    (watcher, hints) = start_watcher(&plans_dir);
                    c.scanner.forget_hints();
                    full_scan = true;
                }
                Ok(_) => {}
                Err(e) => warn!(
                    "the plans folder {} cannot be resolved ({e}); reading {} as before",
                    configured_plans.display(),
                    plans_dir.display()
                ),
            }
            c.rescan(&plans_dir, &mut scan_at, std::mem::take(&mut full_scan));
        }
        c.fire_due();
        c.retry_due();
        c.admit_waiting();
        c.write_unwritten().await;
        if let (Some(at), Some((every, ping))) = (next_watchdog, control.watchdog.as_mut())
            && Instant::now() >= at
        {
            ping();
            next_watchdog = Some(Instant::now() + *every);
        }
        c.report_status(&mut control.on_status);
    }

    c.shutdown().await;
    Ok(())
}

/// Applies `keep_results` to one plan's result files (after each of its runs).
pub fn prune_results(
    results_dir: &Path,
    plan: &str,
    keep: &crate::retention::RetentionPolicy,
    just_written: &str,
) {
    match crate::retention::prune(
        results_dir,
        plan,
        keep,
        std::time::SystemTime::now(),
        crate::wall_clock::trusted(),
        Some(just_written),
    ) {
        Ok(removed) if !removed.is_empty() => info!(
            plan,
            removed = removed.len(),
            "old result files removed (keep_results)"
        ),
        Ok(_) => {}
        Err(e) => warn!(plan, "{e}"),
    }
}

async fn recv_hint(hints: &mut Option<mpsc::Receiver<Hint>>) -> Option<Hint> {
    match hints {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn start_watcher(dir: &Path) -> (Option<FolderWatcher>, Option<mpsc::Receiver<Hint>>) {
    match FolderWatcher::start(dir) {
        Ok((w, rx)) => (Some(w), Some(rx)),
        Err(e) => {
            warn!(
                "cannot watch {}: {e}; plans are picked up by periodic rescans only",
                dir.display()
            );
            (None, None)
        }
    }
}

/// Whoever can write a plan can deploy: a plans folder writable by every user is refused.
pub fn check_folder_permissions(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)
        .map(|m| m.permissions().mode())
        .unwrap_or(0);
    if mode & 0o002 != 0 {
        return Err(format!(
            "the plans folder {} is writable by every user (mode {:o}): anyone on this host could deploy; refusing to read it until you `chmod o-w` it",
            dir.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

impl Controller {
    fn rescan(&mut self, dir: &Path, scan_at: &mut Option<Instant>, full: bool) {
        if let Err(e) = check_folder_permissions(dir) {
            error!("{e}; the plans loaded so far stay as they are");
            return;
        }
        let scan = match self.scanner.scan(dir, full) {
            Ok(s) => s,
            Err(e) => {
                error!(
                    "cannot read the plans folder {}: {e}; keeping the plans loaded",
                    dir.display()
                );
                return;
            }
        };
        if let Some(at) = scan.recheck_at {
            *scan_at = Some(scan_at.map_or(at, |s| s.min(at)));
        }
        if full {
            for path in &scan.being_written {
                info!(
                    "plan file {} is still open for writing: it is read once it is closed",
                    path.display()
                );
            }
        }
        let diff = self.catalog.apply(scan.seen);
        self.apply_diff(diff);
        self.sync_invalid_reports();
    }

    fn apply_diff(&mut self, diff: Diff) {
        for (file, kept) in &diff.became_invalid {
            let issues = self
                .catalog
                .invalid_files()
                .get(file)
                .map(|i| i.to_string())
                .unwrap_or_default();
            match kept {
                Some(plan) => error!(
                    plan = %plan.name,
                    "plan file {} became invalid; its last valid version stays active:\n{issues}",
                    file.display()
                ),
                None => error!(
                    "plan file {} is invalid and will not run:\n{issues}",
                    file.display()
                ),
            }
        }
        for plan in &diff.removed {
            info!(plan = %plan.name, "plan removed: its future fires are cancelled");
            self.armed.remove(&plan.name);
            if let Some(slots) = self.slots.get_mut(&plan.name) {
                slots.queued = None;
            }
        }
        for plan in diff
            .added
            .iter()
            .chain(diff.changed.iter().map(|(_, new)| new))
        {
            let change = if diff.added.iter().any(|p| Arc::ptr_eq(p, plan)) {
                "loaded"
            } else {
                "changed"
            };
            for w in self.catalog.warnings().filter(|w| {
                w.file.file_name().and_then(|n| n.to_str()) == Some(plan.file_name.as_str())
            }) {
                warn!(plan = %plan.name, "{w}");
            }
            if let Err(e) = self.settings.executor.retry.with_overrides(&plan.retry) {
                error!(plan = %plan.name, "the plan's retry block does not fit the daemon's retry policy ({e}); its runs use the daemon's policy");
            }
            match (&plan.schedule, plan.enabled) {
                (_, false) => {
                    info!(plan = %plan.name, "plan {change} (disabled: it never fires)");
                    self.armed.remove(&plan.name);
                }
                (Some(schedule), true) => {
                    let used = self.used_fires(&plan.name);
                    let now = Utc::now();
                    // A fire already due and not yet taken (the edit came just before it, and
                    // the rescan ran first) stays due: an edit never loses a fire silently.
                    let from = match self.armed.get(&plan.name).and_then(|a| a.next) {
                        Some(due) if due <= now => due - chrono::TimeDelta::milliseconds(1),
                        _ => now,
                    };
                    let next = schedule.next_unused(self.floor(&plan.name, from), &used);
                    info!(
                        plan = %plan.name,
                        next = next.map(|t| crate::results::ts(&t)).unwrap_or_else(|| "never".into()),
                        "plan {change}: {:?} in {}",
                        schedule.expr(),
                        schedule.timezone()
                    );
                    self.armed.insert(
                        plan.name.clone(),
                        Armed {
                            plan: plan.clone(),
                            next,
                        },
                    );
                }
                (None, true) => {
                    self.armed.remove(&plan.name);
                    self.arrival(plan.clone(), change);
                }
            }
        }
    }

    /// A run-once plan appeared or changed: run it unless this content already ran.
    fn arrival(&mut self, plan: Arc<Plan>, change: &str) {
        match wait_for(self.store.ran_once(&plan.name, &plan.sha256)) {
            Ok(Some(run_id)) => info!(
                plan = %plan.name,
                "plan {change}: this content already ran (run {run_id}); not running it again. To run it again, change the plan, or use `deployd exec`"
            ),
            Ok(None) => {
                info!(plan = %plan.name, "plan {change}: running it once");
                self.request(plan, Trigger::Arrival, None);
            }
            Err(e) => {
                // Tried again (the plan takes its slot meanwhile): never run without knowing.
                self.slots.entry(plan.name.clone()).or_default().running += 1;
                self.begin_failed(
                    Pending {
                        plan,
                        trigger: Trigger::Arrival,
                        scheduled_for: None,
                        attempt: 0,
                    },
                    format!("the run-once memory cannot be read ({e})"),
                );
            }
        }
    }

    fn fire_due(&mut self) {
        let now = Utc::now();
        let due: Vec<(Arc<Plan>, DateTime<Utc>)> = self
            .armed
            .values()
            .filter_map(|a| a.next.filter(|t| *t <= now).map(|t| (a.plan.clone(), t)))
            .collect();
        for (plan, at) in due {
            let late = (now - at).to_std().unwrap_or(Duration::ZERO);
            if late > MISSED_FIRE {
                warn!(
                    plan = %plan.name,
                    "missed the fire at {} by {late:?} (host asleep or clock changed); not replayed",
                    crate::results::ts(&at)
                );
            } else {
                self.request(plan.clone(), Trigger::Schedule, Some(at));
            }
            let used = self.use_fire(&plan.name, at);
            let floor = self.floor(&plan.name, at.max(now));
            if let Some(a) = self.armed.get_mut(&plan.name) {
                a.next = plan
                    .schedule
                    .as_ref()
                    .and_then(|s| s.next_unused(floor, &used));
            }
        }
    }

    /// The fire times of a plan already used, from memory or the store.
    fn used_fires(&mut self, plan: &str) -> Vec<DateTime<Utc>> {
        if let Some(used) = self.fires_used.get(plan) {
            return used.clone();
        }
        let used = match wait_for(self.store.fired(plan)) {
            Ok(used) => used,
            Err(crate::store::StoreError::Corrupt {
                what,
                why,
                modified,
            }) => {
                // Every fire time it held was used at or before its last write: none of those
                // runs, whatever the clock says now.
                let floor = modified.unwrap_or_else(Utc::now);
                warn!(
                    plan,
                    "the fire times already used ({what}) are damaged ({why}); no fire at or before {} runs, and the file is kept aside as .damaged",
                    crate::results::ts(&floor)
                );
                self.fires_floor.insert(plan.to_string(), floor);
                Vec::new()
            }
            Err(e) => {
                warn!(
                    plan,
                    "cannot read the fire times already used ({e}); a clock set back could repeat one"
                );
                Vec::new()
            }
        };
        self.fires_used.insert(plan.to_string(), used.clone());
        used
    }

    /// `from`, or later when a damaged memory of used fire times forbids earlier ones.
    fn floor(&self, plan: &str, from: DateTime<Utc>) -> DateTime<Utc> {
        self.fires_floor.get(plan).map_or(from, |f| from.max(*f))
    }

    /// Marks a fire time used (run or skipped), durably: it never runs again.
    fn use_fire(&mut self, plan: &str, at: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut used = self.used_fires(plan);
        used.push(at);
        let excess = used.len().saturating_sub(crate::store::FIRES_KEPT);
        used.drain(..excess);
        if let Err(e) = wait_for(self.store.claim_fire(plan, at)) {
            warn!(
                plan,
                "cannot keep the fire time used in the state folder ({e}); a restart with the clock set back could repeat it"
            );
        }
        self.fires_used.insert(plan.to_string(), used.clone());
        used
    }

    /// After a jump of the wall clock: every schedule whose next fire is still ahead is
    /// armed again from now (a fire already due is left to `fire_due`, which runs it or logs
    /// it as missed), so that no schedule waits on a time the clock passed or has not reached.
    fn rearm_after_jump(&mut self) {
        let now = Utc::now();
        let names: Vec<String> = self.armed.keys().cloned().collect();
        for name in names {
            let used = self.used_fires(&name);
            let floor = self.floor(&name, now);
            let Some(a) = self.armed.get_mut(&name) else {
                continue;
            };
            if a.next.is_some_and(|n| n <= now) {
                continue;
            }
            let next = a
                .plan
                .schedule
                .as_ref()
                .and_then(|s| s.next_unused(floor, &used));
            if next != a.next {
                info!(
                    plan = %name,
                    next = next.map(|t| crate::results::ts(&t)).unwrap_or_else(|| "never".into()),
                    "schedule re-armed after the clock jump"
                );
                a.next = next;
            }
        }
    }

    /// Starts a run now, or applies the overlap policy if one is in progress.
    fn request(&mut self, plan: Arc<Plan>, trigger: Trigger, scheduled_for: Option<DateTime<Utc>>) {
        let slots = self.slots.entry(plan.name.clone()).or_default();
        if slots.running > 0 {
            // An arrival always waits its turn: dropping it would silently lose a deploy.
            let policy = if trigger == Trigger::Arrival {
                Overlap::Queue
            } else {
                plan.overlap
            };
            match policy {
                Overlap::Skip => {
                    warn!(plan = %plan.name, "fire skipped: the previous run is still going (overlap: skip)");
                    return;
                }
                Overlap::Queue => {
                    if slots.queued.is_some() && trigger == Trigger::Arrival {
                        // New content of a run-once plan replaces whatever waited.
                        info!(plan = %plan.name, "the previous run is still going: the new content waits for it");
                        slots.queued = Some((plan, trigger, scheduled_for));
                    } else if slots.queued.is_some() {
                        warn!(plan = %plan.name, "fire dropped: a run is going and another already waits (overlap: queue)");
                    } else {
                        info!(plan = %plan.name, "the previous run is still going: this one waits for it (overlap: queue)");
                        slots.queued = Some((plan, trigger, scheduled_for));
                    }
                    return;
                }
                Overlap::Allow => {}
            }
        }
        self.start(plan, trigger, scheduled_for);
    }

    /// A run is due: it takes one of its plan's slots now, and starts when one of the
    /// daemon's `max_runs` run slots is free (in the order runs became due).
    fn start(&mut self, plan: Arc<Plan>, trigger: Trigger, scheduled_for: Option<DateTime<Utc>>) {
        self.slots.entry(plan.name.clone()).or_default().running += 1;
        self.admit(Pending {
            plan,
            trigger,
            scheduled_for,
            attempt: 0,
        });
    }

    /// Starts a run whose plan slot is taken, or queues it for a run slot.
    fn admit(&mut self, pending: Pending) {
        if self.runs.len() >= self.max_runs || !self.admission.is_empty() {
            info!(
                plan = %pending.plan.name,
                waiting = self.admission.len() + 1,
                max_runs = self.max_runs,
                "{} runs are going (max_runs): this one waits its turn",
                self.runs.len()
            );
            self.admission.push_back(pending);
            return;
        }
        self.launch(pending);
    }

    /// Starts runs waiting for a run slot while slots are free.
    fn admit_waiting(&mut self) {
        while self.runs.len() < self.max_runs && !self.stop.stop.is_cancelled() {
            let Some(pending) = self.admission.pop_front() else {
                break;
            };
            // Decided on the plan's version now, as a fresh fire would be.
            match self.current_version(&pending) {
                Some(current) => self.launch(Pending {
                    plan: current,
                    ..pending
                }),
                None => self.slot_freed(&pending.plan.name),
            }
        }
    }

    /// Spawns the run. In its task, the run reads its values, opens its journal, then (run-once
    /// plans) records the content as run, and only then calls: a run that could not begin is
    /// not remembered as run, and comes back to the controller to be tried again.
    fn launch(&mut self, pending: Pending) {
        let started_at = Utc::now();
        let req = RunRequest {
            plan: pending.plan.clone(),
            plan_dir: self.settings.plans_dir.clone(),
            trigger: pending.trigger,
            scheduled_for: pending.scheduled_for,
            run_id: RunId::new(started_at),
            started_at,
        };
        let results_dir = self.settings.results_dir.clone();
        let keep = self.settings.keep_results;
        let executor = self.executor.clone();
        let store = self.store.clone();
        let stop = self.stop.clone();
        let name = pending.plan.name.clone();
        let handle = self.runs.spawn(async move {
            let values = executor.snapshot(&req).await;
            let journal = match executor.open_journal(&req, &values).await {
                Ok(j) => j,
                Err(e) => {
                    let cause = format!("the run journal cannot be created ({e})");
                    return RunEnd::NotBegun(pending, cause);
                }
            };
            if stop.stop.is_cancelled() {
                // A shutdown came before the first call: not a run that ran.
                if let Some(j) = journal
                    && let Err(e) = j.discard().await
                {
                    warn!("{e}");
                }
                return RunEnd::NotBegun(pending, "the daemon is shutting down".into());
            }
            let claimed = match req.trigger {
                Trigger::Arrival => store.claim_once(&req.plan.name, &req.plan.sha256, &req.run_id).await,
                _ => Ok(Claim::Won),
            };
            let not_begun = match claimed {
                Ok(Claim::Won) => None,
                // Only another process on the same store could have run it meanwhile.
                Ok(Claim::Taken(by)) => Some(format!(
                    "this content already ran (run {})",
                    by.map_or_else(|| "unknown".into(), |id| id.to_string())
                )),
                Err(e) => Some(format!("the run cannot be recorded in the state folder ({e})")),
            };
            if let Some(cause) = not_begun {
                if let Some(j) = journal
                    && let Err(e) = j.discard().await
                {
                    warn!("{e}");
                }
                return RunEnd::NotBegun(pending, cause);
            }
            let finished = executor
                .run_with_journal(req, values, Ok(journal), stop, Arc::new(NoObserver))
                .await;
            let report = finished.report.clone();
            let status = format!("{:?}", report.status).to_lowercase();
            crate::metrics::global().run_finished(&report.plan, &status, report.finished_at);
            match finished.persist(&results_dir).await {
                Ok(path) => {
                    info!(plan = %report.plan, run_id = %report.run_id, status = ?report.status, "result written to {}", path.display());
                    prune_results(&results_dir, &report.plan, &keep, report.run_id.as_str());
                    RunEnd::Ran
                }
                Err((e, kept)) => {
                    error!(plan = %report.plan, run_id = %report.run_id, "{e}; the result is kept (in memory and in the run journal) and written when the results folder takes it again");
                    RunEnd::Unwritten(Box::new(kept))
                }
            }
        });
        self.run_names.insert(handle.id(), name);
    }

    /// A run could not begin (its journal or the run-once memory could not be written, or
    /// the memory could not be read): it is tried again with a backoff, and after the last
    /// attempt it gets a `failed` result naming the cause. Nothing was called.
    fn begin_failed(&mut self, pending: Pending, cause: String) {
        let name = pending.plan.name.clone();
        let last = pending.attempt + 1 >= BEGIN_ATTEMPTS;
        if pending.attempt + 1 == BEGIN_ATTEMPTS {
            error!(
                plan = %name,
                "the run could not begin after {BEGIN_ATTEMPTS} attempts: {cause}; no call was made, and a failed result says so"
            );
            let report = not_begun(&pending, &cause);
            match crate::results::write_report(&self.settings.results_dir, &report) {
                Ok(path) => info!(plan = %name, "result written to {}", path.display()),
                Err(e) => error!(plan = %name, "{e}"),
            }
        }
        if last && pending.trigger != Trigger::Arrival {
            // A fire this late is not run any more.
            self.slot_freed(&name);
            return;
        }
        // A run-once plan is tried again until it can begin (space comes back): its content
        // is not remembered as run, so nothing else would ever run it.
        let delay = if last {
            BEGIN_RETRY_MAX
        } else {
            BEGIN_BACKOFF * 2u32.pow(pending.attempt.min(6))
        };
        warn!(
            plan = %name,
            attempt = pending.attempt + 1,
            "the run could not begin: {cause}; trying again in {delay:?}"
        );
        self.retries.push((
            Instant::now() + delay,
            Pending {
                attempt: pending.attempt + 1,
                ..pending
            },
        ));
    }

    /// Tries again to write the results that could not be written (every 10 s while any
    /// waits); a result written removes its journal.
    async fn write_unwritten(&mut self) {
        if self.unwritten.is_empty() || self.unwritten_retry.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let results_dir = self.settings.results_dir.clone();
        let mut still = Vec::new();
        for run in std::mem::take(&mut self.unwritten) {
            let (plan, run_id) = (run.report.plan.clone(), run.report.run_id.clone());
            match run.persist(&results_dir).await {
                Ok(path) => {
                    info!(plan = %plan, run_id = %run_id, "result written to {} (it had waited for room)", path.display());
                    prune_results(
                        &results_dir,
                        &plan,
                        &self.settings.keep_results,
                        run_id.as_str(),
                    );
                }
                Err((e, kept)) => {
                    debug!(plan = %plan, run_id = %run_id, "result still not written: {e}");
                    still.push(kept);
                }
            }
        }
        self.unwritten = still;
        self.unwritten_retry = Some(Instant::now() + UNWRITTEN_RETRY);
    }

    /// The version of the plan a waiting run should run now, or `None` (logged) when it
    /// should not run: the plan was removed or disabled, switched between scheduled and
    /// run-once, or (run-once) its content changed, the new content having its own turn.
    fn current_version(&self, pending: &Pending) -> Option<Arc<Plan>> {
        let name = &pending.plan.name;
        let Some(current) = self.catalog.get(name).filter(|p| p.enabled) else {
            info!(plan = %name, "the waiting run is dropped: the plan was removed or disabled");
            return None;
        };
        match (pending.trigger, &current.schedule) {
            (Trigger::Arrival, None) if current.sha256 == pending.plan.sha256 => {
                Some(current.clone())
            }
            (Trigger::Arrival, None) => {
                info!(plan = %name, "the waiting run is dropped: the plan changed meanwhile, and its new content waits its own turn");
                None
            }
            (Trigger::Schedule, Some(_)) => Some(current.clone()),
            _ => {
                info!(plan = %name, "the waiting run is dropped: the plan changed between scheduled and run-once");
                None
            }
        }
    }

    /// Runs whose beginning failed, tried again when due (on the plan's current state).
    fn retry_due(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.retries = later;
        for (_, pending) in due {
            let name = pending.plan.name.clone();
            let Some(current) = self.current_version(&pending) else {
                self.slot_freed(&name);
                continue;
            };
            let pending = Pending {
                plan: current,
                ..pending
            };
            if pending.trigger == Trigger::Arrival {
                match wait_for(self.store.ran_once(&name, &pending.plan.sha256)) {
                    Ok(None) => {}
                    Ok(Some(run_id)) => {
                        info!(plan = %name, "this content already ran (run {run_id}); not running it again");
                        self.slot_freed(&name);
                        continue;
                    }
                    Err(e) => {
                        self.begin_failed(
                            pending,
                            format!("the run-once memory cannot be read ({e})"),
                        );
                        continue;
                    }
                }
            }
            self.admit(pending);
        }
    }

    fn run_ended(&mut self, done: Result<(tokio::task::Id, RunEnd), tokio::task::JoinError>) {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let Some(name) = self.run_names.remove(&id) else {
            return;
        };
        match done {
            Ok((_, RunEnd::NotBegun(pending, cause))) if !self.stop.stop.is_cancelled() => {
                // Keeps its plan slot while it waits to be tried again.
                self.begin_failed(pending, cause);
            }
            Ok((_, RunEnd::NotBegun(pending, cause))) => {
                warn!(plan = %pending.plan.name, "not started: shutting down, and the run could not begin ({cause})");
                self.slot_freed(&name);
            }
            Ok((_, RunEnd::Ran)) => self.slot_freed(&name),
            Ok((_, RunEnd::Unwritten(run))) => {
                self.unwritten.push(*run);
                self.slot_freed(&name);
            }
            Err(e) => {
                error!(plan = %name, "a run ended abnormally: {e}");
                self.slot_freed(&name);
            }
        }
        self.admit_waiting();
    }

    /// One of a plan's runs ended (or will not begin): a run waiting for it starts.
    fn slot_freed(&mut self, name: &str) {
        let queued = self.slots.get_mut(name).and_then(|s| {
            s.running = s.running.saturating_sub(1);
            s.queued.take()
        });
        if let Some((plan, trigger, at)) = queued
            && !self.stop.stop.is_cancelled()
        {
            // The plan may have changed, been disabled or removed while the fire waited: decide
            // on its current version, as a fresh fire would.
            let Some(current) = self.catalog.get(&plan.name).cloned() else {
                info!(plan = %plan.name, "the waiting run is dropped: the plan was removed");
                return;
            };
            if !current.enabled {
                info!(plan = %plan.name, "the waiting run is dropped: the plan is disabled");
                return;
            }
            match (trigger, &current.schedule) {
                // Re-checks the run-once memory: reverting to content that already ran does
                // not run it again.
                (Trigger::Arrival, None) => self.arrival(current, "changed"),
                (Trigger::Schedule, Some(_)) => self.start(current, Trigger::Schedule, at),
                _ => {
                    info!(plan = %plan.name, "the waiting run is dropped: the plan changed between scheduled and run-once")
                }
            }
        }
    }

    fn apply_config(&mut self, parts: DaemonParts) {
        if parts.settings.plans_dir != self.settings.plans_dir {
            warn!(
                "plans_dir changes take effect after a restart; still watching {}",
                self.settings.plans_dir.display()
            );
        }
        if parts.settings.state_dir != self.settings.state_dir {
            // The run-once memory, the journals and this daemon's lock live there: moving them
            // under a running daemon would run plans again after a restart.
            error!(
                "the new configuration moves state_dir to {} (it holds the run-once memory, the run journals and this daemon's lock): refused, keeping the old configuration with {}. To move it, stop deployd, move the folder's contents, then start it",
                parts.settings.state_dir.display(),
                self.settings.state_dir.display()
            );
            return;
        }
        let plans_dir = self.settings.plans_dir.clone();
        let same_limits = (
            parts.settings.rate,
            parts.settings.burst,
            parts.settings.concurrency,
        ) == (
            self.settings.rate,
            self.settings.burst,
            self.settings.concurrency,
        );
        if !same_limits {
            warn!("new rate/burst/concurrency: runs in progress finish under the old limits");
        }
        // With the same limits, runs in progress and new runs keep sharing one limiter.
        self.executor = parts.executor.succeeding(&self.executor, same_limits);
        self.settings = parts.settings;
        self.settings.plans_dir = plans_dir;
        info!("configuration reloaded (runs in progress keep the old one)");
    }

    /// Keeps `RESULTS/_invalid/<file>.txt` equal to the set of invalid plan files.
    fn sync_invalid_reports(&mut self) {
        let dir = self.settings.results_dir.join(crate::results::INVALID_DIR);
        let wanted: BTreeMap<String, String> = self
            .catalog
            .invalid_files()
            .into_iter()
            .filter_map(|(file, issues)| {
                // Lossy: a file name that is not UTF-8 gets its report too.
                let name = file.file_name()?.to_string_lossy().into_owned();
                Some((format!("{name}.txt"), format!("{issues}\n")))
            })
            .collect();
        if wanted.is_empty() && self.invalid_written.is_empty() && !dir.exists() {
            return;
        }
        for (name, text) in &wanted {
            if self.invalid_written.get(name) != Some(text)
                && let Err(e) = write_atomic(
                    &dir.join(name),
                    text.as_bytes(),
                    crate::results::RESULT_FILE_MODE,
                )
            {
                error!("{e}");
            }
        }
        // Remove reports of files that are valid again or gone (including ones left by an
        // earlier daemon).
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".txt") && !wanted.contains_key(&name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        self.invalid_written = wanted;
    }

    fn report_status(&mut self, on_status: &mut Box<dyn FnMut(&str) + Send>) {
        let plans = self.catalog.active().count();
        let invalid = self.catalog.invalid_files().len();
        let running = self.runs.len();
        let waiting = self.admission.len() + self.retries.len();
        let next = self
            .armed
            .values()
            .filter_map(|a| a.next.map(|t| (t, a.plan.name.clone())))
            .min()
            .map(|(t, name)| format!("; next: {name} at {}", crate::results::ts(&t)))
            .unwrap_or_default();
        let waiting = if waiting > 0 {
            format!(", {waiting} waiting")
        } else {
            String::new()
        };
        let status = format!(
            "{plans} plans ({} scheduled), {invalid} invalid, {running} running{waiting}{next}",
            self.armed.len()
        );
        let metrics = crate::metrics::global();
        metrics.set_plans(plans as u64, self.armed.len() as u64, invalid as u64);
        metrics.set_next_fires(
            self.armed
                .values()
                .filter_map(|a| a.next.map(|t| (a.plan.name.clone(), t))),
        );
        if status != self.status {
            on_status(&status);
            self.status = status;
        }
    }

    async fn shutdown(mut self) {
        let grace = self.settings.shutdown_grace;
        info!(
            runs = self.runs.len(),
            "shutting down: no new calls; runs in progress get {grace:?} to finish their calls"
        );
        self.stop.stop.cancel();
        for pending in self.admission.drain(..).chain(
            std::mem::take(&mut self.retries)
                .into_iter()
                .map(|(_, p)| p),
        ) {
            warn!(
                plan = %pending.plan.name,
                scheduled_for = pending.scheduled_for.map(|t| crate::results::ts(&t)),
                "not started: shutting down while the run waited its turn"
            );
        }
        let deadline = Instant::now() + grace;
        while !self.runs.is_empty() {
            tokio::select! {
                Some(done) = self.runs.join_next_with_id() => self.run_ended(done),
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(runs = self.runs.len(), "grace period over: abandoning calls still in flight");
                    self.stop.abort.cancel();
                    while let Some(done) = self.runs.join_next_with_id().await {
                        self.run_ended(done);
                    }
                }
            }
        }
        if !self.unwritten.is_empty() {
            self.unwritten_retry = None;
            self.write_unwritten().await;
            for run in &self.unwritten {
                if run.result_journaled {
                    error!(plan = %run.report.plan, run_id = %run.report.run_id, "the result could not be written before the shutdown; it is kept in the state folder, and the next start writes it");
                } else {
                    error!(plan = %run.report.plan, run_id = %run.report.run_id, status = ?run.report.status, started = run.report.summary.started, "the result could not be written before the shutdown, nor kept in the state folder: the next start reports the run from its journal, as interrupted");
                }
            }
        }
        info!("all runs written; bye");
    }
}
