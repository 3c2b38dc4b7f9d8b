//! Retry schedules for step actions and compensations.
//!
//! A schedule is only "how long before retry n, or stop". The one the crate
//! ships, [`ExponentialSchedule`], is trellis-resilience's
//! [`Backoff`](trellis_resilience::retry::Backoff) (the same schedule, jitter
//! kinds and serde form the retry layer uses) with a retry limit.

use std::time::Duration;

use trellis_resilience::retry::{Backoff, BackoffKind, Jitter};

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

/// trellis-resilience's [`Backoff`] with a retry limit: doubling delays
/// from `base`, capped at `cap`, at most `max_retries` of them by default,
/// or any backoff (with jitter) through [`ExponentialSchedule::from_backoff`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialSchedule {
    backoff: Backoff,
    max_retries: u32,
}

impl ExponentialSchedule {
    /// Doubling from `base`, never above `cap`, `max_retries` retries, no
    /// jitter (so tests can predict it; see [`from_backoff`](Self::from_backoff)).
    pub const fn new(base: Duration, cap: Duration, max_retries: u32) -> Self {
        ExponentialSchedule {
            backoff: Backoff {
                kind: BackoffKind::Exponential,
                base,
                multiplier: 2.0,
                cap,
                jitter: Jitter::None,
            },
            max_retries,
        }
    }

    /// Any trellis-resilience backoff, jittered or not, with `max_retries`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use trellis_resilience::retry::{Backoff, Jitter};
    /// use trellis_saga::{ExponentialSchedule, RetrySchedule};
    ///
    /// let backoff = Backoff { jitter: Jitter::Full, ..Backoff::default() };
    /// let schedule = ExponentialSchedule::from_backoff(backoff, 2);
    /// assert!(schedule.delay(0).unwrap() <= Duration::from_millis(100));
    /// assert_eq!(schedule.delay(2), None);
    /// ```
    pub const fn from_backoff(backoff: Backoff, max_retries: u32) -> Self {
        ExponentialSchedule {
            backoff,
            max_retries,
        }
    }

    /// No retry at all.
    pub const fn none() -> Self {
        ExponentialSchedule::new(Duration::ZERO, Duration::ZERO, 0)
    }

    /// The backoff behind the schedule.
    pub const fn backoff(&self) -> &Backoff {
        &self.backoff
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
        (retry < self.max_retries).then(|| self.backoff.next_delay(retry, None))
    }
}
