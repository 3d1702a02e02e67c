//! The scheduler's decisions that the log must show, and their log lines.
//!
//! The scheduler only returns these ([`super::Action::Note`]); the wiring calls [`Note::log`].
//! Every fire that does not run is one of them, with its reason, so no fire is lost silently.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::plan::Plan;
use crate::results::{RunId, ts};

/// Whether a plan was just loaded or changed (as the log says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It appeared.
    Loaded,
    /// Its content changed.
    Changed,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Loaded => "loaded",
            Change::Changed => "changed",
        })
    }
}

/// Why a fire time did not run (it is still recorded as used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Found later than [`super::MISSED_FIRE`] (suspend, clock jump, daemon busy).
    Missed {
        /// How late.
        late: Duration,
    },
    /// The previous run still goes (`overlap: skip`).
    Overlap,
    /// A run goes and another already waits (`overlap: queue`).
    QueueFull,
}

/// Why a run waits instead of starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// For the plan's run in progress (`overlap: queue`, or a run-once plan).
    PreviousRun,
    /// New content of a run-once plan, replacing whatever waited for the run in progress.
    NewContent,
    /// For one of the `max_runs` run slots.
    RunSlot {
        /// Runs waiting for a slot, this one included.
        waiting: usize,
        /// The limit.
        max_runs: usize,
        /// Runs going.
        running: usize,
    },
}

/// Why a waiting run was dropped when its turn came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The plan is gone or disabled (a run waiting for a run slot or a retry).
    RemovedOrDisabled,
    /// The plan is gone (a run waiting for the plan's previous run).
    Removed,
    /// The plan is disabled (a run waiting for the plan's previous run).
    Disabled,
    /// A run-once plan's content changed: the new content has its own turn.
    ContentChanged,
    /// The plan changed between scheduled and run-once.
    Switched,
}

/// Why a due run never started, at shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStartedReason {
    /// It waited for a run slot or to be tried again.
    Waiting,
    /// It could not begin, and there is no time to try again: why.
    NotBegun(String),
}

/// A decision the log must show.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A scheduled plan was (re)armed.
    Armed {
        /// The plan's new version.
        plan: Arc<Plan>,
        /// Loaded or changed.
        change: Change,
        /// Its next fire time (`None`: never again).
        next: Option<DateTime<Utc>>,
    },
    /// A plan was loaded or changed disabled: it never fires.
    Disabled {
        /// The plan.
        plan: String,
        /// Loaded or changed.
        change: Change,
    },
    /// A plan is gone: its future fires are cancelled (and a run waiting for its previous
    /// run with them).
    Removed {
        /// The plan.
        plan: String,
    },
    /// A run-once plan's content runs (now, or when its turn comes).
    RunsOnce {
        /// The plan.
        plan: String,
        /// Loaded or changed.
        change: Change,
    },
    /// A run-once plan's content already ran: it does not run again.
    AlreadyRan {
        /// The plan.
        plan: String,
        /// Loaded or changed; `None` when a run to be tried again finds it ran meanwhile.
        change: Option<Change>,
        /// The run that ran it.
        run_id: RunId,
    },
    /// A fire time did not run.
    FireSkipped {
        /// The plan.
        plan: String,
        /// The fire time.
        at: DateTime<Utc>,
        /// Why.
        reason: SkipReason,
    },
    /// Every fire time of a plan after `after` and before `before` was missed by more than
    /// [`super::MISSED_FIRE`] (a suspended host, a clock jump): not run, named as a span.
    MissedSpan {
        /// The plan.
        plan: String,
        /// The last fire time taken before the span (run or skipped on its own).
        after: DateTime<Utc>,
        /// The first fire time after the span (`None`: the schedule ends).
        before: Option<DateTime<Utc>>,
    },
    /// A run waits instead of starting.
    Waits {
        /// The plan.
        plan: String,
        /// For what.
        why: WaitReason,
    },
    /// A waiting run was dropped when its turn came.
    Dropped {
        /// The plan.
        plan: String,
        /// Why.
        reason: DropReason,
    },
    /// A schedule's next fire moved after a jump of the wall clock.
    Rearmed {
        /// The plan.
        plan: String,
        /// Its next fire time now.
        next: Option<DateTime<Utc>>,
    },
    /// A run could not begin and is tried again.
    BeginRetry {
        /// The plan.
        plan: String,
        /// The attempt that failed (1 for the first).
        attempt: u32,
        /// The pause before the next.
        delay: Duration,
        /// Why it could not begin.
        cause: String,
    },
    /// A due run never started: the daemon is shutting down.
    NotStarted {
        /// The plan.
        plan: String,
        /// Its fire time, for a scheduled run.
        scheduled_for: Option<DateTime<Utc>>,
        /// Why.
        why: NotStartedReason,
    },
}

