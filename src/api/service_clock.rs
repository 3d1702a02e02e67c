//! What this process knows of the service's clock, learned from facts rather than assumed:
//! how far it is from ours (the `Date` header of every answer, to the second) and the zone of
//! its record times (`start_time` of a record whose creation instant we know, because this
//! process created it). History lookups use both to tell a record of their own call from
//! older ones; until the zone is learned, every real offset (UTC-12 to UTC+14) is possible.
//!
//! The pure arithmetic (intervals, rounding, candidate tests) is free functions with unit
//! tests; [`ServiceClock`] keeps the samples, the witnesses and the learned zone (persisted
//! among the store's learned facts) behind a mutex.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use tracing::{info, warn};

/// The westmost real UTC offset (Baker Island, UTC-12).
pub const MIN_OFFSET_SECS: i32 = -12 * 3600;
/// The eastmost real UTC offset (Line Islands, UTC+14).
pub const MAX_OFFSET_SECS: i32 = 14 * 3600;
/// Real offsets are whole quarter hours (UTC+5:45, UTC+8:45, ...).
const QUARTER_HOUR: i64 = 15 * 60;
/// The skew assumed before any `Date` header was seen: the gateway refuses AK/SK signatures
/// more than 15 minutes off its clock.
pub const UNMEASURED_SKEW: Duration = Duration::from_secs(15 * 60);
/// A skew larger than this is logged as a warning.
const SKEW_WARNING: TimeDelta = TimeDelta::seconds(5);
/// Samples older than this are not used (clocks drift; the host's may be stepped).
const SAMPLE_MAX_AGE: Duration = Duration::from_secs(600);
/// Samples kept at most.
const MAX_SAMPLES: usize = 64;
/// Witnesses (own records with known creation bounds) kept at most.
const MAX_WITNESSES: usize = 64;
/// A witness older than this is not used to learn the zone by a status query.
const WITNESS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// `t + d`, saturating at chrono's limits (times may come from a damaged journal or a hostile
/// answer: arithmetic never panics).
fn add(t: DateTime<Utc>, d: TimeDelta) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(if d < TimeDelta::zero() {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// `a - b`, saturating.
fn diff(a: DateTime<Utc>, b: DateTime<Utc>) -> TimeDelta {
    a.naive_utc().signed_duration_since(b.naive_utc())
}

/// Bounds on the service's clock minus ours: `lo <= service - local <= hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skew {
    /// Lower bound.
    pub lo: TimeDelta,
    /// Upper bound.
    pub hi: TimeDelta,
    /// Whether a `Date` header measured it (otherwise the ±15 min assumption).
    pub measured: bool,
}

impl Skew {
    /// The skew assumed before any measurement.
    pub fn unmeasured() -> Self {
        let d = TimeDelta::from_std(UNMEASURED_SKEW).unwrap_or(TimeDelta::minutes(15));
        Self {
            lo: -d,
            hi: d,
            measured: false,
        }
    }

    /// The middle of the bounds.
    pub fn mid(&self) -> TimeDelta {
        self.lo + (self.hi - self.lo) / 2
    }
}

/// The skew interval one answer proves: the service stamped `date` (truncated to the second)
/// at some instant between our `sent` and `received`.
pub fn skew_bounds(
    sent: DateTime<Utc>,
    received: DateTime<Utc>,
    date: DateTime<Utc>,
) -> (TimeDelta, TimeDelta) {
    (
        diff(date, received),
        diff(add(date, TimeDelta::seconds(1)), sent),
    )
}

/// Parses an HTTP `Date` header (IMF-fixdate, and RFC 850 / asctime as RFC 9110 allows).
pub fn parse_http_date(text: &str) -> Option<DateTime<Utc>> {
    let t = text.trim();
    DateTime::parse_from_rfc2822(t)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(t, "%A, %d-%b-%y %H:%M:%S GMT")
                .ok()
                .map(|n| n.and_utc())
        })
        .or_else(|| {
            NaiveDateTime::parse_from_str(t, "%a %b %e %H:%M:%S %Y")
                .ok()
                .map(|n| n.and_utc())
        })
}

