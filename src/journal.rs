//! The run journal's model: what a run is about to do and what it learned, made durable before
//! each start call, so that after a crash (kill -9, power loss) the next daemon can finish the
//! run's result from facts instead of guesses. Pure types: where and how entries are kept
//! (a JSON-lines file per run in the state folder, group-committed) is the store's
//! ([`crate::store`]); [`Replay`] folds the entries a store reads back into an [`Unfinished`]
//! run for [`crate::recovery`].
//!
//! A value is written once where once will do: the header stores each distinct param once
//! (`params`) and each task's list as indices into it (`task_params`), and the task lines of
//! later entries leave `params` out (empty); [`Replay`] puts them back from the header.
//! Journals written before (every skeleton and entry with its params) are read as they are.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::results::{ReportParam, RunId, TaskReport, Trigger};

/// What is known about a run when it starts: enough to write its result without the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHeader {
    /// Run id.
    pub run_id: RunId,
    /// Plan name.
    pub plan: String,
    /// Plan file name.
    pub plan_file: String,
    /// Plan content hash.
    pub plan_sha256: String,
    /// What started it.
    pub trigger: Trigger,
    /// Fire time of a scheduled run.
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// One skeleton per task, in plan order (ids and params, secrets masked). Once
    /// [`RunHeader::share_params`] has run, their params are empty and live in `params`.
    pub tasks: Vec<TaskReport>,
    /// Every distinct param of the run, once (absent in journals of older versions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<ReportParam>,
    /// Per task (plan order), its params as indices into `params`; empty when the skeletons
    /// hold their params themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_params: Vec<Vec<u32>>,
}

impl RunHeader {
    /// Moves the skeletons' params into the shared table: each distinct param is stored
    /// once, each task keeps indices. A plan's params repeated for every task then cost the
    /// journal one copy, not one per task.
    pub fn share_params(&mut self) {
        let mut index: std::collections::HashMap<ReportParam, u32> =
            std::collections::HashMap::new();
        let mut refs = Vec::with_capacity(self.tasks.len());
        for task in &mut self.tasks {
            let list = std::mem::take(&mut task.params)
                .into_iter()
                .map(|p| {
                    let next = u32::try_from(index.len()).unwrap_or(u32::MAX);
                    *index.entry(p).or_insert(next)
                })
                .collect();
            refs.push(list);
        }
        let mut table: Vec<(ReportParam, u32)> = index.into_iter().collect();
        table.sort_unstable_by_key(|(_, i)| *i);
        self.params = table.into_iter().map(|(p, _)| p).collect();
        self.task_params = refs;
    }

    /// Puts each skeleton's params back from the shared table (a header of an older version,
    /// without one, is left as it is).
    pub fn expand_params(&mut self) -> Result<(), String> {
        if self.task_params.is_empty() {
            return Ok(());
        }
        if self.task_params.len() != self.tasks.len() {
            return Err(format!(
                "the header lists params for {} tasks, but {} tasks",
                self.task_params.len(),
                self.tasks.len()
            ));
        }
        for (task, refs) in self.tasks.iter_mut().zip(&self.task_params) {
            task.params = refs
                .iter()
                .map(|&i| {
                    self.params
                        .get(i as usize)
                        .cloned()
                        .ok_or_else(|| format!("the header refers to a param #{i} it lacks"))
                })
                .collect::<Result<_, _>>()?;
        }
        self.params = Vec::new();
        self.task_params = Vec::new();
        Ok(())
    }
}

/// How one start call ended, as far as the journal needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallClass {
    /// A record id came back.
    Started,
    /// Certainly not processed.
    Retryable,
    /// Refused.
    Final,
    /// Sent, answer lost: may have created a record.
    Unknown,
}

/// One line of a journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    /// The first line.
    Run(Box<RunHeader>),
    /// A start call is about to be sent.
    Intent {
        /// Task.
        task_id: String,
        /// 1-based call number.
        attempt: u32,
        /// Time just before sending.
        sent_at: DateTime<Utc>,
        /// The lower bound of the service's clock minus ours when it was sent, in ms, if
        /// measured: the send on the service's clock, whatever the host's clock does later.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skew_lo_ms: Option<i64>,
    },
    /// A start call ended.
    Outcome {
        /// Task.
        task_id: String,
        /// Call number.
        attempt: u32,
        /// What the answer means.
        class: CallClass,
        /// The task's line as it stands after this answer (status, record id, HTTP status,
        /// error), so that recovery can report a started task as started. Written without
        /// its params (they are in the header).
        #[serde(default, serialize_with = "lean_opt")]
        report: Option<Box<TaskReport>>,
        /// When the answer came (our clock): with the intent's `sent_at`, it bounds when the
        /// service created a record, which teaches the zone of its record times.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answered_at: Option<DateTime<Utc>>,
        /// The lower bound of the service's clock minus ours after this answer, in ms, if
        /// measured: it places on the service's clock the sends of this run's calls that went
        /// out before any answer had measured it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skew_lo_ms: Option<i64>,
        /// This answer ended the task and `report` is its final line: no [`Entry::Task`] line
        /// follows (one line per call instead of two on the common path: started, or
        /// refused). Absent (false) in journals of earlier versions, which always wrote one.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        done: bool,
    },
    /// A task reached its final state in this run (written without its params), when its
    /// last outcome line did not already say so.
    Task(#[serde(serialize_with = "lean_box")] Box<TaskReport>),
    /// The run's whole result, when its file could not be written (a full results disk): the
    /// next start writes this, with its true status, instead of `interrupted`.
    Result(Box<crate::results::RunReport>),
}

