//! The account-wide limits every API call goes through: a GCRA pace of booked slots ([`Gcra`]), a
//! semaphore bounding calls in flight, and a slow lane that opens when the gateway answers 429:
//! the pace drops for everybody (multiplicatively, and a `Retry-After` pauses every caller),
//! then recovers a little with each success (AIMD), so a rate set too high settles instead of
//! causing a storm of 429s. One `Limits` is shared by every plan and every run, because the
//! API quota is per account.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::gcra::Gcra;
use crate::api::pace::Pacer;

/// Smallest `rate` accepted: one call every 1,000 s. Below this the GCRA period (and the
/// slow lane's interval, 20 times longer) would leave what `Duration` can hold.
pub const MIN_RATE: f64 = 0.001;
/// Largest `rate` accepted, in calls per second.
pub const MAX_RATE: f64 = 10_000.0;
/// Largest `burst` accepted (the pace's tolerance is `period * (burst - 1)`, which this keeps
/// far from overflowing an `Instant` at the slowest rate).
pub const MAX_BURST: u32 = 10_000;
/// Largest `concurrency` accepted, global or per plan (the plan format's bound).
pub use crate::plan::validate::MAX_CONCURRENCY;

/// Why limits were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitsError {
    /// Rate must be a finite number of calls per second in [`MIN_RATE`]..=[`MAX_RATE`].
    #[error("must be a number of calls per second from {MIN_RATE} to {MAX_RATE}, got {0}")]
    Rate(f64),
    /// Burst must be in 1..=[`MAX_BURST`].
    #[error("must be from 1 to {MAX_BURST}, got {0}")]
    Burst(u32),
    /// Concurrency must be in 1..=[`MAX_CONCURRENCY`].
    #[error("must be from 1 to {MAX_CONCURRENCY}, got {0}")]
    Concurrency(usize),
}

impl LimitsError {
    /// The setting refused: `rate`, `burst` or `concurrency`.
    pub fn setting(&self) -> &'static str {
        match self {
            Self::Rate(_) => "rate",
            Self::Burst(_) => "burst",
            Self::Concurrency(_) => "concurrency",
        }
    }
}

/// The account's call limits as configured, each within its range: what [`Limits`] is built
/// from (settings build this value; nothing is built and thrown away to validate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallLimits {
    rate: f64,
    burst: u32,
    concurrency: usize,
}