/// The zone a record proves, or `None` when the evidence leaves a doubt. `created_lo..=
/// created_hi` bounds the record's creation on the service's clock; `start` is its
/// `start_time` as written (floored to the second). The offset is `start - creation`, rounded
/// to a quarter hour; it is accepted only if the whole interval rounds to the same quarter
/// hour and that is a real offset.
pub fn zone_from_record(
    created_lo: DateTime<Utc>,
    created_hi: DateTime<Utc>,
    start: NaiveDateTime,
) -> Option<FixedOffset> {
    let start = start.and_utc();
    // offset in (start - created_hi, start + 1 s - created_lo]
    let lo = diff(start, created_hi).num_milliseconds();
    let hi = diff(add(start, TimeDelta::seconds(1)), created_lo).num_milliseconds() - 1;
    let round = |ms: i64| (ms as f64 / 1000.0 / QUARTER_HOUR as f64).round() as i64 * QUARTER_HOUR;
    let (a, b) = (round(lo), round(hi));
    if a != b || hi < lo {
        return None;
    }
    let secs = i32::try_from(a).ok()?;
    if !(MIN_OFFSET_SECS..=MAX_OFFSET_SECS).contains(&secs) {
        return None;
    }
    FixedOffset::east_opt(secs)
}

/// Whether a record whose `start_time` reads `start` may have been created by a call sent at
/// `sent` and not yet settled at `now` (both our clock): under `zone`, or, unknown, under some
/// real offset (a whole quarter hour from UTC-12 to UTC+14), its creation on the service's
/// clock falls after the send and no later than now, given the skew's bounds. Records of other
/// callers are ruled out unless their start is within the skew's and the wait's width of the
/// send, shifted by a whole quarter hour.
pub fn may_follow(
    start: NaiveDateTime,
    sent: DateTime<Utc>,
    now: DateTime<Utc>,
    skew: Skew,
    zone: Option<FixedOffset>,
) -> bool {
    let (earliest, latest) = (add(sent, skew.lo), add(now.max(sent), skew.hi));
    let under = |offset_secs: i64| {
        let created_from = add(start.and_utc(), TimeDelta::seconds(-offset_secs));
        add(created_from, TimeDelta::seconds(1)) > earliest && created_from <= latest
    };
    match zone {
        Some(z) => under(i64::from(z.local_minus_utc())),
        None => (i64::from(MIN_OFFSET_SECS) / QUARTER_HOUR
            ..=i64::from(MAX_OFFSET_SECS) / QUARTER_HOUR)
            .any(|q| under(q * QUARTER_HOUR)),
    }
}

/// The history's date window (in the record zone's dates) that holds every record created
/// between `sent` and `now` (our clock), whatever the zone if it is unknown.
pub fn date_window(
    sent: DateTime<Utc>,
    now: DateTime<Utc>,
    skew: Skew,
    zone: Option<FixedOffset>,
) -> (NaiveDate, NaiveDate) {
    let (west, east) = zone.map_or((MIN_OFFSET_SECS, MAX_OFFSET_SECS), |z| {
        (z.local_minus_utc(), z.local_minus_utc())
    });
    let from = add(add(sent, skew.lo), TimeDelta::seconds(i64::from(west)));
    let to = add(
        add(now.max(sent), skew.hi),
        TimeDelta::seconds(i64::from(east)),
    );
    (from.date_naive(), to.date_naive().max(from.date_naive()))
}

/// A record this process created, with its creation bounded on the service's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    /// The task.
    pub task_id: String,
    /// The record.
    pub record_id: String,
    /// Earliest creation instant (service clock).
    pub created_lo: DateTime<Utc>,
    /// Latest creation instant (service clock).
    pub created_hi: DateTime<Utc>,
}

pub use crate::store::LearnedZone;

