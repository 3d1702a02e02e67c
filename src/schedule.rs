//! Cron schedules: parsing and DST-correct fire-time math (pure, no clocks, no tokio).
//!
//! An expression is read in an IANA zone. Fire times are found as *local* wall-clock times that
//! match the fields, then mapped to instants:
//! - a local time that exists once fires then;
//! - a local time that occurs twice (fall-back) fires once, at its first occurrence; the repeated
//!   hour does not fire again, not even for `*`-style schedules;
//! - a local time that does not exist (spring-forward gap) fires at the first instant after the
//!   gap. All matching times in one gap collapse into that single fire, which also absorbs a fire
//!   at the gap's end time itself (`02:30` and `03:00` on a Berlin spring-forward night are one
//!   fire at 01:00Z).
//!
//! The mapping is monotone, so fire times are strictly increasing and [`Schedule::next_after`]
//! is the first matching local time after `after`'s local time whose instant lies after `after`.
//! croner parses the expression and matches single fields; its own search is not used because it
//! fires twice in a repeated hour for interval schedules (`0 * * * *`) and, for `*/30 * * * *`,
//! even returns times out of order (checked with croner 3.0.1 on 2026-10-25, Europe/Berlin).
//!
//! Day fields, as croner 3.0.1 reads them (with two fixes of ours, see [`normalize_day_of_week`]):
//! - day-of-month and day-of-week combine with OR when both are restricted, as in Vixie cron
//!   and Kubernetes CronJob; a field is unrestricted only when it is exactly `*` (or `?`), so
//!   `*/2` counts as restricted. A `+` in front of the day-of-week field asks for AND instead
//!   (`0 0 29 2 +1`: February 29 when it is a Monday).
//! - day-of-week runs 0-7, both 0 and 7 being Sunday; `7L` is the last Sunday like `0L`, and a
//!   step from a start (`1/2`) stays within Monday-Saturday (Monday, Wednesday, Friday), as in
//!   Kubernetes and croniter, instead of reaching 7 (Sunday).
//!
//! The search is bounded by the Gregorian cycle: the calendar repeats every 400 years (146,097
//! days, a whole number of weeks), so an expression that matches a date at all matches one in
//! any 400 years, and one that matches none in a cycle is refused when parsed.

use std::fmt;

use chrono::{
    DateTime, Datelike, LocalResult, Months, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta,
    Timelike, Utc,
};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::zone::Zone;

/// How far ahead [`Schedule::next_after`] looks: one Gregorian cycle of 400 years (after which
/// weekdays and leap years repeat), plus a year of margin, so an expression that matches some
/// date always gets its next fire time.
pub const SEARCH_HORIZON_MONTHS: u32 = 401 * 12;

/// Field names for 5-field expressions; 6-field ones have `second` in front.
const FIELD_NAMES: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];

/// Why a cron expression or zone was refused. The message names the expression and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(pub String);

/// A parsed cron schedule in an IANA time zone.
#[derive(Clone)]
pub struct Schedule {
    /// The expression as written (trimmed), macros not expanded.
    expr: String,
    tz: Zone,
    /// Always has seconds (`0` when the expression had 5 fields) and no year field.
    cron: Cron,
}

impl fmt::Debug for Schedule {
    /// Only the expression and zone: croner's own `Debug` prints thousands of bitfield entries.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("expr", &self.expr)
            .field("tz", &self.tz)
            .finish()
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr && self.tz == other.tz
    }
}

