//! The scheduler: every decision about *when* a plan runs, and nothing else.
//!
//! It owns the armed fire times, each plan's run slots and overlap policy, the one run a plan
//! may have waiting (`overlap: queue`, changed run-once plans), admission (`max_runs`), runs
//! that could not begin and wait to be tried again, and the memory of used fire times. It is
//! pure: it never reads a clock (the caller passes [`Now`]), never touches a file or the state
//! folder (used fire times come in as [`FireMemory`] and go out as [`Action::RecordFire`];
//! the run-once memory is asked through [`OnceMemory`]), never spawns or logs. It is fed
//! [`Event`]s and answers [`Action`]s; the daemon (`daemon.rs`) applies them.
//!
//! Between [`Action::Start`] and the run's first call sits the wiring, and nothing in here
//! depends on what it does there: it may claim [`Due::claim`] first (a high-availability
//! leader claiming the fire in a database) and, when the claim is lost, report
//! [`RunOutcome::NotRun`], which frees the run's slots like a run that ended.

mod notes;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};

use crate::plan::catalog::Diff;
use crate::plan::{Overlap, Plan};
use crate::results::{RunId, Trigger};

pub use notes::{Change, DropReason, NotStartedReason, Note, SkipReason, WaitReason};

/// A fire found later than this (suspend, clock jump) is not run; the next one is armed.
pub const MISSED_FIRE: Duration = Duration::from_secs(60);
/// Attempts to begin a run (journal, run-once memory) before it gets a `failed` result.
pub const BEGIN_ATTEMPTS: u32 = 5;
/// How often a run-once plan that could not begin is tried again after its failed result.
pub const BEGIN_RETRY_MAX: Duration = Duration::from_secs(60);
/// The first pause before trying to begin a run again (doubling: 1, 2, 4, 8 s).
pub const BEGIN_BACKOFF: Duration = Duration::from_secs(1);

/// The time, read once by the caller for one event: the wall clock (fire times) and the
/// monotonic clock (retry pauses, which a step of the wall clock must not stretch or cut).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// The wall clock.
    pub wall: DateTime<Utc>,
    /// The monotonic clock.
    pub mono: Instant,
}

/// A run that is due: what to run, why, and how many times it failed to begin so far.
#[derive(Debug, Clone)]
pub struct Due {
    /// The plan's version to run (decided when the run's turn came).
    pub plan: Arc<Plan>,
    /// `Schedule` or `Arrival`.
    pub trigger: Trigger,
    /// The fire time, for scheduled runs.
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Failed attempts to begin it so far.
    pub attempt: u32,
}

impl Due {
    /// What this run uses up, so that it runs once: a scheduled run its fire time, a run-once
    /// run its plan's content. (A high-availability leader claims this before beginning.)
    pub fn claim(&self) -> Claim {
        match (self.trigger, self.scheduled_for) {
            (Trigger::Schedule, Some(at)) => Claim::Fire {
                plan: self.plan.name.clone(),
                at,
            },
            _ => Claim::Content {
                plan: self.plan.name.clone(),
                sha256: self.plan.sha256.clone(),
            },
        }
    }
}

/// The identity of what a run uses up: at most one run per claim, ever.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Claim {
    /// A scheduled plan's fire time.
    Fire {
        /// The plan.
        plan: String,
        /// The fire time.
        at: DateTime<Utc>,
    },
    /// A run-once plan's content.
    Content {
        /// The plan.
        plan: String,
        /// The content's SHA-256.
        sha256: String,
    },
}

