//! `deployd exec PLAN`: one run in the foreground, progress on a terminal, a summary table,
//! the same result file as the daemon writes.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};

use super::{Exit, connect, load_settings};
use crate::cli::ExecArgs;
use crate::executor::{RunObserver, RunRequest, StopTokens};
use crate::finish::{Attempt, finish_run};
use crate::plan::load::load_plan_file;
use crate::results::{RunId, RunReport, TaskReport, TaskStatus, Trigger};

/// Tasks listed one by one in the summary; above this only those not started are listed.
const FULL_TABLE_MAX: usize = 50;

/// Runs `deployd exec`.
pub async fn exec(args: ExecArgs) -> Exit {
    let mut settings = match load_settings(&args.common) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("deployd: bad configuration:\n{e}");
            return Exit::Config;
        }
    };
    let loaded = match load_plan_file(&args.plan) {
        Ok(l) => l,
        Err(issues) => {
            eprintln!("{issues}");
            eprintln!(
                "deployd: {} is not a valid plan; nothing was started",
                args.plan.display()
            );
            return Exit::Failed;
        }
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let target = match connect(&mut settings, args.common.emulator).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("deployd: {e:#}");
            return Exit::Config;
        }
    };
    let plan = Arc::new(loaded.plan);
    let plan_dir = args
        .plan
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let started_at = Utc::now();
    let req = RunRequest {
        plan: plan.clone(),
        plan_dir,
        trigger: Trigger::Manual,
        scheduled_for: None,
        run_id: RunId::new(started_at),
        started_at,
    };

    let stop = StopTokens::default();
    let signals = tokio::spawn(watch_signals(stop.clone(), settings.shutdown_grace));
    let observer = Arc::new(Progress::new(plan.tasks.len() as u64));
    let clock = Instant::now();
    let finished = target.executor.run(req, stop, observer.clone()).await;
    let elapsed = clock.elapsed();
    observer.finish();
    signals.abort();

    let report = finished.report.clone();
    let written = finish_run(
        finished,
        &settings.results_dir,
        &settings.keep_results,
        Attempt::First,
    )
    .await;
    print_summary(&report, elapsed.as_secs_f64());
    match written {
        Ok(path) => println!("result: {}", path.display()),
        Err(kept) => {
            eprintln!(
                "deployd: {}; the result is kept in the run journal, and the daemon's next start writes it",
                kept.error
            );
            return Exit::Failed;
        }
    }
    if report.summary.started == report.summary.total {
        Exit::Ok
    } else {
        Exit::Failed
    }
}

/// SIGINT/SIGTERM: stop starting calls; after the grace period (or a second signal), abandon
/// calls in flight.
async fn watch_signals(stop: StopTokens, grace: std::time::Duration) {
    let mut signals = crate::signals::Signals::new();
    let first = signals.terminate().await;
    eprintln!(
        "deployd: {first}: no new calls start; calls in flight may finish for {grace:?} (again to abandon them)"
    );
    stop.stop.cancel();
    tokio::select! {
        _ = signals.terminate() => {}
        _ = tokio::time::sleep(grace) => {}
    }
    stop.abort.cancel();
}

/// A progress bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Self { bar }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl RunObserver for Progress {
    fn task_finished(&self, task: &TaskReport) {
        let line = describe(task);
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                if task.status != TaskStatus::Started {
                    bar.println(format!("{} {line}", task.task_id));
                }
            }
            None => {
                // One write per line (`eprintln!` writes each piece of its format on its own:
                // four system calls per task on an unbuffered stderr).
                let text = format!("{} {line}\n", task.task_id);
                let _ = std::io::stderr().lock().write_all(text.as_bytes());
            }
        }
    }
}

fn describe(task: &TaskReport) -> String {
    match task.status {
        TaskStatus::Started => format!(
            "started  record {}{}",
            task.record_id.as_deref().unwrap_or("?"),
            if task.reconciled {
                " (found in history)"
            } else {
                ""
            }
        ),
        TaskStatus::Failed | TaskStatus::Skipped => format!(
            "{:<8} {}{}",
            format!("{:?}", task.status).to_lowercase(),
            task.error_code
                .as_deref()
                .map(|c| format!("{c}: "))
                .unwrap_or_default(),
            task.error_msg.as_deref().unwrap_or("")
        ),
    }
}

fn print_summary(report: &RunReport, secs: f64) {
    let full = report.tasks.len() <= FULL_TABLE_MAX;
    println!(
        "{:<32}  {:<8}  {:>8}  RECORD / ERROR",
        "TASK", "STATUS", "ATTEMPTS"
    );
    for t in report
        .tasks
        .iter()
        .filter(|t| full || t.status != TaskStatus::Started)
    {
        let detail = match t.status {
            TaskStatus::Started => t.record_id.clone().unwrap_or_default(),
            _ => format!(
                "{}{}",
                t.error_code
                    .as_deref()
                    .map(|c| format!("{c}: "))
                    .unwrap_or_default(),
                t.error_msg.as_deref().unwrap_or("")
            ),
        };
        let status = format!("{:?}", t.status).to_lowercase();
        println!(
            "{:<32}  {:<8}  {:>8}  {detail}",
            t.task_id, status, t.attempts
        );
    }
    if !full {
        println!(
            "({} started tasks not listed; see the result file)",
            report.summary.started
        );
    }
    let s = &report.summary;
    println!(
        "run {} of {}: {} ({} started, {} failed, {} skipped of {}) in {secs:.2}s",
        report.run_id,
        report.plan,
        format!("{:?}", report.status).to_lowercase(),
        s.started,
        s.failed,
        s.skipped,
        s.total
    );
}