/// What this process knows of the service's clock. Shared by every call.
#[derive(Debug, Default)]
pub struct ServiceClock {
    inner: Mutex<Inner>,
    /// Held while a status query learns the zone (others wait for its answer); holds when the
    /// last one was made.
    learning: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct Inner {
    samples: VecDeque<(Instant, TimeDelta, TimeDelta)>,
    witnesses: VecDeque<(Instant, Witness)>,
    zone: Option<LearnedZone>,
    hint: Option<FixedOffset>,
    store: Option<crate::store::SharedStore>,
    warned_skew: Option<TimeDelta>,
    /// The zone an earlier process learned, not trusted until confirmed.
    stored: Option<LearnedZone>,
}

/// How often a status query may be spent to learn the zone.
const LEARN_EVERY: Duration = Duration::from_secs(60);

impl ServiceClock {
    /// A clock that knows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the learned zone in `store`'s learned facts (and reads what an earlier process
    /// learned); `hint` is the configured offset, only compared with what is learned.
    pub fn attach_store(&self, store: crate::store::SharedStore, hint: Option<FixedOffset>) {
        // A fact that cannot be read is as good as none: it is only a hint.
        let stored = store
            .learned_zone()
            .ok()
            .flatten()
            .filter(|z| (MIN_OFFSET_SECS..=MAX_OFFSET_SECS).contains(&z.utc_offset_secs));
        let mut inner = self.lock();
        inner.hint = hint;
        inner.store = Some(store);
        if inner.zone.is_none()
            && inner.stored.is_none()
            && let Some(z) = stored
        {
            // Not trusted until this process confirms it (a state folder copied from another
            // host, a service that changed its zone): until then every offset counts.
            info!(
                offset = %offset_text(z.utc_offset_secs),
                "the service's record times were in UTC{} (learned {} from record {}); to be confirmed by this daemon's first record",
                offset_text(z.utc_offset_secs),
                crate::results::ts(&z.learned_at),
                z.record_id
            );
            inner.stored = Some(z);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes note of one answer's `Date` header.
    pub fn observe(&self, sent: DateTime<Utc>, received: DateTime<Utc>, date: Option<&str>) {
        let Some(date) = date.and_then(parse_http_date) else {
            return;
        };
        let (lo, hi) = skew_bounds(sent, received, date);
        let now = Instant::now();
        let mut inner = self.lock();
        inner
            .samples
            .retain(|(at, _, _)| now.duration_since(*at) < SAMPLE_MAX_AGE);
        inner.samples.push_back((now, lo, hi));
        while inner.samples.len() > MAX_SAMPLES {
            inner.samples.pop_front();
        }
        // A sample that contradicts older ones means a clock was stepped: the older ones go.
        while inner.samples.len() > 1 && intersect(&inner.samples).is_none() {
            inner.samples.pop_front();
        }
        if let Some((lo, hi)) = intersect(&inner.samples) {
            let mid = lo + (hi - lo) / 2;
            let warned = inner.warned_skew;
            if mid.abs() > SKEW_WARNING && warned.is_none_or(|w| (w - mid).abs() > SKEW_WARNING) {
                warn!(
                    skew_ms = mid.num_milliseconds(),
                    "the service's clock is {:.1} s {} this host's (from the Date header of its answers); history lookups correct for it, but check the host's time synchronisation",
                    mid.num_milliseconds().abs() as f64 / 1000.0,
                    if mid > TimeDelta::zero() {
                        "ahead of"
                    } else {
                        "behind"
                    }
                );
                inner.warned_skew = Some(mid);
            } else if mid.abs() <= SKEW_WARNING && warned.is_some() {
                info!(
                    skew_ms = mid.num_milliseconds(),
                    "the service's clock agrees with this host's again"
                );
                inner.warned_skew = None;
            }
        }
    }

    /// The skew as far as it is known.
    pub fn skew(&self) -> Skew {
        let inner = self.lock();
        let now = Instant::now();
        let fresh: VecDeque<_> = inner
            .samples
            .iter()
            .filter(|(at, _, _)| now.duration_since(*at) < SAMPLE_MAX_AGE)
            .copied()
            .collect();
        match intersect(&fresh) {
            Some((lo, hi)) => Skew {
                lo,
                hi,
                measured: true,
            },
            None => Skew::unmeasured(),
        }
    }

    /// The learned zone of record times.
    pub fn zone(&self) -> Option<FixedOffset> {
        self.lock()
            .zone
            .as_ref()
            .and_then(|z| FixedOffset::east_opt(z.utc_offset_secs))
    }

    /// Takes note of a record this process created: its call was sent at `sent` and answered
    /// at `answered` (our clock).
    pub fn witness(
        &self,
        task_id: &str,
        record_id: &str,
        sent: DateTime<Utc>,
        answered: DateTime<Utc>,
    ) {
        let skew = self.skew();
        let w = Witness {
            task_id: task_id.to_string(),
            record_id: record_id.to_string(),
            created_lo: add(sent, skew.lo),
            created_hi: add(answered, skew.hi),
        };
        let mut inner = self.lock();
        inner.witnesses.push_back((Instant::now(), w));
        while inner.witnesses.len() > MAX_WITNESSES {
            inner.witnesses.pop_front();
        }
    }

    /// Waits for any status query learning the zone, then tells whether to make one now:
    /// only while the zone is unknown, at most once a minute. The caller makes it while
    /// holding the returned guard (`Some`), so that others wait for its answer.
    pub async fn begin_learning(&self) -> Option<tokio::sync::MutexGuard<'_, Option<Instant>>> {
        let mut gate = self.learning.lock().await;
        if self.zone().is_some() || gate.is_some_and(|at| at.elapsed() < LEARN_EVERY) {
            return None;
        }
        *gate = Some(Instant::now());
        Some(gate)
    }

    /// The newest witness whose creation is bounded tightly enough to prove a zone.
    pub fn recent_witness(&self) -> Option<Witness> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .witnesses
            .iter()
            .rev()
            .filter(|(at, _)| now.duration_since(*at) < WITNESS_MAX_AGE)
            .map(|(_, w)| w)
            .find(|w| w.created_hi - w.created_lo < TimeDelta::seconds(QUARTER_HOUR / 2))
            .cloned()
    }