/// What the scheduler is told.
#[derive(Debug)]
pub enum Event<'a> {
    /// A scan changed the catalog of plans (added, changed, removed; invalid files are the
    /// wiring's business). Give the fire memories [`Scheduler::fires_needed`] names first.
    PlansChanged(&'a Diff),
    /// Time passed (the caller wakes at [`Scheduler::next_wake`] at the latest): fires that
    /// are due fire, runs waiting to be tried again are, free run slots are taken.
    TimePassed,
    /// The wall clock was stepped (or the host suspended): schedules are armed again from now.
    ClockJumped,
    /// A run from [`Action::Start`] is over (or never began).
    RunEnded {
        /// The run, as started.
        run: Due,
        /// How it ended.
        outcome: RunOutcome,
    },
    /// The daemon stops: nothing starts any more, and the runs still waiting are reported.
    ShuttingDown,
    /// This node just took the lead of a cluster: every fire time of the armed plans from
    /// `from` up to now that no node used runs now, in order (each one claimed first, under
    /// its plan's overlap policy), at most [`CATCH_UP_MAX`] per plan. A plan whose last used
    /// fire time is at or after `window` is caught up from that fire time instead, when it is
    /// earlier than `from`: the dead leader had not reached the times after it (its wall
    /// clock was behind, or its controller was held up), and no node ran them.
    CaughtUp {
        /// The oldest fire time to run, for a plan with no used fire time in the window.
        from: DateTime<Utc>,
        /// The catch-up window's start: no fire time before it runs.
        window: DateTime<Utc>,
        /// The newest fire time to run: the database's clock at the takeover when this host's
        /// clock is ahead of it (the fire times between are named as missed, not run in a
        /// burst); this host's now otherwise.
        until: DateTime<Utc>,
    },
}

/// Most missed fire times one plan runs at a takeover (a `*/1 * * * * *` schedule missed for
/// a day would be 86,400 runs); the others are reported skipped.
pub const CATCH_UP_MAX: usize = 1000;

/// How a started run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// It ran (whatever its result, written or not, or even if its task panicked).
    Ended,
    /// It could not begin (values, journal or run-once memory) and called nothing: why. It is
    /// tried again after a pause, and after [`BEGIN_ATTEMPTS`] it gets a failed result.
    NotBegun(String),
    /// The wiring chose not to begin it and it must not be tried again (a high-availability
    /// leader lost the claim to another node): its slots are freed.
    NotRun,
}

/// What the scheduler answers, to be applied in order.
#[derive(Debug)]
pub enum Action {
    /// Begin this run now. It holds one of its plan's run slots and one of the `max_runs`
    /// run slots until its [`Event::RunEnded`].
    Start(Due),
    /// Keep, durably, that this fire time of this plan is used (run or skipped): a claim, in
    /// the store's terms. It comes before the fire's [`Action::Start`].
    RecordFire {
        /// The plan.
        plan: String,
        /// The fire time.
        at: DateTime<Utc>,
        /// Whether it is to run (started, or waiting its turn) rather than skipped: a cluster
        /// gives back, at a takeover, the fires a dead leader claimed to run and never began.
        runs: bool,
    },
    /// This run could not begin [`BEGIN_ATTEMPTS`] times: write its `failed` result.
    ReportNotBegun {
        /// The run.
        run: Due,
        /// The last cause.
        cause: String,
    },
    /// A decision the log must show (why a fire did not run, why a run waits...).
    Note(Note),
}

/// The run-once memory, as the scheduler needs it: the wiring reads the state folder.
pub trait OnceMemory {
    /// The run that already ran this content of this run-once plan, if any; `Err` (why) when
    /// the memory cannot be read, and then the run does not happen until it can.
    fn already_ran(&self, plan: &str, sha256: &str) -> Result<Option<RunId>, String>;
}

/// One plan's memory of used fire times, as loaded by the wiring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FireMemory {
    /// Fire times already used (run or skipped), newest last: none of them runs again.
    pub used: Vec<DateTime<Utc>>,
    /// A damaged memory forbids every fire at or before this (its last write).
    pub floor: Option<DateTime<Utc>>,
}

/// A plan's armed schedule.
#[derive(Debug)]
struct Armed {
    plan: Arc<Plan>,
    next: Option<DateTime<Utc>>,
}

/// What the scheduler keeps about one plan's runs.
#[derive(Debug, Default)]
struct RunSlots {
    /// Runs started (or waiting for a run slot, or to be tried again) and not ended.
    running: usize,
    /// One run waiting for the current one to end (`overlap: queue`, and arrivals).
    queued: Option<Due>,
}

