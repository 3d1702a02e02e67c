//! The retry policy: a validated value type and pure math (attempt -> delay, with full jitter
//! and server hints clamped). No sleeping and no HTTP here.

use std::time::Duration;

use crate::plan::RetryOverrides;

/// Largest `max_attempts` accepted: beyond this a retry loop is an outage amplifier.
pub const MAX_ATTEMPTS_LIMIT: u32 = 20;

/// Longest `base`, `cap` or `deadline` accepted (the plan format's limit for durations too).
pub const MAX_RETRY_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Why a retry policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryPolicyError {
    /// `base`, `cap` or `deadline` longer than [`MAX_RETRY_DURATION`].
    #[error("{field} ({value:?}) must be at most 24h")]
    TooLong {
        /// `base`, `cap` or `deadline`.
        field: &'static str,
        /// The value given.
        value: Duration,
    },
    /// `max_attempts` out of range.
    #[error("max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {0}")]
    Attempts(u32),
    /// A zero base delay would hammer the API.
    #[error("base delay must be at least 1ms")]
    ZeroBase,
    /// `cap` below `base`.
    #[error("cap ({cap:?}) must not be below base ({base:?})")]
    CapBelowBase {
        /// Base delay.
        base: Duration,
        /// Cap.
        cap: Duration,
    },
    /// A deadline shorter than one base delay leaves no room for any retry.
    #[error("deadline ({deadline:?}) must be at least the base delay ({base:?})")]
    DeadlineTooShort {
        /// Base delay.
        base: Duration,
        /// Deadline.
        deadline: Duration,
    },
}

/// How a task's start call is retried: at most `max_attempts` calls, backoff from `base`
/// doubling up to `cap` with full jitter, all within `deadline` from the first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base: Duration,
    cap: Duration,
    deadline: Duration,
}

impl Default for RetryPolicy {
    /// The contract's defaults: 5 attempts, 1 s doubling to 60 s, 10 minutes per task.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            deadline: Duration::from_secs(600),
        }
    }
}

impl RetryPolicyError {
    /// The setting at fault, as written under `retry:` (`retry.base`, ...).
    pub fn setting(&self) -> &'static str {
        match self {
            Self::TooLong { field: "base", .. } | Self::ZeroBase => "retry.base",
            Self::TooLong { field: "cap", .. } | Self::CapBelowBase { .. } => "retry.cap",
            Self::TooLong { .. } | Self::DeadlineTooShort { .. } => "retry.deadline",
            Self::Attempts(_) => "retry.max_attempts",
        }
    }
}

