//! Runs one plan: resolves each task's params, starts the tasks concurrently within the plan's
//! and the account's limits, retries what may be retried, looks up unknown outcomes in the
//! task's history instead of re-sending blindly, and builds the `RunReport`.
//!
//! It makes calls only through [`LimitedClient`] and never writes files: the caller persists the
//! report. Two tokens stop a run: `stop` (no new call starts, retries included) and `abort`
//! (calls in flight are dropped, at the end of the shutdown grace period).

pub mod follow;
pub mod gcra;
pub mod limited;
pub mod limits;
pub mod reconcile;
pub mod retry;
pub mod task_locks;
pub mod values;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::api::client::DeployClient;
use crate::api::rules::ParamType;
use crate::api::types::{CallInfo, OutcomeClass, StartOutcome};
use crate::api::wire::{StartBody, WireParam};
pub use crate::finish::FinishedRun;
use crate::journal::{CallClass, Entry, RunHeader};
use crate::plan::{ParamValue, Plan, Task};
use crate::results::{RecordRef, ReportParam, RunId, RunReport, TaskReport, TaskStatus, Trigger};
use crate::store::{RunJournal, SharedStore, StoreError};
use limited::{LimitedClient, StartTurn};
use limits::Limits;
use reconcile::{Lookup, Reconciler, Since};
use retry::RetryPolicy;

/// What to do with an unknown outcome when no project id allows a history lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownOutcomePolicy {
    /// Fail the task and say so (the default: never risk a double deploy).
    #[default]
    Fail,
    /// Send again (risking a second deployment, which the result then says).
    Resend,
}

/// Settings of the executor (shared by every run).
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// The daemon's retry policy (plans may override parts of it).
    pub retry: RetryPolicy,
    /// Project id for history lookups.
    pub project_id: Option<String>,
    /// Unknown outcomes without a project id.
    pub unknown_outcome: UnknownOutcomePolicy,
    /// How long a record may take to show up in the history after an unknown outcome.
    pub settle: Duration,
    /// The state folder: the store the executor journals runs in (`None`: no journal, no crash
    /// recovery).
    pub state_dir: Option<PathBuf>,
    /// The configured zone of the history's `start_time` values: only a hint, compared with
    /// the zone learned from the service's answers ([`crate::api::service_clock`]).
    pub history_offset_hint: Option<chrono::FixedOffset>,
    /// Files and folders a plan's `value_from.file` may not read: deployd's own secrets
    /// (the `auth.*_file` settings and `$CREDENTIALS_DIRECTORY`).
    pub forbidden_files: Vec<PathBuf>,
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            project_id: None,
            unknown_outcome: UnknownOutcomePolicy::Fail,
            settle: Duration::from_secs(10),
            state_dir: None,
            history_offset_hint: None,
            forbidden_files: Vec::new(),
        }
    }
}

/// A run to make.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The plan version to run (an in-flight run keeps its version even if the file changes).
    pub plan: Arc<Plan>,
    /// The plan file's folder: relative `value_from.file` paths start here.
    pub plan_dir: PathBuf,
    /// What started it.
    pub trigger: Trigger,
    /// Fire time of a scheduled run.
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Its id (chosen by the caller so it can be journaled before the run starts).
    pub run_id: RunId,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

/// Progress callbacks (the `exec` progress bar, the daemon's logs).
pub trait RunObserver: Send + Sync {
    /// A task reached its final state.
    fn task_finished(&self, _task: &TaskReport) {}
}

/// An observer that does nothing.
pub struct NoObserver;
impl RunObserver for NoObserver {}

/// Stop signals for a run.
#[derive(Debug, Clone, Default)]
pub struct StopTokens {
    /// No new call starts (retries included) once cancelled.
    pub stop: CancellationToken,
    /// Calls in flight are abandoned once cancelled.
    pub abort: CancellationToken,
}

/// Runs plans. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    /// The only way its calls reach the API (lookups and following included).
    calls: LimitedClient,
    settings: Arc<ExecutorSettings>,
    known_records: Arc<reconcile::KnownRecords>,
    task_locks: Arc<task_locks::TaskLocks>,
    /// Where runs are journaled and learned facts kept; `None`: no journal.
    store: Option<SharedStore>,
}

impl Executor {
    /// An executor sharing `limits` with every other user of the same account.
    pub fn new(client: DeployClient, limits: Arc<Limits>, settings: ExecutorSettings) -> Self {
        let store = settings
            .state_dir
            .as_deref()
            .map(|dir| Arc::new(crate::store::folder::FolderStore::at(dir)) as SharedStore);
        Self {
            calls: LimitedClient::new(client, limits),
            settings: Arc::new(settings),
            known_records: Arc::new(reconcile::KnownRecords::default()),
            task_locks: Arc::new(task_locks::TaskLocks::default()),
            store: None,
        }
        .with_store(store)
    }