/// A task's line without its params (the header has them): `params` is written empty.
fn lean<S: serde::Serializer>(report: &TaskReport, s: S) -> Result<S::Ok, S::Error> {
    // Destructured in full so that a field added to `TaskReport` must be added here too.
    let TaskReport {
        task_id,
        status,
        record_id,
        job_name,
        attempts,
        http_status,
        request_id,
        error_code,
        error_msg,
        params: _,
        app_component_list,
        reconciled,
        records,
        unknown_outcomes,
        follow,
    } = report;
    #[derive(Serialize)]
    struct Lean<'a> {
        task_id: &'a str,
        status: &'a crate::results::TaskStatus,
        record_id: &'a Option<String>,
        job_name: &'a Option<String>,
        attempts: &'a u32,
        http_status: &'a Option<u16>,
        request_id: &'a Option<String>,
        error_code: &'a Option<String>,
        error_msg: &'a Option<String>,
        params: [(); 0],
        app_component_list: &'a [serde_json::Value],
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        reconciled: bool,
        #[serde(skip_serializing_if = "no_records")]
        records: &'a [crate::results::RecordRef],
        #[serde(skip_serializing_if = "is_zero")]
        unknown_outcomes: u32,
        #[serde(flatten)]
        follow: &'a Option<crate::results::FollowOutcome>,
    }
    Lean {
        task_id,
        status,
        record_id,
        job_name,
        attempts,
        http_status,
        request_id,
        error_code,
        error_msg,
        params: [],
        app_component_list,
        reconciled: *reconciled,
        records,
        unknown_outcomes: *unknown_outcomes,
        follow,
    }
    .serialize(s)
}

fn no_records(r: &&[crate::results::RecordRef]) -> bool {
    r.is_empty()
}

#[allow(clippy::borrowed_box)] // the field's type, as serde hands it over
fn lean_box<S: serde::Serializer>(report: &Box<TaskReport>, s: S) -> Result<S::Ok, S::Error> {
    lean(report, s)
}

fn lean_opt<S: serde::Serializer>(
    report: &Option<Box<TaskReport>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match report {
        Some(r) => s.serialize_some(&LeanRef(r)),
        None => s.serialize_none(),
    }
}

struct LeanRef<'a>(&'a TaskReport);
impl Serialize for LeanRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        lean(self.0, s)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What an unfinished journal says about one task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskTrail {
    /// The final report, if the task finished before the crash.
    pub done: Option<TaskReport>,
    /// The task's line after its last answered call.
    pub last_answer: Option<TaskReport>,
    /// Calls made: (attempt, sent_at, class if an answer came).
    pub calls: Vec<(u32, DateTime<Utc>, Option<CallClass>)>,
    /// Records this task's calls created, with the call's send and answer times.
    pub created: Vec<(String, DateTime<Utc>, DateTime<Utc>)>,
    /// The earliest send instant on the service's clock, per attempt, where the skew was
    /// measured at the send.
    pub service_sent: BTreeMap<u32, DateTime<Utc>>,
}

impl TaskTrail {
    /// The earliest send time of a call that may have created a record (no answer, or an
    /// unknown one).
    pub fn uncertain_since(&self) -> Option<DateTime<Utc>> {
        self.calls
            .iter()
            .filter(|(_, _, class)| matches!(class, None | Some(CallClass::Unknown)))
            .map(|(_, at, _)| *at)
            .min()
    }

    /// The earliest send of a call that may have created a record on the service's clock,
    /// when every such call kept its skew.
    pub fn uncertain_since_service(&self) -> Option<DateTime<Utc>> {
        let uncertain: Vec<u32> = self
            .calls
            .iter()
            .filter(|(_, _, class)| matches!(class, None | Some(CallClass::Unknown)))
            .map(|(attempt, _, _)| *attempt)
            .collect();
        if uncertain.is_empty() {
            return None;
        }
        uncertain
            .iter()
            .map(|a| self.service_sent.get(a).copied())
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .min()
    }
}

