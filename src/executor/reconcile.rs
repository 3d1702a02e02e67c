//! Looking up unknown outcomes: after a start call timed out or lost its connection, the task's
//! history (`ListDeployTaskHistoryByDate`) tells whether a record was created after the send.
//! The match never trusts the host's clock nor a guessed zone: it uses what
//! [`ServiceClock`] measured (the skew from `Date` headers, the zone learned from our own
//! records) and, until the zone is known, counts every record any real offset would put
//! after the send. Several candidates are narrowed by their params (`ShowExecutionParams`)
//! before the lookup gives up as ambiguous. Every query goes through the [`LimitedClient`], and
//! a lookup sees of the executor only its [`History`]: no settings, no fields.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Executor;
use super::limited::LimitedClient;
use crate::api::rules::ParamType;
use crate::api::service_clock::{ServiceClock, Skew, date_window, may_follow};
use crate::results::ReportParam;

/// Records per history page (the API's maximum).
const PAGE_SIZE: u32 = 100;
/// Pages read at most per lookup (10,000 records of one task in a day is already absurd).
const MAX_PAGES: u32 = 100;
/// Longest pause between lookups while waiting for a record to appear.
const POLL: Duration = Duration::from_secs(2);
/// The error of a query cut short by the stop token.
const STOPPED: &str = "stopped";
/// Failed history reads in a row before giving up on a lookup.
const LOOKUP_FAILURES: u32 = 10;

/// Record ids this process has seen returned by a start call or adopted from a history, for
/// the last two days (as far back as a lookup can look). A lookup never adopts one of them:
/// it belongs to another call (another plan starting the same task, an `overlap: allow` run).
#[derive(Debug, Default)]
pub struct KnownRecords {
    inner: std::sync::Mutex<KnownSet>,
}

/// The ids, and the order they came in (to forget the old ones).
type KnownSet = (
    std::collections::HashSet<String>,
    std::collections::VecDeque<(std::time::Instant, String)>,
);

/// How long a record id is remembered.
const KNOWN_FOR: Duration = Duration::from_secs(2 * 24 * 3600);

impl KnownRecords {
    /// Remembers a record id.
    pub fn remember(&self, id: &str) {
        if let Ok(mut guard) = self.inner.lock() {
            let (set, order) = &mut *guard;
            let now = std::time::Instant::now();
            while order
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > KNOWN_FOR)
            {
                if let Some((_, old)) = order.pop_front() {
                    set.remove(&old);
                }
            }
            if set.insert(id.to_string()) {
                order.push_back((now, id.to_string()));
            }
        }
    }

    /// Whether a record id is known.
    pub fn contains(&self, id: &str) -> bool {
        self.inner.lock().map(|g| g.0.contains(id)).unwrap_or(false)
    }
}

/// The answer of a history lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A record created after the send, and no other candidate.
    Found(String),
    /// Several unknown records started after the send time: adopting one could report another
    /// caller's deployment as ours, sending again could deploy twice. The ids.
    Ambiguous(Vec<String>),
    /// The history was read and, for the whole settle period, showed no such record.
    NotFound,
    /// The history could not be consulted (no project id, or every query failed): why.
    Unavailable(String),
    /// The run was stopped while looking.
    Stopped,
}

/// When the call whose record is looked for was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Read on this host's wall clock at an instant of the monotonic clock, in this process:
    /// it is re-read on the wall clock as it is at lookup time, so a step of the host's clock
    /// in between does not move it.
    Local {
        /// The wall clock at the send.
        at: DateTime<Utc>,
        /// The monotonic clock at the send.
        mono: std::time::Instant,
    },
    /// Read on this host's wall clock by an earlier process (a journal without the skew).
    Wall(DateTime<Utc>),
    /// The earliest instant of the send on the service's clock (a journal that kept the skew
    /// measured at the send): whatever the host's clock did since.
    Service(DateTime<Utc>),
}

impl Since {
    /// The send on this host's wall clock as it reads now, given the skew now.
    pub fn on_wall_clock(&self, skew: Skew) -> DateTime<Utc> {
        match *self {
            Since::Local { at, mono } => chrono::TimeDelta::from_std(mono.elapsed())
                .ok()
                .and_then(|d| Utc::now().checked_sub_signed(d))
                .unwrap_or(at),
            Since::Wall(at) => at,
            Since::Service(at) => at.checked_sub_signed(skew.lo).unwrap_or(at),
        }
    }
}

/// What a lookup needs of the executor, and nothing more: the limited client, the project
/// whose history is read, how long a record may take to show up, and the records known to be
/// other calls'.
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    /// Every query goes through it.
    pub calls: &'a LimitedClient,
    /// The project of the history endpoint; without it no lookup is possible.
    pub project_id: Option<&'a str>,
    /// How long a record may take to show up in the history after an unknown outcome.
    pub settle: Duration,
    /// Records this process created or adopted: never adopted again.
    pub known: &'a KnownRecords,
}