impl Schedule {
    /// Parses a 5-field (`m h dom mon dow`), 6-field (seconds first) or macro expression.
    ///
    /// Macros: `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`.
    /// An expression that matches no date at all (`0 0 30 2 *`) is refused.
    pub fn parse(expr: &str, tz: Zone) -> Result<Self, ScheduleError> {
        let expr = expr.trim();
        let fields = expand_macro(expr)?;
        let count = fields.split_whitespace().count();
        if !(5..=6).contains(&count) {
            return Err(ScheduleError(format!(
                "cron expression {expr:?} has {count} field(s); expected 5 \
                 (minute hour day-of-month month day-of-week) or 6 (second first), or a macro \
                 such as @daily"
            )));
        }
        let cron = parse_fields(fields).map_err(|e| {
            let field = offending_field(fields, count);
            ScheduleError(match field {
                Some((name, value)) => {
                    format!("cron expression {expr:?}: bad {name} field {value:?}: {e}")
                }
                None => format!("cron expression {expr:?}: {e}"),
            })
        })?;
        let schedule = Self {
            expr: expr.to_string(),
            tz,
            cron,
        };
        schedule.ensure_some_date_matches()?;
        Ok(schedule)
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The zone the expression is read in.
    pub fn timezone(&self) -> &Zone {
        &self.tz
    }

    /// The first fire time after `after` that is not in `used` (fire times already run or
    /// skipped: a clock set back never repeats them).
    pub fn next_unused(
        &self,
        after: DateTime<Utc>,
        used: &[DateTime<Utc>],
    ) -> Option<DateTime<Utc>> {
        let mut cursor = after;
        // Each used time is skipped at most once.
        for _ in 0..=used.len() {
            let next = self.next_after(cursor)?;
            if !used.contains(&next) {
                return Some(next);
            }
            cursor = next;
        }
        None
    }

    /// The first fire time strictly after `after`. `None` only at the end of chrono's calendar
    /// (nothing fires in its last year, 262142):
    /// the search spans [`SEARCH_HORIZON_MONTHS`], a whole Gregorian cycle, so a rare date
    /// (`0 0 29 2 +1`, February 29 on a Monday: 2044 after 2016) is found.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Fire times are whole seconds, so the sub-second part of `after` can be dropped: every
        // candidate after the truncated local time is also after the exact one.
        let start = self.local_start(after)?.with_nanosecond(0)?;
        // Near the end of chrono's calendar the horizon is its last date.
        let horizon = start
            .date()
            .checked_add_months(Months::new(SEARCH_HORIZON_MONTHS))
            .unwrap_or(NaiveDate::MAX);
        let mut cursor = start;
        loop {
            let local = self.next_local_after(cursor, horizon)?;
            let fire = self.resolve(local)?;
            // Only a repeated (fall-back) hour gives a candidate that is not after `after`: it
            // maps to the first pass, which is already over. Skip it, as the contract says.
            if fire > after {
                return Some(fire);
            }
            cursor = local;
        }
    }

    /// The next `n` fire times strictly after `after`, increasing (fewer if the horizon ends).
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n.min(1024));
        let mut cursor = after;
        while out.len() < n {
            let Some(next) = self.next_after(cursor) else {
                break;
            };
            out.push(next);
            cursor = next;
        }
        out
    }

    /// `after` as a local time in the schedule's zone. At the ends of chrono's calendar the
    /// local time may not be representable (`naive_local` would panic): before the first date
    /// the search starts at the first local time (earlier candidates are filtered out anyway,
    /// being before `after`); after the last date there is nothing left to find.
    fn local_start(&self, after: DateTime<Utc>) -> Option<NaiveDateTime> {
        let offset = self.tz.offset_at(after);
        match after.naive_utc().checked_add_offset(offset) {
            Some(local) => Some(local),
            None if offset.local_minus_utc() < 0 => Some(NaiveDateTime::MIN),
            None => None,
        }
    }

    /// The first local time strictly after `cursor` that matches every field, on a day up to
    /// `horizon` (inclusive).
    fn next_local_after(&self, cursor: NaiveDateTime, horizon: NaiveDate) -> Option<NaiveDateTime> {
        let mut day = cursor.date();
        let mut after = Some(cursor.time());
        while day <= horizon {
            // A month that does not match is skipped whole: rare dates are years apart.
            if !self.cron.pattern.month_match(day.month()).unwrap_or(false) {
                day = day.with_day(1)?.checked_add_months(Months::new(1))?;
                after = None;
                continue;
            }
            if self.date_matches(day)
                && let Some(time) = self.first_time_in_day(after)
            {
                return Some(day.and_time(time));
            }
            day = day.succ_opt()?;
            after = None;
        }
        None
    }

    fn date_matches(&self, day: NaiveDate) -> bool {
        // croner 3.0.1 finds the last day of a month (`L`) through the first day of the next
        // month, unwrapped: in December of chrono's last year that panics. Nothing fires in
        // that year (262142) rather than risk it.
        if day.year() >= NaiveDate::MAX.year() {
            return false;
        }
        let p = &self.cron.pattern;
        p.month_match(day.month()).unwrap_or(false)
            && p.day_match(day.year(), day.month(), day.day())
                .unwrap_or(false)
    }

    /// The first matching time of day strictly after `after` (from 00:00:00 inclusive if `None`).
    fn first_time_in_day(&self, after: Option<NaiveTime>) -> Option<NaiveTime> {
        let p = &self.cron.pattern;
        let (h0, m0, s0) = after.map_or((0, 0, 0), |t| (t.hour(), t.minute(), t.second()));
        for h in h0..24 {
            if !p.hour_match(h).unwrap_or(false) {
                continue;
            }
            let same_hour = h == h0 && after.is_some();
            for m in (if same_hour { m0 } else { 0 })..60 {
                if !p.minute_match(m).unwrap_or(false) {
                    continue;
                }
                let first_second = if same_hour && m == m0 { s0 + 1 } else { 0 };
                if let Some(s) = (first_second..60).find(|&s| p.second_match(s).unwrap_or(false)) {
                    return NaiveTime::from_hms_opt(h, m, s);
                }
            }
        }
        None
    }

    /// Maps a local wall-clock time to the instant it fires at (see the module docs).
    fn resolve(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.tz.from_local(local) {
            LocalResult::Single(t) => Some(t),
            LocalResult::Ambiguous(a, b) => Some(a.min(b)),
            LocalResult::None => gap_end(&self.tz, local),
        }
    }

    /// Refuses expressions whose day fields match no date in a whole 400-year Gregorian cycle.
    fn ensure_some_date_matches(&self) -> Result<(), ScheduleError> {
        let start = NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date");
        let matches = start
            .iter_days()
            .take(146_097)
            .any(|day| self.date_matches(day));
        if matches && self.first_time_in_day(None).is_some() {
            Ok(())
        } else {
            Err(ScheduleError(format!(
                "cron expression {:?} never fires: no date matches its day and month fields",
                self.expr
            )))
        }
    }
}