    /// This executor journaling its runs in `store` (and keeping learned facts there).
    pub fn with_store(mut self, store: Option<SharedStore>) -> Self {
        if let Some(store) = &store {
            self.calls
                .clock()
                .attach_store(store.clone(), self.settings.history_offset_hint);
        }
        self.store = store;
        self
    }

    /// This executor (built from a reloaded config) carrying on `old`'s memory of known
    /// records, its per-task locks, what it learned of the service's clock, what it knows of
    /// the credentials when they did not change (see [`DeployClient::with_credentials_of`]),
    /// and its limiter too when `same_limits` (one limiter for the account).
    pub fn succeeding(mut self, old: &Executor, same_limits: bool) -> Self {
        self.known_records = old.known_records.clone();
        self.task_locks = old.task_locks.clone();
        let clock = old.calls.clock().clone();
        if let Some(store) = &self.store {
            clock.attach_store(store.clone(), self.settings.history_offset_hint);
        }
        // A credential the API refused stays refused, and IAM is not asked again with a
        // password it refused, unless the reload brought other credentials.
        let client = self
            .calls
            .client()
            .clone()
            .with_clock(clock)
            .with_credentials_of(old.calls.client());
        let limits = if same_limits {
            old.calls.limits().clone()
        } else {
            self.calls.limits().clone()
        };
        // Built again: a token source kept from `old` then paces its requests with these
        // limits.
        self.calls = LimitedClient::new(client, limits);
        self
    }

    /// Remembers a record id as another call's (never adopted by a lookup).
    pub fn remember_record(&self, id: &str) {
        self.known_records.remember(id);
    }

    /// The shared limits.
    pub fn limits(&self) -> &Arc<Limits> {
        self.calls.limits()
    }

    /// The client (its clock and credentials; calls go through [`Executor::calls`]).
    pub fn client(&self) -> &DeployClient {
        self.calls.client()
    }