    /// Learns from a record's `start_time` if the record is one of our witnesses; returns
    /// the zone it proves.
    pub fn learn_from(&self, record_id: &str, start: NaiveDateTime) -> Option<FixedOffset> {
        let witness = {
            let inner = self.lock();
            inner
                .witnesses
                .iter()
                .find(|(_, w)| w.record_id == record_id)
                .map(|(_, w)| w.clone())?
        };
        let zone = zone_from_record(witness.created_lo, witness.created_hi, start)?;
        self.learned(zone, record_id);
        Some(zone)
    }

    /// Records a learned zone: logged when new or changed, kept in the state folder.
    fn learned(&self, zone: FixedOffset, record_id: &str) {
        let secs = zone.local_minus_utc();
        let mut inner = self.lock();
        let before = inner.zone.as_ref().map(|z| z.utc_offset_secs);
        if before == Some(secs) {
            return;
        }
        if let Some(stored) = inner.stored.take()
            && before.is_none()
            && stored.utc_offset_secs != secs
        {
            warn!(
                "the state folder said the service's record times were in UTC{}, but record {record_id} shows UTC{}: using UTC{}",
                offset_text(stored.utc_offset_secs),
                offset_text(secs),
                offset_text(secs)
            );
        }
        match before {
            None => info!(
                offset = %offset_text(secs),
                record_id,
                "learned the zone of the service's record times: UTC{}",
                offset_text(secs)
            ),
            Some(old) => warn!(
                offset = %offset_text(secs),
                record_id,
                "the service's record times are now in UTC{} (they were in UTC{}); using the new zone",
                offset_text(secs),
                offset_text(old)
            ),
        }
        check_hint(inner.hint, secs);
        let learned = LearnedZone {
            utc_offset_secs: secs,
            learned_at: Utc::now(),
            record_id: record_id.to_string(),
        };
        if let Some(store) = &inner.store
            && let Err(e) = store.keep_learned_zone(&learned)
        {
            warn!("cannot keep the learned zone in the state folder: {e}");
        }
        inner.zone = Some(learned);
    }
}

fn check_hint(hint: Option<FixedOffset>, learned: i32) {
    if let Some(h) = hint
        && h.local_minus_utc() != learned
    {
        warn!(
            "history_utc_offset says UTC{} but the service's record times are in UTC{} (learned from its answers): the learned zone is used",
            offset_text(h.local_minus_utc()),
            offset_text(learned)
        );
    }
}

/// `+08:00`, `-05:00`, `+05:45`.
pub fn offset_text(secs: i32) -> String {
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.unsigned_abs();
    format!("{sign}{:02}:{:02}", a / 3600, a % 3600 / 60)
}

/// The intersection of the samples' intervals, if not empty.
fn intersect(
    samples: &VecDeque<(Instant, TimeDelta, TimeDelta)>,
) -> Option<(TimeDelta, TimeDelta)> {
    let mut it = samples.iter();
    let (_, mut lo, mut hi) = *it.next()?;
    for (_, l, h) in it {
        lo = lo.max(*l);
        hi = hi.min(*h);
    }
    (lo <= hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }
    fn naive(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").expect("naive")
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Fri, 15 Mar 2024 20:30:00 GMT"),
            Some(t("2024-03-15T20:30:00Z"))
        );
        assert_eq!(
            parse_http_date("Friday, 15-Mar-24 20:30:00 GMT"),
            Some(t("2024-03-15T20:30:00Z"))
        );
        assert_eq!(
            parse_http_date("Fri Mar 15 20:30:00 2024"),
            Some(t("2024-03-15T20:30:00Z"))
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn skew_from_dates_narrows_with_samples() {
        let clock = ServiceClock::new();
        assert!(!clock.skew().measured);
        // The service is 30.4 s ahead: stamped 10:00:30 (floored) while we were at 10:00:00.1-.2
        clock.observe(
            t("2026-12-01T10:00:00.100Z"),
            t("2026-12-01T10:00:00.200Z"),
            Some("Tue, 01 Dec 2026 10:00:30 GMT"),
        );
        let s = clock.skew();
        assert!(s.measured);
        assert!(s.lo <= TimeDelta::milliseconds(30_400) && TimeDelta::milliseconds(30_400) <= s.hi);
        assert!(s.hi - s.lo <= TimeDelta::milliseconds(1_100));
        // A second sample at another sub-second phase narrows it.
        clock.observe(
            t("2026-12-01T10:00:00.550Z"),
            t("2026-12-01T10:00:00.650Z"),
            Some("Tue, 01 Dec 2026 10:00:31 GMT"),
        );
        let s2 = clock.skew();
        assert!(
            s2.lo <= TimeDelta::milliseconds(30_400) && TimeDelta::milliseconds(30_400) <= s2.hi
        );
        assert!(s2.hi - s2.lo < s.hi - s.lo);
    }

    #[test]
    fn a_stepped_clock_drops_the_old_samples() {
        let clock = ServiceClock::new();
        clock.observe(
            t("2026-12-01T10:00:00.100Z"),
            t("2026-12-01T10:00:00.200Z"),
            Some("Tue, 01 Dec 2026 10:00:00 GMT"),
        );
        // Our clock was set back 60 s: the same service time now reads 60 s earlier here.
        clock.observe(
            t("2026-12-01T09:59:10.100Z"),
            t("2026-12-01T09:59:10.200Z"),
            Some("Tue, 01 Dec 2026 10:00:10 GMT"),
        );
        let s = clock.skew();
        assert!(
            s.lo >= TimeDelta::seconds(59) && s.hi <= TimeDelta::seconds(61),
            "{s:?}"
        );
    }

    #[test]
    fn zones_are_learned_only_without_doubt() {
        let lo = t("2026-12-01T10:00:00.100Z");
        let hi = t("2026-12-01T10:00:00.400Z");
        for (start, secs) in [
            ("2026-12-01 18:00:00", 8 * 3600),
            ("2026-12-01 10:00:00", 0),
            ("2026-12-01 05:00:00", -5 * 3600),
            ("2026-12-01 15:45:00", 5 * 3600 + 45 * 60),
            ("2026-12-02 00:00:00", 14 * 3600),
            ("2026-11-30 22:00:00", -12 * 3600),
        ] {
            assert_eq!(
                zone_from_record(lo, hi, naive(start)).map(|z| z.local_minus_utc()),
                Some(secs),
                "{start}"
            );
        }
        // A record that started a little after its creation (queued) still rounds right.
        assert_eq!(
            zone_from_record(lo, hi, naive("2026-12-01 18:02:10")).map(|z| z.local_minus_utc()),
            Some(8 * 3600)
        );
        // A creation bounded only within 20 minutes proves nothing.
        let wide = t("2026-12-01T10:20:00Z");
        assert_eq!(
            zone_from_record(lo, wide, naive("2026-12-01 18:10:00")),
            None
        );
        // Right between two quarter hours: doubt.
        assert_eq!(zone_from_record(lo, hi, naive("2026-12-01 18:07:30")), None);
        // Not a real offset.
        assert_eq!(zone_from_record(lo, hi, naive("2026-12-02 03:00:00")), None);
    }

    #[test]
    fn candidates_follow_the_send_under_the_zone() {
        let sent = t("2026-12-01T10:00:00.500Z");
        let now = t("2026-12-01T10:00:05Z");
        let skew = Skew {
            lo: TimeDelta::milliseconds(-200),
            hi: TimeDelta::milliseconds(800),
            measured: true,
        };
        let utc8 = FixedOffset::east_opt(8 * 3600);
        // Created at 10:00:00.6 UTC, shown in UTC+8 floored: 18:00:00.
        assert!(may_follow(
            naive("2026-12-01 18:00:00"),
            sent,
            now,
            skew,
            utc8
        ));
        // 20 s before the send: another caller's.
        assert!(!may_follow(
            naive("2026-12-01 17:59:40"),
            sent,
            now,
            skew,
            utc8
        ));
        // After now: not created yet.
        assert!(!may_follow(
            naive("2026-12-01 18:00:10"),
            sent,
            now,
            skew,
            utc8
        ));
        // Unknown zone: a start that some quarter-hour offset puts between send and now.
        assert!(may_follow(
            naive("2026-12-01 18:00:02"),
            sent,
            now,
            skew,
            None
        ));
        assert!(may_follow(
            naive("2026-12-01 15:45:03"),
            sent,
            now,
            skew,
            None
        ));
        assert!(may_follow(
            naive("2026-11-30 22:00:01"),
            sent,
            now,
            skew,
            None
        ));
        // 20 s before the send in every zone: another caller's, whatever the zone.
        assert!(!may_follow(
            naive("2026-12-01 17:59:40"),
            sent,
            now,
            skew,
            None
        ));
        assert!(!may_follow(
            naive("2026-12-01 09:59:40"),
            sent,
            now,
            skew,
            None
        ));
        // Beyond the real offsets.
        assert!(!may_follow(
            naive("2026-11-30 21:45:01"),
            sent,
            now,
            skew,
            None
        ));
        assert!(!may_follow(
            naive("2026-12-02 00:15:01"),
            sent,
            now,
            skew,
            None
        ));
        // A service that writes UTC, read as UTC.
        let utc = FixedOffset::east_opt(0);
        assert!(may_follow(
            naive("2026-12-01 10:00:00"),
            sent,
            now,
            skew,
            utc
        ));
        assert!(!may_follow(
            naive("2026-12-01 09:59:58"),
            sent,
            now,
            skew,
            utc
        ));
    }

    #[test]
    fn host_clock_ahead_or_behind() {
        // The host is 30 s ahead: we send at 10:00:30 (ours) = 10:00:00 (service).
        let sent = t("2026-12-01T10:00:30Z");
        let now = t("2026-12-01T10:00:33Z");
        let ahead = Skew {
            lo: TimeDelta::milliseconds(-30_300),
            hi: TimeDelta::milliseconds(-29_700),
            measured: true,
        };
        let utc = FixedOffset::east_opt(0);
        assert!(may_follow(
            naive("2026-12-01 10:00:00"),
            sent,
            now,
            ahead,
            utc
        ));
        assert!(may_follow(
            naive("2026-12-01 10:00:00"),
            sent,
            now,
            ahead,
            None
        ));
        // The host is 60 s behind: we send at 09:59:00 (ours) = 10:00:00 (service); a record
        // 20 s before that is not ours.
        let sent = t("2026-12-01T09:59:00Z");
        let now = t("2026-12-01T09:59:03Z");
        let behind = Skew {
            lo: TimeDelta::milliseconds(59_700),
            hi: TimeDelta::milliseconds(60_300),
            measured: true,
        };
        assert!(!may_follow(
            naive("2026-12-01 09:59:40"),
            sent,
            now,
            behind,
            utc
        ));
        assert!(!may_follow(
            naive("2026-12-01 09:59:40"),
            sent,
            now,
            behind,
            None
        ));
        assert!(may_follow(
            naive("2026-12-01 10:00:00"),
            sent,
            now,
            behind,
            utc
        ));
        assert!(may_follow(
            naive("2026-12-01 10:00:00"),
            sent,
            now,
            behind,
            None
        ));
    }

    #[test]
    fn windows_cover_every_zone_until_one_is_known() {
        let sent = t("2026-12-01T10:00:00Z");
        let skew = Skew::unmeasured();
        let (from, to) = date_window(sent, sent, skew, None);
        assert_eq!(from.to_string(), "2026-11-30");
        assert_eq!(to.to_string(), "2026-12-02");
        let (from, to) = date_window(sent, sent, skew, FixedOffset::east_opt(8 * 3600));
        assert_eq!(
            (from.to_string(), to.to_string()),
            ("2026-12-01".into(), "2026-12-01".into())
        );
    }

    #[test]
    fn the_learned_zone_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ServiceClock::new();
        let store = || -> crate::store::SharedStore {
            std::sync::Arc::new(crate::store::folder::FolderStore::at(dir.path()))
        };
        clock.attach_store(store(), FixedOffset::east_opt(8 * 3600));
        clock.observe(
            t("2026-12-01T10:00:00.100Z"),
            t("2026-12-01T10:00:00.200Z"),
            Some("Tue, 01 Dec 2026 10:00:00 GMT"),
        );
        clock.witness(
            "t",
            "r1",
            t("2026-12-01T10:00:00.100Z"),
            t("2026-12-01T10:00:00.200Z"),
        );
        assert_eq!(
            clock.learn_from("other", naive("2026-12-01 10:00:00")),
            None
        );
        assert_eq!(
            clock
                .learn_from("r1", naive("2026-12-01 05:00:00"))
                .map(|z| z.local_minus_utc()),
            Some(-5 * 3600)
        );
        // A new process reads it, but trusts it only once one of its own records confirms
        // it (the folder may come from another host, the service may have changed).
        let again = ServiceClock::new();
        again.attach_store(store(), None);
        assert_eq!(again.zone(), None);
        again.observe(
            t("2026-12-01T11:00:00.100Z"),
            t("2026-12-01T11:00:00.200Z"),
            Some("Tue, 01 Dec 2026 11:00:00 GMT"),
        );
        again.witness(
            "t",
            "r2",
            t("2026-12-01T11:00:00.100Z"),
            t("2026-12-01T11:00:00.200Z"),
        );
        assert_eq!(
            again
                .learn_from("r2", naive("2026-12-01 19:00:00"))
                .map(|z| z.local_minus_utc()),
            Some(8 * 3600)
        );
        assert_eq!(again.zone().map(|z| z.local_minus_utc()), Some(8 * 3600));
    }

    /// A send time at chrono's limits (a damaged journal) or a record time at the parser's
    /// limits (a hostile answer) does not panic.
    #[test]
    fn arithmetic_saturates_at_the_calendar_limits() {
        let skew = Skew::unmeasured();
        for (sent, now) in [
            (DateTime::<Utc>::MIN_UTC, Utc::now()),
            (DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MAX_UTC),
            (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MIN_UTC),
        ] {
            let (from, to) = date_window(sent, now, skew, None);
            assert!(from <= to);
            for start in [NaiveDateTime::MIN, NaiveDateTime::MAX] {
                let _ = may_follow(start, sent, now, skew, None);
                let _ = zone_from_record(sent, now, start);
            }
            let _ = skew_bounds(sent, now, now);
        }
    }

    #[test]
    fn offsets_print_like_iso() {
        assert_eq!(offset_text(8 * 3600), "+08:00");
        assert_eq!(offset_text(-5 * 3600), "-05:00");
        assert_eq!(offset_text(5 * 3600 + 45 * 60), "+05:45");
        assert_eq!(offset_text(0), "+00:00");
    }
}