/// The scheduler's state. See the module docs.
#[derive(Debug)]
pub struct Scheduler {
    /// Runs alive at once, all plans together.
    max_runs: usize,
    /// The active plans by name (the catalog's view, kept from the diffs).
    plans: BTreeMap<String, Arc<Plan>>,
    /// Scheduled, enabled plans and their next fire time.
    armed: BTreeMap<String, Armed>,
    slots: HashMap<String, RunSlots>,
    /// Runs started and not ended yet.
    live: usize,
    /// Runs due while `max_runs` were going, in the order they became due.
    admission: VecDeque<Due>,
    /// Runs that could not begin, and when to try again.
    retries: Vec<(Instant, Due)>,
    /// Used fire times per plan (kept in the state folder too, by the wiring).
    fires: HashMap<String, FireMemory>,
    /// Shutting down: nothing starts any more.
    stopping: bool,
}

impl Scheduler {
    /// An empty scheduler allowing `max_runs` runs at once.
    pub fn new(max_runs: usize) -> Self {
        Self {
            max_runs,
            plans: BTreeMap::new(),
            armed: BTreeMap::new(),
            slots: HashMap::new(),
            live: 0,
            admission: VecDeque::new(),
            retries: Vec::new(),
            fires: HashMap::new(),
            stopping: false,
        }
    }

    /// The plans of `diff` whose used fire times the scheduler needs and does not have: give
    /// each with [`Scheduler::remember_fires`] before the diff's [`Event::PlansChanged`].
    pub fn fires_needed(&self, diff: &Diff) -> Vec<String> {
        diff.added
            .iter()
            .chain(diff.changed.iter().map(|(_, new)| new))
            .filter(|p| p.enabled && p.schedule.is_some() && !self.fires.contains_key(&p.name))
            .map(|p| p.name.clone())
            .collect()
    }

    /// Gives a plan's used fire times, as read from the state folder (kept for the
    /// scheduler's life: a plan removed and added again keeps them).
    pub fn remember_fires(&mut self, plan: &str, memory: FireMemory) {
        self.fires.insert(plan.to_string(), memory);
    }

    /// Handles one event at `now`; the actions are to be applied in order.
    pub fn handle(&mut self, now: Now, event: Event<'_>, once: &dyn OnceMemory) -> Vec<Action> {
        let mut s = Step {
            now,
            once,
            out: Vec::new(),
        };
        match event {
            Event::PlansChanged(diff) => self.plans_changed(&mut s, diff),
            Event::TimePassed => {
                self.fire_due(&mut s);
                self.retry_due(&mut s);
                self.admit_waiting(&mut s);
            }
            Event::ClockJumped => self.rearm(&mut s),
            Event::RunEnded { run, outcome } => {
                self.live = self.live.saturating_sub(1);
                self.run_ended(&mut s, run, outcome);
                self.admit_waiting(&mut s);
            }
            Event::ShuttingDown => self.shut_down(&mut s),
            Event::CaughtUp {
                from,
                window,
                until,
            } => {
                self.catch_up(&mut s, from, window, until);
                self.admit_waiting(&mut s);
            }
        }
        s.out
    }

    /// When the caller must come back with [`Event::TimePassed`] at the latest: the next fire
    /// time (on the monotonic clock, from `now`) or the next retry; `None` when nothing waits.
    pub fn next_wake(&self, now: Now) -> Option<Instant> {
        let fire = self
            .armed
            .values()
            .filter_map(|a| a.next)
            .min()
            .map(|fire| now.mono + (fire - now.wall).to_std().unwrap_or(Duration::ZERO));
        let retry = self.retries.iter().map(|(at, _)| *at).min();
        fire.into_iter().chain(retry).min()
    }

    /// The next fire time of each armed plan that has one.
    pub fn next_fires(&self) -> impl Iterator<Item = (&str, DateTime<Utc>)> {
        self.armed
            .iter()
            .filter_map(|(name, a)| a.next.map(|t| (name.as_str(), t)))
    }

