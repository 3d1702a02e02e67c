//! The scheduler on simulated time: the clocks are values the tests move, runs end when the
//! tests say so, and the run-once memory is a map. No tokio, no sleeps, no files.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::zone::Zone;
use chrono::{DateTime, TimeDelta, Utc};

use super::*;
use crate::plan::{Overlap, Plan, RetryOverrides, Task};
use crate::schedule::Schedule;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("time").to_utc()
}

fn plan_with(name: &str, sha: &str, cron: Option<(&str, Zone)>, overlap: Overlap) -> Arc<Plan> {
    Arc::new(Plan {
        name: name.into(),
        file_name: format!("{name}.yaml"),
        sha256: sha.into(),
        schedule: cron.map(|(expr, tz)| Schedule::parse(expr, tz).expect("cron")),
        enabled: true,
        overlap,
        trigger_source: None,
        concurrency: None,
        retry: RetryOverrides::default(),
        follow: None,
        tasks: vec![Task {
            task_id: "a".repeat(32),
            params: vec![],
            record_id: None,
        }],
    })
}

/// A scheduled plan in UTC.
fn cron(name: &str, sha: &str, expr: &str, overlap: Overlap) -> Arc<Plan> {
    plan_with(name, sha, Some((expr, Zone::utc())), overlap)
}

/// A run-once plan.
fn once(name: &str, sha: &str) -> Arc<Plan> {
    plan_with(name, sha, None, Overlap::Skip)
}

fn disabled(plan: &Arc<Plan>, sha: &str) -> Arc<Plan> {
    let mut p = (**plan).clone();
    p.enabled = false;
    p.sha256 = sha.into();
    Arc::new(p)
}

/// The run-once memory: what ran, and whether it can be read at all.
#[derive(Default)]
struct Memory {
    ran: RefCell<HashMap<(String, String), RunId>>,
    broken: RefCell<bool>,
}

impl OnceMemory for Memory {
    fn already_ran(&self, plan: &str, sha256: &str) -> Result<Option<RunId>, String> {
        if *self.broken.borrow() {
            return Err("disk on fire".into());
        }
        Ok(self
            .ran
            .borrow()
            .get(&(plan.to_string(), sha256.to_string()))
            .cloned())
    }
}

/// A scheduler, its clocks and its run-once memory.
struct Sim {
    s: Scheduler,
    now: Now,
    memory: Memory,
}

impl Sim {
    fn new(max_runs: usize, wall: &str) -> Self {
        Self {
            s: Scheduler::new(max_runs),
            // The one clock read of these tests: a base for simulated monotonic time.
            now: Now {
                wall: t(wall),
                mono: Instant::now(),
            },
            memory: Memory::default(),
        }
    }

    fn event(&mut self, event: Event<'_>) -> Vec<Action> {
        self.s.handle(self.now, event, &self.memory)
    }

    fn diff(&mut self, diff: Diff) -> Vec<Action> {
        for name in self.s.fires_needed(&diff) {
            self.s.remember_fires(&name, FireMemory::default());
        }
        self.event(Event::PlansChanged(&diff))
    }

    fn add(&mut self, plans: &[&Arc<Plan>]) -> Vec<Action> {
        self.diff(Diff {
            added: plans.iter().map(|p| Arc::clone(p)).collect(),
            ..Diff::default()
        })
    }

    fn change(&mut self, old: &Arc<Plan>, new: &Arc<Plan>) -> Vec<Action> {
        self.diff(Diff {
            changed: vec![(old.clone(), new.clone())],
            ..Diff::default()
        })
    }

    fn remove(&mut self, plan: &Arc<Plan>) -> Vec<Action> {
        self.diff(Diff {
            removed: vec![plan.clone()],
            ..Diff::default()
        })
    }

    /// Both clocks move on, and the scheduler is told.
    fn pass(&mut self, by: Duration) -> Vec<Action> {
        self.now.wall += TimeDelta::from_std(by).expect("delta");
        self.now.mono += by;
        self.event(Event::TimePassed)
    }

    /// Both clocks move to `wall`.
    fn pass_to(&mut self, wall: &str) -> Vec<Action> {
        let by = (t(wall) - self.now.wall).to_std().expect("forward");
        self.pass(by)
    }

    /// The wall clock is stepped to `wall` (the monotonic clock moves a second).
    fn jump_to(&mut self, wall: &str) -> Vec<Action> {
        self.now.wall = t(wall);
        self.now.mono += Duration::from_secs(1);
        let mut actions = self.event(Event::ClockJumped);
        actions.extend(self.event(Event::TimePassed));
        actions
    }

    fn ended(&mut self, run: Due, outcome: RunOutcome) -> Vec<Action> {
        self.event(Event::RunEnded { run, outcome })
    }

    /// Runs the schedules until `wall`, waking when the scheduler asks, each run ending at
    /// once; returns the fire times that started.
    fn run_until(&mut self, wall: &str) -> Vec<DateTime<Utc>> {
        let end = t(wall);
        let mut fired = Vec::new();
        loop {
            let wake = self
                .s
                .next_wake(self.now)
                .map(|at| at.saturating_duration_since(self.now.mono));
            let left = (end - self.now.wall).to_std().unwrap_or(Duration::ZERO);
            let step = wake.map_or(left, |w| w.min(left));
            let actions = self.pass(step);
            for run in starts(&actions) {
                fired.extend(run.scheduled_for);
                self.ended(run, RunOutcome::Ended);
            }
            if self.now.wall >= end {
                return fired;
            }
        }
    }

    fn next(&self, plan: &str) -> Option<DateTime<Utc>> {
        self.s
            .next_fires()
            .find(|(name, _)| *name == plan)
            .map(|(_, t)| t)
    }
}

