//! The daemon's wiring and its one controller loop.
//!
//! Theory of operation: a single controller task owns the catalog of plans, the scheduler
//! and the set of runs in progress. Everything else sends it messages: the folder
//! watcher (hints), the signal futures (stop, reload), finished runs (their join handles).
//! The controller sleeps until the earliest of: the scheduler's next wake-up (a fire time, a
//! run to try again), a due rescan, or one minute (so a wall-clock jump or a suspend is
//! noticed). *When* a plan runs is the [`Scheduler`]'s decision: the controller reads the
//! clocks, tells it what happened (a scan's diff, time passing, a clock jump, a run's end),
//! and applies what it answers (spawn a run, keep used fire times, write a run's failed
//! result, log a decision). Runs are spawned tasks that run the executor and finish through
//! [`finish_run`] (result file, journal, metrics, retention).
//!
//! In a cluster ([`Cluster`]), the store is the database's, and the scheduler runs only while
//! this node leads: each change of role comes from the leadership task. Taking the lead
//! finishes the old leader's unfinished runs (recovery), builds the scheduler afresh from the
//! catalog and the database's used fire times, and catches up the fires missed meanwhile;
//! every fire is claimed before it starts, and a fire or content another node holds is not run.
//! Losing the lead stops new calls at once (the runs' stop token; the fence refuses their
//! journal entries anyway) and drops the scheduler's decisions.
//!
//! Shutdown: the `shutdown` token stops the loop; runs in progress get `stop` (no new calls,
//! retries included), then after `shutdown_grace` `abort` (calls in flight abandoned); every
//! run writes its result (`interrupted` when cut short) before `run` returns.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::executor::{Executor, NoObserver, RunRequest, StopTokens};
use crate::finish::{Attempt, FinishedRun, finish_run};
use crate::ha::leader::{PlanCatalog, Role};
use crate::plan::catalog::{Catalog, Diff};
use crate::results::{RunId, Trigger, write_atomic};
use crate::scan::{FolderScanner, concerns_plans};
use crate::scheduler::{
    Action, BEGIN_ATTEMPTS, Due, Event, FireMemory, Now, OnceMemory, RunOutcome, Scheduler,
};
use crate::settings::Settings;
use crate::store::folder::FolderStore;
use crate::store::{Claim, SharedStore, StoreError};
use crate::watcher::{FolderWatcher, Hint};

/// Hints are collected this long before a rescan, so a burst of events costs one scan.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// The controller looks at the wall clock at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Longest wait at start-up for plan files still being written.
const STARTUP_SETTLE: Duration = Duration::from_secs(5);
/// How often a result the results folder refused is tried again.
const UNWRITTEN_RETRY: Duration = Duration::from_secs(10);

/// How a run's task ended.
enum RunEnd {
    /// It ran and wrote its result.
    Ran,
    /// It ran, but its result file could not be written (kept in its journal too).
    Unwritten(Box<FinishedRun>),
    /// Another node holds its claim (or this one no longer leads): it must not run, nor be
    /// tried again here.
    NotRun(String),
    /// It could not begin (values, journal or run-once memory), and called nothing: why.
    NotBegun(String),
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
    /// A cluster node's part; `None` for the single-host daemon.
    pub cluster: Option<Cluster>,
}

/// What a cluster node's controller is given (see the module docs).
pub struct Cluster {
    /// The cluster's store (the database).
    pub store: SharedStore,
    /// This node's role, from the leadership task.
    pub role: watch::Receiver<Role>,
    /// Where the controller publishes its plans for the heartbeat.
    pub catalog: watch::Sender<PlanCatalog>,
    /// The lease (a takeover catches up from the old lead's last renewal).
    pub lease: Duration,
    /// How late a missed fire may be and still run at a takeover.
    pub catch_up: Duration,
}

/// The controller's view of its cluster.
struct ClusterState {
    role: watch::Receiver<Role>,
    catalog: watch::Sender<PlanCatalog>,
    lease: Duration,
    catch_up: Duration,
    leading: bool,
    /// The claims of fire times recorded but not yet started: won, not this node's, or not
    /// known (the database did not answer: asked again before the run begins).
    claims: HashMap<(String, DateTime<Utc>), FireClaim>,
}