    /// How many plans are scheduled and enabled.
    pub fn scheduled(&self) -> usize {
        self.armed.len()
    }

    /// How many runs wait for a run slot or to be tried again.
    pub fn waiting(&self) -> usize {
        self.admission.len() + self.retries.len()
    }

    /// How many runs are started and not ended.
    pub fn running(&self) -> usize {
        self.live
    }

    fn plans_changed(&mut self, s: &mut Step<'_>, diff: &Diff) {
        // The catalog already holds the new versions when the diff comes: so does our view,
        // before any decision (a waiting run is decided on the plan's version now).
        for plan in &diff.removed {
            self.plans.remove(&plan.name);
        }
        for plan in diff
            .added
            .iter()
            .chain(diff.changed.iter().map(|(_, new)| new))
        {
            self.plans.insert(plan.name.clone(), plan.clone());
        }
        for plan in &diff.removed {
            s.note(Note::Removed {
                plan: plan.name.clone(),
            });
            self.armed.remove(&plan.name);
            if let Some(slots) = self.slots.get_mut(&plan.name) {
                slots.queued = None;
            }
        }
        let touched = (diff.added.iter().map(|p| (p, Change::Loaded)))
            .chain(diff.changed.iter().map(|(_, p)| (p, Change::Changed)));
        for (plan, change) in touched {
            match (&plan.schedule, plan.enabled) {
                (_, false) => {
                    s.note(Note::Disabled {
                        plan: plan.name.clone(),
                        change,
                    });
                    self.armed.remove(&plan.name);
                }
                (Some(schedule), true) => {
                    let used = self.used_fires(&plan.name);
                    // A fire already due and not yet taken (the edit came just before it, and
                    // the rescan ran first) stays due: an edit never loses a fire silently.
                    let from = match self.armed.get(&plan.name).and_then(|a| a.next) {
                        Some(due) if due <= s.now.wall => due - TimeDelta::milliseconds(1),
                        _ => s.now.wall,
                    };
                    let next = schedule.next_unused(self.floor(&plan.name, from), &used);
                    s.note(Note::Armed {
                        plan: plan.clone(),
                        change,
                        next,
                    });
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
                    self.arrival(s, plan.clone(), change);
                }
            }
        }
    }

    /// A run-once plan appeared or changed: run it unless this content already ran.
    fn arrival(&mut self, s: &mut Step<'_>, plan: Arc<Plan>, change: Change) {
        match s.once.already_ran(&plan.name, &plan.sha256) {
            Ok(Some(run_id)) => s.note(Note::AlreadyRan {
                plan: plan.name.clone(),
                change: Some(change),
                run_id,
            }),
            Ok(None) => {
                s.note(Note::RunsOnce {
                    plan: plan.name.clone(),
                    change,
                });
                self.request(s, plan, Trigger::Arrival, None);
            }
            Err(e) => {
                // Tried again (the plan takes its slot meanwhile): never run without knowing.
                self.slots.entry(plan.name.clone()).or_default().running += 1;
                let run = Due {
                    plan,
                    trigger: Trigger::Arrival,
                    scheduled_for: None,
                    attempt: 0,
                };
                self.begin_failed(s, run, format!("the run-once memory cannot be read ({e})"));
            }
        }
    }