impl CallLimits {
    /// Checks each value against its range; every problem is reported, setting by setting.
    pub fn new(rate: f64, burst: u32, concurrency: usize) -> Result<Self, Vec<LimitsError>> {
        let problems: Vec<LimitsError> = [
            // Written so that NaN fails too.
            (!(MIN_RATE..=MAX_RATE).contains(&rate)).then_some(LimitsError::Rate(rate)),
            (!(1..=MAX_BURST).contains(&burst)).then_some(LimitsError::Burst(burst)),
            (!(1..=MAX_CONCURRENCY).contains(&concurrency))
                .then_some(LimitsError::Concurrency(concurrency)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if problems.is_empty() {
            Ok(Self {
                rate,
                burst,
                concurrency,
            })
        } else {
            Err(problems)
        }
    }

    /// Calls per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Calls at once after an idle period.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Calls in flight.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }
}

impl Default for CallLimits {
    /// 5 calls per second, burst 1, 8 in flight (the contract's defaults).
    fn default() -> Self {
        Self {
            rate: 5.0,
            burst: 1,
            concurrency: 8,
        }
    }
}

/// Shared rate and concurrency limits.
pub struct Limits {
    pace: Mutex<Gcra>,
    in_flight: Arc<Semaphore>,
    rate: f64,
    burst: u32,
    concurrency: usize,
    /// Total time callers spent waiting for a rate-limiter slot, in microseconds.
    waited_micros: AtomicU64,
    /// The 429 feedback state.
    slow: Mutex<SlowLane>,
}

/// Smallest fraction of the configured rate the slow lane goes down to.
const MIN_FACTOR: f64 = 0.05;
/// What each successful call gives back to the pace (additive increase).
const RECOVERY_STEP: f64 = 0.05;
/// Longest pause a `Retry-After` imposes on every caller.
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// The 429 feedback state: a fraction of the configured rate, the next free slot at that
/// pace, and a pause every caller waits out.
#[derive(Debug)]
struct SlowLane {
    factor: f64,
    next_slot: Option<Instant>,
    paused_until: Option<Instant>,
}

impl SlowLane {
    /// Reserves the caller's slot: when it may go (or `None`: go now).
    fn reserve(&mut self, now: Instant, rate: f64) -> Option<Instant> {
        let paused = self.paused_until.filter(|p| *p > now);
        if self.factor >= 1.0 {
            self.next_slot = None;
            return paused;
        }
        let interval = Duration::from_secs_f64(1.0 / (rate * self.factor));
        let at = [Some(now), self.next_slot, paused]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(now);
        self.next_slot = Some(at + interval);
        (at > now).then_some(at)
    }
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

/// Held while one API call is in flight; dropping it frees the slots.
#[derive(Debug)]
pub struct CallPermit {
    _global: OwnedSemaphorePermit,
    _plan: Option<OwnedSemaphorePermit>,
}

impl Limits {
    /// `rate` calls per second (fractions allowed), `burst` calls at once after an idle
    /// period, `concurrency` calls in flight.
    pub fn new(rate: f64, burst: u32, concurrency: usize) -> Result<Self, LimitsError> {
        CallLimits::new(rate, burst, concurrency)
            .map_err(|mut problems| problems.remove(0))
            .and_then(Self::from_checked)
    }

    /// Limits of a checked configuration.
    pub fn of(limits: CallLimits) -> Self {
        Self::from_checked(limits)
            .expect("the ranges of CallLimits keep the GCRA period and burst representable")
    }

    fn from_checked(limits: CallLimits) -> Result<Self, LimitsError> {
        let CallLimits {
            rate,
            burst,
            concurrency,
        } = limits;
        if burst == 0 {
            return Err(LimitsError::Burst(burst));
        }
        let period = Duration::try_from_secs_f64(1.0 / rate)
            .ok()
            .filter(|p| !p.is_zero())
            .ok_or(LimitsError::Rate(rate))?;
        Ok(Self {
            pace: Mutex::new(Gcra::new(period, burst)),
            in_flight: Arc::new(Semaphore::new(concurrency)),
            rate,
            burst,
            concurrency,
            waited_micros: AtomicU64::new(0),
            slow: Mutex::new(SlowLane {
                factor: 1.0,
                next_slot: None,
                paused_until: None,
            }),
        })
    }

    /// Calls per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Burst size.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Calls in flight allowed.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The gateway throttled a call (429): slow down for everybody, and pause everybody for
    /// `retry_after` (clamped to 10 s).
    pub fn throttled(&self, retry_after: Option<Duration>) {
        if let Ok(mut lane) = self.slow.lock() {
            lane.factor = (lane.factor * 0.5).max(MIN_FACTOR);
            let pause =
                Instant::now() + retry_after.unwrap_or(Duration::from_secs(1)).min(MAX_PAUSE);
            lane.paused_until = Some(lane.paused_until.map_or(pause, |p| p.max(pause)));
            tracing::warn!(
                pace = lane.factor * self.rate,
                "throttled by the API (429): slowing every caller down"
            );
        }
    }

    /// A call went through: give a little of the pace back.
    pub fn relieved(&self) {
        if let Ok(mut lane) = self.slow.lock()
            && lane.factor < 1.0
        {
            lane.factor = (lane.factor + RECOVERY_STEP).min(1.0);
        }
    }

    /// The pace now, as a fraction of the configured rate (1.0 unless throttled lately).
    pub fn pace(&self) -> f64 {
        self.slow.lock().map(|l| l.factor).unwrap_or(1.0)
    }

    /// Total time spent waiting for the rate limiter so far.
    pub fn waited(&self) -> Duration {
        Duration::from_micros(self.waited_micros.load(Ordering::Relaxed))
    }

    /// How a call was answered, for the slow lane: a 429 slows everybody down and pauses them
    /// for its `Retry-After`, a success gives a little pace back, anything else (no answer
    /// included) says nothing about the quota.
    pub fn answered(&self, status: Option<u16>, retry_after: Option<Duration>) {
        match status {
            Some(429) => self.throttled(retry_after),
            Some(200..=299) => self.relieved(),
            _ => {}
        }
    }

    /// Waits for a slot in flight (the plan's, then the global one), then for the rate limiter.
    /// Taking the concurrency slot first means a call leaves as soon as its rate slot comes, so
    /// calls are spread as the rate says rather than bunched behind the semaphore.
    pub async fn acquire(&self, plan: Option<&Arc<Semaphore>>) -> CallPermit {
        let plan_permit = match plan {
            Some(sem) => Some(
                sem.clone()
                    .acquire_owned()
                    .await
                    .expect("plan semaphore is never closed"),
            ),
            None => None,
        };
        let global = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("global semaphore is never closed");
        self.wait_turn().await;
        CallPermit {
            _global: global,
            _plan: plan_permit,
        }
    }

    /// Waits out the pause a `Retry-After` imposed on every caller, if one is in force; takes
    /// no slot and no turn at the rate.
    pub async fn wait_pause(&self) {
        let until = self
            .slow
            .lock()
            .ok()
            .and_then(|lane| lane.paused_until)
            .filter(|until| *until > Instant::now());
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Waits for a turn at the account's pace: the rate limiter, then the slow lane (and its
    /// `Retry-After` pause). No slot in flight is taken.
    pub async fn wait_turn(&self) {
        let started = std::time::Instant::now();
        // The slot is booked now and slept to: a timer waking late delays this call only,
        // never the ones booked after it (see `gcra`).
        let at = self
            .pace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reserve(Instant::now());
        // A slot that is now goes at once: a timer, even an elapsed one, waits for the
        // timer wheel's next tick (up to a millisecond).
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        let slot = self
            .slow
            .lock()
            .map(|mut lane| lane.reserve(Instant::now(), self.rate))
            .unwrap_or(None);
        if let Some(at) = slot {
            tokio::time::sleep_until(at).await;
        }
        crate::metrics::global().limiter_wait(started.elapsed());
        let waited = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.waited_micros.fetch_add(waited, Ordering::Relaxed);
    }
}

/// IAM token requests are made inside the client, below this module: they reach the limits
/// through this hook. They wait out a `Retry-After` pause and report their answer like any
/// call, but take no slot in flight and no turn at the rate. No slot: a token is always
/// fetched for a call that already holds one, so with `concurrency: 1` asking for a second
/// would wait on the very call that waits for the token. No turn at the rate: IAM's quota is
/// not the deploy API's, and a refresh queued behind a run's start calls could let the token
/// they need expire.
impl Pacer for Limits {
    fn turn(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.wait_pause())
    }

    fn answered(&self, status: Option<u16>, retry_after: Option<Duration>) {
        Limits::answered(self, status, retry_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_values() {
        assert!(Limits::new(0.0, 1, 1).is_err());
        assert!(Limits::new(f64::NAN, 1, 1).is_err());
        assert!(Limits::new(-1.0, 1, 1).is_err());
        assert!(Limits::new(5.0, 0, 1).is_err());
        assert!(Limits::new(5.0, 1, 0).is_err());
        assert!(Limits::new(0.5, 1, 1).is_ok());
    }

    /// Issue 10: `--rate 1e-20` panicked converting 1e20 s to a `Duration`.
    #[test]
    fn extreme_values_are_refused_not_panicked_on() {
        for rate in [
            1e-20,
            0.000_999,
            f64::MIN_POSITIVE,
            10_000.1,
            f64::INFINITY,
            -0.0,
        ] {
            assert_eq!(
                Limits::new(rate, 1, 1).map(|_| ()),
                Err(LimitsError::Rate(rate)),
                "{rate}"
            );
        }
        assert_eq!(
            Limits::new(1.0, 10_001, 1).map(|_| ()),
            Err(LimitsError::Burst(10_001))
        );
        assert_eq!(
            Limits::new(1.0, u32::MAX, 1).map(|_| ()),
            Err(LimitsError::Burst(u32::MAX))
        );
        assert_eq!(
            Limits::new(1.0, 1, usize::MAX).map(|_| ()),
            Err(LimitsError::Concurrency(usize::MAX))
        );
        // The corners of the ranges work, the slow lane included.
        for (rate, burst) in [(MIN_RATE, MAX_BURST), (MAX_RATE, MAX_BURST), (MIN_RATE, 1)] {
            let limits = Limits::new(rate, burst, MAX_CONCURRENCY).expect("in range");
            for _ in 0..10 {
                limits.throttled(Some(Duration::MAX));
            }
            let mut lane = limits.slow.lock().expect("lock");
            let now = Instant::now();
            let first = lane.reserve(now, rate).expect("paused by the 429");
            let second = lane.reserve(now, rate).expect("spaced at the slow pace");
            assert!(second > first);
        }
        assert_eq!(LimitsError::Rate(0.0).setting(), "rate");
    }

    #[test]
    fn the_slow_lane_halves_and_recovers_gradually() {
        let limits = Limits::new(10.0, 1, 4).expect("valid");
        assert_eq!(limits.pace(), 1.0);
        limits.throttled(None);
        assert_eq!(limits.pace(), 0.5);
        limits.throttled(None);
        assert_eq!(limits.pace(), 0.25);
        for _ in 0..5 {
            limits.relieved();
        }
        assert!((limits.pace() - 0.5).abs() < 1e-9);
        for _ in 0..100 {
            limits.throttled(None);
        }
        assert_eq!(limits.pace(), MIN_FACTOR);
        for _ in 0..100 {
            limits.relieved();
        }
        assert_eq!(limits.pace(), 1.0);
    }

    #[test]
    fn slow_lane_slots_are_spaced_at_the_reduced_pace() {
        let now = Instant::now();
        let mut lane = SlowLane {
            factor: 0.5,
            next_slot: None,
            paused_until: None,
        };
        // 10/s at half pace: one slot every 200 ms.
        assert_eq!(lane.reserve(now, 10.0), None);
        assert_eq!(
            lane.reserve(now, 10.0),
            Some(now + Duration::from_millis(200))
        );
        assert_eq!(
            lane.reserve(now, 10.0),
            Some(now + Duration::from_millis(400))
        );
        let mut paused = SlowLane {
            factor: 1.0,
            next_slot: None,
            paused_until: Some(now + Duration::from_secs(1)),
        };
        assert_eq!(
            paused.reserve(now, 10.0),
            Some(now + Duration::from_secs(1))
        );
        assert_eq!(paused.reserve(now + Duration::from_secs(2), 10.0), None);
    }

    #[tokio::test]
    async fn concurrency_slots_are_bounded() {
        let limits = Limits::new(10_000.0, 100, 2).expect("valid");
        let a = limits.acquire(None).await;
        let _b = limits.acquire(None).await;
        let third = tokio::time::timeout(Duration::from_millis(50), limits.acquire(None)).await;
        assert!(third.is_err(), "a third call must wait for a slot");
        drop(a);
        let third = tokio::time::timeout(Duration::from_secs(5), limits.acquire(None)).await;
        assert!(third.is_ok(), "a freed slot is reused");
    }
}
