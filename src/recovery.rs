//! Finishing the runs a crash left behind: before the daemon fires anything, every unfinished
//! run journal becomes an `interrupted` result file. Tasks that had finished keep their
//! outcome; calls without an answer (or with an unknown one) are looked up in the task's
//! history; tasks never called are `skipped`. Such a run is not resumed: a half-done deploy is
//! for a person to look at. The journals come from the [`crate::store`], whichever it is.

use std::path::Path;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::executor::Executor;
use crate::executor::reconcile::{Lookup, Reconciler, Since};
use crate::journal::{CallClass, TaskTrail, Unfinished};
use crate::results::{RunReport, RunStatus, TaskReport, TaskStatus, write_report};
use crate::store::Store;

/// Writes the result of every unfinished run the store holds; returns how many.
pub async fn recover(
    store: &dyn Store,
    results_dir: &Path,
    exec: &Executor,
    stop: &CancellationToken,
) -> usize {
    let (runs, problems) = store.unfinished().await;
    for p in problems {
        error!("unreadable run journal left as it is: {p}");
    }
    // Every journal's records are known before any lookup: one run's record is never
    // adopted by another run's lookup.
    for run in &runs {
        learn_from_journal(run, exec);
    }
    let mut done = 0;
    for run in runs {
        if let Some(report) = &run.result {
            // The run ended; only its result file could not be written (a full disk).
            match write_report(results_dir, report) {
                Ok(path) => {
                    info!(plan = %report.plan, run_id = %report.run_id, status = ?report.status, "wrote the result a full disk had kept back to {}", path.display());
                    // `e` names the journal: "run journal PATH: cause".
                    if let Err(e) = store.close_unfinished(&run, report).await {
                        error!("cannot remove the {e}");
                    }
                    done += 1;
                }
                Err(e) => {
                    error!(plan = %report.plan, run_id = %report.run_id, "{e}; the journal is kept for the next start")
                }
            }
            continue;
        }
        let report = finish(&run, exec, stop).await;
        if stop.is_cancelled() {
            // Lookups were cut short: keep the journal, the next start finishes the run.
            warn!(run_id = %run.header.run_id, "shutdown during crash recovery: the run journal is kept for the next start");
            break;
        }
        match write_report(results_dir, &report) {
            Ok(path) => {
                warn!(
                    plan = %report.plan,
                    run_id = %report.run_id,
                    started = report.summary.started,
                    failed = report.summary.failed,
                    skipped = report.summary.skipped,
                    "finished a run interrupted by a crash: result written to {}",
                    path.display()
                );
                if let Err(e) = store.close_unfinished(&run, &report).await {
                    error!("cannot remove the {e}");
                }
                done += 1;
            }
            Err(e) => {
                error!(plan = %report.plan, run_id = %report.run_id, "{e}; the journal is kept for the next start")
            }
        }
    }
    if done > 0 {
        info!(runs = done, "crash recovery done");
    }
    done
}

/// The `interrupted` report of one unfinished run. The tasks' history lookups run
/// concurrently (each through the shared limits).
pub async fn finish(run: &Unfinished, exec: &Executor, stop: &CancellationToken) -> RunReport {
    learn_from_journal(run, exec);
    let mut lookups = tokio::task::JoinSet::new();
    for (index, skeleton) in run.header.tasks.iter().enumerate() {
        let trail = run
            .trails
            .get(&skeleton.task_id)
            .cloned()
            .unwrap_or_default();
        let (skeleton, exec, stop) = (skeleton.clone(), exec.clone(), stop.clone());
        lookups.spawn(async move { (index, finish_task(&skeleton, &trail, &exec, &stop).await) });
    }
    let mut tasks: Vec<Option<TaskReport>> = vec![None; run.header.tasks.len()];
    while let Some(done) = lookups.join_next().await {
        match done {
            Ok((index, report)) => tasks[index] = Some(report),
            Err(e) => error!("a recovery lookup ended abnormally: {e}"),
        }
    }
    let tasks: Vec<TaskReport> = tasks
        .into_iter()
        .zip(&run.header.tasks)
        .map(|(r, skeleton)| {
            r.unwrap_or_else(|| {
                let mut r = skeleton.clone();
                r.status = TaskStatus::Failed;
                r.error_code = Some("outcome_unknown".into());
                r.error_msg =
                    Some("the crash recovery of this task failed; check the task's history".into());
                r
            })
        })
        .collect();
    let summary = RunReport::summarize(&tasks);
    RunReport {
        plan: run.header.plan.clone(),
        plan_file: run.header.plan_file.clone(),
        plan_sha256: run.header.plan_sha256.clone(),
        run_id: run.header.run_id.clone(),
        trigger: run.header.trigger,
        scheduled_for: run.header.scheduled_for,
        started_at: run.header.started_at,
        finished_at: Utc::now(),
        status: RunStatus::Interrupted,
        summary,
        tasks,
    }
}