/// Parses an IANA zone name (`Europe/Berlin`, `UTC`), spelled exactly.
pub fn parse_timezone(name: &str) -> Result<Zone, ScheduleError> {
    Zone::parse(name).map_err(|e| ScheduleError(e.to_string()))
}

/// Parses 5 or 6 fields with croner, after [`normalize_day_of_week`].
fn parse_fields(fields: &str) -> Result<Cron, croner::errors::CronError> {
    let mut cron = parser().parse(&normalize_day_of_week(fields))?;
    // croner keeps a 5,001-byte bitfield for the year field, which a 5- or 6-field expression
    // never sets and this module never asks (it matches months, days and times itself, and
    // never calls croner's search or `year_match`): 5 KiB a plan, two thirds of the heap of a
    // daemon with 1,000 plans. A component of a few bytes takes its place (croner's component
    // type is private, so a clone of the day-of-week one, whose meaning as a year is unused).
    cron.pattern.years = cron.pattern.days_of_week.clone();
    Ok(cron)
}

/// Rewrites the day-of-week field (the last one) where croner 3.0.1 reads it differently from
/// Kubernetes and croniter:
/// - `7L` (last Sunday): croner maps 7 to 0 (Sunday) for plain and `#` values but not for `L`,
///   so `7L` never matched; it becomes `0L`.
/// - `N/S` (from N, every S days): croner runs the step up to 7, so `1/2` also hit 7, a second
///   Sunday; it becomes `N-6/S` (Monday, Wednesday, Friday). `*/S` and explicit ranges (`1-7/2`
///   names Sunday on purpose) are left alone.
///
/// Other fields and malformed items pass through for croner to judge.
fn normalize_day_of_week(fields: &str) -> String {
    let mut parts: Vec<String> = fields.split_whitespace().map(str::to_string).collect();
    let Some(last) = parts.last_mut() else {
        return fields.to_string();
    };
    let (plus, dow) = match last.strip_prefix('+') {
        Some(rest) => ("+", rest),
        None => ("", last.as_str()),
    };
    let items: Vec<String> = dow
        .split(',')
        .map(|item| {
            if item.eq_ignore_ascii_case("7L") {
                return "0L".to_string();
            }
            match item.split_once('/') {
                Some((start, step))
                    if !start.is_empty()
                        && start != "*"
                        && start != "7"
                        && start.chars().all(|c| c.is_ascii_alphanumeric()) =>
                {
                    format!("{start}-6/{step}")
                }
                _ => item.to_string(),
            }
        })
        .collect();
    *last = format!("{plus}{}", items.join(","));
    parts.join(" ")
}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Replaces a macro by its 5-field form; other expressions pass through.
fn expand_macro(expr: &str) -> Result<&str, ScheduleError> {
    if !expr.starts_with('@') {
        return Ok(expr);
    }
    Ok(match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            return Err(ScheduleError(format!(
                "unknown cron macro {expr:?}; known: @yearly, @annually, @monthly, @weekly, \
                 @daily, @midnight, @hourly"
            )));
        }
    })
}

