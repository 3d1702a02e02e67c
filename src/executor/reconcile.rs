//! Looking up unknown outcomes: after a start call timed out or lost its connection, the task's
//! history (`ListDeployTaskHistoryByDate`) tells whether a record was created at or after the
//! send time. Every query goes through the shared limits like any other call.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Executor;

/// The default zone of the history's timestamps: China Standard Time, UTC+8 (the API doc
/// marks it unverified; `history_utc_offset` in the config changes it).
pub const DEFAULT_SERVICE_OFFSET_SECS: i32 = 8 * 3600;
/// Clock skew allowed between this host and the service when matching start times.
pub const SKEW_TOLERANCE: Duration = Duration::from_secs(5);
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
    /// A record started at or after the send time, and no other candidate.
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

/// Looks up records of one task.
pub struct Reconciler<'a> {
    exec: &'a Executor,
    task_id: &'a str,
}

impl<'a> Reconciler<'a> {
    /// A reconciler for `task_id`.
    pub fn new(exec: &'a Executor, task_id: &'a str) -> Self {
        Self { exec, task_id }
    }

    /// Looks for a record started at or after `sent_at`, polling until the settle period has
    /// passed since the first successful read. A failed read is retried with its own backoff
    /// (the history is the only safe way forward), at most `LOOKUP_FAILURES` times in a row.
    pub async fn lookup(&self, sent_at: DateTime<Utc>, stop: &CancellationToken) -> Lookup {
        if self.exec.settings.project_id.is_none() {
            return Lookup::Unavailable("no project id is configured for history lookups".into());
        }
        let settle = self.exec.settings.settle;
        let poll = (settle / 4).clamp(Duration::from_millis(100), POLL);
        let mut settled_at: Option<tokio::time::Instant> = None;
        let mut failures = 0u32;
        loop {
            let pause = match self.records_since(sent_at, stop).await {
                Ok(records) => {
                    failures = 0;
                    // Records another call of this process created are not ours.
                    let mut candidates: Vec<String> = records
                        .into_iter()
                        .filter(|id| !self.exec.known_records.contains(id))
                        .collect();
                    match candidates.len() {
                        0 => {}
                        1 => {
                            let id = candidates.remove(0);
                            self.exec.known_records.remember(&id);
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

    /// Ids of the task's records started at or after `since` (minus the skew tolerance),
    /// oldest first.
    pub async fn records_since(
        &self,
        since: DateTime<Utc>,
        stop: &CancellationToken,
    ) -> Result<Vec<String>, String> {
        let Some(project_id) = self.exec.settings.project_id.as_deref() else {
            return Err("no project id".into());
        };
        let offset = self.exec.settings.history_offset;
        let (floor, start_date, end_date) = history_window(since, Utc::now(), offset);
        let mut found: Vec<(NaiveDateTime, String)> = Vec::new();
        for page in 1..=MAX_PAGES {
            let query = async {
                let _permit = self.exec.limits.acquire(None).await;
                self.exec
                    .client
                    .history_page(
                        project_id,
                        self.task_id,
                        page,
                        PAGE_SIZE,
                        start_date,
                        end_date,
                    )
                    .await
            };
            let answer = tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(STOPPED.into()),
                answer = query => answer,
            };
            let answer = answer.map_err(|e| e.to_string())?;
            let seen = (page - 1) as u64 * PAGE_SIZE as u64 + answer.result.len() as u64;
            for record in answer.result {
                let Some(started) = record.start_time.as_deref().and_then(parse_service_time)
                else {
                    debug!(record = %record.execution_id, "history record without a readable start_time");
                    continue;
                };
                let started_utc = started
                    .and_local_timezone(offset)
                    .single()
                    .map(|t| t.with_timezone(&Utc));
                if started_utc.is_some_and(|t| t >= floor.with_nanosecond_floor())
                    && !record.execution_id.is_empty()
                {
                    found.push((started, record.execution_id));
                }
            }
            if seen >= answer.total_num || answer.total_num == 0 {
                break;
            }
        }
        found.sort();
        Ok(found.into_iter().map(|(_, id)| id).collect())
    }
}

/// The earliest start time that can be the call's record (`since` minus the clock skew
/// allowed), and the service-local days to query: a day of margin on both sides, so that a
/// wrong guess of the service's zone does not hide a record near midnight (the start time check
/// is exact). `since` may come from a journal on disk: arithmetic saturates at chrono's limits
/// instead of panicking.
fn history_window(
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    offset: chrono::FixedOffset,
) -> (DateTime<Utc>, NaiveDate, NaiveDate) {
    let skew = TimeDelta::from_std(SKEW_TOLERANCE).unwrap_or_default();
    let floor = since.checked_sub_signed(skew).unwrap_or(since);
    let day = TimeDelta::days(1);
    let local_day = |t: DateTime<Utc>| {
        let utc = t.naive_utc();
        utc.checked_add_offset(offset).unwrap_or(utc).date()
    };
    let start = local_day(floor);
    let start = start.checked_sub_signed(day).unwrap_or(start);
    let end = local_day(now).max(start);
    let end = end.checked_add_signed(day).unwrap_or(end);
    (floor, start, end)
}

/// Truncation of a time to whole seconds (the history's resolution).
trait FloorSecond {
    fn with_nanosecond_floor(self) -> Self;
}

impl FloorSecond for DateTime<Utc> {
    fn with_nanosecond_floor(self) -> Self {
        use chrono::Timelike;
        self.with_nanosecond(0).unwrap_or(self)
    }
}

/// Parses `yyyy-MM-dd HH:mm:ss` (the service's format).
pub fn parse_service_time(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10: a send time at chrono's limits (a damaged journal) does not panic.
    #[test]
    fn the_history_window_saturates_at_the_calendar_limits() {
        let offset = chrono::FixedOffset::east_opt(8 * 3600).expect("offset");
        let t = |s: &str| s.parse::<DateTime<Utc>>().expect("time");
        let (floor, start, end) =
            history_window(t("2026-11-28T01:30:02Z"), t("2026-11-28T01:31:00Z"), offset);
        assert_eq!(floor, t("2026-11-28T01:29:57Z"));
        assert_eq!(
            (start.to_string(), end.to_string()),
            ("2026-11-27".into(), "2026-11-29".into())
        );
        for (since, now) in [
            (DateTime::<Utc>::MIN_UTC, Utc::now()),
            (DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MAX_UTC),
            (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MIN_UTC),
        ] {
            let (floor, start, end) = history_window(since, now, offset);
            assert!(floor <= since && start <= end);
        }
        // Start times from the API at the limits map to no instant rather than panicking.
        for text in ["+262143-12-31 23:59:59", "-262143-01-01 00:00:00"] {
            if let Some(started) = parse_service_time(text) {
                for secs in [-12 * 3600, 14 * 3600] {
                    let offset = chrono::FixedOffset::east_opt(secs).expect("offset");
                    let _ = started
                        .and_local_timezone(offset)
                        .single()
                        .map(|t| t.to_utc());
                }
            }
        }
    }

    #[test]
    fn service_times() {
        let t = parse_service_time("2026-11-28 09:30:05").expect("parses");
        assert_eq!(t.to_string(), "2026-11-28 09:30:05");
        assert!(parse_service_time("2026-11-28T09:30:05Z").is_none());
    }
}