fn starts(actions: &[Action]) -> Vec<Due> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Start(run) => Some(run.clone()),
            _ => None,
        })
        .collect()
}

fn only_start(actions: &[Action]) -> Due {
    let runs = starts(actions);
    assert_eq!(runs.len(), 1, "one start expected: {actions:#?}");
    runs.into_iter().next().expect("one")
}

fn notes(actions: &[Action]) -> Vec<Note> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Note(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

fn skips(actions: &[Action]) -> Vec<(DateTime<Utc>, SkipReason)> {
    notes(actions)
        .into_iter()
        .filter_map(|n| match n {
            Note::FireSkipped { at, reason, .. } => Some((at, reason)),
            _ => None,
        })
        .collect()
}

fn drops(actions: &[Action]) -> Vec<DropReason> {
    notes(actions)
        .into_iter()
        .filter_map(|n| match n {
            Note::Dropped { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

fn recorded(actions: &[Action]) -> Vec<DateTime<Utc>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RecordFire { at, .. } => Some(*at),
            _ => None,
        })
        .collect()
}

// --- daylight saving time -------------------------------------------------------------------

#[test]
fn spring_forward_a_time_in_the_gap_fires_once_at_the_end_of_the_gap() {
    // 2026-03-29, Europe/Berlin: 02:00 CET jumps to 03:00 CEST (01:00Z); 02:30 does not exist.
    let mut sim = Sim::new(8, "2026-03-28T23:00:00Z");
    let berlin = Zone::parse("Europe/Berlin").expect("zone");
    let nightly = plan_with(
        "nightly",
        "1",
        Some(("0 30 2 * * *", berlin)),
        Overlap::Skip,
    );
    sim.add(&[&nightly]);
    assert_eq!(sim.next("nightly"), Some(t("2026-03-29T01:00:00Z")));
    let fired = sim.run_until("2026-03-30T12:00:00Z");
    assert_eq!(
        fired,
        [t("2026-03-29T01:00:00Z"), t("2026-03-30T00:30:00Z")],
        "03:00 CEST on the short night, then 02:30 CEST"
    );
}

#[test]
fn fall_back_a_repeated_time_fires_once() {
    // 2026-10-25, Europe/Berlin: 03:00 CEST goes back to 02:00 CET (01:00Z); 02:30 occurs twice.
    let mut sim = Sim::new(8, "2026-10-24T22:00:00Z");
    let berlin = Zone::parse("Europe/Berlin").expect("zone");
    let nightly = plan_with(
        "nightly",
        "1",
        Some(("0 30 2 * * *", berlin.clone())),
        Overlap::Skip,
    );
    let half = plan_with("half", "1", Some(("0 30 * * * *", berlin)), Overlap::Skip);
    sim.add(&[&nightly, &half]);
    let fired = sim.run_until("2026-10-25T03:00:00Z");
    assert_eq!(
        fired,
        [
            t("2026-10-24T22:30:00Z"), // half: 00:30 CEST
            t("2026-10-24T23:30:00Z"), // half: 01:30 CEST
            t("2026-10-25T00:30:00Z"), // both: 02:30 CEST
            t("2026-10-25T00:30:00Z"),
            t("2026-10-25T02:30:00Z"), // half: 03:30 CET; 02:30 CET (01:30Z) is not fired again
        ]
    );
    assert_eq!(sim.next("nightly"), Some(t("2026-10-26T01:30:00Z")));
}

// --- the wall clock -------------------------------------------------------------------------

#[test]
fn a_clock_set_back_never_fires_a_used_fire_time_again() {
    let mut sim = Sim::new(8, "2026-06-01T09:59:30Z");
    let tick = cron("tick", "1", "0 */10 * * * *", Overlap::Skip);
    sim.add(&[&tick]);
    let fired = sim.run_until("2026-06-01T10:25:00Z");
    assert_eq!(fired.len(), 3, "10:00, 10:10, 10:20: {fired:?}");
    let actions = sim.jump_to("2026-06-01T09:55:00Z");
    assert!(starts(&actions).is_empty());
    assert_eq!(
        sim.next("tick"),
        Some(t("2026-06-01T10:30:00Z")),
        "the used 10:00, 10:10 and 10:20 are passed over"
    );
    let again = sim.run_until("2026-06-01T10:35:00Z");
    assert_eq!(again, [t("2026-06-01T10:30:00Z")]);
}

#[test]
fn a_clock_set_back_rearms_a_schedule_on_a_time_it_had_not_used() {
    let mut sim = Sim::new(8, "2026-06-01T10:05:00Z");
    let tick = cron("tick", "1", "0 */10 * * * *", Overlap::Skip);
    sim.add(&[&tick]);
    assert_eq!(sim.next("tick"), Some(t("2026-06-01T10:10:00Z")));
    let actions = sim.jump_to("2026-06-01T08:00:30Z");
    assert!(
        notes(&actions).contains(&Note::Rearmed {
            plan: "tick".into(),
            next: Some(t("2026-06-01T08:10:00Z")),
        }),
        "{actions:#?}"
    );
    assert_eq!(
        sim.run_until("2026-06-01T08:15:00Z"),
        [t("2026-06-01T08:10:00Z")]
    );
}

#[test]
fn a_clock_set_forward_skips_the_fire_it_passed_and_arms_the_next() {
    let mut sim = Sim::new(8, "2026-06-01T10:05:00Z");
    let tick = cron("tick", "1", "0 */10 * * * *", Overlap::Skip);
    sim.add(&[&tick]);
    let actions = sim.jump_to("2026-06-01T12:03:00Z");
    assert!(starts(&actions).is_empty(), "not replayed: {actions:#?}");
    let late = Duration::from_secs(3600 + 53 * 60);
    assert_eq!(
        skips(&actions),
        [(t("2026-06-01T10:10:00Z"), SkipReason::Missed { late })]
    );
    assert_eq!(recorded(&actions), [t("2026-06-01T10:10:00Z")]);
    assert_eq!(sim.next("tick"), Some(t("2026-06-01T12:10:00Z")));
}

#[test]
fn a_suspended_host_runs_no_missed_fire_and_arms_the_next() {
    let mut sim = Sim::new(8, "2026-06-01T10:05:00Z");
    let tick = cron("tick", "1", "0 */10 * * * *", Overlap::Skip);
    sim.add(&[&tick]);
    // Asleep for three hours: one wake, long after the armed fire (and 17 others).
    let actions = sim.pass(Duration::from_secs(3 * 3600));
    assert!(starts(&actions).is_empty());
    assert_eq!(
        skips(&actions).len(),
        1,
        "the armed fire is logged as missed"
    );
    assert_eq!(sim.next("tick"), Some(t("2026-06-01T13:10:00Z")));
    assert_eq!(
        sim.run_until("2026-06-01T13:10:00Z"),
        [t("2026-06-01T13:10:00Z")]
    );
}

#[test]
fn a_fire_found_late_runs_within_a_minute_and_not_after() {
    let mut sim = Sim::new(8, "2026-06-01T10:05:00Z");
    let tick = cron("tick", "1", "0 */10 * * * *", Overlap::Skip);
    sim.add(&[&tick]);
    let run = only_start(&sim.pass_to("2026-06-01T10:11:00Z"));
    assert_eq!(run.scheduled_for, Some(t("2026-06-01T10:10:00Z")));
    sim.ended(run, RunOutcome::Ended);
    let actions = sim.pass_to("2026-06-01T10:21:00.001Z");
    assert!(starts(&actions).is_empty());
    assert!(matches!(
        skips(&actions)[..],
        [(_, SkipReason::Missed { .. })]
    ));
}

// --- edits ------------------------------------------------------------------------------------

#[test]
fn an_edit_just_after_the_fire_time_and_before_the_fire_keeps_the_fire() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:30Z");
    let v1 = cron("tick", "1", "0 * * * * *", Overlap::Skip);
    let v2 = cron("tick", "2", "0 * * * * *", Overlap::Skip);
    sim.add(&[&v1]);
    // The rescan of the edit comes 50 ms after the fire time, before the fire is taken.
    sim.now.wall = t("2026-06-01T10:01:00.050Z");
    sim.change(&v1, &v2);
    assert_eq!(sim.next("tick"), Some(t("2026-06-01T10:01:00Z")));
    let run = only_start(&sim.event(Event::TimePassed));
    assert_eq!(run.scheduled_for, Some(t("2026-06-01T10:01:00Z")));
    assert_eq!(run.plan.sha256, "2", "the new version runs it");
}

#[test]
fn an_edit_just_before_the_fire_to_a_schedule_without_it_arms_the_new_schedule() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:30Z");
    let v1 = cron("tick", "1", "0 * * * * *", Overlap::Skip);
    let v2 = cron("tick", "2", "0 */5 * * * *", Overlap::Skip);
    sim.add(&[&v1]);
    sim.now.wall = t("2026-06-01T10:00:59.900Z");
    sim.change(&v1, &v2);
    assert_eq!(sim.next("tick"), Some(t("2026-06-01T10:05:00Z")));
    assert!(starts(&sim.pass_to("2026-06-01T10:01:30Z")).is_empty());
}