/// Finds the first field that fails to parse on its own (all others `*`), to name it.
fn offending_field(fields: &str, count: usize) -> Option<(&'static str, &str)> {
    let names = &FIELD_NAMES[6 - count..];
    let values: Vec<&str> = fields.split_whitespace().collect();
    (0..count).find_map(|i| {
        let probe: Vec<&str> = (0..count)
            .map(|j| if i == j { values[j] } else { "*" })
            .collect();
        parse_fields(&probe.join(" "))
            .is_err()
            .then(|| (names[i], values[i]))
    })
}

/// The first instant after the spring-forward gap that contains the nonexistent local time
/// `local`.
///
/// Binary search for the instant where local time jumps over `local`. UTC offsets lie within
/// -12 h..+14 h, so the jump lies between `local` read as UTC minus 15 h (local time still
/// before `local`) and plus 13 h (already after it). Any such jump is a gap containing `local`.
fn gap_end(tz: &Zone, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let as_utc = local.and_utc();
    // Checked: at the ends of chrono's calendar there is no room for the search (and no gap).
    let mut lo = as_utc.checked_sub_signed(TimeDelta::hours(15))?.timestamp();
    let mut hi = as_utc.checked_add_signed(TimeDelta::hours(13))?.timestamp();
    let local_at = |secs: i64| DateTime::from_timestamp(secs, 0).and_then(|t| tz.local_at(t));
    if local_at(lo)? > local || local_at(hi)? <= local {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_at(mid)? > local {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz(name: &str) -> Zone {
        Zone::parse(name).expect("zone")
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("RFC 3339 test instant")
    }

    fn fires(expr: &str, zone: Zone, after: &str, n: usize) -> Vec<String> {
        Schedule::parse(expr, zone)
            .expect("valid expression")
            .upcoming(utc(after), n)
            .iter()
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .collect()
    }

    fn err(expr: &str) -> String {
        Schedule::parse(expr, Zone::utc())
            .expect_err("invalid expression")
            .to_string()
    }

    #[test]
    fn berlin_spring_forward_fires_at_the_end_of_the_gap() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST at 01:00Z; 02:30 does not exist.
        let want = ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"];
        assert_eq!(
            fires(
                "0 30 2 * * *",
                tz("Europe/Berlin"),
                "2026-03-28T12:00:00Z",
                2
            ),
            want
        );
        assert_eq!(
            fires("30 2 * * *", tz("Europe/Berlin"), "2026-03-28T12:00:00Z", 2),
            want
        );
        // The day before, 02:30 CET is 01:30Z.
        assert_eq!(
            fires("30 2 * * *", tz("Europe/Berlin"), "2026-03-27T12:00:00Z", 1),
            ["2026-03-28T01:30:00Z"]
        );
    }

    #[test]
    fn berlin_fall_back_fires_once_at_the_first_occurrence() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET at 01:00Z; 02:30 happens twice.
        let want = ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"];
        assert_eq!(
            fires(
                "0 30 2 * * *",
                tz("Europe/Berlin"),
                "2026-10-24T12:00:00Z",
                2
            ),
            want
        );
        assert_eq!(
            fires("30 2 * * *", tz("Europe/Berlin"), "2026-10-24T12:00:00Z", 2),
            want
        );
        // Asking from just after the first 02:30 (or during the second) skips the repeat.
        let s = Schedule::parse("30 2 * * *", tz("Europe/Berlin")).expect("valid");
        for after in [
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:29:59Z",
            "2026-10-25T01:30:00Z",
        ] {
            assert_eq!(
                s.next_after(utc(after)),
                Some(utc("2026-10-26T01:30:00Z")),
                "{after}"
            );
        }
    }

    #[test]
    fn hourly_job_across_both_berlin_transitions() {
        assert_eq!(
            fires("0 * * * *", tz("Europe/Berlin"), "2026-03-28T22:30:00Z", 4),
            [
                "2026-03-28T23:00:00Z", // 00:00 CET
                "2026-03-29T00:00:00Z", // 01:00 CET
                "2026-03-29T01:00:00Z", // 02:00 missing -> 03:00 CEST, also the 03:00 fire
                "2026-03-29T02:00:00Z", // 04:00 CEST
            ]
        );
        assert_eq!(
            fires("@hourly", tz("Europe/Berlin"), "2026-10-24T21:30:00Z", 5),
            [
                "2026-10-24T22:00:00Z", // 00:00 CEST
                "2026-10-24T23:00:00Z", // 01:00 CEST
                "2026-10-25T00:00:00Z", // 02:00 CEST; 02:00 CET (01:00Z) is the repeat
                "2026-10-25T02:00:00Z", // 03:00 CET
                "2026-10-25T03:00:00Z",
            ]
        );
    }

    #[test]
    fn minute_jobs_fire_once_at_the_gap_end_and_skip_the_repeated_hour() {
        assert_eq!(
            fires("* * * * *", tz("Europe/Berlin"), "2026-03-29T00:58:30Z", 3),
            [
                "2026-03-29T00:59:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:01:00Z"
            ]
        );
        assert_eq!(
            fires(
                "*/30 * * * *",
                tz("Europe/Berlin"),
                "2026-10-24T23:45:00Z",
                4
            ),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T02:30:00Z"
            ]
        );
        // From inside the second pass of the repeated hour.
        assert_eq!(
            fires(
                "*/30 * * * *",
                tz("Europe/Berlin"),
                "2026-10-25T01:15:00Z",
                1
            ),
            ["2026-10-25T02:00:00Z"]
        );
    }

    #[test]
    fn fire_times_strictly_increase_through_a_transition_night() {
        for (expr, from) in [
            ("*/7 * * * * *", "2026-03-29T00:30:00Z"),
            ("*/7 * * * * *", "2026-10-25T00:30:00Z"),
            ("*/5 * * * *", "2026-10-24T23:00:00Z"),
        ] {
            let s = Schedule::parse(expr, tz("Europe/Berlin")).expect("valid");
            let all = s.upcoming(utc(from), 1500);
            assert_eq!(all.len(), 1500);
            assert!(all.windows(2).all(|w| w[0] < w[1]), "{expr} from {from}");
        }
    }

    #[test]
    fn new_york_transitions() {
        // 2026-03-08 02:00 EST -> 03:00 EDT at 07:00Z; 2026-11-01 02:00 EDT -> 01:00 EST at 06:00Z.
        assert_eq!(
            fires(
                "30 2 * * *",
                tz("America/New_York"),
                "2026-03-07T12:00:00Z",
                2
            ),
            ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]
        );
        assert_eq!(
            fires(
                "30 1 * * *",
                tz("America/New_York"),
                "2026-10-31T12:00:00Z",
                2
            ),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
    }

    #[test]
    fn lord_howe_half_hour_shift() {
        // 2026-10-04 02:00 +10:30 -> 02:30 +11 at 15:30Z; 2026-04-05 02:00 +11 -> 01:30 +10:30.
        assert_eq!(
            fires(
                "15 2 * * *",
                tz("Australia/Lord_Howe"),
                "2026-10-03T12:00:00Z",
                2
            ),
            ["2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"]
        );
        assert_eq!(
            fires(
                "45 1 * * *",
                tz("Australia/Lord_Howe"),
                "2026-04-04T12:00:00Z",
                2
            ),
            ["2026-04-04T14:45:00Z", "2026-04-05T15:15:00Z"]
        );
    }

    #[test]
    fn zones_without_dst() {
        assert_eq!(
            fires("0 9 * * *", tz("Asia/Shanghai"), "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T01:00:00Z"]
        );
        assert_eq!(
            fires("0 30 2 * * *", Zone::utc(), "2026-03-29T02:30:00Z", 2),
            ["2026-03-30T02:30:00Z", "2026-03-31T02:30:00Z"]
        );
    }

    #[test]
    fn feb_29_is_found_years_ahead() {
        assert_eq!(
            fires("0 0 29 2 *", Zone::utc(), "2026-01-01T00:00:00Z", 2),
            ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
        );
    }

    /// Issue 10: February 29 that is also a Monday (`+`: both day fields must match) was armed
    /// as "never" by a five-year search; the search now spans a Gregorian cycle.
    #[test]
    fn rare_dates_decades_ahead_are_found() {
        assert_eq!(
            fires("0 0 29 2 +1", Zone::utc(), "2026-01-01T00:00:00Z", 3),
            [
                "2044-02-29T00:00:00Z",
                "2072-02-29T00:00:00Z",
                // 2100 is not a leap year: 40 years apart.
                "2112-02-29T00:00:00Z"
            ]
        );
        // Friday the 13th of December, in a zone.
        assert_eq!(
            fires(
                "0 9 13 12 +FRI",
                tz("Europe/Berlin"),
                "2030-12-14T00:00:00Z",
                1
            ),
            ["2041-12-13T08:00:00Z"]
        );
    }

    /// The horizon covers a whole 400-year cycle: any expression a date matches gets a next
    /// fire time from any start.
    #[test]
    fn the_search_spans_a_gregorian_cycle() {
        const { assert!(SEARCH_HORIZON_MONTHS >= 400 * 12) };
        for expr in ["0 0 29 2 +1", "0 0 29 2 +0", "0 0 31 12 +6", "0 0 1 1 +1"] {
            let s = Schedule::parse(expr, Zone::utc()).expect(expr);
            for start in [
                "1999-06-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
                "2300-03-01T00:00:00Z",
            ] {
                let next = s.next_after(utc(start));
                assert!(next.is_some(), "{expr} from {start}");
            }
        }
    }

    /// Issue 10: `7L` (the last Sunday) was refused as "never fires" though `0L` worked.
    #[test]
    fn seven_l_is_the_last_sunday_like_zero_l() {
        let want = ["2026-03-29T00:00:00Z", "2026-04-26T00:00:00Z"];
        for expr in ["0 0 * * 7L", "0 0 * * 0L", "0 0 * * 7l"] {
            assert_eq!(
                fires(expr, Zone::utc(), "2026-03-01T00:00:00Z", 2),
                want,
                "{expr}"
            );
        }
        // In a list too; and 7 alone is Sunday.
        assert_eq!(
            fires("0 0 * * 5L,7L", Zone::utc(), "2026-03-01T00:00:00Z", 2),
            ["2026-03-27T00:00:00Z", "2026-03-29T00:00:00Z"]
        );
        assert_eq!(
            fires("0 0 * * 7", Zone::utc(), "2026-03-14T00:00:00Z", 1),
            ["2026-03-15T00:00:00Z"]
        );
    }

    /// Issue 10: in the day-of-week field, `1/2` reached 7 (Sunday); it means Monday,
    /// Wednesday, Friday, as in Kubernetes and croniter.
    #[test]
    fn day_of_week_steps_stay_within_the_week() {
        // 2026-03-14 is a Saturday.
        let mon_wed_fri = [
            "2026-03-16T00:00:00Z",
            "2026-03-18T00:00:00Z",
            "2026-03-20T00:00:00Z",
            "2026-03-23T00:00:00Z",
        ];
        for expr in [
            "0 0 * * 1/2",
            "0 0 * * MON/2",
            "0 0 * * 1-5/2",
            "0 0 * * 1,3,5",
        ] {
            assert_eq!(
                fires(expr, Zone::utc(), "2026-03-14T00:00:00Z", 4),
                mon_wed_fri,
                "{expr}"
            );
        }
        // From Sunday, every other day: Sunday, Tuesday, Thursday, Saturday.
        assert_eq!(
            fires("0 0 * * 0/2", Zone::utc(), "2026-03-14T00:00:00Z", 4),
            [
                "2026-03-15T00:00:00Z",
                "2026-03-17T00:00:00Z",
                "2026-03-19T00:00:00Z",
                "2026-03-21T00:00:00Z"
            ]
        );
        // An explicit range up to 7 names Sunday on purpose.
        assert_eq!(
            fires("0 0 * * 5-7/2", Zone::utc(), "2026-03-14T00:00:00Z", 2),
            ["2026-03-15T00:00:00Z", "2026-03-20T00:00:00Z"]
        );
        assert_eq!(normalize_day_of_week("0 0 * * 1/2"), "0 0 * * 1-6/2");
        assert_eq!(
            normalize_day_of_week("0 0 0 * * +1/2,7L"),
            "0 0 0 * * +1-6/2,0L"
        );
        assert_eq!(normalize_day_of_week("*/5 * 1/2 * */2"), "*/5 * 1/2 * */2");
    }

    /// Day-of-month and day-of-week combine with OR when both are restricted (Vixie cron,
    /// Kubernetes CronJob), and `*/N` counts as restricted; `+` asks for AND.
    #[test]
    fn restricted_day_fields_combine_with_or() {
        // The 13th, and every Friday (March 2026: Fridays 6, 13, 20, 27).
        assert_eq!(
            fires("0 0 13 * 5", Zone::utc(), "2026-03-01T00:00:00Z", 6),
            [
                "2026-03-06T00:00:00Z",
                "2026-03-13T00:00:00Z",
                "2026-03-20T00:00:00Z",
                "2026-03-27T00:00:00Z",
                "2026-04-03T00:00:00Z",
                "2026-04-10T00:00:00Z"
            ]
        );
        // `*/10` is restricted: days 1, 11, 21, 31 or Mondays (2, 9, 16, 23, 30).
        let days: Vec<String> = fires("0 0 */10 * 1", Zone::utc(), "2026-02-28T12:00:00Z", 9)
            .iter()
            .map(|t| t[8..10].to_string())
            .collect();
        assert_eq!(days, ["01", "02", "09", "11", "16", "21", "23", "30", "31"]);
        // `*` and `?` are not: only the other field counts.
        for expr in ["0 0 * * 1", "0 0 ? * 1"] {
            assert_eq!(
                fires(expr, Zone::utc(), "2026-03-01T00:00:00Z", 2),
                ["2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z"],
                "{expr}"
            );
        }
        // `+`: the 13th when it is a Friday.
        assert_eq!(
            fires("0 0 13 * +5", Zone::utc(), "2026-03-01T00:00:00Z", 2),
            ["2026-03-13T00:00:00Z", "2026-11-13T00:00:00Z"]
        );
    }

    #[test]
    fn six_fields_have_seconds_first() {
        assert_eq!(
            fires("*/2 * * * * *", Zone::utc(), "2026-05-01T12:00:00Z", 3),
            [
                "2026-05-01T12:00:02Z",
                "2026-05-01T12:00:04Z",
                "2026-05-01T12:00:06Z"
            ]
        );
        let s = Schedule::parse("*/2 * * * * *", Zone::utc()).expect("valid");
        assert_eq!(
            s.next_after(utc("2026-05-01T12:00:01.999Z")),
            Some(utc("2026-05-01T12:00:02Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-05-01T12:00:02.001Z")),
            Some(utc("2026-05-01T12:00:04Z"))
        );
        // Five fields fire at second 0, and year ends roll over.
        assert_eq!(
            fires("59 23 31 12 *", Zone::utc(), "2026-12-31T23:59:00Z", 1),
            ["2027-12-31T23:59:00Z"]
        );
    }

    #[test]
    fn macros() {
        let berlin = tz("Europe/Berlin");
        let from = "2026-03-15T12:00:00Z"; // a Sunday, CET
        for (expr, first) in [
            ("@daily", "2026-03-15T23:00:00Z"),
            ("@midnight", "2026-03-15T23:00:00Z"),
            ("@hourly", "2026-03-15T13:00:00Z"),
            ("@weekly", "2026-03-21T23:00:00Z"),
            ("@monthly", "2026-03-31T22:00:00Z"),
            ("@yearly", "2026-12-31T23:00:00Z"),
            ("@ANNUALLY", "2026-12-31T23:00:00Z"),
        ] {
            assert_eq!(fires(expr, berlin.clone(), from, 1), [first], "{expr}");
        }
        let s = Schedule::parse(" @daily ", berlin.clone()).expect("valid");
        assert_eq!(s.expr(), "@daily");
        assert_eq!(s.timezone(), &berlin);
    }

    #[test]
    fn error_messages_read_well() {
        assert_eq!(
            err("60 * * * * *"),
            "cron expression \"60 * * * * *\": bad second field \"60\": Component error: \
             Number out of bounds."
        );
    }

    #[test]
    fn invalid_expressions_say_what_is_wrong() {
        let e = err("60 * * * * *");
        assert!(e.contains("second field \"60\""), "{e}");
        let e = err("0 61 * * * *");
        assert!(e.contains("minute field \"61\""), "{e}");
        let e = err("0 25 * * *");
        assert!(e.contains("hour field \"25\""), "{e}");
        let e = err("* * * * * * *");
        assert!(e.contains("has 7 field(s)"), "{e}");
        let e = err("* * * *");
        assert!(e.contains("has 4 field(s)"), "{e}");
        let e = err("garbage");
        assert!(e.contains("has 1 field(s)"), "{e}");
        let e = err("a b c d e");
        assert!(e.contains("\"a b c d e\""), "{e}");
        let e = err("");
        assert!(e.contains("has 0 field(s)"), "{e}");
        let e = err("@reboot");
        assert!(e.contains("unknown cron macro \"@reboot\""), "{e}");
        let e = err("0 0 30 2 *");
        assert!(e.contains("never fires"), "{e}");
        // The rewritten day-of-week field is named as written.
        let e = err("0 0 * * 1/0");
        assert!(e.contains("day-of-week field \"1/0\""), "{e}");
        let e = err("0 0 * * 8L");
        assert!(e.contains("day-of-week field \"8L\""), "{e}");
    }

    /// Why the search is our own: on a zoned time, croner 3.0.1's iterator yields both passes of
    /// the repeated hour, out of order, and `find_next_occurrence` from inside the second pass
    /// returns a time before its start. If this starts failing, croner changed its DST handling.
    #[test]
    fn croner_alone_mishandles_the_repeated_hour() {
        let cron = parser().parse("*/30 * * * *").expect("valid");
        let start = utc("2026-10-24T23:45:00Z").with_timezone(&chrono_tz::Europe::Berlin);
        let seen: Vec<String> = cron
            .iter_after(start)
            .take(4)
            .map(|t| t.to_utc().format("%H:%M").to_string())
            .collect();
        assert_eq!(seen, ["00:00", "01:00", "00:30", "01:30"]);
        let inside = utc("2026-10-25T01:15:00Z").with_timezone(&chrono_tz::Europe::Berlin);
        let next = cron
            .find_next_occurrence(&inside, false)
            .expect("a next time");
        assert_eq!(next.to_utc(), utc("2026-10-25T00:30:00Z"));
    }

    #[test]
    fn debug_is_short() {
        let s = Schedule::parse("@daily", tz("Europe/Berlin")).expect("valid");
        assert_eq!(
            format!("{s:?}"),
            r#"Schedule { expr: "@daily", tz: Europe/Berlin }"#
        );
    }

    #[test]
    fn timezones_parse_by_iana_name() {
        assert_eq!(parse_timezone("Europe/Berlin"), Ok(tz("Europe/Berlin")));
        assert_eq!(parse_timezone("UTC"), Ok(Zone::utc()));
        let e = parse_timezone("Mars/Olympus").expect_err("unknown");
        assert!(e.to_string().contains("\"Mars/Olympus\""));
    }

    #[test]
    fn gap_end_finds_the_transition_instant() {
        let local = NaiveDate::from_ymd_opt(2026, 3, 29)
            .and_then(|d| d.and_hms_opt(2, 0, 0))
            .expect("valid");
        assert_eq!(
            gap_end(&tz("Europe/Berlin"), local),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        let local = local
            .with_minute(59)
            .and_then(|t| t.with_second(59))
            .expect("valid");
        assert_eq!(
            gap_end(&tz("Europe/Berlin"), local),
            Some(utc("2026-03-29T01:00:00Z"))
        );
    }
}

