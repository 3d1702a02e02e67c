//! The host's wall clock, watched against the monotonic clock: a step of the host's time (an
//! operator, a bad NTP source, a VM restored from a snapshot) or a suspend shows as a jump. The
//! daemon logs each jump and re-arms its schedules; decisions that trust the wall clock's word
//! (removing old results by age) wait until it has been steady for a while.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};

/// A difference between the wall clock's and the monotonic clock's progress larger than this
/// is a jump.
pub const JUMP: TimeDelta = TimeDelta::seconds(2);
/// How long after a jump the wall clock is not trusted for removals.
pub const DISTRUST_FOR: Duration = Duration::from_secs(3600);

/// Detects jumps between two looks at the clocks.
#[derive(Debug, Clone, Copy)]
pub struct JumpDetector {
    wall: DateTime<Utc>,
    mono: Instant,
}

impl JumpDetector {
    /// A detector starting now.
    pub fn new() -> Self {
        Self::at(Utc::now(), Instant::now())
    }

    /// A detector starting at the given readings.
    pub fn at(wall: DateTime<Utc>, mono: Instant) -> Self {
        Self { wall, mono }
    }

    /// Looks at the clocks now; the jump since the last look, if any.
    pub fn check(&mut self) -> Option<TimeDelta> {
        self.check_at(Utc::now(), Instant::now())
    }

    /// [`JumpDetector::check`] with the readings given (pure, for tests).
    pub fn check_at(&mut self, wall: DateTime<Utc>, mono: Instant) -> Option<TimeDelta> {
        let mono_elapsed = TimeDelta::from_std(mono.saturating_duration_since(self.mono))
            .unwrap_or(TimeDelta::MAX);
        let wall_elapsed = wall.signed_duration_since(self.wall);
        *self = Self { wall, mono };
        let jump = wall_elapsed - mono_elapsed;
        (jump.abs() > JUMP).then_some(jump)
    }
}

impl Default for JumpDetector {
    fn default() -> Self {
        Self::new()
    }
}

static LAST_JUMP: Mutex<Option<Instant>> = Mutex::new(None);

/// Records that the wall clock just jumped.
pub fn note_jump() {
    if let Ok(mut last) = LAST_JUMP.lock() {
        *last = Some(Instant::now());
    }
}

/// The clocks at the last look by [`trusted`].
static BASE: Mutex<Option<(DateTime<Utc>, Instant)>> = Mutex::new(None);

/// Whether the wall clock has been steady long enough (no jump seen in the last hour) for a
/// decision that cannot be undone, such as removing results by age. It looks at the clocks
/// itself too: a run that ends just after a jump need not wait for the daemon's loop to
/// notice it. (Slow drift, up to a millisecond per second, is not a jump.)
pub fn trusted() -> bool {
    let (wall, mono) = (Utc::now(), Instant::now());
    if let Ok(mut base) = BASE.lock() {
        if let Some((w0, m0)) = *base {
            let mono_elapsed = mono.saturating_duration_since(m0);
            let allowed = JUMP + TimeDelta::from_std(mono_elapsed / 1000).unwrap_or(TimeDelta::MAX);
            let drift = wall.signed_duration_since(w0)
                - TimeDelta::from_std(mono_elapsed).unwrap_or(TimeDelta::MAX);
            if drift.abs() > allowed {
                note_jump();
            }
        }
        *base = Some((wall, mono));
    }
    LAST_JUMP
        .lock()
        .map(|last| last.is_none_or(|at| at.elapsed() > DISTRUST_FOR))
        .unwrap_or(false)
}

/// How a jump reads in a log line: `+1d 00:00:03` style, signed.
pub fn describe(jump: TimeDelta) -> String {
    let sign = if jump < TimeDelta::zero() { '-' } else { '+' };
    // Rounded to the nearest second: a step of a day reads +1d, not +23:59:59.
    let secs = (jump.num_milliseconds().unsigned_abs() + 500) / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let clock = format!(
        "{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
    if days > 0 {
        format!("{sign}{days}d {clock}")
    } else {
        format!("{sign}{clock}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_of_the_wall_clock_are_jumps_and_steady_time_is_not() {
        let wall = Utc::now();
        let mono = Instant::now();
        let mut d = JumpDetector::at(wall, mono);
        // A minute passes on both clocks.
        assert_eq!(
            d.check_at(
                wall + TimeDelta::seconds(60),
                mono + Duration::from_secs(60)
            ),
            None
        );
        // The wall clock is set a day ahead.
        let j = d.check_at(
            wall + TimeDelta::days(1) + TimeDelta::seconds(61),
            mono + Duration::from_secs(61),
        );
        assert_eq!(j, Some(TimeDelta::days(1)));
        // And back.
        let j = d.check_at(
            wall + TimeDelta::seconds(64),
            mono + Duration::from_secs(64),
        );
        assert_eq!(j, Some(-TimeDelta::days(1) + TimeDelta::seconds(0)));
        // Set back 10 s.
        let j = d.check_at(
            wall + TimeDelta::seconds(55),
            mono + Duration::from_secs(65),
        );
        assert_eq!(j, Some(TimeDelta::seconds(-10)));
        // NTP slewing a few ms is not a jump.
        assert_eq!(
            d.check_at(
                wall + TimeDelta::seconds(115) + TimeDelta::milliseconds(30),
                mono + Duration::from_secs(125)
            ),
            None
        );
    }

    #[test]
    fn jumps_read_well() {
        assert_eq!(
            describe(TimeDelta::days(1) + TimeDelta::seconds(3)),
            "+1d 00:00:03"
        );
        assert_eq!(describe(TimeDelta::seconds(-10)), "-00:00:10");
        assert_eq!(
            describe(TimeDelta::days(1) - TimeDelta::milliseconds(2)),
            "+1d 00:00:00"
        );
    }

    #[test]
    fn a_jump_makes_the_clock_untrusted() {
        note_jump();
        assert!(!trusted());
    }
}