// --- overlap ----------------------------------------------------------------------------------

#[test]
fn overlap_skip_skips_a_fire_while_the_last_run_goes() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:30Z");
    let p = cron("p", "1", "0 * * * * *", Overlap::Skip);
    sim.add(&[&p]);
    let first = only_start(&sim.pass_to("2026-06-01T10:01:00Z"));
    let actions = sim.pass_to("2026-06-01T10:02:00Z");
    assert!(starts(&actions).is_empty());
    assert_eq!(
        skips(&actions),
        [(t("2026-06-01T10:02:00Z"), SkipReason::Overlap)]
    );
    assert_eq!(
        recorded(&actions),
        [t("2026-06-01T10:02:00Z")],
        "a skipped fire is used too"
    );
    assert_eq!(
        sim.s.used_fire_times("p"),
        [t("2026-06-01T10:01:00Z"), t("2026-06-01T10:02:00Z")]
    );
    assert!(starts(&sim.ended(first, RunOutcome::Ended)).is_empty());
    assert_eq!(sim.s.running(), 0);
}

#[test]
fn overlap_queue_keeps_one_fire_waiting_and_drops_the_next() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:30Z");
    let p = cron("p", "1", "0 * * * * *", Overlap::Queue);
    sim.add(&[&p]);
    let first = only_start(&sim.pass_to("2026-06-01T10:01:00Z"));
    let second = sim.pass_to("2026-06-01T10:02:00Z");
    assert!(starts(&second).is_empty());
    assert!(notes(&second).contains(&Note::Waits {
        plan: "p".into(),
        why: WaitReason::PreviousRun
    }));
    let third = sim.pass_to("2026-06-01T10:03:00Z");
    assert_eq!(
        skips(&third),
        [(t("2026-06-01T10:03:00Z"), SkipReason::QueueFull)]
    );
    let queued = only_start(&sim.ended(first, RunOutcome::Ended));
    assert_eq!(queued.scheduled_for, Some(t("2026-06-01T10:02:00Z")));
    assert!(starts(&sim.ended(queued, RunOutcome::Ended)).is_empty());
}

