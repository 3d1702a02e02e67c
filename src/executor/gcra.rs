//! The account's pace as reservations: a GCRA (generic cell rate algorithm) that books each
//! caller's slot when it asks, instead of letting it try again when it wakes. Pure: the caller
//! gives the time and sleeps until the slot itself.
//!
//! Why reservations: a limiter that is checked again after a sleep counts from the moment the
//! caller woke, and a timer wakes up to a millisecond late; at burst 1 that lateness is lost for
//! good, call after call (`governor`'s `until_ready` ran 0.7-1.5% below the rate). Booked slots
//! are exactly one period apart whatever the timer does, so the rate holds on average and no
//! window sees more calls than the quota allows, plus the timer's own jitter.

use std::time::Duration;

use tokio::time::Instant;

/// The pace: `burst` calls at once after an idle period, then one per `period`.
#[derive(Debug)]
pub struct Gcra {
    period: Duration,
    /// How far ahead of the theoretical arrival time a call may go: `(burst - 1) * period`.
    tolerance: Duration,
    /// The theoretical arrival time of the next call (`None`: never used).
    tat: Option<Instant>,
}

impl Gcra {
    /// One call per `period`, `burst` (at least 1) at once.
    pub fn new(period: Duration, burst: u32) -> Self {
        Self {
            period,
            tolerance: period.saturating_mul(burst.max(1) - 1),
            tat: None,
        }
    }

    /// Books the next slot for a caller asking at `now`: when it may call (`now` or later).
    /// A caller that then gives up still used its slot (the pace errs on the slow side).
    pub fn reserve(&mut self, now: Instant) -> Instant {
        let tat = self.tat.map_or(now, |tat| tat.max(now));
        let at = tat
            .checked_sub(self.tolerance)
            .map_or(now, |earliest| earliest.max(now));
        self.tat = Some(tat + self.period);
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn burst_one_books_slots_one_period_apart_whoever_asks_late() {
        let start = Instant::now();
        let mut pace = Gcra::new(20 * MS, 1);
        assert_eq!(pace.reserve(start), start);
        // The second and third ask at once: each gets the next slot, not "when it wakes".
        assert_eq!(pace.reserve(start), start + 20 * MS);
        assert_eq!(pace.reserve(start + MS), start + 40 * MS);
        // A caller asking 0.9 ms after its slot would come loses nothing for the others: the
        // booking goes on from the theoretical time, not from its late arrival.
        assert_eq!(pace.reserve(start + 60 * MS), start + 60 * MS);
        assert_eq!(pace.reserve(start + 60 * MS), start + 80 * MS);
    }

    #[test]
    fn two_hundred_callers_are_paced_at_the_rate_exactly() {
        let start = Instant::now();
        let mut pace = Gcra::new(20 * MS, 1);
        let slots: Vec<Instant> = (0..200).map(|_| pace.reserve(start)).collect();
        let span = slots[199] - slots[0];
        assert_eq!(span, 199 * 20 * MS);
        // No 100 ms window holds more than 5 slots (the sixth is at +100 ms exactly).
        for (i, s) in slots.iter().enumerate() {
            let in_window = slots[i..]
                .iter()
                .take_while(|t| **t < *s + 100 * MS)
                .count();
            assert!(in_window <= 5, "{in_window} at {i}");
        }
    }

    #[test]
    fn a_burst_goes_at_once_after_an_idle_period_then_the_pace_resumes() {
        let start = Instant::now();
        let mut pace = Gcra::new(100 * MS, 3);
        let first: Vec<Instant> = (0..4).map(|_| pace.reserve(start)).collect();
        assert_eq!(first, [start, start, start, start + 100 * MS]);
        // Idle for a second: the burst is whole again.
        let later = start + Duration::from_secs(1);
        let again: Vec<Instant> = (0..4).map(|_| pace.reserve(later)).collect();
        assert_eq!(again, [later, later, later, later + 100 * MS]);
    }

    #[test]
    fn an_idle_limiter_lets_the_first_call_go_at_once() {
        let start = Instant::now();
        let mut pace = Gcra::new(Duration::from_secs(1000), 1);
        assert_eq!(pace.reserve(start + 5 * MS), start + 5 * MS);
        assert_eq!(
            pace.reserve(start + 6 * MS),
            start + 5 * MS + Duration::from_secs(1000)
        );
    }
}