    /// Takes every fire time that is due: the armed one, and each later one the clock has
    /// passed too (a paused process, a busy host, a small clock jump). Each is run if at most
    /// [`MISSED_FIRE`] late, or skipped as missed; a span of missed fire times is named by its
    /// ends in one line, so that every fire time is accounted for.
    fn fire_due(&mut self, s: &mut Step<'_>) {
        let now = s.now.wall;
        let recent = now - TimeDelta::from_std(MISSED_FIRE).unwrap_or(TimeDelta::MAX);
        let due: Vec<(Arc<Plan>, DateTime<Utc>)> = self
            .armed
            .values()
            .filter_map(|a| a.next.filter(|t| *t <= now).map(|t| (a.plan.clone(), t)))
            .collect();
        for (plan, first) in due {
            let Some(schedule) = plan.schedule.clone() else {
                continue;
            };
            let mut at = first;
            let mut taken = 0;
            let used = loop {
                // Recorded (claimed) before it is started: a cluster's claim decides whether
                // it may.
                let record = s.out.len();
                let used = self.use_fire(s, &plan.name, at);
                let late = (now - at).to_std().unwrap_or(Duration::ZERO);
                let runs = if late > MISSED_FIRE {
                    s.note(Note::FireSkipped {
                        plan: plan.name.clone(),
                        at,
                        reason: SkipReason::Missed { late },
                    });
                    false
                } else {
                    self.request(s, plan.clone(), Trigger::Schedule, Some(at))
                };
                s.mark_runs(record, runs);
                taken += 1;
                let Some(next) = schedule.next_unused(self.floor(&plan.name, at), &used) else {
                    break used;
                };
                if next > now || taken >= CATCH_UP_MAX {
                    break used;
                }
                if next >= recent {
                    at = next;
                    continue;
                }
                // Missed by more than MISSED_FIRE: the span up to the first recent fire time
                // is named, not walked (a year asleep is not millions of lines).
                let resume = schedule.next_unused(
                    self.floor(&plan.name, recent - TimeDelta::milliseconds(1)),
                    &used,
                );
                s.note(Note::MissedSpan {
                    plan: plan.name.clone(),
                    after: at,
                    before: resume,
                });
                match resume {
                    Some(r) if r <= now => at = r,
                    _ => break used,
                }
            };
            let floor = self.floor(&plan.name, at.max(now));
            if let Some(a) = self.armed.get_mut(&plan.name) {
                a.next = schedule.next_unused(floor, &used);
            }
        }
    }

    /// A takeover's catch-up: the fire times from `from` to now no node used, each recorded
    /// then requested, in order; then every plan is armed again from now.
    fn catch_up(
        &mut self,
        s: &mut Step<'_>,
        from: DateTime<Utc>,
        window: DateTime<Utc>,
        until: DateTime<Utc>,
    ) {
        let now = s.now.wall;
        let until = until.min(now);
        let plans: Vec<Arc<Plan>> = self.armed.values().map(|a| a.plan.clone()).collect();
        for plan in plans {
            let Some(schedule) = plan.schedule.clone() else {
                continue;
            };
            // The cluster fired this plan up to its last used fire time: the times after it
            // that no node used were missed, even before the dead leader's last renewal.
            let last_used = self
                .fires
                .get(&plan.name)
                .and_then(|m| m.used.iter().max().copied());
            let start = match last_used {
                Some(last) if last >= window => from.min(last),
                _ => from,
            };
            let mut cursor = self.floor(&plan.name, start - TimeDelta::milliseconds(1));
            let mut ran = 0;
            while let Some(at) = schedule.next_unused(cursor, &self.used_fires(&plan.name)) {
                if at > until {
                    // Past on this host's clock only (it is ahead of the database's): named,
                    // not run.
                    if at <= now {
                        let used = self.used_fires(&plan.name);
                        s.note(Note::MissedSpan {
                            plan: plan.name.clone(),
                            after: until,
                            before: schedule.next_unused(self.floor(&plan.name, now), &used),
                        });
                    }
                    break;
                }
                if ran == CATCH_UP_MAX {
                    // The rest of the window is not run (nor recorded, one by one).
                    s.note(Note::FireSkipped {
                        plan: plan.name.clone(),
                        at,
                        reason: SkipReason::Missed {
                            late: (now - at).to_std().unwrap_or(Duration::ZERO),
                        },
                    });
                    break;
                }
                let record = s.out.len();
                self.use_fire(s, &plan.name, at);
                let runs = self.request(s, plan.clone(), Trigger::Schedule, Some(at));
                s.mark_runs(record, runs);
                ran += 1;
                cursor = at;
            }
            let used = self.used_fires(&plan.name);
            let floor = self.floor(&plan.name, now);
            if let Some(a) = self.armed.get_mut(&plan.name) {
                a.next = schedule.next_unused(floor, &used);
            }
        }
    }