/// A fire waiting behind its plan's run at shutdown is reported, not dropped in silence.
#[test]
fn a_queued_fire_at_shutdown_is_reported_not_started() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:30Z");
    let p = cron("p", "1", "0 * * * * *", Overlap::Queue);
    sim.add(&[&p]);
    let first = only_start(&sim.pass_to("2026-06-01T10:01:00Z"));
    assert!(starts(&sim.pass_to("2026-06-01T10:02:00Z")).is_empty());
    let actions = sim.event(Event::ShuttingDown);
    assert_eq!(
        notes(&actions),
        [Note::NotStarted {
            plan: "p".into(),
            scheduled_for: Some(t("2026-06-01T10:02:00Z")),
            why: NotStartedReason::Waiting,
        }]
    );
    assert!(starts(&sim.ended(first, RunOutcome::Ended)).is_empty());
}

#[test]
fn overlap_queue_runs_the_waiting_fire_on_the_version_of_its_turn() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:30Z");
    let v1 = cron("p", "1", "0 * * * * *", Overlap::Queue);
    let v2 = cron("p", "2", "0 * * * * *", Overlap::Queue);
    sim.add(&[&v1]);
    let first = only_start(&sim.pass_to("2026-06-01T10:01:00Z"));
    sim.pass_to("2026-06-01T10:02:00Z");
    sim.change(&v1, &v2);
    let queued = only_start(&sim.ended(first, RunOutcome::Ended));
    assert_eq!(queued.plan.sha256, "2");
}

#[test]
fn overlap_allow_runs_alongside() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:30Z");
    let p = cron("p", "1", "0 * * * * *", Overlap::Allow);
    sim.add(&[&p]);
    only_start(&sim.pass_to("2026-06-01T10:01:00Z"));
    only_start(&sim.pass_to("2026-06-01T10:02:00Z"));
    assert_eq!(sim.s.running(), 2);
}

// --- admission (max_runs) ---------------------------------------------------------------------

#[test]
fn runs_beyond_max_runs_wait_their_turn_in_order() {
    let mut sim = Sim::new(2, "2026-06-01T10:00:00Z");
    let plans: Vec<Arc<Plan>> = ["a", "b", "c", "d"].iter().map(|n| once(n, "1")).collect();
    let actions = sim.add(&plans.iter().collect::<Vec<_>>());
    let started = starts(&actions);
    assert_eq!(
        started
            .iter()
            .map(|r| r.plan.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(notes(&actions).contains(&Note::Waits {
        plan: "d".into(),
        why: WaitReason::RunSlot {
            waiting: 2,
            max_runs: 2,
            running: 2
        }
    }));
    assert_eq!(sim.s.waiting(), 2);
    // Time passing frees nothing.
    assert!(starts(&sim.pass(Duration::from_secs(600))).is_empty());
    let mut started = started.into_iter();
    let next = only_start(&sim.ended(started.next().expect("a"), RunOutcome::Ended));
    assert_eq!(next.plan.name, "c");
    let next = only_start(&sim.ended(next, RunOutcome::Ended));
    assert_eq!(next.plan.name, "d");
    assert_eq!(sim.s.waiting(), 0);
    assert_eq!(sim.s.running(), 2);
}

#[test]
fn a_run_waiting_for_a_run_slot_is_dropped_when_its_plan_is_removed_or_disabled() {
    let mut sim = Sim::new(1, "2026-06-01T10:00:00Z");
    let (a, b, c) = (once("a", "1"), once("b", "1"), once("c", "1"));
    let a_run = only_start(&sim.add(&[&a, &b, &c]));
    sim.remove(&b);
    sim.change(&c, &disabled(&c, "2"));
    let actions = sim.ended(a_run, RunOutcome::Ended);
    assert!(starts(&actions).is_empty(), "{actions:#?}");
    assert_eq!(
        drops(&actions),
        [DropReason::RemovedOrDisabled, DropReason::RemovedOrDisabled]
    );
    assert_eq!((sim.s.running(), sim.s.waiting()), (0, 0));
}

// --- run-once plans ---------------------------------------------------------------------------

#[test]
fn a_run_once_plan_runs_on_arrival_and_its_content_never_again() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:00Z");
    let p = once("p", "1");
    let run = only_start(&sim.add(&[&p]));
    assert_eq!((run.trigger, run.scheduled_for), (Trigger::Arrival, None));
    assert_eq!(
        run.claim(),
        Claim::Content {
            plan: "p".into(),
            sha256: "1".into()
        }
    );
    // The run records its content as run before its first call (the wiring does).
    sim.memory.ran.borrow_mut().insert(
        ("p".into(), "1".into()),
        RunId::from_string("20260601T100000Z-00000001".into()),
    );
    sim.ended(run, RunOutcome::Ended);
    sim.remove(&p);
    let back = sim.add(&[&p]);
    assert!(starts(&back).is_empty());
    assert!(matches!(notes(&back)[..], [Note::AlreadyRan { .. }]));
    assert!(starts(&sim.pass(Duration::from_secs(3600))).is_empty());
}

#[test]
fn a_run_once_plan_changed_while_it_runs_runs_its_newest_content_after() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:00Z");
    let (v1, v2, v3) = (once("p", "1"), once("p", "2"), once("p", "3"));
    let run = only_start(&sim.add(&[&v1]));
    let waits = sim.change(&v1, &v2);
    assert!(
        starts(&waits).is_empty(),
        "never alongside its previous run"
    );
    let replaced = sim.change(&v2, &v3);
    assert!(notes(&replaced).contains(&Note::Waits {
        plan: "p".into(),
        why: WaitReason::NewContent
    }));
    let next = only_start(&sim.ended(run, RunOutcome::Ended));
    assert_eq!(next.plan.sha256, "3", "the newest content, once");
    assert!(starts(&sim.ended(next, RunOutcome::Ended)).is_empty());
}