/// What this node knows of its claim of a fire time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FireClaim {
    /// Won here: the fire runs here.
    Won,
    /// Another node's, or this node does not lead: not run here.
    NotHere,
    /// The database's answer was lost (a restart, a cut): whether it was kept is asked
    /// again, the claim being idempotent for its holder, before the run may begin.
    Unsure,
}

/// The controller's state: what it wires together.
struct Controller {
    settings: Settings,
    executor: Executor,
    store: SharedStore,
    catalog: Catalog,
    scanner: FolderScanner,
    /// Every decision about when plans run.
    scheduler: Scheduler,
    runs: JoinSet<RunEnd>,
    /// The run each task runs (with the scheduler generation that started it), so that even
    /// a run that panicked frees its plan's slot.
    run_dues: HashMap<tokio::task::Id, (u64, Due)>,
    /// Bumped each time the scheduler is built afresh (a change of role in a cluster): a run
    /// started by an earlier one is not reported to the new one.
    generation: u64,
    max_runs: usize,
    cluster: Option<ClusterState>,
    /// Runs the wiring did not begin (not leading, a claim lost), to report to the scheduler.
    not_run: Vec<Due>,
    /// Runs that could not begin now (their fire's claim unanswered), to be tried again.
    not_begun: Vec<(Due, String)>,
    stop: StopTokens,
    /// Plan files folder events named since the last scan: the next event-driven scan looks
    /// at them only (a few `stat`s, whatever the folder's size).
    hinted: BTreeSet<PathBuf>,
    /// A scan left files unsettled: the scan that looks at them again takes every file.
    recheck_all: bool,
    /// The plans whose next fire time this daemon last published in the metrics.
    published_fires: BTreeSet<String>,
    /// Invalid-file reports currently written, file name -> text.
    invalid_written: BTreeMap<String, String>,
    status: String,
    /// Runs that ended but whose result file could not be written yet, and when to try next.
    unwritten: Vec<FinishedRun>,
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
    let cluster = control.cluster.take();
    // A cluster keeps its state in the database; one host in its state folder, which it locks
    // (held until this function returns: a second daemon on the folder refuses to start).
    let (store, _state_lock) = match &cluster {
        Some(cluster) => (cluster.store.clone(), None),
        None => {
            let folder =
                FolderStore::open(&settings.state_dir).context("cannot open the state folder")?;
            let lock = folder.lock_for_daemon()?;
            let store: SharedStore = Arc::new(folder.with_results(&settings.results_dir));
            (store, Some(lock))
        }
    };
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