#[cfg(test)]
mod fuzz_findings {
    //! Regressions found by `fuzz/` (target `cron`), minimized.
    use super::*;

    fn tz(name: &str) -> Zone {
        Zone::parse(name).expect("zone")
    }

    #[test]
    fn next_after_at_the_start_of_chronos_calendar_does_not_panic() {
        // Fuzz finding: `@weekly` in a zone west of UTC, asked just after chrono's first
        // instant: the local start time lies before chrono's first date, and `naive_local`
        // panicked ("Local time out of range for `NaiveDateTime`").
        let after = DateTime::<Utc>::MIN_UTC + TimeDelta::seconds(268);
        let s = Schedule::parse("@weekly", tz("America/New_York")).expect("valid");
        let next = s.next_after(after).expect("a Sunday follows");
        assert!(next > after);
        let fires = s.upcoming(after, 3);
        assert_eq!(fires.len(), 3);
        assert!(fires.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn next_after_at_the_end_of_chronos_calendar_is_none() {
        // East of UTC, the local time of chrono's last instants lies after its last date.
        let s = Schedule::parse("* * * * *", tz("Asia/Tokyo")).expect("valid");
        assert_eq!(
            s.next_after(DateTime::<Utc>::MAX_UTC - TimeDelta::seconds(5)),
            None
        );
        let s = Schedule::parse("* * * * *", tz("America/New_York")).expect("valid");
        assert_eq!(
            s.next_after(DateTime::<Utc>::MAX_UTC - TimeDelta::seconds(5)),
            None
        );
    }

    #[test]
    fn a_last_day_of_month_schedule_in_chronos_last_year_does_not_panic() {
        // Fuzz finding (`1 0 L * +0,,,`, then minimized): croner 3.0.1 works out `L` with
        // `NaiveDate::from_ymd_opt(year + 1, 1, 1).unwrap()`, which panics in December of
        // chrono's last year (262142).
        let s = Schedule::parse("0 0 L * *", Zone::utc()).expect("valid");
        let after = NaiveDate::from_ymd_opt(262_142, 12, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .expect("valid")
            .and_utc();
        assert_eq!(s.next_after(after), None);
        let after = NaiveDate::from_ymd_opt(262_141, 12, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .expect("valid")
            .and_utc();
        assert_eq!(s.next_after(after), Some(after + TimeDelta::days(30)));
    }

    #[test]
    fn gap_end_near_chronos_first_date_is_none() {
        // `gap_end` subtracts 15 h from the local time read as UTC: that must not overflow.
        assert_eq!(gap_end(&Zone::utc(), NaiveDateTime::MIN), None);
        assert_eq!(gap_end(&Zone::utc(), NaiveDateTime::MAX), None);
    }
}