/// An unfinished run read back from its journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Unfinished {
    /// The store's own key of the journal, for [`crate::store::Store::close_unfinished`]: its
    /// file name in the state folder, its run id in a database.
    pub key: String,
    /// Where the journal is, for messages (its file's path for the state folder).
    pub location: String,
    /// The header.
    pub header: RunHeader,
    /// Per task id.
    pub trails: BTreeMap<String, TaskTrail>,
    /// The run's result, if it ended and only its file could not be written.
    pub result: Option<crate::results::RunReport>,
}

/// Folds a journal's entries, in the order they were written, back into what recovery needs.
/// Pure: the store reads the entries (stopping at a torn one) and feeds them here, so that
/// every store replays a journal the same way.
#[derive(Debug, Default)]
pub struct Replay {
    header: Option<RunHeader>,
    trails: BTreeMap<String, TaskTrail>,
    result: Option<crate::results::RunReport>,
    /// The first skew this run measured.
    run_skew_lo_ms: Option<i64>,
    /// The calls sent before it was measured.
    unmeasured: Vec<(String, u32, DateTime<Utc>)>,
}

impl Replay {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next entry.
    pub fn push(&mut self, entry: Entry) {
        match entry {
            Entry::Run(h) => self.header = Some(*h),
            Entry::Intent {
                task_id,
                attempt,
                sent_at,
                skew_lo_ms,
            } => {
                self.run_skew_lo_ms = self.run_skew_lo_ms.or(skew_lo_ms);
                if skew_lo_ms.is_none() {
                    self.unmeasured.push((task_id.clone(), attempt, sent_at));
                }
                let trail = self.trails.entry(task_id).or_default();
                trail.calls.push((attempt, sent_at, None));
                if let Some(ms) = skew_lo_ms
                    && let Some(at) =
                        sent_at.checked_add_signed(chrono::TimeDelta::milliseconds(ms))
                {
                    trail.service_sent.insert(attempt, at);
                }
            }
            Entry::Outcome {
                task_id,
                attempt,
                class,
                report,
                answered_at,
                skew_lo_ms,
                done,
            } => {
                self.run_skew_lo_ms = self.run_skew_lo_ms.or(skew_lo_ms);
                let trail = self.trails.entry(task_id).or_default();
                let mut sent_at = None;
                if let Some(call) = trail.calls.iter_mut().find(|c| c.0 == attempt) {
                    call.2 = Some(class);
                    sent_at = Some(call.1);
                }
                if let (Some(sent), Some(answered), Some(id)) = (
                    sent_at,
                    answered_at,
                    report.as_ref().and_then(|r| r.record_id.clone()),
                ) && class == CallClass::Started
                {
                    trail.created.push((id, sent, answered));
                }
                if let Some(report) = report {
                    if done {
                        trail.done = Some((*report).clone());
                    }
                    trail.last_answer = Some(*report);
                }
            }
            Entry::Task(report) => {
                let id = report.task_id.clone();
                self.trails.entry(id).or_default().done = Some(*report);
            }
            Entry::Result(report) => self.result = Some(*report),
        }
    }