#[test]
fn a_run_once_plan_reverted_while_it_runs_does_not_run_the_old_content_twice() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:00Z");
    let (v1, v2) = (once("p", "1"), once("p", "2"));
    let run = only_start(&sim.add(&[&v1]));
    sim.memory.ran.borrow_mut().insert(
        ("p".into(), "1".into()),
        RunId::from_string("20260601T100000Z-00000001".into()),
    );
    sim.change(&v1, &v2);
    sim.change(&v2, &v1);
    let actions = sim.ended(run, RunOutcome::Ended);
    assert!(starts(&actions).is_empty(), "{actions:#?}");
    assert!(matches!(notes(&actions)[..], [Note::AlreadyRan { .. }]));
}

#[test]
fn a_run_once_plan_changed_while_waiting_for_a_run_slot_leaves_the_turn_to_the_new_content() {
    let mut sim = Sim::new(1, "2026-06-01T10:00:00Z");
    let other = once("other", "1");
    let (v1, v2) = (once("p", "1"), once("p", "2"));
    let busy = only_start(&sim.add(&[&other, &v1]));
    assert_eq!(busy.plan.name, "other");
    assert!(starts(&sim.change(&v1, &v2)).is_empty());
    let actions = sim.ended(busy, RunOutcome::Ended);
    assert_eq!(drops(&actions), [DropReason::ContentChanged]);
    assert_eq!(only_start(&actions).plan.sha256, "2");
}

// --- removed and disabled plans ---------------------------------------------------------------

#[test]
fn a_removed_plan_drops_its_waiting_fire_and_fires_no_more() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:30Z");
    let p = cron("p", "1", "0 * * * * *", Overlap::Queue);
    sim.add(&[&p]);
    let first = only_start(&sim.pass_to("2026-06-01T10:01:00Z"));
    sim.pass_to("2026-06-01T10:02:00Z");
    let removed = sim.remove(&p);
    assert!(matches!(notes(&removed)[..], [Note::Removed { .. }]));
    assert_eq!(sim.next("p"), None);
    assert!(starts(&sim.ended(first, RunOutcome::Ended)).is_empty());
    assert!(starts(&sim.pass(Duration::from_secs(600))).is_empty());
}

#[test]
fn a_disabled_plan_drops_its_waiting_fire_and_fires_no_more() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:30Z");
    let p = cron("p", "1", "0 * * * * *", Overlap::Queue);
    sim.add(&[&p]);
    let first = only_start(&sim.pass_to("2026-06-01T10:01:00Z"));
    sim.pass_to("2026-06-01T10:02:00Z");
    let changed = sim.change(&p, &disabled(&p, "2"));
    assert!(matches!(notes(&changed)[..], [Note::Disabled { .. }]));
    let actions = sim.ended(first, RunOutcome::Ended);
    assert!(starts(&actions).is_empty());
    assert_eq!(drops(&actions), [DropReason::Disabled]);
    assert!(starts(&sim.pass(Duration::from_secs(600))).is_empty());
}

// --- runs that cannot begin -------------------------------------------------------------------

#[test]
fn a_fire_that_cannot_begin_is_tried_four_more_times_then_reported_failed() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:30Z");
    let p = cron("p", "1", "0 0 * * * *", Overlap::Skip);
    sim.add(&[&p]);
    let mut run = only_start(&sim.pass_to("2026-06-01T11:00:00Z"));
    for (attempt, pause) in [(1, 1), (2, 2), (3, 4), (4, 8)] {
        let actions = sim.ended(run, RunOutcome::NotBegun("disk full".into()));
        assert!(matches!(
            &notes(&actions)[..],
            [Note::BeginRetry { attempt: a, delay, .. }] if *a == attempt && *delay == Duration::from_secs(pause)
        ));
        // The pause is on the monotonic clock: a wall clock set back does not stretch it.
        sim.now.wall -= TimeDelta::hours(1);
        assert!(starts(&sim.pass(Duration::from_secs(pause) / 2)).is_empty());
        run = only_start(&sim.pass(Duration::from_secs(pause) / 2));
        assert_eq!(run.attempt, attempt);
        assert_eq!(run.scheduled_for, Some(t("2026-06-01T11:00:00Z")));
    }
    let actions = sim.ended(run, RunOutcome::NotBegun("disk full".into()));
    assert!(matches!(
        &actions[..],
        [Action::ReportNotBegun { cause, .. }] if cause == "disk full"
    ));
    assert_eq!(
        (sim.s.running(), sim.s.waiting()),
        (0, 0),
        "not run any more"
    );
}

#[test]
fn a_run_once_plan_that_cannot_begin_is_tried_every_minute_after_its_failed_result() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:00Z");
    let p = once("p", "1");
    let mut run = only_start(&sim.add(&[&p]));
    for pause in [1, 2, 4, 8] {
        sim.ended(run, RunOutcome::NotBegun("no room".into()));
        run = only_start(&sim.pass(Duration::from_secs(pause)));
    }
    let actions = sim.ended(run, RunOutcome::NotBegun("no room".into()));
    assert!(matches!(actions[0], Action::ReportNotBegun { .. }));
    assert!(matches!(
        &notes(&actions)[..],
        [Note::BeginRetry { delay, .. }] if *delay == BEGIN_RETRY_MAX
    ));
    assert_eq!(
        sim.s.next_wake(sim.now),
        Some(sim.now.mono + BEGIN_RETRY_MAX)
    );
    assert_eq!(only_start(&sim.pass(BEGIN_RETRY_MAX)).attempt, 5);
}

