//! The account-wide limits every API call goes through: a GCRA rate limiter (`governor`) and a
//! semaphore bounding calls in flight. One `Limits` is shared by every plan and every run,
//! because the API quota is per account.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why limits were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitsError {
    /// Rate must be a positive, finite number of calls per second.
    #[error("rate must be a positive number of calls per second (at most 10000), got {0}")]
    Rate(f64),
    /// Burst must be at least 1.
    #[error("burst must be at least 1, got {0}")]
    Burst(u32),
    /// Concurrency must be at least 1.
    #[error("concurrency must be between 1 and 10000, got {0}")]
    Concurrency(usize),
}

/// Shared rate and concurrency limits.
pub struct Limits {
    limiter: DefaultDirectRateLimiter,
    in_flight: Arc<Semaphore>,
    rate: f64,
    burst: u32,
    concurrency: usize,
    /// Total time callers spent waiting for a rate-limiter slot, in microseconds.
    waited_micros: AtomicU64,
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
        if !(rate.is_finite() && rate > 0.0 && rate <= 10_000.0) {
            return Err(LimitsError::Rate(rate));
        }
        let burst_nz = NonZeroU32::new(burst).ok_or(LimitsError::Burst(burst))?;
        if !(1..=10_000).contains(&concurrency) {
            return Err(LimitsError::Concurrency(concurrency));
        }
        let period = Duration::from_secs_f64(1.0 / rate);
        let quota = Quota::with_period(period)
            .ok_or(LimitsError::Rate(rate))?
            .allow_burst(burst_nz);
        Ok(Self {
            limiter: RateLimiter::direct(quota),
            in_flight: Arc::new(Semaphore::new(concurrency)),
            rate,
            burst,
            concurrency,
            waited_micros: AtomicU64::new(0),
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

    /// Total time spent waiting for the rate limiter so far.
    pub fn waited(&self) -> Duration {
        Duration::from_micros(self.waited_micros.load(Ordering::Relaxed))
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
        let started = Instant::now();
        // A little jitter keeps waiters that became ready together from waking in lock step.
        let jitter =
            Jitter::up_to(Duration::from_secs_f64(0.05 / self.rate).min(Duration::from_millis(2)));
        self.limiter.until_ready_with_jitter(jitter).await;
        let waited = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.waited_micros.fetch_add(waited, Ordering::Relaxed);
        CallPermit {
            _global: global,
            _plan: plan_permit,
        }
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