    /// What a history lookup needs of this executor (see [`reconcile::History`]).
    pub fn history(&self) -> reconcile::History<'_> {
        reconcile::History {
            calls: &self.calls,
            project_id: self.settings.project_id.as_deref(),
            settle: self.settings.settle,
            known: &self.known_records,
        }
    }

    /// The limited client every call of this executor goes through.
    pub fn calls(&self) -> &LimitedClient {
        &self.calls
    }

    /// Runs every task of the plan and returns the report (never fails as a whole: each task's
    /// problem is in its line) with the run's journal, to be finished once the report is
    /// written ([`FinishedRun::persist`]).
    pub async fn run(
        &self,
        req: RunRequest,
        stop: StopTokens,
        observer: Arc<dyn RunObserver>,
    ) -> FinishedRun {
        let values = self.snapshot(&req).await;
        let journal = self.open_journal(&req, &values).await;
        self.run_with_journal(req, values, journal, stop, observer)
            .await
    }

    /// Reads every `value_from` of the run's plan once (every task of the run gets the same
    /// value).
    pub async fn snapshot(&self, req: &RunRequest) -> Arc<values::Snapshot> {
        Arc::new(
            values::Snapshot::take(
                &req.plan,
                &req.plan_dir,
                &self.settings.forbidden_files,
                values::VALUE_FILE_TIMEOUT,
            )
            .await,
        )
    }

    /// [`Executor::run`] with the run's values read and its journal opened by the caller (the
    /// daemon opens it before it records a run-once plan as run: a run that could not begin is
    /// not a run that ran). With a journal error, every task fails `journal_failed`, uncalled.
    pub async fn run_with_journal(
        &self,
        req: RunRequest,
        values: Arc<values::Snapshot>,
        journal: Result<Option<RunJournal>, StoreError>,
        stop: StopTokens,
        observer: Arc<dyn RunObserver>,
    ) -> FinishedRun {
        let plan = req.plan.clone();
        let span = info_span!("run", plan = %plan.name, run_id = %req.run_id);
        async move {
            let policy = match self.settings.retry.with_overrides(&plan.retry) {
                Ok(p) => p,
                Err(e) => {
                    warn!("the plan's retry block does not fit the daemon's policy ({e}); using the daemon's");
                    self.settings.retry
                }
            };
            let (journal, journal_error) = match journal {
                Ok(j) => (j, None),
                Err(e) => {
                    error!("{e}; no call is made without it (crash safety)");
                    (None, Some(e.to_string()))
                }
            };
            let shared = Arc::new(RunShared {
                journal,
                retry_budget: AtomicU32::new(retry_budget(plan.tasks.len())),
            });
            let width = plan.concurrency.map_or(self.limits().concurrency(), |c| c.get()).min(self.limits().concurrency());
            let plan_slots = Arc::new(Semaphore::new(width));
            // Tasks alive at once are bounded too, so a plan of 10,000 tasks holds a window
            // of futures rather than all of them.
            let window = Arc::new(Semaphore::new(width.saturating_mul(4).max(16)));
            info!(tasks = plan.tasks.len(), trigger = ?req.trigger, "run started");

            let mut set = JoinSet::new();
            let mut reports: Vec<Option<TaskReport>> = vec![None; plan.tasks.len()];
            for (index, task) in plan.tasks.iter().enumerate() {
                if let Some(why) = &journal_error {
                    let mut r = TaskReport::new(&task.task_id, TaskStatus::Failed, unresolved_params(task));
                    r.error_code = Some("journal_failed".into());
                    r.error_msg = Some(format!("not called: the run journal could not be written ({why})"));
                    reports[index] = Some(r);
                    continue;
                }
                let admitted = tokio::select! {
                    biased;
                    _ = stop.stop.cancelled() => None,
                    permit = window.clone().acquire_owned() => permit.ok(),
                };
                let Some(admitted) = admitted else { break };
                let ctx = TaskCtx {
                    exec: self.clone(),
                    plan: plan.clone(),
                    values: values.clone(),
                    policy,
                    slots: plan_slots.clone(),
                    stop: stop.clone(),
                    shared: shared.clone(),
                };
                let task = task.clone();
                let observer = observer.clone();
                set.spawn(async move {
                    let TaskEnd { report, journaled } = ctx.run_task(&task).await;
                    if !journaled
                        && let Some(j) = &ctx.shared.journal
                        && let Err(e) = j.append(&Entry::Task(Box::new(report.clone()))).await
                    {
                        warn!("{e}");
                    }
                    observer.task_finished(&report);
                    drop(admitted);
                    (index, report)
                });
                while let Some(done) = set.try_join_next() {
                    store(&mut reports, done);
                }
            }
            while let Some(done) = set.join_next().await {
                store(&mut reports, done);
            }
            let tasks: Vec<TaskReport> = reports
                .into_iter()
                .zip(plan.tasks.iter())
                .map(|(r, t)| r.unwrap_or_else(|| skipped(t, "not started: the run was stopped before its turn")))
                .collect();
            let summary = RunReport::summarize(&tasks);
            let interrupted = stop.stop.is_cancelled() && summary.skipped > 0
                || tasks.iter().any(|t| t.error_code.as_deref() == Some(ABORTED));
            let status = RunReport::status_for(&summary, interrupted);
            info!(status = ?status, started = summary.started, failed = summary.failed, skipped = summary.skipped, "run finished");
            let report = RunReport {
                plan: plan.name.clone(),
                plan_file: plan.file_name.clone(),
                plan_sha256: plan.sha256.clone(),
                run_id: req.run_id,
                trigger: req.trigger,
                scheduled_for: req.scheduled_for,
                started_at: req.started_at,
                finished_at: Utc::now(),
                status,
                summary,
                tasks,
            };
            drop(set);
            let journal = Arc::into_inner(shared).and_then(|s| s.journal);
            FinishedRun {
                report,
                journal,
                result_journaled: false,
            }
        }
        .instrument(span)
        .await
    }

    /// Creates the journal of a run (`None` without a store), its header durable.
    pub async fn open_journal(
        &self,
        req: &RunRequest,
        values: &values::Snapshot,
    ) -> Result<Option<RunJournal>, StoreError> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let mut header = RunHeader {
            run_id: req.run_id.clone(),
            plan: req.plan.name.clone(),
            plan_file: req.plan.file_name.clone(),
            plan_sha256: req.plan.sha256.clone(),
            trigger: req.trigger,
            scheduled_for: req.scheduled_for,
            started_at: req.started_at,
            tasks: req
                .plan
                .tasks
                .iter()
                .map(|t| TaskReport::new(&t.task_id, TaskStatus::Skipped, values.report_params(t)))
                .collect(),
            params: Vec::new(),
            task_params: Vec::new(),
        };
        header.share_params();
        store.create_journal(&header).await.map(Some)
    }
}

/// Retries one run may make in all (on top of each task's first call): one per task on
/// average, plus a little, so that an outage does not turn into `max_attempts` times the calls.
pub fn retry_budget(tasks: usize) -> u32 {
    u32::try_from(tasks.saturating_add(10)).unwrap_or(u32::MAX)
}

/// State one run's tasks share.
struct RunShared {
    journal: Option<RunJournal>,
    /// Retries left in this run.
    retry_budget: AtomicU32,
}

/// Error code of a call abandoned at the end of the shutdown grace period.
pub const ABORTED: &str = "aborted_at_shutdown";