impl RetryPolicy {
    /// Checks and builds a policy.
    pub fn try_new(
        max_attempts: u32,
        base: Duration,
        cap: Duration,
        deadline: Duration,
    ) -> Result<Self, RetryPolicyError> {
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return Err(RetryPolicyError::Attempts(max_attempts));
        }
        if base < Duration::from_millis(1) {
            return Err(RetryPolicyError::ZeroBase);
        }
        for (field, value) in [("base", base), ("cap", cap), ("deadline", deadline)] {
            if value > MAX_RETRY_DURATION {
                return Err(RetryPolicyError::TooLong { field, value });
            }
        }
        if cap < base {
            return Err(RetryPolicyError::CapBelowBase { base, cap });
        }
        if deadline < base {
            return Err(RetryPolicyError::DeadlineTooShort { base, deadline });
        }
        Ok(Self {
            max_attempts,
            base,
            cap,
            deadline,
        })
    }

    /// This policy with a plan's overrides applied (and checked again as a whole).
    pub fn with_overrides(&self, o: &RetryOverrides) -> Result<Self, RetryPolicyError> {
        Self::try_new(
            o.max_attempts.unwrap_or(self.max_attempts),
            o.base.unwrap_or(self.base),
            o.cap.unwrap_or(self.cap),
            o.deadline.unwrap_or(self.deadline),
        )
    }

    /// Calls per task, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// First backoff delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// Largest backoff delay (also the clamp for `Retry-After`).
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// Time budget per task.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The backoff ceiling after the `attempt`-th call failed (1-based): `min(cap, base*2^(n-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << shift).min(self.cap)
    }

    /// The delay before the next call after the `attempt`-th failed. `unit` is a uniform
    /// random number in `[0, 1)` (full jitter: anywhere between zero and the ceiling). A server's
    /// `Retry-After` is a floor, clamped to `cap` so a hostile or broken header cannot park a
    /// task for hours.
    pub fn delay(&self, attempt: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        let jittered = self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0));
        match retry_after {
            Some(hint) => jittered.max(hint.min(self.cap)),
            None => jittered,
        }
    }

    /// Whether another call is allowed after `attempts` calls, `elapsed` since the first, if
    /// the next would start after `delay`.
    pub fn allows_another(&self, attempts: u32, elapsed: Duration, delay: Duration) -> bool {
        attempts < self.max_attempts && elapsed.saturating_add(delay) < self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn try_new_rejects_nonsense() {
        assert_eq!(
            RetryPolicy::try_new(0, ms(1), ms(2), ms(10)),
            Err(RetryPolicyError::Attempts(0))
        );
        assert_eq!(
            RetryPolicy::try_new(21, ms(1), ms(2), ms(10)),
            Err(RetryPolicyError::Attempts(21))
        );
        assert!(RetryPolicy::try_new(20, ms(1), ms(2), ms(10)).is_ok());
        assert_eq!(
            RetryPolicy::try_new(3, ms(0), ms(2), ms(10)),
            Err(RetryPolicyError::ZeroBase)
        );
        assert!(matches!(
            RetryPolicy::try_new(3, ms(10), ms(5), ms(100)),
            Err(RetryPolicyError::CapBelowBase { .. })
        ));
        assert!(matches!(
            RetryPolicy::try_new(3, ms(10), ms(50), ms(5)),
            Err(RetryPolicyError::DeadlineTooShort { .. })
        ));
    }

    /// Issue 10: every duration has an upper bound, and each refusal names its setting.
    #[test]
    fn durations_are_bounded_and_refusals_name_the_setting() {
        let day = MAX_RETRY_DURATION;
        assert!(RetryPolicy::try_new(20, day, day, day).is_ok());
        let long = day + ms(1);
        for (policy, setting) in [
            (RetryPolicy::try_new(3, long, long, long), "retry.base"),
            (RetryPolicy::try_new(3, ms(1), long, long), "retry.cap"),
            (
                RetryPolicy::try_new(3, ms(1), ms(1), Duration::MAX),
                "retry.deadline",
            ),
            (RetryPolicy::try_new(3, ms(0), ms(1), ms(1)), "retry.base"),
            (RetryPolicy::try_new(3, ms(5), ms(1), ms(9)), "retry.cap"),
            (
                RetryPolicy::try_new(3, ms(5), ms(9), ms(1)),
                "retry.deadline",
            ),
            (
                RetryPolicy::try_new(0, ms(5), ms(9), ms(9)),
                "retry.max_attempts",
            ),
        ] {
            assert_eq!(policy.expect_err(setting).setting(), setting);
        }
        // The largest policy's math saturates instead of overflowing.
        let p = RetryPolicy::try_new(20, day, day, day).expect("valid");
        assert_eq!(p.delay(20, 1.0, Some(Duration::MAX)), day);
        assert!(!p.allows_another(1, Duration::MAX, Duration::MAX));
    }

    #[test]
    fn ceiling_doubles_to_cap() {
        let p = RetryPolicy::default();
        let secs: Vec<u64> = (1..=8).map(|n| p.ceiling(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(p.ceiling(1000), Duration::from_secs(60), "no overflow");
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(3, 0.0, None), Duration::ZERO);
        assert_eq!(p.delay(3, 0.5, None), Duration::from_secs(2));
        assert!(p.delay(3, 0.999_999, None) < Duration::from_secs(4));
        assert_eq!(
            p.delay(3, 7.0, None),
            Duration::from_secs(4),
            "unit is clamped"
        );
    }

    #[test]
    fn retry_after_is_a_clamped_floor() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(1, 0.0, Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        assert_eq!(
            p.delay(1, 0.0, Some(Duration::from_secs(86_400))),
            Duration::from_secs(60)
        );
        assert_eq!(
            p.delay(7, 1.0, Some(Duration::from_secs(1))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn attempts_and_deadline_bound_retries() {
        let p = RetryPolicy::try_new(3, ms(100), ms(1000), ms(5000)).expect("valid");
        assert!(p.allows_another(2, ms(0), ms(100)));
        assert!(!p.allows_another(3, ms(0), ms(100)));
        assert!(!p.allows_another(1, ms(4950), ms(100)));
    }

    #[test]
    fn overrides_are_rechecked() {
        let p = RetryPolicy::default();
        let o = RetryOverrides {
            max_attempts: Some(2),
            ..Default::default()
        };
        assert_eq!(p.with_overrides(&o).expect("valid").max_attempts(), 2);
        let bad = RetryOverrides {
            cap: Some(ms(10)),
            ..Default::default()
        };
        assert!(
            p.with_overrides(&bad).is_err(),
            "cap below the daemon's base"
        );
    }
}