#[test]
fn an_unreadable_run_once_memory_holds_the_run_until_it_can_be_read() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:00Z");
    *sim.memory.broken.borrow_mut() = true;
    let p = once("p", "1");
    let actions = sim.add(&[&p]);
    assert!(starts(&actions).is_empty(), "never run without knowing");
    assert!(
        notes(&actions)
            .iter()
            .any(|n| matches!(n, Note::BeginRetry { cause, .. } if cause.contains("disk on fire")))
    );
    assert!(starts(&sim.pass(Duration::from_secs(1))).is_empty());
    *sim.memory.broken.borrow_mut() = false;
    let run = only_start(&sim.pass(Duration::from_secs(2)));
    assert_eq!(run.plan.sha256, "1");
}

#[test]
fn a_run_waiting_to_be_tried_again_whose_content_ran_meanwhile_does_not_run() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:00Z");
    let p = once("p", "1");
    let run = only_start(&sim.add(&[&p]));
    sim.ended(run, RunOutcome::NotBegun("no room".into()));
    sim.memory.ran.borrow_mut().insert(
        ("p".into(), "1".into()),
        RunId::from_string("20260601T100000Z-00000001".into()),
    );
    let actions = sim.pass(Duration::from_secs(1));
    assert!(starts(&actions).is_empty());
    assert!(matches!(
        notes(&actions)[..],
        [Note::AlreadyRan { change: None, .. }]
    ));
    assert_eq!(sim.s.waiting(), 0);
}

// --- used fire times --------------------------------------------------------------------------

#[test]
fn used_fire_times_from_the_state_folder_are_not_fired_again() {
    let mut sim = Sim::new(8, "2026-06-01T10:05:00Z");
    let p = cron("p", "1", "0 */10 * * * *", Overlap::Skip);
    sim.s.remember_fires(
        "p",
        FireMemory {
            used: vec![t("2026-06-01T10:10:00Z")],
            floor: None,
        },
    );
    sim.add(&[&p]);
    assert_eq!(sim.next("p"), Some(t("2026-06-01T10:20:00Z")));
}

#[test]
fn a_damaged_fire_memory_forbids_every_fire_up_to_its_last_write() {
    let mut sim = Sim::new(8, "2026-06-01T10:05:00Z");
    let p = cron("p", "1", "0 */10 * * * *", Overlap::Skip);
    assert_eq!(
        sim.s.fires_needed(&Diff {
            added: vec![p.clone()],
            ..Diff::default()
        }),
        ["p"]
    );
    sim.s.remember_fires(
        "p",
        FireMemory {
            used: vec![],
            floor: Some(t("2026-06-01T10:30:00Z")),
        },
    );
    sim.add(&[&p]);
    assert_eq!(sim.next("p"), Some(t("2026-06-01T10:40:00Z")));
    // Nor after a jump back.
    sim.jump_to("2026-06-01T09:00:00Z");
    assert_eq!(sim.next("p"), Some(t("2026-06-01T10:40:00Z")));
}

#[test]
fn the_used_fire_memory_keeps_the_newest_fires() {
    let mut sim = Sim::new(8, "2026-06-01T09:59:59Z");
    let p = cron("p", "1", "* * * * * *", Overlap::Allow);
    sim.add(&[&p]);
    for _ in 0..100 {
        let actions = sim.pass(Duration::from_secs(1));
        assert_eq!(recorded(&actions).len(), 1, "each fire recorded once");
    }
    let kept = sim.s.used_fire_times("p");
    assert_eq!(kept.len(), crate::store::FIRES_KEPT);
    assert_eq!(kept.last(), Some(&t("2026-06-01T10:01:39Z")));
}

// --- the seam for a wiring that claims runs, and shutdown -------------------------------------

#[test]
fn a_run_the_wiring_did_not_begin_frees_its_slots_and_is_not_tried_again() {
    let mut sim = Sim::new(1, "2026-06-01T10:00:30Z");
    let p = cron("p", "1", "0 * * * * *", Overlap::Queue);
    let q = once("q", "1");
    sim.add(&[&p]);
    let run = only_start(&sim.pass_to("2026-06-01T10:01:00Z"));
    assert_eq!(
        run.claim(),
        Claim::Fire {
            plan: "p".into(),
            at: t("2026-06-01T10:01:00Z")
        }
    );
    sim.add(&[&q]);
    let actions = sim.ended(run, RunOutcome::NotRun);
    assert_eq!(only_start(&actions).plan.name, "q", "the run slot is free");
    assert_eq!(sim.s.waiting(), 0, "nothing to try again");
}

#[test]
fn shutting_down_starts_nothing_and_reports_every_waiting_run() {
    let mut sim = Sim::new(1, "2026-06-01T10:00:00Z");
    let (a, b, c) = (once("a", "1"), once("b", "1"), once("c", "1"));
    let a_run = only_start(&sim.add(&[&a]));
    assert!(starts(&sim.add(&[&c])).is_empty());
    // a could not begin: it waits to be tried again, and c takes the run slot.
    let c_run = only_start(&sim.ended(a_run, RunOutcome::NotBegun("no room".into())));
    assert!(starts(&sim.add(&[&b])).is_empty());
    assert_eq!(sim.s.waiting(), 2);
    let actions = sim.event(Event::ShuttingDown);
    let waiting: Vec<String> = notes(&actions)
        .into_iter()
        .filter_map(|n| match n {
            Note::NotStarted {
                plan,
                why: NotStartedReason::Waiting,
                ..
            } => Some(plan),
            _ => None,
        })
        .collect();
    assert_eq!(
        waiting,
        ["b", "a"],
        "waiting for a slot, then to be tried again"
    );
    let actions = sim.ended(
        c_run,
        RunOutcome::NotBegun("the daemon is shutting down".into()),
    );
    assert!(starts(&actions).is_empty());
    assert!(matches!(
        notes(&actions)[..],
        [Note::NotStarted {
            why: NotStartedReason::NotBegun(_),
            ..
        }]
    ));
    assert!(starts(&sim.pass(Duration::from_secs(600))).is_empty());
    assert_eq!((sim.s.running(), sim.s.waiting()), (0, 0));
}