    let max_runs = settings.max_runs.unwrap_or_else(default_max_runs);
    let mut c = Controller {
        settings,
        executor,
        store,
        catalog: Catalog::new(),
        scanner: FolderScanner::new(),
        scheduler: Scheduler::new(max_runs),
        runs: JoinSet::new(),
        run_dues: HashMap::new(),
        generation: 0,
        max_runs,
        not_begun: Vec::new(),
        hinted: BTreeSet::new(),
        recheck_all: false,
        published_fires: BTreeSet::new(),
        cluster: cluster.map(|c| ClusterState {
            role: c.role,
            catalog: c.catalog,
            lease: c.lease,
            catch_up: c.catch_up,
            leading: false,
            claims: HashMap::new(),
        }),
        not_run: Vec::new(),
        stop: StopTokens::default(),
        invalid_written: BTreeMap::new(),
        status: String::new(),
        unwritten: Vec::new(),
        unwritten_retry: None,
    };
    info!(max_runs, "runs alive at once, all plans together");
    // Before anything fires: runs a crash left unfinished get their result files (in a
    // cluster, when this node takes the lead).
    if c.cluster.is_none() {
        crate::recovery::recover(
            c.store.as_ref(),
            &c.settings.results_dir,
            &c.executor,
            &control.shutdown,
        )
        .await;
    }

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
    c.rescan(&plans_dir, &mut scan_at, true).await;
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
        c.rescan(&plans_dir, &mut scan_at, false).await;
    }
    info!(
        plans = c.catalog.active().count(),
        scheduled = c.scheduler.scheduled(),
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
        let now = Instant::now();
        let mut wake = now + MAX_SLEEP;
        if let Some(at) = c.scheduler.next_wake(read_clocks()) {
            wake = wake.min(Instant::from_std(at));
        }
        if let Some(at) = scan_at {
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
                c.run_ended(done).await;
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
                        c.hinted.insert(path.clone());
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
            Some(role) = role_changed(&mut c.cluster) => c.role_changed(role, &control.shutdown).await,
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
            c.handle(Event::ClockJumped).await;
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
            c.rescan(&plans_dir, &mut scan_at, std::mem::take(&mut full_scan))
                .await;
        }
        if c.may_schedule() {
            c.handle(Event::TimePassed).await;
        }
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

/// The next role the leadership task announces; never, outside a cluster.
async fn role_changed(cluster: &mut Option<ClusterState>) -> Option<Role> {
    match cluster {
        Some(c) => match c.role.changed().await {
            Ok(()) => Some(*c.role.borrow_and_update()),
            // The leadership task ended (shutdown): nothing more will change.
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
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

/// The clocks, read once for one event to the scheduler.
fn read_clocks() -> Now {
    Now {
        wall: Utc::now(),
        mono: Instant::now().into_std(),
    }
}

/// Waits for a store call the scheduler's synchronous decisions need (the run-once memory,
/// used fire times). The call is short (a file read or a durable write; on a database, the
/// round trip the decision needs anyway): this worker blocks for it while the runtime's other
/// workers go on. Needs the multi-threaded runtime, which `deployd run` uses.
fn wait_for<F: std::future::Future>(call: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(call))
}

/// The scheduler asks the store's run-once memory.
struct StoreOnceMemory<'a>(&'a SharedStore);

impl OnceMemory for StoreOnceMemory<'_> {
    fn already_ran(&self, plan: &str, sha256: &str) -> Result<Option<RunId>, String> {
        wait_for(self.0.ran_once(plan, sha256)).map_err(|e| e.to_string())
    }
}

impl Controller {
    async fn rescan(&mut self, dir: &Path, scan_at: &mut Option<Instant>, full: bool) {
        if let Err(e) = check_folder_permissions(dir) {
            error!("{e}; the plans loaded so far stay as they are");
            return;
        }
        // Events named the files that changed: only those are looked at. The periodic scan,
        // SIGHUP, lost events and files left unsettled take every file.
        let names = std::mem::take(&mut self.hinted);
        let named =
            !full && !self.recheck_all && !names.is_empty() && !self.scanner.has_linked_files();
        let scanned = if named {
            Ok(self.scanner.scan_named(dir, &names))
        } else {
            self.scanner.scan(dir, full)
        };
        let scan = match scanned {
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
            self.recheck_all = true;
        } else if !named {
            self.recheck_all = false;
        }
        if full {
            for path in &scan.being_written {
                info!(
                    "plan file {} is still open for writing: it is read once it is closed",
                    path.display()
                );
            }
        }
        let diff = if named {
            self.catalog.apply_named(scan.seen, &scan.gone)
        } else {
            self.catalog.apply(scan.seen)
        };
        self.apply_diff(&diff).await;
        self.sync_invalid_reports();
        if let Some(cluster) = &self.cluster {
            let plans: PlanCatalog = self
                .catalog
                .active()
                .map(|p| (p.name.clone(), p.sha256.clone()))
                .collect();
            cluster.catalog.send_if_modified(|old| {
                let changed = *old != plans;
                *old = plans;
                changed
            });
        }
    }

    /// Whether the scheduler may decide now: always on one host; in a cluster, while this
    /// node leads.
    fn may_schedule(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.leading)
    }

    /// The leadership task announced a new role.
    async fn role_changed(&mut self, role: Role, shutdown: &CancellationToken) {
        // Whatever the new role, the old decisions go: a new lead starts from the database.
        self.scheduler = Scheduler::new(self.max_runs);
        self.generation += 1;
        self.not_run.clear();
        self.not_begun.clear();
        match role {
            Role::Follower => {
                if let Some(c) = self.cluster.as_mut() {
                    c.leading = false;
                    c.claims.clear();
                }
                // Runs in progress start no new call (their journal entries are refused too).
                self.stop.stop.cancel();
                self.stop = StopTokens::default();
                warn!("this node follows now: it starts nothing until it leads again");
            }
            Role::Leader {
                epoch,
                previous_expiry,
                clock_skew,
            } => {
                info!(
                    epoch,
                    "leading: finishing the previous leader's runs, then scheduling"
                );
                crate::recovery::recover(
                    self.store.as_ref(),
                    &self.settings.results_dir,
                    &self.executor,
                    shutdown,
                )
                .await;
                let Some(c) = self.cluster.as_mut() else {
                    return;
                };
                c.leading = true;
                c.claims.clear();
                // Fires a dead leader claimed to run and never began are the catch-up's.
                match self.store.release_unbegun_fires().await {
                    Ok(0) => {}
                    Ok(n) => info!(
                        fires = n,
                        "fire times claimed by an earlier leader and never begun are given back"
                    ),
                    Err(e) => {
                        warn!("cannot give back the fire times an earlier leader never began ({e})")
                    }
                }
                let (lease, catch_up) = (c.lease, c.catch_up);
                // The whole catalog, as if it had just been loaded.
                let diff = Diff {
                    added: self.catalog.active().cloned().collect(),
                    ..Diff::default()
                };
                self.apply_diff_to_scheduler(&diff).await;
                // The fires missed since the old lead's last renewal, within the window, on
                // the database's clock (a host whose clock is ahead would take fire times of
                // the real future for missed ones, and run them in a burst): its now is this
                // host's minus the skew measured when the lead was taken (the role may be
                // handled seconds after that, under load).
                let (skew, uncertain) = clock_skew.unwrap_or_default();
                let now = Utc::now() - skew;
                if skew.abs() > chrono::TimeDelta::seconds(1) + uncertain {
                    warn!(
                        skew_secs = skew.num_milliseconds() as f64 / 1000.0,
                        "this host's clock differs from the database's by more than a second: fire times follow this host's clock; fix its time sync (NTP)"
                    );
                }
                if let Some(expired) = previous_expiry {
                    let window = chrono::TimeDelta::from_std(catch_up).unwrap_or_default();
                    let lease = chrono::TimeDelta::from_std(lease).unwrap_or_default();
                    let window = now - window;
                    let from = (expired - lease).max(window);
                    if from <= now {
                        info!(from = %crate::results::ts(&from), until = %crate::results::ts(&now), "catching up the fires missed during the takeover");
                        self.handle(Event::CaughtUp {
                            from,
                            window,
                            until: now,
                        })
                        .await;
                    }
                }
            }
        }
    }

    /// Reports what a scan found wrong, then hands the changes to the scheduler (with the
    /// used fire times of the plans it arms for the first time).
    async fn apply_diff(&mut self, diff: &Diff) {
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
        for plan in diff
            .added
            .iter()
            .chain(diff.changed.iter().map(|(_, new)| new))
        {
            for w in self.catalog.warnings().filter(|w| {
                w.file.file_name().and_then(|n| n.to_str()) == Some(plan.file_name.as_str())
            }) {
                warn!(plan = %plan.name, "{w}");
            }
            if let Err(e) = self.settings.executor.retry.with_overrides(&plan.retry) {
                error!(plan = %plan.name, "the plan's retry block does not fit the daemon's retry policy ({e}); its runs use the daemon's policy");
            }
        }
        if self.may_schedule() {
            self.apply_diff_to_scheduler(diff).await;
        }
    }

    /// Hands a diff to the scheduler, with the used fire times of the plans it arms for the
    /// first time.
    async fn apply_diff_to_scheduler(&mut self, diff: &Diff) {
        for name in self.scheduler.fires_needed(diff) {
            let memory = self.load_fires(&name);
            self.scheduler.remember_fires(&name, memory);
        }
        self.handle(Event::PlansChanged(diff)).await;
    }

    /// Tells the scheduler what happened, now, and applies its answer.
    async fn handle(&mut self, event: Event<'_>) {
        let mut actions =
            self.scheduler
                .handle(read_clocks(), event, &StoreOnceMemory(&self.store));
        loop {
            self.apply(actions).await;
            // Runs the wiring did not begin go back, so that their slots are freed (and the
            // ones that could not begin yet are tried again).
            let ended = if let Some(run) = self.not_run.pop() {
                Event::RunEnded {
                    run,
                    outcome: RunOutcome::NotRun,
                }
            } else if let Some((run, cause)) = self.not_begun.pop() {
                Event::RunEnded {
                    run,
                    outcome: RunOutcome::NotBegun(cause),
                }
            } else {
                break;
            };
            actions = self
                .scheduler
                .handle(read_clocks(), ended, &StoreOnceMemory(&self.store));
        }
    }

    async fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Start(run) => {
                    if let Some(cause) = self.claim_again(&run).await {
                        self.not_begun.push((run, cause));
                    } else if self.may_begin(&run) {
                        self.launch(run);
                    } else {
                        self.not_run.push(run);
                    }
                }
                Action::RecordFire { plan, at, runs } => {
                    let claimed = self.store.claim_fire(&plan, at).await;
                    if !runs
                        && matches!(claimed, Ok(Claim::Won))
                        && let Err(e) = self.store.fire_skipped(&plan, at).await
                    {
                        warn!(plan, "cannot record the fire time as skipped ({e})");
                    }
                    match (&mut self.cluster, claimed) {
                        (None, Ok(_)) => {}
                        (None, Err(e)) => warn!(
                            plan,
                            "cannot keep the fire time used in the state folder ({e}); a restart with the clock set back could repeat it"
                        ),
                        // In a cluster the claim decides: only a fire won here runs here.
                        (Some(c), Ok(Claim::Won)) => {
                            c.claims.insert((plan, at), FireClaim::Won);
                        }
                        (Some(c), Ok(Claim::Taken(_))) => {
                            info!(plan, at = %crate::results::ts(&at), "this fire time is another node's (it ran there): not run here");
                            c.claims.insert((plan, at), FireClaim::NotHere);
                        }
                        // Not leading any more: the fire is the next leader's (its catch-up).
                        (Some(c), Err(e @ StoreError::Fenced { .. })) if !c.leading => {
                            warn!(plan, at = %crate::results::ts(&at), "the fire time could not be claimed ({e}): not run here");
                            c.claims.insert((plan, at), FireClaim::NotHere);
                        }
                        // The claim may have been kept with its answer lost, or the lead was
                        // unconfirmed for a moment (a renewal late, its fence lapsed, no step
                        // down): asked again before the run begins (and, failing that, tried
                        // again like a run that could not begin), never dropped with a warning.
                        // Were the lead lost, the role change ends the wait and the next
                        // leader's catch-up runs the fire.
                        (Some(c), Err(e)) if runs => {
                            warn!(plan, at = %crate::results::ts(&at), "the fire time could not be claimed yet ({e}): asked again before it runs");
                            c.claims.insert((plan, at), FireClaim::Unsure);
                        }
                        (Some(_), Err(e)) => {
                            warn!(plan, at = %crate::results::ts(&at), "the skipped fire time could not be recorded ({e})");
                        }
                    }
                }
                Action::ReportNotBegun { run, cause } => {
                    let name = &run.plan.name;
                    error!(
                        plan = %name,
                        "the run could not begin after {BEGIN_ATTEMPTS} attempts: {cause}; no call was made, and a failed result says so"
                    );
                    let failed = crate::finish::not_begun(
                        &run.plan,
                        run.trigger,
                        run.scheduled_for,
                        &cause,
                        Utc::now(),
                    );
                    let (results_dir, keep) =
                        (&self.settings.results_dir, &self.settings.keep_results);
                    if let Err(kept) = finish_run(failed, results_dir, keep, Attempt::First).await {
                        error!(plan = %name, "{}", kept.error);
                    }
                }
                Action::Note(note) => note.log(),
            }
        }
    }

    /// Whether a run the scheduler started may begin here: always on one host; in a cluster,
    /// while this node leads and (a fire) when this node won its claim.
    fn may_begin(&mut self, run: &Due) -> bool {
        let Some(c) = self.cluster.as_mut() else {
            return true;
        };
        if !c.leading {
            return false;
        }
        // Kept until the run ends: a run that could not begin is tried again on its claim.
        match run.scheduled_for {
            Some(at) if run.trigger == Trigger::Schedule => {
                c.claims.get(&(run.plan.name.clone(), at)) == Some(&FireClaim::Won)
            }
            _ => true,
        }
    }

    /// A fire whose claim went unanswered is claimed again (the claim is idempotent for the
    /// node and lead that made it) before its run may begin: `Some(cause)` when the database
    /// still does not answer, and the run is to be tried again later.
    async fn claim_again(&mut self, run: &Due) -> Option<String> {
        let c = self.cluster.as_mut()?;
        let at = run
            .scheduled_for
            .filter(|_| run.trigger == Trigger::Schedule)?;
        let key = (run.plan.name.clone(), at);
        if !c.leading || c.claims.get(&key) != Some(&FireClaim::Unsure) {
            return None;
        }
        match self.store.claim_fire_again(&run.plan.name, at).await {
            Ok(Claim::Won) => {
                info!(plan = %run.plan.name, at = %crate::results::ts(&at), "the fire time is claimed");
                c.claims.insert(key, FireClaim::Won);
                None
            }
            Ok(Claim::Taken(_)) => {
                c.claims.insert(key, FireClaim::NotHere);
                None
            }
            // Fenced too: while this node has not stepped down, its lead may come back with
            // the next renewal; if it does not, the role change ends the wait.
            Err(e) => Some(format!(
                "its fire time could not be claimed in the cluster's database ({e})"
            )),
        }
    }

    /// A plan's used fire times, from the state folder.
    fn load_fires(&self, plan: &str) -> FireMemory {
        match wait_for(self.store.fired(plan)) {
            Ok(used) => FireMemory { used, floor: None },
            Err(StoreError::Corrupt {
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
                FireMemory {
                    used: Vec::new(),
                    floor: Some(floor),
                }
            }
            Err(e) => {
                warn!(
                    plan,
                    "cannot read the fire times already used ({e}); a clock set back could repeat one"
                );
                FireMemory::default()
            }
        }
    }

    /// Spawns the run. In its task, the run reads its values, opens its journal, then (run-once
    /// plans) records the content as run, and only then calls: a run that could not begin is
    /// not remembered as run, and comes back to the scheduler to be tried again.
    // This is the seam for a high-availability leader: its task would claim `run.claim()`
    // first, and end with `RunOutcome::NotRun` when another node holds the claim.
    fn launch(&mut self, run: Due) {
        let started_at = Utc::now();
        let req = RunRequest {
            plan: run.plan.clone(),
            plan_dir: self.settings.plans_dir.clone(),
            trigger: run.trigger,
            scheduled_for: run.scheduled_for,
            run_id: RunId::new(started_at),
            started_at,
        };
        let results_dir = self.settings.results_dir.clone();
        let keep = self.settings.keep_results;
        let executor = self.executor.clone();
        let store = self.store.clone();
        let stop = self.stop.clone();
        let in_cluster = self.cluster.is_some();
        let handle = self.runs.spawn(async move {
            let values = executor.snapshot(&req).await;
            let journal = match executor.open_journal(&req, &values).await {
                Ok(j) => j,
                Err(e) => {
                    return RunEnd::NotBegun(format!("the run journal cannot be created ({e})"));
                }
            };
            if stop.stop.is_cancelled() {
                // A shutdown came before the first call: not a run that ran.
                if let Some(j) = journal
                    && let Err(e) = j.discard().await
                {
                    warn!("{e}");
                }
                return RunEnd::NotBegun("the daemon is shutting down".into());
            }
            let claimed = match req.trigger {
                Trigger::Arrival => {
                    store
                        .claim_once(&req.plan.name, &req.plan.sha256, &req.run_id)
                        .await
                }
                _ => Ok(Claim::Won),
            };
            let not_begun = match claimed {
                Ok(Claim::Won) => None,
                // On one host only another process on the same store could have run it
                // meanwhile; in a cluster, another node did: it is not this node's to run.
                Ok(Claim::Taken(by)) => {
                    let cause = format!(
                        "this content already ran (run {})",
                        by.map_or_else(|| "unknown".into(), |id| id.to_string())
                    );
                    Some(if in_cluster {
                        RunEnd::NotRun(cause)
                    } else {
                        RunEnd::NotBegun(cause)
                    })
                }
                Err(e @ StoreError::Fenced { .. }) => Some(RunEnd::NotRun(e.to_string())),
                Err(e) => Some(RunEnd::NotBegun(format!(
                    "the run cannot be recorded in the state folder ({e})"
                ))),
            };
            if let Some(end) = not_begun {
                if let Some(j) = journal
                    && let Err(e) = j.discard().await
                {
                    warn!("{e}");
                }
                return end;
            }
            let finished = executor
                .run_with_journal(req, values, Ok(journal), stop, Arc::new(NoObserver))
                .await;
            match finish_run(finished, &results_dir, &keep, Attempt::First).await {
                Ok(_) => RunEnd::Ran,
                Err(kept) => {
                    let report = &kept.run.report;
                    error!(plan = %report.plan, run_id = %report.run_id, "{}; the result is kept (in memory and in the run journal) and written when the results folder takes it again", kept.error);
                    RunEnd::Unwritten(kept.run)
                }
            }
        });
        self.run_dues.insert(handle.id(), (self.generation, run));
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
            let keep = &self.settings.keep_results;
            if let Err(kept) = finish_run(run, &results_dir, keep, Attempt::Again).await {
                let report = &kept.run.report;
                debug!(plan = %report.plan, run_id = %report.run_id, "result still not written: {}", kept.error);
                still.push(*kept.run);
            }
        }
        self.unwritten = still;
        self.unwritten_retry = Some(Instant::now() + UNWRITTEN_RETRY);
    }

    async fn run_ended(&mut self, done: Result<(tokio::task::Id, RunEnd), tokio::task::JoinError>) {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let Some((generation, run)) = self.run_dues.remove(&id) else {
            return;
        };
        let outcome = match done {
            Ok((_, RunEnd::NotBegun(cause))) => RunOutcome::NotBegun(cause),
            Ok((_, RunEnd::NotRun(cause))) => {
                info!(plan = %run.plan.name, "not run here: {cause}");
                RunOutcome::NotRun
            }
            Ok((_, RunEnd::Ran)) => RunOutcome::Ended,
            Ok((_, RunEnd::Unwritten(kept))) => {
                self.unwritten.push(*kept);
                RunOutcome::Ended
            }
            Err(e) => {
                error!(plan = %run.plan.name, "a run ended abnormally: {e}");
                RunOutcome::Ended
            }
        };
        if let (Some(c), Some(at)) = (self.cluster.as_mut(), run.scheduled_for)
            && !matches!(outcome, RunOutcome::NotBegun(_))
        {
            c.claims.remove(&(run.plan.name.clone(), at));
        }
        // A run started by an earlier scheduler (before a change of role) is not this one's.
        if generation == self.generation {
            self.handle(Event::RunEnded { run, outcome }).await;
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
        let same_limits = parts.settings.limits == self.settings.limits;
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
        let waiting = self.scheduler.waiting();
        let scheduled = self.scheduler.scheduled();
        let next = self
            .scheduler
            .next_fires()
            .map(|(name, t)| (t, name))
            .min()
            .map(|(t, name)| format!("; next: {name} at {}", crate::results::ts(&t)))
            .unwrap_or_default();
        let waiting = if waiting > 0 {
            format!(", {waiting} waiting")
        } else {
            String::new()
        };
        let status = format!(
            "{plans} plans ({scheduled} scheduled), {invalid} invalid, {running} running{waiting}{next}"
        );
        let metrics = crate::metrics::global();
        metrics.set_plans(plans as u64, scheduled as u64, invalid as u64);
        let fires: BTreeMap<String, DateTime<Utc>> = self
            .scheduler
            .next_fires()
            .map(|(name, t)| (name.to_string(), t))
            .collect();
        let gone: Vec<String> = self
            .published_fires
            .iter()
            .filter(|name| !fires.contains_key(*name))
            .cloned()
            .collect();
        self.published_fires = fires.keys().cloned().collect();
        metrics.update_next_fires(gone, fires);
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
        self.handle(Event::ShuttingDown).await;
        let deadline = Instant::now() + grace;
        while !self.runs.is_empty() {
            tokio::select! {
                Some(done) = self.runs.join_next_with_id() => self.run_ended(done).await,
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(runs = self.runs.len(), "grace period over: abandoning calls still in flight");
                    self.stop.abort.cancel();
                    while let Some(done) = self.runs.join_next_with_id().await {
                        self.run_ended(done).await;
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