fn next_text(next: Option<DateTime<Utc>>) -> String {
    next.map(|t| ts(&t)).unwrap_or_else(|| "never".into())
}

impl Note {
    /// Writes the note's log line.
    pub fn log(&self) {
        match self {
            Note::Armed { plan, change, next } => {
                let (expr, zone) = plan
                    .schedule
                    .as_ref()
                    .map(|s| (s.expr().to_string(), s.timezone().to_string()))
                    .unwrap_or_default();
                info!(plan = %plan.name, next = next_text(*next), "plan {change}: {expr:?} in {zone}");
            }
            Note::Disabled { plan, change } => {
                info!(plan = %plan, "plan {change} (disabled: it never fires)")
            }
            Note::Removed { plan } => {
                info!(plan = %plan, "plan removed: its future fires are cancelled")
            }
            Note::RunsOnce { plan, change } => {
                info!(plan = %plan, "plan {change}: running it once")
            }
            Note::AlreadyRan {
                plan,
                change: Some(change),
                run_id,
            } => info!(
                plan = %plan,
                "plan {change}: this content already ran (run {run_id}); not running it again. To run it again, change the plan, or use `deployd exec`"
            ),
            Note::AlreadyRan {
                plan,
                change: None,
                run_id,
            } => {
                info!(plan = %plan, "this content already ran (run {run_id}); not running it again")
            }
            Note::MissedSpan {
                plan,
                after,
                before,
            } => warn!(
                plan = %plan,
                "missed every fire time after {} and before {} (host asleep, process paused or clock changed); not replayed",
                ts(after),
                before.as_ref().map_or_else(|| "the schedule's end".to_string(), ts)
            ),
            Note::FireSkipped { plan, at, reason } => match reason {
                SkipReason::Missed { late } => warn!(
                    plan = %plan,
                    "missed the fire at {} by {late:?} (host asleep or clock changed); not replayed",
                    ts(at)
                ),
                // The fire time is named: every fire is accounted for by its time, run (its
                // result's `scheduled_for`) or not (here).
                SkipReason::Overlap => warn!(
                    plan = %plan,
                    fire = %ts(at),
                    "fire skipped: the previous run is still going (overlap: skip)"
                ),
                SkipReason::QueueFull => warn!(
                    plan = %plan,
                    fire = %ts(at),
                    "fire dropped: a run is going and another already waits (overlap: queue)"
                ),
            },
            Note::Waits { plan, why } => match why {
                WaitReason::PreviousRun => info!(
                    plan = %plan,
                    "the previous run is still going: this one waits for it (overlap: queue)"
                ),
                WaitReason::NewContent => info!(
                    plan = %plan,
                    "the previous run is still going: the new content waits for it"
                ),
                WaitReason::RunSlot {
                    waiting,
                    max_runs,
                    running,
                } => info!(
                    plan = %plan,
                    waiting,
                    max_runs,
                    "{running} runs are going (max_runs): this one waits its turn"
                ),
            },
            Note::Dropped { plan, reason } => {
                let why = match reason {
                    DropReason::RemovedOrDisabled => "the plan was removed or disabled",
                    DropReason::Removed => "the plan was removed",
                    DropReason::Disabled => "the plan is disabled",
                    DropReason::ContentChanged => {
                        "the plan changed meanwhile, and its new content waits its own turn"
                    }
                    DropReason::Switched => "the plan changed between scheduled and run-once",
                };
                info!(plan = %plan, "the waiting run is dropped: {why}");
            }
            Note::Rearmed { plan, next } => info!(
                plan = %plan,
                next = next_text(*next),
                "schedule re-armed after the clock jump"
            ),
            Note::BeginRetry {
                plan,
                attempt,
                delay,
                cause,
            } => warn!(
                plan = %plan,
                attempt,
                "the run could not begin: {cause}; trying again in {delay:?}"
            ),
            Note::NotStarted {
                plan,
                scheduled_for,
                why: NotStartedReason::Waiting,
            } => warn!(
                plan = %plan,
                scheduled_for = scheduled_for.map(|t| ts(&t)),
                "not started: shutting down while the run waited its turn"
            ),
            Note::NotStarted {
                plan,
                why: NotStartedReason::NotBegun(cause),
                ..
            } => warn!(
                plan = %plan,
                "not started: shutting down, and the run could not begin ({cause})"
            ),
        }
    }
}