#[test]
fn the_next_wake_is_the_next_fire_or_retry_whichever_comes_first() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:30Z");
    assert_eq!(sim.s.next_wake(sim.now), None);
    let p = cron("p", "1", "0 * * * * *", Overlap::Skip);
    sim.add(&[&p]);
    assert_eq!(
        sim.s.next_wake(sim.now),
        Some(sim.now.mono + Duration::from_secs(30))
    );
    let q = once("q", "1");
    let run = only_start(&sim.add(&[&q]));
    sim.ended(run, RunOutcome::NotBegun("no room".into()));
    assert_eq!(sim.s.next_wake(sim.now), Some(sim.now.mono + BEGIN_BACKOFF));
}

// --- a takeover in a cluster -----------------------------------------------------------------

/// Each fire is recorded (claimed) before it is started: a cluster's claim decides first.
#[test]
fn a_fire_is_recorded_before_it_starts() {
    let mut sim = Sim::new(8, "2026-06-01T09:59:59Z");
    let p = cron("p", "1", "0 0 10 * * *", Overlap::Skip);
    sim.add(&[&p]);
    let actions = sim.pass_to("2026-06-01T10:00:00Z");
    let record = actions
        .iter()
        .position(|a| matches!(a, Action::RecordFire { .. }))
        .expect("recorded");
    let start = actions
        .iter()
        .position(|a| matches!(a, Action::Start(_)))
        .expect("started");
    assert!(record < start, "{actions:#?}");
}

/// A new leader runs every fire time of the catch-up window no node used, in order, and
/// none the old leader used nor any before the window; then it goes on from now.
#[test]
fn a_takeover_runs_the_fires_missed_in_its_window_once() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:09Z");
    let p = cron("p", "1", "*/2 * * * * *", Overlap::Allow);
    // The old leader used 10:00:00 and 10:00:04 before it died.
    sim.s.remember_fires(
        "p",
        FireMemory {
            used: vec![t("2026-06-01T10:00:00Z"), t("2026-06-01T10:00:04Z")],
            floor: None,
        },
    );
    sim.add(&[&p]);
    let actions = sim.event(Event::CaughtUp {
        from: t("2026-06-01T09:59:58Z"),
        window: t("2026-06-01T09:59:58Z"),
        until: t("2100-01-01T00:00:00Z"),
    });
    let ran: Vec<_> = starts(&actions)
        .into_iter()
        .map(|d| d.scheduled_for.expect("a fire"))
        .collect();
    assert_eq!(
        ran,
        [
            t("2026-06-01T09:59:58Z"),
            t("2026-06-01T10:00:02Z"),
            t("2026-06-01T10:00:06Z"),
            t("2026-06-01T10:00:08Z")
        ]
    );
    assert_eq!(recorded(&actions), ran, "each one claimed");
    assert_eq!(sim.next("p"), Some(t("2026-06-01T10:00:10Z")));
    // Nothing runs twice: the window again finds nothing.
    let again = sim.event(Event::CaughtUp {
        from: t("2026-06-01T09:59:58Z"),
        window: t("2026-06-01T09:59:58Z"),
        until: t("2100-01-01T00:00:00Z"),
    });
    assert!(starts(&again).is_empty());
}

/// A dead leader whose wall clock was behind had used fire times only up to 10:00:20 when
/// its last renewal (10:00:50) says it was alive: the takeover runs every time after its last
/// used one, not only those after its last renewal; a plan with no used time in the window
/// starts at `from` (none of its older times runs).
#[test]
fn a_takeover_runs_the_fires_a_slow_leader_had_not_reached() {
    let mut sim = Sim::new(8, "2026-06-01T10:01:00Z");
    let p = cron("p", "1", "*/10 * * * * *", Overlap::Allow);
    let q = cron("q", "1", "*/10 * * * * *", Overlap::Allow);
    sim.s.remember_fires(
        "p",
        FireMemory {
            used: vec![t("2026-06-01T10:00:10Z"), t("2026-06-01T10:00:20Z")],
            floor: None,
        },
    );
    sim.s.remember_fires(
        "q",
        FireMemory {
            used: vec![t("2026-06-01T09:50:00Z")],
            floor: None,
        },
    );
    sim.add(&[&p, &q]);
    let actions = sim.event(Event::CaughtUp {
        from: t("2026-06-01T10:00:50Z"),
        window: t("2026-06-01T09:56:00Z"),
        until: t("2100-01-01T00:00:00Z"),
    });
    let ran = |plan: &str| -> Vec<_> {
        starts(&actions)
            .into_iter()
            .filter(|d| d.plan.name == plan)
            .map(|d| d.scheduled_for.expect("a fire"))
            .collect()
    };
    assert_eq!(
        ran("p"),
        [
            t("2026-06-01T10:00:30Z"),
            t("2026-06-01T10:00:40Z"),
            t("2026-06-01T10:00:50Z"),
            t("2026-06-01T10:01:00Z")
        ]
    );
    assert_eq!(
        ran("q"),
        [t("2026-06-01T10:00:50Z"), t("2026-06-01T10:01:00Z")]
    );
}