    /// The unfinished run the entries describe, kept under `key` at `location` (see
    /// [`Unfinished`]); `Ok(None)` when they hold nothing (no header and no call: a journal
    /// whose run could not begin), an error when calls are there without a readable header.
    pub fn finish(self, key: String, location: String) -> Result<Option<Unfinished>, String> {
        let Self {
            header,
            mut trails,
            result,
            run_skew_lo_ms,
            unmeasured,
        } = self;
        let Some(mut header) = header else {
            // The header is written (and made durable) before anything else: without one,
            // the journal holds no call, unless it is damaged.
            if trails.is_empty() {
                return Ok(None);
            }
            return Err("no readable header line".into());
        };
        header.expand_params()?;
        // Task lines written without their params get them back from the header.
        let skeletons: std::collections::HashMap<&str, &TaskReport> = header
            .tasks
            .iter()
            .map(|t| (t.task_id.as_str(), t))
            .collect();
        for (id, trail) in &mut trails {
            for report in [trail.done.as_mut(), trail.last_answer.as_mut()]
                .into_iter()
                .flatten()
            {
                if report.params.is_empty()
                    && let Some(skeleton) = skeletons.get(id.as_str())
                {
                    report.params = skeleton.params.clone();
                }
            }
        }
        drop(skeletons);
        // Calls sent before any answer measured the skew are placed on the service's clock
        // with the first skew this run measured (the host's clock is taken as not stepped
        // within the run; a step across the crash is what the stored skew is for).
        if let Some(ms) = run_skew_lo_ms {
            for (task_id, attempt, sent_at) in unmeasured {
                if let (Some(trail), Some(at)) = (
                    trails.get_mut(&task_id),
                    sent_at.checked_add_signed(chrono::TimeDelta::milliseconds(ms)),
                ) {
                    trail.service_sent.entry(attempt).or_insert(at);
                }
            }
        }
        Ok(Some(Unfinished {
            key,
            location,
            header,
            trails,
            result,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::TaskStatus;

    fn header() -> RunHeader {
        RunHeader {
            run_id: RunId::from_string("r1".into()),
            plan: "web".into(),
            plan_file: "web.yaml".into(),
            plan_sha256: "ab".into(),
            trigger: Trigger::Arrival,
            scheduled_for: None,
            started_at: Utc::now(),
            tasks: vec![TaskReport::new("a", TaskStatus::Skipped, vec![])],
            params: Vec::new(),
            task_params: Vec::new(),
        }
    }

    fn intent(attempt: u32, sent_at: DateTime<Utc>, skew_lo_ms: Option<i64>) -> Entry {
        Entry::Intent {
            task_id: "a".into(),
            attempt,
            sent_at,
            skew_lo_ms,
        }
    }

    #[test]
    fn nothing_or_calls_without_a_header() {
        assert_eq!(
            Replay::new().finish("k".into(), "j".into()),
            Ok(None),
            "empty: holds no call"
        );
        let mut r = Replay::new();
        r.push(intent(1, Utc::now(), None));
        assert!(
            r.finish("k".into(), "j".into()).is_err(),
            "a call without its header"
        );
    }

    #[test]
    fn calls_sent_before_the_skew_was_measured_are_placed_with_the_first_one_measured() {
        let t0 = Utc::now();
        let mut r = Replay::new();
        r.push(Entry::Run(Box::new(header())));
        r.push(intent(1, t0, None));
        r.push(Entry::Outcome {
            task_id: "a".into(),
            attempt: 1,
            class: CallClass::Unknown,
            report: None,
            answered_at: Some(t0),
            skew_lo_ms: Some(2_000),
            done: false,
        });
        r.push(intent(2, t0, Some(3_000)));
        let u = r
            .finish("k".into(), "j".into())
            .expect("read")
            .expect("a run");
        assert_eq!((u.key.as_str(), u.location.as_str()), ("k", "j"));
        let trail = &u.trails["a"];
        assert_eq!(
            trail.calls,
            vec![(1, t0, Some(CallClass::Unknown)), (2, t0, None)]
        );
        assert_eq!(
            trail.uncertain_since_service(),
            Some(t0 + chrono::TimeDelta::seconds(2))
        );
    }

    /// An outcome line marked `done` is the task's end, as a task line after it would be
    /// (params back from the header included); without the mark it is only the last answer.
    #[test]
    fn an_outcome_marked_done_ends_the_task_as_a_task_line_would() {
        let t0 = Utc::now();
        let mut h = header();
        let param = ReportParam {
            key: "v".into(),
            ty: crate::api::rules::ParamType::Text,
            value: Some("1".into()),
        };
        h.tasks[0].params = vec![param.clone()];
        h.share_params();
        let mut report = TaskReport::new("a", TaskStatus::Started, vec![param]);
        report.record_id = Some("rec".into());
        report.attempts = 1;
        let outcome = |done| Entry::Outcome {
            task_id: "a".into(),
            attempt: 1,
            class: CallClass::Started,
            report: Some(Box::new(report.clone())),
            answered_at: Some(t0),
            skew_lo_ms: None,
            done,
        };
        let replay = |entries: Vec<Entry>| {
            let mut r = Replay::new();
            r.push(Entry::Run(Box::new(h.clone())));
            r.push(intent(1, t0, None));
            for e in entries {
                // Through the JSON a journal holds.
                let line = serde_json::to_string(&e).expect("json");
                r.push(serde_json::from_str(&line).expect("read"));
            }
            r.finish("k".into(), "j".into())
                .expect("read")
                .expect("a run")
                .trails
                .remove("a")
                .expect("trail")
        };
        let merged = replay(vec![outcome(true)]);
        let separate = replay(vec![outcome(false), Entry::Task(Box::new(report.clone()))]);
        assert_eq!(merged.done.as_ref(), Some(&report));
        assert_eq!(merged, separate, "the same facts either way");
        let open = replay(vec![outcome(false)]);
        assert_eq!(open.done, None);
        assert_eq!(open.last_answer.as_ref(), Some(&report));
        // The mark is left out when false: lines of earlier versions stay as they were.
        let line = serde_json::to_string(&outcome(false)).expect("json");
        assert!(!line.contains("done"), "{line}");
    }
}
