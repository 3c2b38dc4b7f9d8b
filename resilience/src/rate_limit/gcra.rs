//! The generic cell rate algorithm (GCRA), free of tower and of any clock.
//!
//! GCRA keeps one number per limited thing: the *theoretical arrival time*
//! (TAT), the time at which the limiter would be empty again if every admitted
//! call had arrived exactly on schedule. A call arriving at `now` is admitted
//! when, after adding one emission interval `T = period / rate` to
//! `max(TAT, now)`, the new TAT is no further than `burst × T` ahead of `now`.
//! That is a token bucket of `burst` tokens refilled at `rate` per `period`,
//! stored in a single `u64` instead of a (tokens, last refill) pair, so it can
//! be updated with one compare-and-swap and never needs a lock.
//!
//! Times are nanoseconds since an origin chosen by the caller (the limiter's
//! creation instant). A TAT in the past is the same as no state at all, which
//! is why keyed limiters may drop such keys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::ConfigError;

/// The fixed parameters of a GCRA limiter, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    /// Emission interval `T`: the time one permit takes to refill.
    pub(crate) interval: u64,
    /// `burst × T`: how far the TAT may run ahead of now.
    pub(crate) tolerance: u64,
}

/// What [`Params::decide`] found for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Admit; store `new_tat` and let the call through after `wait`
    /// nanoseconds (zero: at once).
    Admit { new_tat: u64, wait: u64 },
    /// Reject; the call would be admitted at once after `retry_after`
    /// nanoseconds.
    Reject { retry_after: u64 },
}

impl Params {
    /// Computes the parameters, refusing values that cannot work.
    ///
    /// The emission interval is rounded *up* to a whole nanosecond, so a rate
    /// that does not divide the period is enforced a hair under its nominal
    /// value and the limiter never admits more than configured.
    pub(crate) fn new(rate: u64, period: Duration, burst: u64) -> Result<Params, ConfigError> {
        const C: &str = "rate_limit";
        if rate == 0 {
            return Err(ConfigError::new(C, "rate", "must be greater than zero"));
        }
        if period.is_zero() {
            return Err(ConfigError::new(C, "period", "must be greater than zero"));
        }
        if burst == 0 {
            return Err(ConfigError::new(C, "burst", "must be greater than zero"));
        }
        let period_ns = u64::try_from(period.as_nanos())
            .map_err(|_| ConfigError::new(C, "period", "is longer than 584 years"))?;
        let interval = period_ns.div_ceil(rate);
        if interval == 0 {
            return Err(ConfigError::new(C, "rate", "must be greater than zero"));
        }
        let tolerance = interval
            .checked_mul(burst)
            .filter(|t| *t < u64::MAX / 4)
            .ok_or_else(|| ConfigError::new(C, "burst", "times the emission interval overflows"))?;
        Ok(Params {
            interval,
            tolerance,
        })
    }

    /// The pure GCRA step: given the stored TAT, the current time and the
    /// longest acceptable wait, admit (with the new TAT and the wait) or
    /// reject (with the exact time after which a call would pass at once).
    #[inline]
    pub(crate) fn decide(&self, tat: u64, now: u64, max_wait: u64) -> Decision {
        let new_tat = tat.max(now).saturating_add(self.interval);
        // The earliest instant at which this call conforms.
        let allow_at = new_tat.saturating_sub(self.tolerance);
        if allow_at <= now {
            Decision::Admit { new_tat, wait: 0 }
        } else {
            let wait = allow_at - now;
            if wait <= max_wait {
                Decision::Admit { new_tat, wait }
            } else {
                Decision::Reject { retry_after: wait }
            }
        }
    }

    /// Runs [`Params::decide`] on an atomic TAT until the compare-and-swap
    /// lands. Returns the wait in nanoseconds, or the retry-after on rejection.
    #[inline]
    pub(crate) fn acquire(&self, cell: &AtomicU64, now: u64, max_wait: u64) -> Result<u64, u64> {
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            match self.decide(tat, now, max_wait) {
                Decision::Reject { retry_after } => return Err(retry_after),
                Decision::Admit { new_tat, wait } => {
                    match cell.compare_exchange_weak(
                        tat,
                        new_tat,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Ok(wait),
                        Err(actual) => tat = actual,
                    }
                }
            }
        }
    }
}

