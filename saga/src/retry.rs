//! Retry schedules for step actions and compensations.
//!
//! NOTE: this is a small seam until trellis-resilience's `retry::Backoff`
//! is merged; a schedule is only "how long before retry n, or stop".

use std::time::Duration;

/// How long to wait before retry `retry` (0 for the first retry), or `None`
/// to give up.
///
/// Closures `Fn(u32) -> Option<Duration>` implement it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_saga::{ExponentialSchedule, RetrySchedule};
///
/// let schedule = ExponentialSchedule::new(Duration::from_millis(10), Duration::from_millis(25), 3);
/// let delays: Vec<_> = (0..4).map(|n| schedule.delay(n)).collect();
/// assert_eq!(delays, [Some(10), Some(20), Some(25), None].map(|d| d.map(Duration::from_millis)));
/// ```
pub trait RetrySchedule: Send + Sync + 'static {
    /// The wait before retry number `retry`, `None` when retries are exhausted.
    fn delay(&self, retry: u32) -> Option<Duration>;
}

impl<F> RetrySchedule for F
where
    F: Fn(u32) -> Option<Duration> + Send + Sync + 'static,
{
    fn delay(&self, retry: u32) -> Option<Duration> {
        self(retry)
    }
}

/// Doubling delays from `base`, capped at `cap`, at most `max_retries` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExponentialSchedule {
    base: Duration,
    cap: Duration,
    max_retries: u32,
}

impl ExponentialSchedule {
    /// Doubling from `base`, never above `cap`, `max_retries` retries.
    pub const fn new(base: Duration, cap: Duration, max_retries: u32) -> Self {
        ExponentialSchedule {
            base,
            cap,
            max_retries,
        }
    }

    /// No retry at all.
    pub const fn none() -> Self {
        ExponentialSchedule::new(Duration::ZERO, Duration::ZERO, 0)
    }
}

impl Default for ExponentialSchedule {
    /// 100 ms doubling up to 10 s, 5 retries.
    fn default() -> Self {
        ExponentialSchedule::new(Duration::from_millis(100), Duration::from_secs(10), 5)
    }
}

impl RetrySchedule for ExponentialSchedule {
    fn delay(&self, retry: u32) -> Option<Duration> {
        if retry >= self.max_retries {
            return None;
        }
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        Some(self.base.saturating_mul(factor).min(self.cap))
    }
}