/// What a journal knows before any lookup: the records its calls created are other calls'
/// (never adopted by a lookup), and their send and answer times bound their creation (which
/// teaches the zone of record times).
pub fn learn_from_journal(run: &Unfinished, exec: &Executor) {
    for (task_id, trail) in &run.trails {
        for report in trail.done.iter().chain(&trail.last_answer) {
            if let Some(id) = &report.record_id {
                exec.remember_record(id);
            }
        }
        for (id, sent, answered) in &trail.created {
            exec.remember_record(id);
            exec.client().clock().witness(task_id, id, *sent, *answered);
        }
    }
}

async fn finish_task(
    skeleton: &TaskReport,
    trail: &TaskTrail,
    exec: &Executor,
    stop: &CancellationToken,
) -> TaskReport {
    if let Some(done) = &trail.done {
        return done.clone();
    }
    // The line as the last answer left it (record id, HTTP status, error), or the skeleton.
    let mut report = trail
        .last_answer
        .clone()
        .unwrap_or_else(|| skeleton.clone());
    report.attempts = u32::try_from(trail.calls.len()).unwrap_or(u32::MAX);
    if trail.calls.iter().any(|c| c.2 == Some(CallClass::Started)) {
        // Started before the crash (e.g. while being followed): its record is in the journal.
        report.status = TaskStatus::Started;
        return report;
    }
    let Some(since) = trail.uncertain_since() else {
        if trail
            .calls
            .last()
            .is_some_and(|c| c.2 == Some(CallClass::Final))
        {
            report.status = TaskStatus::Failed;
            return report;
        }
        report.status = TaskStatus::Skipped;
        report.error_msg = Some(if trail.calls.is_empty() {
            "not started: the daemon stopped (crash) before this task's turn".into()
        } else {
            "not started: the daemon stopped (crash) between retries; no call had started it".into()
        });
        return report;
    };
    // The send on the service's clock when the journal kept the skew: a host clock corrected
    // between the crash and now does not move the window.
    // Without it (the call was the process's first, or an older journal), the host's clock at
    // the send is known only within what the gateway tolerates: the window opens that much
    // earlier.
    let since = match trail.uncertain_since_service() {
        Some(service) => Since::Service(service),
        None => Since::Wall(
            since
                .checked_sub_signed(
                    chrono::TimeDelta::from_std(crate::api::service_clock::UNMEASURED_SKEW)
                        .unwrap_or_default(),
                )
                .unwrap_or(since),
        ),
    };
    let reconciler = Reconciler::new(exec, &skeleton.task_id, &skeleton.params);
    match reconciler.lookup(since, stop).await {
        Lookup::Found(record_id) => {
            report.status = TaskStatus::Started;
            report.reconciled = true;
            report.record_id = Some(record_id);
            report.error_code = None;
            report.error_msg = Some(
                "the daemon stopped (crash) during this task's call; the record was found in the task's history"
                    .into(),
            );
        }
        Lookup::Ambiguous(ids) => {
            report.status = TaskStatus::Failed;
            report.error_code = Some("outcome_ambiguous".into());
            report.error_msg = Some(format!(
                "the daemon stopped (crash) during this task's call; the task's history shows {} records since then ({}) and which one is ours is unknown: check the task's history",
                ids.len(),
                ids.join(", ")
            ));
        }
        Lookup::NotFound => {
            report.status = TaskStatus::Skipped;
            report.error_msg = Some(
                "not started: the daemon stopped (crash) during this task's call, and the task's history shows no record from it"
                    .into(),
            );
        }
        Lookup::Unavailable(why) => unknown(&mut report, &why),
        Lookup::Stopped => unknown(&mut report, "the lookup was cut short by a shutdown"),
    }
    report
}

fn unknown(report: &mut TaskReport, why: &str) {
    report.status = TaskStatus::Failed;
    report.error_code = Some("outcome_unknown".into());
    report.error_msg = Some(format!(
        "the daemon stopped (crash) during this task's call and {why}; whether it started is unknown: check the task's history"
    ));
}
