//! The one way a run ends: its result file written (or kept back when the results folder
//! refuses it), its journal finished, the metrics told, old results pruned, the log told.
//!
//! Used by the daemon (runs, results that waited for room, runs that could not begin) and by
//! `deployd exec`, so that a result is never written one way here and another way there. What
//! happens to a result kept back is the caller's choice (the daemon tries again every 10 s;
//! `exec` leaves it to the daemon's next start), so a failure is returned, not logged here.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

use crate::journal::Entry;
use crate::plan::Plan;
use crate::results::{RunId, RunReport, TaskReport, TaskStatus, Trigger, WriteError, write_report};
use crate::retention::{RetentionPolicy, prune_results};
use crate::store::RunJournal;

/// A run's report and its journal.
#[derive(Debug)]
pub struct FinishedRun {
    /// The report.
    pub report: RunReport,
    /// The journal, finished once the report is written.
    pub journal: Option<RunJournal>,
    /// Whether the report is already in the journal (its file could not be written once).
    pub result_journaled: bool,
}

impl FinishedRun {
    /// Writes the result file, then removes the journal. If the write fails (a full results
    /// disk), the result goes into the journal and the run comes back (`Err`) to be written
    /// again later; a crash meanwhile leaves the next start to write it, with its true status.
    pub async fn persist(self, results_dir: &Path) -> Result<PathBuf, (WriteError, FinishedRun)> {
        match write_report(results_dir, &self.report) {
            Ok(path) => {
                if let Some(j) = self.journal
                    && let Err(e) = j.finish(&self.report).await
                {
                    warn!("{e}");
                }
                Ok(path)
            }
            Err(e) => {
                let mut run = self;
                if !run.result_journaled
                    && let Some(j) = &run.journal
                {
                    match j.append(&Entry::Result(Box::new(run.report.clone()))).await {
                        Ok(()) => run.result_journaled = true,
                        Err(e) => {
                            // A journal that failed once takes nothing more: the result goes
                            // beside it, in its own file, once there is room.
                            debug!("{e}");
                            match j.keep_result(&run.report).await {
                                Ok(()) => run.result_journaled = true,
                                Err(e) => {
                                    debug!("the result cannot be kept beside the journal yet: {e}")
                                }
                            }
                        }
                    }
                }
                Err((e, run))
            }
        }
    }
}

/// Whether this is the run's first try at being finished, or a result that had waited for
/// room in the results folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The run just ended: it is counted in the metrics now, whatever the write does.
    First,
    /// A result kept back earlier: already counted.
    Again,
}

/// A result the results folder refused, kept (in memory, and in its journal when it has one)
/// to be written later.
#[derive(Debug)]
pub struct Kept {
    /// Why it could not be written.
    pub error: WriteError,
    /// The run, to be finished again.
    pub run: Box<FinishedRun>,
}

/// Finishes a run: counts it in the metrics (first attempt only), writes its result file and
/// finishes its journal ([`FinishedRun::persist`]), then applies `keep` to the plan's result
/// files. Returns the result file, or the run kept back when the folder refused it.
pub async fn finish_run(
    run: FinishedRun,
    results_dir: &Path,
    keep: &RetentionPolicy,
    attempt: Attempt,
) -> Result<PathBuf, Kept> {
    let report = &run.report;
    let (plan, run_id, status) = (report.plan.clone(), report.run_id.clone(), report.status);
    if attempt == Attempt::First {
        let name = format!("{status:?}").to_lowercase();
        crate::metrics::global().run_finished(&plan, &name, report.finished_at);
    }
    match run.persist(results_dir).await {
        Ok(path) => {
            match attempt {
                Attempt::First => {
                    info!(plan = %plan, run_id = %run_id, status = ?status, "result written to {}", path.display())
                }
                Attempt::Again => {
                    info!(plan = %plan, run_id = %run_id, "result written to {} (it had waited for room)", path.display())
                }
            }
            prune_results(results_dir, &plan, keep, run_id.as_str());
            Ok(path)
        }
        Err((error, run)) => Err(Kept {
            error,
            run: Box::new(run),
        }),
    }
}

/// The `failed` result of a run that could not begin: every task uncalled, with the cause.
/// It has no journal (none could be made, or it was removed), so [`finish_run`] just writes it.
pub fn not_begun(
    plan: &Plan,
    trigger: Trigger,
    scheduled_for: Option<DateTime<Utc>>,
    cause: &str,
    now: DateTime<Utc>,
) -> FinishedRun {
    let tasks: Vec<TaskReport> = plan
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
    let report = RunReport {
        plan: plan.name.clone(),
        plan_file: plan.file_name.clone(),
        plan_sha256: plan.sha256.clone(),
        run_id: RunId::new(now),
        trigger,
        scheduled_for,
        started_at: now,
        finished_at: now,
        status: RunReport::status_for(&summary, false),
        summary,
        tasks,
    };
    FinishedRun {
        report,
        journal: None,
        result_journaled: false,
    }
}