    /// The fire times of a plan it remembers as used, oldest first.
    pub fn used_fire_times(&self, plan: &str) -> &[DateTime<Utc>] {
        self.fires.get(plan).map_or(&[], |m| m.used.as_slice())
    }

    /// The fire times of a plan already used (empty when the wiring gave none).
    fn used_fires(&mut self, plan: &str) -> Vec<DateTime<Utc>> {
        self.fires.entry(plan.to_string()).or_default().used.clone()
    }

    /// `from`, or later when a damaged memory of used fire times forbids earlier ones.
    fn floor(&self, plan: &str, from: DateTime<Utc>) -> DateTime<Utc> {
        match self.fires.get(plan).and_then(|m| m.floor) {
            Some(floor) => from.max(floor),
            None => from,
        }
    }

    /// Marks a fire time used (run or skipped), and asks for it to be kept durably: it never
    /// runs again.
    fn use_fire(&mut self, s: &mut Step<'_>, plan: &str, at: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let memory = self.fires.entry(plan.to_string()).or_default();
        memory.used.push(at);
        let excess = memory.used.len().saturating_sub(crate::store::FIRES_KEPT);
        memory.used.drain(..excess);
        s.out.push(Action::RecordFire {
            plan: plan.to_string(),
            at,
            runs: true,
        });
        memory.used.clone()
    }