fn store(
    reports: &mut [Option<TaskReport>],
    done: Result<(usize, TaskReport), tokio::task::JoinError>,
) {
    match done {
        Ok((index, report)) => reports[index] = Some(report),
        // A panic in one task must not lose the run: its line stays empty and is written as
        // skipped with the reason below.
        Err(e) => warn!("a task worker ended abnormally: {e}"),
    }
}

fn skipped(task: &Task, why: &str) -> TaskReport {
    let mut r = TaskReport::new(&task.task_id, TaskStatus::Skipped, unresolved_params(task));
    r.error_msg = Some(why.to_string());
    r
}

fn unresolved_params(task: &Task) -> Vec<ReportParam> {
    task.params
        .iter()
        .map(|p| ReportParam {
            key: p.key.clone(),
            ty: p.ty,
            value: match (&p.value, p.ty) {
                (_, ParamType::Encrypt) => Some(MASK.into()),
                (ParamValue::Literal(v), _) => Some(v.expose().to_string()),
                _ => None,
            },
        })
        .collect()
}

/// How secret values appear in results and logs.
pub const MASK: &str = "***";

struct TaskCtx {
    exec: Executor,
    plan: Arc<Plan>,
    values: Arc<values::Snapshot>,
    policy: RetryPolicy,
    slots: Arc<Semaphore>,
    stop: StopTokens,
    shared: Arc<RunShared>,
}

/// A task's call, ready to be sent as often as the retry policy allows.
struct PreparedCall {
    /// The params as reported (encrypt values masked).
    params: Vec<ReportParam>,
    /// Values of encrypt params, masked in any error text an answer echoes.
    secrets: Vec<crate::secret::Secret>,
    /// The exact body sent.
    body: String,
}

/// What one attempt came to.
enum Attempt {
    /// The call left and was answered (or its answer lost).
    Answered(Box<Answered>),
    /// The task ends without a call to judge (stopped, credentials refused, journal failure,
    /// or the call abandoned at the end of the shutdown grace period): the report says why.
    Ended(Box<TaskReport>),
}

impl Attempt {
    /// The task ends with `report`.
    fn ended(report: TaskReport) -> Self {
        Self::Ended(Box::new(report))
    }
}

/// How a task ended: its final line, and whether the journal has it already (the outcome
/// line of its last call said the task was done, so no task line is needed).
struct TaskEnd {
    report: TaskReport,
    journaled: bool,
}

impl From<TaskReport> for TaskEnd {
    fn from(report: TaskReport) -> Self {
        Self {
            report,
            journaled: false,
        }
    }
}

/// An answered call, and what judging it needs.
struct Answered {
    /// The task's line, with the answer in it.
    report: TaskReport,
    outcome: StartOutcome,
    attempt: u32,
    /// When it was sent, for a history lookup.
    sent: Since,
    /// The journal's outcome line said the task ends with this answer (and it was written).
    journaled_done: bool,
    /// The task's lock, held until the outcome is settled.
    task_guard: task_locks::TaskGuard,
}

/// Why a call whose turn had come was not sent.
enum NotSent {
    /// Its intent could not be journaled (no call leaves without it).
    JournalFailed(String),
    /// Another call had the credentials refused meanwhile.
    Refused(crate::api::guard::Blocked),
    /// The run was stopped meanwhile.
    Stopped,
}

/// Where a judged outcome leads.
enum Next {
    /// A record is ours (returned, or found in the history): list the others, then follow it.
    Started(TaskReport),
    /// The task ends with this report.
    Done(TaskReport),
    /// Not started: another call may go if the retry policy allows.
    Retry(TaskReport),
}

/// The journal's name for an outcome class.
fn journal_class(class: OutcomeClass) -> CallClass {
    match class {
        OutcomeClass::Started => CallClass::Started,
        OutcomeClass::Retryable => CallClass::Retryable,
        OutcomeClass::Final => CallClass::Final,
        OutcomeClass::Unknown => CallClass::Unknown,
    }
}

impl TaskCtx {
    async fn run_task(&self, task: &Task) -> TaskEnd {
        let span = info_span!("task", task_id = %task.task_id);
        self.run_task_inner(task).instrument(span).await
    }

