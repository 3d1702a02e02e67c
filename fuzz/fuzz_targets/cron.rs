//! The cron parser and fire-time search: `Schedule::parse` in any IANA zone, then the next
//! fire times after any instant chrono can represent.
//!
//! Input: 2 bytes zone index (into the bundled database's list), 8 bytes start instant (seconds, folded
//! into chrono's range), 1 byte count of fire times (0-7), then the expression (UTF-8).
//!
//! Oracles besides "no panic, no hang" (libFuzzer's `-timeout`): fire times strictly increase
//! and lie after the start; an expression that parsed always has a next fire time unless the
//! 401-year search horizon runs past the end of chrono's calendar (year 262142).
#![no_main]

use chrono::{DateTime, Datelike, Utc};
use std::sync::LazyLock;

use deployd::schedule::Schedule;
use deployd::zone::Zone;
use libfuzzer_sys::fuzz_target;

/// chrono's representable instants, in seconds: `MIN_UTC..=MAX_UTC` folded with `rem_euclid`.
const MIN_SECS: i64 = -8_334_601_228_800;
const SPAN_SECS: i64 = 8_210_266_876_799 - MIN_SECS + 1;

static ZONES: LazyLock<Vec<Zone>> = LazyLock::new(|| {
    Zone::names()
        .map(|name| Zone::parse(name).expect("a bundled zone"))
        .collect()
});

fuzz_target!(|data: &[u8]| {
    if data.len() < 11 {
        return;
    }
    let tz = ZONES[usize::from(u16::from_le_bytes([data[0], data[1]])) % ZONES.len()].clone();
    let raw = i64::from_le_bytes(data[2..10].try_into().expect("8 bytes"));
    let Some(after) = DateTime::<Utc>::from_timestamp(MIN_SECS + raw.rem_euclid(SPAN_SECS), 0)
    else {
        return;
    };
    let count = usize::from(data[10] % 8);
    let Ok(expr) = std::str::from_utf8(&data[11..]) else {
        return;
    };
    let Ok(schedule) = Schedule::parse(expr, tz.clone()) else {
        return;
    };
    let fires = schedule.upcoming(after, count);
    let mut last = after;
    for &t in &fires {
        assert!(t > last, "{expr:?} in {tz}: {t} does not follow {last}");
        last = t;
    }
    if fires.len() < count {
        // The search stopped: only the end of chrono's calendar may stop it.
        assert!(
            last.year() > 262_142 - 402,
            "{expr:?} in {tz}: no fire time after {last}, {} of {count} found",
            fires.len()
        );
    }
});