/// A window of a frequent schedule is bounded: at most CATCH_UP_MAX runs, the rest reported.
#[test]
fn a_catch_up_is_bounded() {
    let mut sim = Sim::new(8, "2026-06-02T10:00:00Z");
    let p = cron("p", "1", "* * * * * *", Overlap::Allow);
    sim.add(&[&p]);
    let actions = sim.event(Event::CaughtUp {
        from: t("2026-06-01T10:00:00Z"),
        window: t("2026-06-01T10:00:00Z"),
        until: t("2100-01-01T00:00:00Z"),
    });
    // max_runs 8: the first 8 start, the rest of the window's runs wait their turn.
    assert_eq!(starts(&actions).len(), 8);
    assert_eq!(recorded(&actions).len(), super::CATCH_UP_MAX);
    assert!(
        skips(&actions)
            .iter()
            .any(|(_, r)| matches!(r, SkipReason::Missed { .. }))
    );
}

/// A skipped fire is recorded as not running, so that a takeover never gives it back.
#[test]
fn a_skipped_fire_is_recorded_as_not_running() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:30Z");
    let p = cron("p", "1", "0 * * * * *", Overlap::Skip);
    sim.add(&[&p]);
    let first = sim.pass_to("2026-06-01T10:01:00Z");
    let second = sim.pass_to("2026-06-01T10:02:00Z");
    let runs = |actions: &[Action]| -> Vec<bool> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::RecordFire { runs, .. } => Some(*runs),
                _ => None,
            })
            .collect()
    };
    assert_eq!(runs(&first), [true]);
    assert_eq!(runs(&second), [false], "skipped: the run is still going");
}

/// A process paused for 4 s (or a host busy that long) finds two fire times of a two-second
/// schedule passed: both run, in order, each recorded; none is dropped unnamed.
#[test]
fn every_fire_time_a_short_pause_passed_runs() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:00.500Z");
    let tick = cron("tick", "1", "*/2 * * * * *", Overlap::Allow);
    sim.add(&[&tick]);
    let actions = sim.pass(Duration::from_millis(4_000));
    let ran: Vec<_> = starts(&actions)
        .into_iter()
        .map(|d| d.scheduled_for.expect("a fire"))
        .collect();
    assert_eq!(
        ran,
        [t("2026-06-01T10:00:02Z"), t("2026-06-01T10:00:04Z")],
        "{actions:#?}"
    );
    assert_eq!(recorded(&actions), ran);
    assert_eq!(sim.next("tick"), Some(t("2026-06-01T10:00:06Z")));
}

/// Asleep for two hours over a one-minute schedule: the armed fire is skipped on its own, the
/// ones more than a minute late are named as one span, and the one within the minute runs.
#[test]
fn a_long_sleep_names_the_missed_span_and_runs_the_recent_fire() {
    let mut sim = Sim::new(8, "2026-06-01T10:00:30Z");
    let tick = cron("tick", "1", "0 * * * * *", Overlap::Allow);
    sim.add(&[&tick]);
    let actions = sim.pass_to("2026-06-01T12:00:20Z");
    assert_eq!(
        skips(&actions)
            .iter()
            .map(|(at, _)| *at)
            .collect::<Vec<_>>(),
        [t("2026-06-01T10:01:00Z")]
    );
    assert!(
        notes(&actions).contains(&Note::MissedSpan {
            plan: "tick".into(),
            after: t("2026-06-01T10:01:00Z"),
            before: Some(t("2026-06-01T12:00:00Z")),
        }),
        "{actions:#?}"
    );
    let ran: Vec<_> = starts(&actions)
        .into_iter()
        .map(|d| d.scheduled_for.expect("a fire"))
        .collect();
    assert_eq!(ran, [t("2026-06-01T12:00:00Z")]);
    assert_eq!(sim.next("tick"), Some(t("2026-06-01T12:01:00Z")));
}

/// A new leader whose clock is an hour ahead of the database's runs only the fire times past
/// on the database's clock (`until`), and names the hour between as missed: no burst of fire
/// times of the real future.
#[test]
fn a_takeover_by_a_host_ahead_runs_only_what_the_database_clock_passed() {
    let mut sim = Sim::new(8, "2026-06-01T11:00:09Z");
    let p = cron("p", "1", "*/2 * * * * *", Overlap::Allow);
    sim.s.remember_fires(
        "p",
        FireMemory {
            used: vec![t("2026-06-01T10:00:02Z"), t("2026-06-01T10:00:04Z")],
            floor: None,
        },
    );
    sim.add(&[&p]);
    let actions = sim.event(Event::CaughtUp {
        from: t("2026-06-01T10:00:03Z"),
        window: t("2026-06-01T09:55:09Z"),
        until: t("2026-06-01T10:00:09Z"),
    });
    let ran: Vec<_> = starts(&actions)
        .into_iter()
        .map(|d| d.scheduled_for.expect("a fire"))
        .collect();
    assert_eq!(
        ran,
        [t("2026-06-01T10:00:06Z"), t("2026-06-01T10:00:08Z")],
        "{actions:#?}"
    );
    assert!(
        notes(&actions).contains(&Note::MissedSpan {
            plan: "p".into(),
            after: t("2026-06-01T10:00:09Z"),
            before: Some(t("2026-06-01T11:00:10Z")),
        }),
        "{actions:#?}"
    );
    assert_eq!(sim.next("p"), Some(t("2026-06-01T11:00:10Z")));
}