    /// The task's calls until one settles it: attempts, each judged by its outcome (an
    /// unknown one looked up in the history), with the retry policy deciding between them.
    async fn run_task_inner(&self, task: &Task) -> TaskEnd {
        let call = match self.prepare(task) {
            Ok(call) => call,
            Err(report) => return (*report).into(),
        };
        let mut report = TaskReport::new(&task.task_id, TaskStatus::Failed, call.params.clone());
        let first = Instant::now();
        let reconciler = Reconciler::new(&self.exec, &task.task_id, &call.params);
        // Send times of calls whose outcome stayed unknown and were then re-sent: if records
        // show up for them later, the report lists every record.
        let mut unknown_since: Option<Since> = None;
        loop {
            // A started record ends the task unless records of earlier unknown outcomes are
            // to be listed or the deployment is to be followed: then its outcome line can
            // say so, and no task line follows.
            let ends_if_started = unknown_since.is_none() && self.plan.follow.is_none();
            let answered = match self.attempt(task, &call, report, ends_if_started).await {
                Attempt::Answered(answered) => answered,
                Attempt::Ended(report) => return (*report).into(),
            };
            let Answered {
                report: answered_report,
                outcome,
                attempt,
                sent,
                journaled_done,
                task_guard,
            } = *answered;
            let retry_after = outcome.info().retry_after;
            let next = match outcome {
                StartOutcome::Started { response, .. } => {
                    info!(attempt, record_id = %response.id, "started");
                    Next::Started(answered_report)
                }
                StartOutcome::Final(info) => {
                    // Logged from the report: its text is scrubbed of encrypt values.
                    warn!(attempt, status = ?info.http_status, code = ?answered_report.error_code, "refused: {}", answered_report.error_msg.as_deref().unwrap_or(""));
                    Next::Done(answered_report)
                }
                StartOutcome::Unknown(_) => {
                    self.unknown_outcome(
                        answered_report,
                        &reconciler,
                        attempt,
                        sent,
                        &mut unknown_since,
                    )
                    .await
                }
                StartOutcome::Retryable(info) => {
                    debug!(attempt, status = ?info.http_status, "retryable: {}", answered_report.error_msg.as_deref().unwrap_or(""));
                    Next::Retry(answered_report)
                }
            };
            report = match next {
                Next::Started(mut report) => {
                    if let Some(since) = unknown_since {
                        self.list_all_records(&reconciler, since, &mut report).await;
                    }
                    // The record is known: another call of this task may go while this one
                    // is followed.
                    drop(task_guard);
                    return TaskEnd {
                        report: self.followed(report).await,
                        journaled: journaled_done,
                    };
                }
                Next::Done(report) => {
                    return TaskEnd {
                        report,
                        journaled: journaled_done,
                    };
                }
                Next::Retry(report) => report,
            };
            // Settled (not processed, or looked up and not found): another call of this task
            // may go while this one waits to retry.
            drop(task_guard);
            let Some(delay) = self.retry_delay(attempt, first, retry_after, &mut report) else {
                return report.into();
            };
            crate::metrics::global().retry();
            tokio::select! {
                biased;
                _ = self.stop.stop.cancelled() => return self.stopped(report).into(),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// The task's params resolved from the run's snapshot, as reported (encrypt values
    /// masked), as secrets to mask, and as the exact body to send; or the report of a task
    /// that cannot be called (a `value_from` that could not be read).
    fn prepare(&self, task: &Task) -> Result<PreparedCall, Box<TaskReport>> {
        let resolved = match self.values.resolve(task) {
            Ok(r) => r,
            Err(e) => {
                warn!("not started: {}", e.message);
                let mut r = TaskReport::new(
                    &task.task_id,
                    TaskStatus::Failed,
                    self.values.report_params(task),
                );
                r.error_code = Some(e.code.into());
                r.error_msg = Some(e.message);
                return Err(Box::new(r));
            }
        };
        let params: Vec<ReportParam> = resolved
            .iter()
            .map(|p| ReportParam {
                key: p.key.clone(),
                ty: p.ty,
                value: Some(if p.ty == ParamType::Encrypt {
                    MASK.into()
                } else {
                    p.value.expose().to_string()
                }),
            })
            .collect();
        // Values of encrypt params, to be masked in any error text an answer echoes.
        let secrets: Vec<crate::secret::Secret> = resolved
            .iter()
            .filter(|p| p.ty == ParamType::Encrypt && !p.value.is_empty())
            .map(|p| p.value.clone())
            .collect();
        let body = StartBody {
            params: resolved
                .iter()
                .map(|p| WireParam {
                    key: &p.key,
                    value: p.value.expose(),
                    ty: p.ty,
                })
                .collect(),
            record_id: task.record_id.as_deref(),
            trigger_source: self.plan.trigger_source.as_deref(),
        }
        .to_sdk_json();
        Ok(PreparedCall {
            params,
            secrets,
            body,
        })
    }

    /// One call of the task: the task's lock, its turn in the limits, its intent made
    /// durable, the call through the limited client, and its outcome recorded (as the task's
    /// end when it is refused for good, or started and `ends_if_started`).
    async fn attempt(
        &self,
        task: &Task,
        call: &PreparedCall,
        mut report: TaskReport,
        ends_if_started: bool,
    ) -> Attempt {
        if self.stop.stop.is_cancelled() {
            return Attempt::ended(self.stopped(report));
        }
        // Credentials the API refused are not used again (the gateway locks an AK after
        // more than 5 bad signatures in a row), whichever run or plan made the call.
        if let Some(blocked) = self.exec.calls.guard().blocked() {
            return Attempt::ended(credentials_refused(report, &blocked));
        }
        // One call of this task in flight in this process, from its intent to its settled
        // outcome: a history lookup then knows no other call of ours made a record.
        let task_guard = tokio::select! {
            biased;
            _ = self.stop.stop.cancelled() => return Attempt::ended(self.stopped(report)),
            g = self.exec.task_locks.lock(&task.task_id) => g,
        };
        let turn = tokio::select! {
            biased;
            _ = self.stop.stop.cancelled() => return Attempt::ended(self.stopped(report)),
            t = self.exec.calls.start_turn(Some(&self.slots)) => t,
        };
        let turn = match turn {
            Ok(turn) => turn,
            Err(blocked) => return Attempt::ended(credentials_refused(report, &blocked)),
        };
        let attempt = report.attempts + 1;
        let sent_at = Utc::now();
        // The send as a lookup will read it: re-read on the wall clock then (a step of the
        // host's clock in between does not move it).
        let sent = Since::Local {
            at: sent_at,
            mono: std::time::Instant::now(),
        };
        if let Err(not_sent) = self.intent(task, attempt, sent_at, &turn).await {
            return Attempt::ended(match not_sent {
                NotSent::JournalFailed(e) => {
                    report.error_code = Some("journal_failed".into());
                    report.error_msg = Some(format!(
                        "not called: the run journal could not be written ({e})"
                    ));
                    report
                }
                NotSent::Refused(blocked) => credentials_refused(report, &blocked),
                NotSent::Stopped => self.stopped(report),
            });
        }
        report.attempts = attempt;
        let outcome = tokio::select! {
            biased;
            _ = self.stop.abort.cancelled() => None,
            o = turn.start(&task.task_id, &call.body) => Some(o),
        };
        let answered_at = Utc::now();
        let Some(outcome) = outcome else {
            warn!(
                attempt,
                "call abandoned at the end of the shutdown grace period; its outcome is unknown"
            );
            set_info(&mut report, &CallInfo::default());
            report.error_code = Some(ABORTED.into());
            report.error_msg = Some(
                "the call was still in flight when the shutdown grace period ended; check the task's history".into(),
            );
            return Attempt::ended(report);
        };
        let ends = match &outcome {
            StartOutcome::Started { .. } => ends_if_started,
            StartOutcome::Final(_) => true,
            StartOutcome::Retryable(_) | StartOutcome::Unknown(_) => false,
        };
        let journaled_done = self
            .record(
                task,
                call,
                (attempt, ends),
                &outcome,
                (sent_at, answered_at),
                &mut report,
            )
            .await;
        Attempt::Answered(Box::new(Answered {
            report,
            outcome,
            attempt,
            sent,
            journaled_done,
            task_guard,
        }))
    }

    /// Makes the call's intent durable before it leaves: after a crash, the next daemon knows
    /// this call may have started a deployment. A stop (or a refusal of the credentials)
    /// that came meanwhile keeps the call from going, and the journal says so, so that no
    /// lookup is needed after a crash.
    async fn intent(
        &self,
        task: &Task,
        attempt: u32,
        sent_at: DateTime<Utc>,
        turn: &StartTurn<'_>,
    ) -> Result<(), NotSent> {
        let Some(j) = &self.shared.journal else {
            return Ok(());
        };
        let skew = self.exec.calls.clock().skew();
        let intent = Entry::Intent {
            task_id: task.task_id.clone(),
            attempt,
            sent_at,
            skew_lo_ms: skew.measured.then(|| skew.lo.num_milliseconds()),
        };
        if let Err(e) = j.append(&intent).await {
            error!("{e}; not calling");
            return Err(NotSent::JournalFailed(e.to_string()));
        }
        // The store has the last word just before the send: a cluster node whose lead
        // lapsed while it waited (or slept) sends nothing.
        let store_allows = self.exec.store.as_ref().is_none_or(|s| s.may_call());
        if !self.stop.stop.is_cancelled() && turn.still_valid() && store_allows {
            return Ok(());
        }
        let not_sent = Entry::Outcome {
            task_id: task.task_id.clone(),
            attempt,
            class: CallClass::Retryable,
            report: None,
            answered_at: None,
            skew_lo_ms: None,
            done: false,
        };
        if let Err(e) = j.append(&not_sent).await {
            warn!("{e}");
        }
        match self.exec.calls.guard().blocked() {
            Some(blocked) if !turn.still_valid() => Err(NotSent::Refused(blocked)),
            _ => Err(NotSent::Stopped),
        }
    }

    /// Records an answered call: the report's line (scrubbed of encrypt values), a started
    /// record remembered as ours (and as a witness of the service's clock), the journal's
    /// outcome line (marked as the task's end when `ends`) and the metrics. Returns whether
    /// the journal has the task's end.
    async fn record(
        &self,
        task: &Task,
        call: &PreparedCall,
        (attempt, ends): (u32, bool),
        outcome: &StartOutcome,
        (sent_at, answered_at): (DateTime<Utc>, DateTime<Utc>),
        report: &mut TaskReport,
    ) -> bool {
        set_info(report, outcome.info());
        mask_secrets_in_report(report, &call.secrets);
        let clock = self.exec.calls.clock();
        if let StartOutcome::Started { response, .. } = outcome {
            report.status = TaskStatus::Started;
            report.record_id = Some(response.id.clone());
            report.job_name = response.job_name.clone();
            report.app_component_list = response.app_component_list.clone();
            self.exec.known_records.remember(&response.id);
            clock.witness(&task.task_id, &response.id, sent_at, answered_at);
            if clock.zone().is_none() && self.exec.settings.project_id.is_some() {
                // Learn the zone of record times now, while it costs nothing to wait:
                // a later lookup then matches tightly.
                let (calls, abort) = (self.exec.calls.clone(), self.stop.abort.clone());
                tokio::spawn(async move { reconcile::learn_zone(&calls, &abort).await });
            }
        }
        let class = outcome.class();
        let mut journaled_done = false;
        if let Some(j) = &self.shared.journal {
            let entry = Entry::Outcome {
                task_id: task.task_id.clone(),
                attempt,
                class: journal_class(class),
                report: Some(Box::new(report.clone())),
                answered_at: Some(answered_at),
                skew_lo_ms: {
                    let skew = clock.skew();
                    skew.measured.then(|| skew.lo.num_milliseconds())
                },
                done: ends,
            };
            match j.append(&entry).await {
                Ok(()) => journaled_done = ends,
                Err(e) => warn!("{e}"),
            }
        }
        crate::metrics::global().start_call(class.as_str(), outcome.info().http_status);
        journaled_done
    }

    /// An answer that never came (or could not be read): the call may have made a record.
    /// The task's history says whether it did, instead of a blind second send; only a
    /// history that shows nothing (or cannot be read, with `unknown_outcome: resend`) lets
    /// the task be sent again.
    async fn unknown_outcome(
        &self,
        mut report: TaskReport,
        reconciler: &Reconciler<'_>,
        attempt: u32,
        sent: Since,
        unknown_since: &mut Option<Since>,
    ) -> Next {
        warn!(attempt, code = ?report.error_code, "outcome unknown: {}", report.error_msg.as_deref().unwrap_or(""));
        report.unknown_outcomes += 1;
        // The lookup goes on during the shutdown grace period: stopping here could leave a
        // started deployment unreported.
        match reconciler.lookup(sent, &self.stop.abort).await {
            Lookup::Found(record_id) => {
                info!(record_id = %record_id, "found the record in the task's history");
                report.status = TaskStatus::Started;
                report.record_id = Some(record_id);
                report.reconciled = true;
                Next::Started(report)
            }
            Lookup::Ambiguous(ids) => {
                report.error_code = Some("outcome_ambiguous".into());
                report.error_msg = Some(format!(
                    "the outcome of the call is unknown and the task's history shows {} records started since ({}) that this daemon did not create: one may be ours; not sent again, check the task's history",
                    ids.len(),
                    ids.join(", ")
                ));
                Next::Done(report)
            }
            Lookup::NotFound => {
                info!("no record in the task's history: sending again");
                unknown_since.get_or_insert(sent);
                Next::Retry(report)
            }
            Lookup::Unavailable(why) => match self.exec.settings.unknown_outcome {
                UnknownOutcomePolicy::Fail => {
                    report.error_msg = Some(format!(
                        "{}; the outcome is unknown and {why}, so the call was not re-sent (unknown_outcome: fail); check the task's history",
                        report.error_msg.take().unwrap_or_default()
                    ));
                    Next::Done(report)
                }
                UnknownOutcomePolicy::Resend => {
                    warn!("outcome unknown and {why}: sending again (unknown_outcome: resend)");
                    unknown_since.get_or_insert(sent);
                    Next::Retry(report)
                }
            },
            Lookup::Stopped => {
                report.error_code = Some(ABORTED.into());
                report.error_msg = Some(
                    "the outcome of the last call is unknown and the shutdown grace period ended before the history showed it; check the task's history".into(),
                );
                Next::Done(report)
            }
        }
    }

    /// Whether another call may go, and after how long: the plan's retry policy (attempts,
    /// deadline, backoff or the answer's `Retry-After`), then the run's retry budget, which
    /// keeps an outage from turning into `max_attempts` times the calls. `None`: give up,
    /// with the reason logged (and, for the budget, in the report).
    fn retry_delay(
        &self,
        attempt: u32,
        first: Instant,
        retry_after: Option<Duration>,
        report: &mut TaskReport,
    ) -> Option<Duration> {
        let delay = self
            .policy
            .delay(attempt, rand::random::<f64>(), retry_after);
        if !self.policy.allows_another(attempt, first.elapsed(), delay) {
            warn!(
                attempt,
                "giving up: retries exhausted ({} attempts, deadline {:?})",
                self.policy.max_attempts(),
                self.policy.deadline()
            );
            return None;
        }
        let budget_left = self
            .shared
            .retry_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if !budget_left {
            warn!(attempt, "giving up: this run's retry budget is spent");
            report.error_msg = Some(format!(
                "{} (not retried: this run's retry budget of {} retries is spent; the API looks unhealthy)",
                report.error_msg.take().unwrap_or_default(),
                retry_budget(self.plan.tasks.len())
            ));
            return None;
        }
        Some(delay)
    }

    /// Follows a started deployment to its end when the plan asks for it.
    async fn followed(&self, mut report: TaskReport) -> TaskReport {
        if let (Some(timeout), Some(record_id)) = (self.plan.follow, report.record_id.clone()) {
            report.follow = Some(
                follow::follow(
                    &self.exec.calls,
                    &report.task_id,
                    &record_id,
                    timeout,
                    &self.stop.stop,
                )
                .await,
            );
        }
        report
    }

    /// A task that had not started when the run was stopped.
    fn stopped(&self, mut report: TaskReport) -> TaskReport {
        report.status = TaskStatus::Skipped;
        let last = report.error_msg.take();
        report.error_msg = Some(match last {
            Some(last) => {
                format!("not started: the run was stopped before a retry (last error: {last})")
            }
            None => "not started: the run was stopped before its turn".into(),
        });
        report
    }

    async fn list_all_records(
        &self,
        reconciler: &Reconciler<'_>,
        since: Since,
        report: &mut TaskReport,
    ) {
        if self.stop.stop.is_cancelled() {
            return;
        }
        let Ok(found) = reconciler.records_since(since, &self.stop.abort).await else {
            return;
        };
        let mut records: Vec<RecordRef> = found
            .into_iter()
            .map(|id| RecordRef {
                reconciled: Some(&id) != report.record_id.as_ref() || report.reconciled,
                record_id: id,
            })
            .collect();
        if let Some(id) = &report.record_id
            && !records.iter().any(|r| &r.record_id == id)
        {
            records.push(RecordRef {
                record_id: id.clone(),
                reconciled: report.reconciled,
            });
        }
        if records.len() > 1 {
            warn!(
                records = records.len(),
                "more than one record exists for this task after an unknown outcome"
            );
            report.records = records;
        }
    }
}

/// Masks secret values anywhere in a task's error text.
fn mask_secrets_in_report(report: &mut TaskReport, secrets: &[crate::secret::Secret]) {
    for field in [&mut report.error_msg, &mut report.error_code] {
        if let Some(text) = field.as_mut() {
            for secret in secrets {
                if text.contains(secret.expose()) {
                    *text = text.replace(secret.expose(), MASK);
                }
            }
        }
    }
}

/// A task not called because the API refused the credentials (this call's last attempt, or
/// any other call of the process).
fn credentials_refused(mut report: TaskReport, blocked: &crate::api::guard::Blocked) -> TaskReport {
    warn!("not called: the API refused the credentials");
    report.status = TaskStatus::Failed;
    report.http_status = None;
    report.request_id = None;
    report.error_code = Some(crate::api::client::CREDENTIALS_REFUSED.into());
    report.error_msg = Some(blocked.to_string());
    report
}

fn set_info(report: &mut TaskReport, info: &CallInfo) {
    report.http_status = info.http_status;
    report.request_id = info.request_id.clone();
    report.error_code = info.error_code.clone();
    report.error_msg = info.error_msg.clone();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_echoed_by_an_answer_are_masked() {
        let mut r = TaskReport::new("t", TaskStatus::Failed, vec![]);
        r.error_code = Some("Deploy.1".into());
        r.error_msg = Some("value s3cret is not allowed (s3cret)".into());
        mask_secrets_in_report(&mut r, &[crate::secret::Secret::new("s3cret")]);
        assert_eq!(
            r.error_msg.as_deref(),
            Some("value *** is not allowed (***)")
        );
        assert_eq!(r.error_code.as_deref(), Some("Deploy.1"));
    }
}
