//! The in-process limiter: one GCRA cell shared by every clone.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::time::Instant;

use super::config::RateLimitConfig;
use super::gcra::{Params, nanos};
use crate::config::ConfigError;
use crate::error::RateLimited;

/// What every local limiter shares: parameters, clock origin, label and
/// metrics.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) params: Params,
    /// Longest wait in nanoseconds (zero in reject mode).
    pub(crate) max_wait: u64,
    /// The clock, and the origin of the nanosecond timeline the TATs live on.
    clock: Clock,
    pub(crate) name: Arc<str>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: std::sync::OnceLock<super::metrics::Metrics>,
}

impl Core {
    pub(crate) fn new(config: &RateLimitConfig) -> Result<Core, ConfigError> {
        Ok(Core {
            params: config.params()?,
            max_wait: config.max_wait_nanos(),
            clock: Clock::new(),
            name: config.name.as_str().into(),
            #[cfg(feature = "metrics")]
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Nanoseconds since `start`: the one clock read of a check.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Records the outcome of one acquisition (metrics, tracing) and turns it
    /// into the public types.
    #[inline]
    pub(crate) fn record(&self, outcome: Result<u64, u64>) -> Result<u64, RateLimited> {
        match outcome {
            Ok(wait) => {
                #[cfg(feature = "metrics")]
                if let Some(m) = self.metrics.get() {
                    m.admitted(wait);
                }
                Ok(wait)
            }
            Err(retry_after) => {
                let retry_after = Duration::from_nanos(retry_after);
                #[cfg(feature = "metrics")]
                if let Some(m) = self.metrics.get() {
                    m.rejected.inc();
                }
                tracing::debug!(
                    limiter = %self.name,
                    ?retry_after,
                    "rate limit exceeded; call rejected"
                );
                Err(RateLimited { retry_after })
            }
        }
    }
}

/// Where a limiter reads the time.
///
/// `Instant::now()` costs about 30 ns on the machines Trellis is measured on,
/// more than the whole rest of a check, while the CPU's time-stamp counter
/// (through `quanta`, calibrated against the monotonic clock) costs a few.
/// Tests, though, must be driven by tokio's paused clock. So a limiter built
/// while tokio's clock is paused (`#[tokio::test(start_paused = true)]`,
/// `tokio::time::pause()`) reads `tokio::time::Instant`; any other limiter
/// reads the fast counter. Both are monotonic.
#[derive(Debug)]
enum Clock {
    Tokio(Instant),
    Fast { clock: quanta::Clock, start: u64 },
}

impl Clock {
    fn new() -> Clock {
        if tokio_clock_is_paused() {
            Clock::Tokio(Instant::now())
        } else {
            let clock = quanta::Clock::new();
            let start = clock.raw();
            Clock::Fast { clock, start }
        }
    }

    #[inline]
    fn now(&self) -> u64 {
        match self {
            Clock::Fast { clock, start } => clock.delta_as_nanos(*start, clock.raw()),
            Clock::Tokio(start) => nanos(Instant::now().saturating_duration_since(*start)),
        }
    }
}

/// True when tokio's clock is paused in the current context: it stands
/// still while the real clock moves on. Costs a few microseconds, once per
/// limiter.
fn tokio_clock_is_paused() -> bool {
    let before = Instant::now();
    let real = std::time::Instant::now();
    while real.elapsed() < Duration::from_micros(5) {
        std::hint::spin_loop();
    }
    Instant::now() == before
}

/// A rate limiter shared by every clone: `rate` calls per `period`, bursts
/// of `burst`, decided by one lock-free GCRA cell (an `AtomicU64` updated with
/// compare-and-swap; one clock read per call).
///
/// Built while tokio's clock is paused, it follows tokio's clock (so tests
/// drive it with `tokio::time::advance`); otherwise it reads a cheaper
/// monotonic counter (the CPU's time-stamp counter through `quanta`, or the
/// OS clock where that is unavailable).
///
/// Use it directly, or through [`RateLimitLayer`](super::RateLimitLayer).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::rate_limit::{RateLimitConfig, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limiter = RateLimiter::from_config(
///     RateLimitConfig::new(10, Duration::from_secs(1)).with_burst(1),
/// ).unwrap();
/// assert!(limiter.check().is_ok());
/// let limited = limiter.check().unwrap_err();
/// assert_eq!(limited.retry_after, Duration::from_millis(100));
/// tokio::time::advance(limited.retry_after).await;
/// assert!(limiter.check().is_ok());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The TAT. Kept beside `core` on purpose: the call that writes it has
    /// just read the parameters.
    tat: AtomicU64,
    core: Core,
}

impl RateLimiter {
    /// Builds a limiter from a validated configuration.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`RateLimitConfig::validate`].
    pub fn from_config(config: RateLimitConfig) -> Result<RateLimiter, ConfigError> {
        Ok(RateLimiter {
            inner: Arc::new(Inner {
                tat: AtomicU64::new(0),
                core: Core::new(&config)?,
            }),
        })
    }

    /// Takes a permit if one is free now, whatever the mode; otherwise says
    /// after how long a call would pass.
    ///
    /// # Errors
    ///
    /// [`RateLimited`] with the time until a permit is free.
    pub fn check(&self) -> Result<(), RateLimited> {
        let core = &self.inner.core;
        core.record(core.params.acquire(&self.inner.tat, core.now(), 0))
            .map(|_| ())
    }

    /// Reserves a permit under the configured mode: `Ok(Duration::ZERO)` to go
    /// at once, `Ok(wait)` (wait mode) to go after sleeping `wait`, or the
    /// rejection when the wait would exceed the maximum.
    ///
    /// The reservation is kept even if the caller does not wait for it.
    ///
    /// # Errors
    ///
    /// [`RateLimited`] when the wait would exceed the configured maximum (any
    /// wait, in reject mode).
    pub fn acquire(&self) -> Result<Duration, RateLimited> {
        self.acquire_nanos().map(Duration::from_nanos)
    }

    /// Like [`RateLimiter::acquire`], sleeping out the wait.
    ///
    /// # Errors
    ///
    /// [`RateLimited`] when the wait would exceed the configured maximum, as
    /// [`RateLimiter::acquire`].
    ///
    /// # Cancel safety
    ///
    /// Cancelling the returned future while it sleeps forfeits the reserved
    /// permit.
    pub async fn ready(&self) -> Result<(), RateLimited> {
        let wait = self.acquire()?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// The label of this limiter.
    pub fn name(&self) -> &str {
        &self.inner.core.name
    }

    /// Permits a call could take at once right now, out of
    /// [`burst`](Self::burst): what a dashboard shows as the limiter's
    /// headroom. A snapshot only; other callers may take them first.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use trellis_resilience::rate_limit::{RateLimitConfig, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = RateLimiter::from_config(
    ///     RateLimitConfig::new(10, Duration::from_secs(1)).with_burst(5),
    /// ).unwrap();
    /// assert_eq!((limiter.available(), limiter.burst()), (5, 5));
    /// limiter.check().unwrap();
    /// limiter.check().unwrap();
    /// assert_eq!(limiter.available(), 3);
    /// tokio::time::advance(Duration::from_millis(100)).await;
    /// assert_eq!(limiter.available(), 4);
    /// # }
    /// ```
    pub fn available(&self) -> u64 {
        let core = &self.inner.core;
        let tat = self.inner.tat.load(std::sync::atomic::Ordering::Relaxed);
        let ahead = tat.saturating_sub(core.now());
        core.params.tolerance.saturating_sub(ahead) / core.params.interval
    }

    /// Permits available when the limiter is idle (the configured burst).
    pub fn burst(&self) -> u64 {
        let params = &self.inner.core.params;
        params.tolerance / params.interval
    }

    #[inline]
    pub(crate) fn acquire_nanos(&self) -> Result<u64, RateLimited> {
        let core = &self.inner.core;
        core.record(
            core.params
                .acquire(&self.inner.tat, core.now(), core.max_wait),
        )
    }

    /// Registers this limiter's metrics (see `docs/rate_limit.md`) in
    /// `registry`. Call once per limiter.
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        super::metrics::Metrics::register(&self.inner.core, registry);
    }

    /// Reports this limiter in families shared with other limiters,
    /// labelled with its name. A limiter reports to the first metrics it
    /// is registered in.
    #[cfg(feature = "metrics")]
    pub fn register_metrics_in(&self, families: &super::RateLimitMetricFamilies) {
        let core = &self.inner.core;
        core.metrics
            .get_or_init(|| super::metrics::Metrics::in_families(&core.name, families));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_clock_outside_a_paused_runtime_and_it_moves() {
        let clock = Clock::new();
        assert!(matches!(clock, Clock::Fast { .. }));
        let a = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        let b = clock.now();
        assert!(b - a >= 1_000_000, "{a} -> {b}");
    }

    #[tokio::test(start_paused = true)]
    async fn available_drains_with_calls_and_refills_to_the_burst_only() {
        let limiter =
            RateLimiter::from_config(RateLimitConfig::new(4, Duration::from_secs(1)).with_burst(2))
                .unwrap();
        assert_eq!(limiter.available(), 2);
        limiter.check().unwrap();
        limiter.check().unwrap();
        assert_eq!(limiter.available(), 0);
        assert!(limiter.check().is_err());
        // A rejected call takes nothing.
        assert_eq!(limiter.available(), 0);
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(limiter.available(), 1);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(limiter.available(), limiter.burst());
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_when_paused() {
        let clock = Clock::new();
        assert!(matches!(clock, Clock::Tokio(_)));
        let a = clock.now();
        tokio::time::advance(Duration::from_nanos(7)).await;
        assert_eq!(clock.now() - a, 7);
    }
}