/// Looks up records of one task.
pub struct Reconciler<'a> {
    history: History<'a>,
    task_id: &'a str,
    /// The params the call sent (encrypt values masked, unresolved values `None`): records
    /// started with other params are not ours.
    sent: &'a [ReportParam],
}

impl<'a> Reconciler<'a> {
    /// A reconciler for `task_id`, whose calls sent `sent`.
    pub fn new(exec: &'a Executor, task_id: &'a str, sent: &'a [ReportParam]) -> Self {
        Self {
            history: exec.history(),
            task_id,
            sent,
        }
    }

    fn clock(&self) -> &ServiceClock {
        self.history.calls.clock()
    }

    /// Looks for a record created after `sent_at`, polling until the settle period has
    /// passed since the first successful read. A failed read is retried with its own backoff
    /// (the history is the only safe way forward), at most `LOOKUP_FAILURES` times in a row.
    pub async fn lookup(&self, sent_at: Since, stop: &CancellationToken) -> Lookup {
        if self.history.project_id.is_none() {
            return Lookup::Unavailable("no project id is configured for history lookups".into());
        }
        let settle = self.history.settle;
        let poll = (settle / 4).clamp(Duration::from_millis(100), POLL);
        let mut settled_at: Option<tokio::time::Instant> = None;
        let mut failures = 0u32;
        self.learn_zone(stop).await;
        loop {
            let pause = match self.records_since(sent_at, stop).await {
                Ok(records) => {
                    failures = 0;
                    // Records another call of this process created are not ours.
                    let candidates: Vec<String> = records
                        .into_iter()
                        .filter(|id| !self.history.known.contains(id))
                        .collect();
                    // Even a single candidate is checked: a record started with other params
                    // is not ours, however well its time fits.
                    let mut candidates = self.same_params(candidates, stop).await;
                    match candidates.len() {
                        0 => {}
                        1 => {
                            let id = candidates.remove(0);
                            self.history.known.remember(&id);
                            return Lookup::Found(id);
                        }
                        _ => return Lookup::Ambiguous(candidates),
                    }
                    let deadline =
                        *settled_at.get_or_insert_with(|| tokio::time::Instant::now() + settle);
                    if tokio::time::Instant::now() + poll > deadline {
                        return Lookup::NotFound;
                    }
                    poll
                }
                Err(_) if stop.is_cancelled() => return Lookup::Stopped,
                // Refused credentials are not used again: no point asking 10 times.
                Err(e) if self.history.calls.guard().blocked().is_some() => {
                    return Lookup::Unavailable(format!(
                        "the task's history could not be read ({e})"
                    ));
                }
                Err(e) => {
                    failures += 1;
                    if failures >= LOOKUP_FAILURES {
                        return Lookup::Unavailable(format!(
                            "the task's history could not be read ({e})"
                        ));
                    }
                    debug!(failures, "history query failed, trying again: {e}");
                    Duration::from_millis(250u64 << failures.min(5)).min(Duration::from_secs(5))
                }
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Lookup::Stopped,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// When the zone of record times is not known yet, one status query of a record this
    /// process created recently teaches it (a failure only leaves the window wide).
    async fn learn_zone(&self, stop: &CancellationToken) {
        if self.clock().zone().is_none() {
            learn_zone(self.history.calls, stop).await;
        }
    }

    /// Of several candidates, those whose params do not contradict what was sent (a record
    /// whose params cannot be read stays a candidate).
    async fn same_params(&self, candidates: Vec<String>, stop: &CancellationToken) -> Vec<String> {
        let mut kept = Vec::with_capacity(candidates.len());
        for id in candidates {
            let query = self.history.calls.record_params(self.task_id, &id);
            let answer = tokio::select! {
                biased;
                _ = stop.cancelled() => None,
                answer = query => Some(answer),
            };
            match answer {
                Some(Ok(params)) if !params_match(self.sent, &params) => {
                    info!(record_id = %id, "a record started since the call has other params: not ours");
                }
                Some(Err(e)) => {
                    debug!(record_id = %id, "cannot read the record's params: {e}");
                    kept.push(id);
                }
                _ => kept.push(id),
            }
        }
        kept
    }

    /// Ids of the task's records that may have been created after `since` (our clock),
    /// oldest first. Records this process created teach the zone on the way.
    pub async fn records_since(
        &self,
        since: Since,
        stop: &CancellationToken,
    ) -> Result<Vec<String>, String> {
        let Some(project_id) = self.history.project_id else {
            return Err("no project id".into());
        };
        let mut seen_records: Vec<(NaiveDateTime, String)> = Vec::new();
        for page in 1..=MAX_PAGES {
            // The window is computed per page: the first answer may have measured the skew.
            let skew = self.clock().skew();
            let (start_date, end_date) = date_window(
                since.on_wall_clock(skew),
                Utc::now(),
                skew,
                self.clock().zone(),
            );
            let query = self.history.calls.history_page(
                project_id,
                self.task_id,
                page,
                PAGE_SIZE,
                start_date,
                end_date,
            );
            let answer = tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(STOPPED.into()),
                answer = query => answer,
            };
            let answer = answer.map_err(|e| e.to_string())?;
            let seen = (page - 1) as u64 * PAGE_SIZE as u64 + answer.result.len() as u64;
            for record in answer.result {
                match record.start_time.as_deref().and_then(parse_service_time) {
                    Some(started) if !record.execution_id.is_empty() => {
                        seen_records.push((started, record.execution_id));
                    }
                    _ => {
                        debug!(record = %record.execution_id, "history record without a readable start_time or id")
                    }
                }
            }
            if seen >= answer.total_num || answer.total_num == 0 {
                break;
            }
        }
        // Our own records among them tell (or correct) the zone before any is judged.
        for (started, id) in &seen_records {
            self.clock().learn_from(id, *started);
        }
        let (skew, zone) = (self.clock().skew(), self.clock().zone());
        let mut found: Vec<(NaiveDateTime, String)> = seen_records
            .into_iter()
            .filter(|(started, _)| {
                may_follow(*started, since.on_wall_clock(skew), Utc::now(), skew, zone)
            })
            .collect();
        found.sort();
        Ok(found.into_iter().map(|(_, id)| id).collect())
    }
}

/// One status query of the newest record this process created, to learn the zone of record
/// times (at most once a minute, one at a time; nothing happens when the zone is known).
pub async fn learn_zone(calls: &LimitedClient, stop: &CancellationToken) {
    let clock = calls.clock();
    let Some(witness) = clock.recent_witness() else {
        debug!("the zone of the service's record times is unknown: every offset is possible");
        return;
    };
    let Some(_learning) = clock.begin_learning().await else {
        return;
    };
    let query = calls.record_status(&witness.task_id, &witness.record_id);
    let answer = tokio::select! {
        biased;
        _ = stop.cancelled() => return,
        answer = query => answer,
    };
    match answer {
        Ok(status) => {
            if let Some(start) = status.start_time.as_deref().and_then(parse_service_time) {
                clock.learn_from(&witness.record_id, start);
            }
        }
        Err(e) => debug!(
            "cannot learn the service's zone from record {}: {e}",
            witness.record_id
        ),
    }
}

/// Whether a record's params may be the ones sent: every key sent is there, with the same
/// type (when the service says) and the same value (unless `encrypt`, or not known here).
/// Keys the record has and the call did not send (the task's defaults) prove nothing.
pub fn params_match(sent: &[ReportParam], record: &[crate::api::types::RecordParam]) -> bool {
    sent.iter().all(|p| {
        let Some(r) = record.iter().find(|r| r.name == p.key) else {
            return false;
        };
        if let Some(ty) = &r.ty
            && !ty.eq_ignore_ascii_case(p.ty.as_str())
        {
            return false;
        }
        match (&p.value, &r.value) {
            _ if p.ty == ParamType::Encrypt => true,
            (Some(sent), Some(theirs)) => sent == theirs,
            _ => true,
        }
    })
}

/// Parses `yyyy-MM-dd HH:mm:ss` (the service's format).
pub fn parse_service_time(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_times() {
        let t = parse_service_time("2026-11-28 09:30:05").expect("parses");
        assert_eq!(t.to_string(), "2026-11-28 09:30:05");
        assert!(parse_service_time("2026-11-28T09:30:05Z").is_none());
    }

    #[test]
    fn records_with_other_params_are_not_ours() {
        use crate::api::types::RecordParam;
        let sent = vec![
            ReportParam {
                key: "version".into(),
                ty: ParamType::Text,
                value: Some("1.2.3".into()),
            },
            ReportParam {
                key: "pw".into(),
                ty: ParamType::Encrypt,
                value: Some("***".into()),
            },
        ];
        let rec = |version: &str, ty: Option<&str>| {
            vec![
                RecordParam {
                    name: "version".into(),
                    ty: ty.map(str::to_string),
                    value: Some(version.into()),
                },
                RecordParam {
                    name: "pw".into(),
                    ty: Some("encrypt".into()),
                    value: Some("******".into()),
                },
                RecordParam {
                    name: "task_default".into(),
                    ty: None,
                    value: Some("x".into()),
                },
            ]
        };
        assert!(params_match(&sent, &rec("1.2.3", Some("text"))));
        assert!(params_match(&sent, &rec("1.2.3", None)));
        assert!(!params_match(&sent, &rec("1.2.4", Some("text"))));
        assert!(!params_match(&sent, &rec("1.2.3", Some("enum"))));
        assert!(!params_match(&sent, &rec("1.2.3", Some("text"))[1..]));
        // A value not known here (unresolved in a crash journal) proves nothing.
        let unknown = vec![ReportParam {
            key: "version".into(),
            ty: ParamType::Text,
            value: None,
        }];
        assert!(params_match(&unknown, &rec("9", Some("text"))));
    }
}