    /// After a jump of the wall clock: every schedule whose next fire is still ahead is
    /// armed again from now (a fire already due is left to `fire_due`, which runs it or skips
    /// it as missed), so that no schedule waits on a time the clock passed or has not reached.
    fn rearm(&mut self, s: &mut Step<'_>) {
        let now = s.now.wall;
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
                .and_then(|sch| sch.next_unused(floor, &used));
            if next != a.next {
                s.note(Note::Rearmed {
                    plan: name.clone(),
                    next,
                });
                a.next = next;
            }
        }
    }

    /// Starts a run now, or applies the overlap policy if one of the plan's is in progress.
    fn request(
        &mut self,
        s: &mut Step<'_>,
        plan: Arc<Plan>,
        trigger: Trigger,
        scheduled_for: Option<DateTime<Utc>>,
    ) -> bool {
        let slots = self.slots.entry(plan.name.clone()).or_default();
        if slots.running > 0 {
            // An arrival always waits its turn: dropping it would silently lose a deploy.
            let policy = if trigger == Trigger::Arrival {
                Overlap::Queue
            } else {
                plan.overlap
            };
            let name = plan.name.clone();
            let run = Due {
                plan,
                trigger,
                scheduled_for,
                attempt: 0,
            };
            match policy {
                Overlap::Skip => {
                    s.note(Note::FireSkipped {
                        plan: name,
                        at: scheduled_for.unwrap_or(s.now.wall),
                        reason: SkipReason::Overlap,
                    });
                    return false;
                }
                // New content of a run-once plan replaces whatever waited.
                Overlap::Queue if trigger == Trigger::Arrival && slots.queued.is_some() => {
                    slots.queued = Some(run);
                    s.note(Note::Waits {
                        plan: name,
                        why: WaitReason::NewContent,
                    });
                }
                Overlap::Queue if slots.queued.is_some() => {
                    s.note(Note::FireSkipped {
                        plan: name,
                        at: scheduled_for.unwrap_or(s.now.wall),
                        reason: SkipReason::QueueFull,
                    });
                    return false;
                }
                Overlap::Queue => {
                    slots.queued = Some(run);
                    s.note(Note::Waits {
                        plan: name,
                        why: WaitReason::PreviousRun,
                    });
                }
                Overlap::Allow => self.start(s, run),
            }
            return true;
        }
        self.start(
            s,
            Due {
                plan,
                trigger,
                scheduled_for,
                attempt: 0,
            },
        );
        true
    }

    /// A run is due: it takes one of its plan's slots now, and starts when one of the
    /// `max_runs` run slots is free (in the order runs became due).
    fn start(&mut self, s: &mut Step<'_>, run: Due) {
        self.slots.entry(run.plan.name.clone()).or_default().running += 1;
        self.admit(s, run);
    }

    /// Starts a run whose plan slot is taken, or queues it for a run slot.
    fn admit(&mut self, s: &mut Step<'_>, run: Due) {
        if self.live >= self.max_runs || !self.admission.is_empty() {
            s.note(Note::Waits {
                plan: run.plan.name.clone(),
                why: WaitReason::RunSlot {
                    waiting: self.admission.len() + 1,
                    max_runs: self.max_runs,
                    running: self.live,
                },
            });
            self.admission.push_back(run);
            return;
        }
        self.launch(s, run);
    }

    fn launch(&mut self, s: &mut Step<'_>, run: Due) {
        self.live += 1;
        s.out.push(Action::Start(run));
    }

    /// Starts runs waiting for a run slot while slots are free.
    fn admit_waiting(&mut self, s: &mut Step<'_>) {
        while self.live < self.max_runs && !self.stopping {
            let Some(run) = self.admission.pop_front() else {
                break;
            };
            // Decided on the plan's version now, as a fresh fire would be.
            match self.current_version(s, &run) {
                Some(current) => self.launch(
                    s,
                    Due {
                        plan: current,
                        ..run
                    },
                ),
                None => self.slot_freed(s, &run.plan.name),
            }
        }
    }

    /// The version of the plan a waiting run should run now, or `None` (noted) when it
    /// should not run: the plan was removed or disabled, switched between scheduled and
    /// run-once, or (run-once) its content changed, the new content having its own turn.
    fn current_version(&self, s: &mut Step<'_>, run: &Due) -> Option<Arc<Plan>> {
        let name = &run.plan.name;
        let dropped = |reason| Note::Dropped {
            plan: name.clone(),
            reason,
        };
        let Some(current) = self.plans.get(name).filter(|p| p.enabled) else {
            s.note(dropped(DropReason::RemovedOrDisabled));
            return None;
        };
        match (run.trigger, &current.schedule) {
            (Trigger::Arrival, None) if current.sha256 == run.plan.sha256 => Some(current.clone()),
            (Trigger::Arrival, None) => {
                s.note(dropped(DropReason::ContentChanged));
                None
            }
            (Trigger::Schedule, Some(_)) => Some(current.clone()),
            _ => {
                s.note(dropped(DropReason::Switched));
                None
            }
        }
    }

    /// A run could not begin: it is tried again after a pause (doubling), and after the last
    /// attempt it gets a `failed` result naming the cause. A fire that late is not run any
    /// more; a run-once plan is tried again every minute until it can begin.
    fn begin_failed(&mut self, s: &mut Step<'_>, run: Due, cause: String) {
        let last = run.attempt + 1 >= BEGIN_ATTEMPTS;
        if run.attempt + 1 == BEGIN_ATTEMPTS {
            s.out.push(Action::ReportNotBegun {
                run: run.clone(),
                cause: cause.clone(),
            });
        }
        if last && run.trigger != Trigger::Arrival {
            self.slot_freed(s, &run.plan.name);
            return;
        }
        // A run-once plan is tried again until it can begin (space comes back): its content
        // is not remembered as run, so nothing else would ever run it.
        let delay = if last {
            BEGIN_RETRY_MAX
        } else {
            BEGIN_BACKOFF * 2u32.pow(run.attempt.min(6))
        };
        s.note(Note::BeginRetry {
            plan: run.plan.name.clone(),
            attempt: run.attempt + 1,
            delay,
            cause,
        });
        self.retries.push((
            s.now.mono + delay,
            Due {
                attempt: run.attempt + 1,
                ..run
            },
        ));
    }

    /// Runs whose beginning failed, tried again when due (on the plan's current state).
    fn retry_due(&mut self, s: &mut Step<'_>) {
        let now = s.now.mono;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.retries = later;
        for (_, run) in due {
            let name = run.plan.name.clone();
            let Some(current) = self.current_version(s, &run) else {
                self.slot_freed(s, &name);
                continue;
            };
            let run = Due {
                plan: current,
                ..run
            };
            if run.trigger == Trigger::Arrival {
                match s.once.already_ran(&name, &run.plan.sha256) {
                    Ok(None) => {}
                    Ok(Some(run_id)) => {
                        s.note(Note::AlreadyRan {
                            plan: name.clone(),
                            change: None,
                            run_id,
                        });
                        self.slot_freed(s, &name);
                        continue;
                    }
                    Err(e) => {
                        self.begin_failed(
                            s,
                            run,
                            format!("the run-once memory cannot be read ({e})"),
                        );
                        continue;
                    }
                }
            }
            self.admit(s, run);
        }
    }

    fn run_ended(&mut self, s: &mut Step<'_>, run: Due, outcome: RunOutcome) {
        match outcome {
            // Keeps its plan slot while it waits to be tried again.
            RunOutcome::NotBegun(cause) if !self.stopping => self.begin_failed(s, run, cause),
            RunOutcome::NotBegun(cause) => {
                s.note(Note::NotStarted {
                    plan: run.plan.name.clone(),
                    scheduled_for: run.scheduled_for,
                    why: NotStartedReason::NotBegun(cause),
                });
                self.slot_freed(s, &run.plan.name);
            }
            RunOutcome::Ended | RunOutcome::NotRun => self.slot_freed(s, &run.plan.name),
        }
    }

    /// One of a plan's runs ended (or will not begin): a run waiting for it starts.
    fn slot_freed(&mut self, s: &mut Step<'_>, name: &str) {
        let queued = self.slots.get_mut(name).and_then(|slots| {
            slots.running = slots.running.saturating_sub(1);
            slots.queued.take()
        });
        let Some(queued) = queued.filter(|_| !self.stopping) else {
            return;
        };
        // The plan may have changed, been disabled or removed while the fire waited: decide
        // on its current version, as a fresh fire would.
        let dropped = |reason| Note::Dropped {
            plan: name.to_string(),
            reason,
        };
        let Some(current) = self.plans.get(name).cloned() else {
            s.note(dropped(DropReason::Removed));
            return;
        };
        if !current.enabled {
            s.note(dropped(DropReason::Disabled));
            return;
        }
        match (queued.trigger, &current.schedule) {
            // Asks the run-once memory again: reverting to content that already ran does not
            // run it again.
            (Trigger::Arrival, None) => self.arrival(s, current, Change::Changed),
            (Trigger::Schedule, Some(_)) => self.start(
                s,
                Due {
                    plan: current,
                    ..queued
                },
            ),
            _ => s.note(dropped(DropReason::Switched)),
        }
    }

    fn shut_down(&mut self, s: &mut Step<'_>) {
        self.stopping = true;
        // Every fire is accounted for: the runs waiting for a run slot, to be tried again, or
        // behind their plan's running run (`overlap: queue`, a changed run-once plan).
        let queued: Vec<Due> = self
            .slots
            .values_mut()
            .filter_map(|slots| slots.queued.take())
            .collect();
        let waiting: Vec<Due> = self
            .admission
            .drain(..)
            .chain(
                std::mem::take(&mut self.retries)
                    .into_iter()
                    .map(|(_, r)| r),
            )
            .chain(queued)
            .collect();
        for run in waiting {
            s.note(Note::NotStarted {
                plan: run.plan.name.clone(),
                scheduled_for: run.scheduled_for,
                why: NotStartedReason::Waiting,
            });
        }
    }
}

/// One event's handling: its time, the run-once memory, the actions so far.
struct Step<'a> {
    now: Now,
    once: &'a dyn OnceMemory,
    out: Vec<Action>,
}

impl Step<'_> {
    /// Says whether the fire recorded by the action at `index` runs.
    fn mark_runs(&mut self, index: usize, runs: bool) {
        if let Some(Action::RecordFire { runs: r, .. }) = self.out.get_mut(index) {
            *r = runs;
        }
    }

    fn note(&mut self, note: Note) {
        self.out.push(Action::Note(note));
    }
}