/// A lock-free GCRA cell driven by times you pass in: the building block of
/// every limiter in this module, exposed for tests, simulations and custom
/// limiters.
///
/// Times are durations since any fixed origin of your choosing; they should
/// not go backwards by much (a call "from the past" is judged at that past
/// time).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::rate_limit::Gcra;
///
/// // 2 calls per second, bursts of 2.
/// let gcra = Gcra::new(2, Duration::from_secs(1), 2).unwrap();
/// let t0 = Duration::ZERO;
/// assert!(gcra.check_at(t0).is_ok());
/// assert!(gcra.check_at(t0).is_ok());
/// let retry = gcra.check_at(t0).unwrap_err();
/// assert_eq!(retry, Duration::from_millis(500));
/// assert!(gcra.check_at(t0 + retry).is_ok());
/// ```
#[derive(Debug)]
pub struct Gcra {
    params: Params,
    tat: AtomicU64,
}

impl Gcra {
    /// A cell admitting `rate` calls per `period` with bursts of `burst`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `rate`, `period` or `burst` is zero, or when
    /// `burst × period / rate` does not fit in nanoseconds.
    pub fn new(rate: u64, period: Duration, burst: u64) -> Result<Gcra, ConfigError> {
        Ok(Gcra {
            params: Params::new(rate, period, burst)?,
            tat: AtomicU64::new(0),
        })
    }

    /// Takes one permit at time `now` if one is free, or returns how long
    /// after `now` a call would be admitted.
    ///
    /// # Errors
    ///
    /// How long after `now` a call would be admitted, when no permit is free.
    pub fn check_at(&self, now: Duration) -> Result<(), Duration> {
        self.acquire_at(now, Duration::ZERO).map(|_| ())
    }

    /// Reserves one permit at time `now` if it is free within `max_wait`,
    /// returning how long to wait before using it; otherwise returns how long
    /// after `now` a call would be admitted at once.
    ///
    /// # Errors
    ///
    /// How long after `now` a call would be admitted at once, when the wait for
    /// a permit would exceed `max_wait`.
    pub fn acquire_at(&self, now: Duration, max_wait: Duration) -> Result<Duration, Duration> {
        self.params
            .acquire(&self.tat, nanos(now), nanos(max_wait))
            .map(Duration::from_nanos)
            .map_err(Duration::from_nanos)
    }

    /// The emission interval: the time one permit takes to refill.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.params.interval)
    }
}

/// Whole nanoseconds of a duration, saturating (584 years).
#[inline]
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(rate: u64, period_ms: u64, burst: u64) -> Params {
        Params::new(rate, Duration::from_millis(period_ms), burst).unwrap()
    }

    #[test]
    fn burst_then_one_interval_apart() {
        let p = params(10, 1000, 3);
        let cell = AtomicU64::new(0);
        let now = 5_000_000_000;
        for _ in 0..3 {
            assert_eq!(p.acquire(&cell, now, 0), Ok(0));
        }
        assert_eq!(p.acquire(&cell, now, 0), Err(100_000_000));
        assert_eq!(p.acquire(&cell, now + 99_999_999, 0), Err(1));
        assert_eq!(p.acquire(&cell, now + 100_000_000, 0), Ok(0));
    }

    #[test]
    fn wait_reserves_within_max_and_rejection_reserves_nothing() {
        let p = params(10, 1000, 1);
        let cell = AtomicU64::new(0);
        assert_eq!(p.acquire(&cell, 0, 0), Ok(0));
        assert_eq!(p.acquire(&cell, 0, 250_000_000), Ok(100_000_000));
        assert_eq!(p.acquire(&cell, 0, 250_000_000), Ok(200_000_000));
        // The fourth would wait 300 ms: over the maximum.
        assert_eq!(p.acquire(&cell, 0, 250_000_000), Err(300_000_000));
        // The rejected call reserved nothing: after 200 ms the next waits
        // 100 ms, exactly as if it had never come.
        assert_eq!(p.acquire(&cell, 200_000_000, 250_000_000), Ok(100_000_000));
    }

    #[test]
    fn interval_rounds_up_and_bad_values_are_refused() {
        assert_eq!(params(3, 1000, 1).interval, 333_333_334);
        assert!(Params::new(0, Duration::from_secs(1), 1).is_err());
        assert!(Params::new(1, Duration::ZERO, 1).is_err());
        assert_eq!(
            Params::new(1, Duration::from_secs(1), 0).unwrap_err().field,
            "burst"
        );
        assert!(Params::new(1, Duration::from_secs(1 << 40), u64::MAX).is_err());
        // More than one call per nanosecond still yields a 1 ns interval.
        assert_eq!(
            Params::new(10, Duration::from_nanos(1), 1)
                .unwrap()
                .interval,
            1
        );
    }
}
