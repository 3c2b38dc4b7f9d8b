//! Backoff schedules: how long to wait before each retry.
//!
//! Nothing here knows about tower: a [`Backoff`] is a small, serde-friendly
//! description of a schedule, and [`Backoff::delays`] turns it into an
//! iterator of waits. The retry layer uses it between attempts; the saga
//! crate reuses it as the schedule for retrying compensations.
//!
//! # Why jitter
//!
//! Clients that failed together and back off by the same exponential schedule
//! retry together, in synchronized waves that hit the recovering dependency
//! at once. Jitter spreads them out (see the AWS architecture blog post
//! "Exponential Backoff And Jitter"):
//!
//! | [`Jitter`] | delay before retry `n` (0-based), `e(n) = min(cap, base × multiplier^n)` |
//! |---|---|
//! | `None` | `e(n)` |
//! | `Full` | uniform in `[0, e(n)]` |
//! | `Equal` | `e(n)/2` + uniform in `[0, e(n)/2]` |
//! | `Decorrelated` | `min(cap, uniform in [base, 3 × previous delay])`, the first previous delay being `base` |
//!
//! `Full` spreads load best; `Equal` keeps a guaranteed minimum wait;
//! `Decorrelated` grows from the previous delay rather than from the attempt
//! number, which keeps long-running retries spread.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
#[cfg(feature = "config")]
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The shape of a [`Backoff`] schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(rename_all = "snake_case"))]
pub enum BackoffKind {
    /// Retry at once, without waiting.
    None,
    /// Wait `base` before every retry (jitter still applies).
    Fixed,
    /// Wait `base × multiplier^n`, at most `cap`, before retry `n`.
    #[default]
    Exponential,
}

/// How a delay is randomized; see the [module docs](self) for the formulas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(rename_all = "snake_case"))]
pub enum Jitter {
    /// No randomness: every client waits exactly the same.
    None,
    /// Uniform in `[0, delay]`.
    #[default]
    Full,
    /// Half the delay, plus uniform in `[0, delay / 2]`.
    Equal,
    /// Uniform in `[base, 3 × previous delay]`, at most `cap`.
    Decorrelated,
}

/// A backoff schedule: its kind, base delay, growth factor, cap and jitter.
///
/// Build one with [`Backoff::none`], [`Backoff::fixed`] or
/// [`Backoff::exponential`] and the `with_*` methods, or deserialize it
/// (durations as `"100ms"`, `"2s"`…), then check it with
/// [`Backoff::validate`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::retry::{Backoff, Jitter};
///
/// let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1))
///     .with_multiplier(2.0)
///     .with_jitter(Jitter::None);
/// backoff.validate().unwrap();
/// let delays: Vec<Duration> = backoff.delays().take(5).collect();
/// assert_eq!(
///     delays,
///     [100, 200, 400, 800, 1000].map(Duration::from_millis).to_vec()
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct Backoff {
    /// The shape of the schedule.
    pub kind: BackoffKind,
    /// The first delay (`fixed`: every delay) before jitter.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub base: Duration,
    /// Growth factor between consecutive delays (`exponential` only), at least 1.
    pub multiplier: f64,
    /// No delay is ever longer than this (`exponential` only).
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub cap: Duration,
    /// How each delay is randomized.
    pub jitter: Jitter,
}

impl Default for Backoff {
    /// Exponential from 100 ms, doubling, capped at 10 s, full jitter.
    fn default() -> Self {
        Backoff {
            kind: BackoffKind::Exponential,
            base: Duration::from_millis(100),
            multiplier: 2.0,
            cap: Duration::from_secs(10),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// No wait at all between attempts.
    pub const fn none() -> Self {
        Backoff {
            kind: BackoffKind::None,
            base: Duration::ZERO,
            multiplier: 1.0,
            cap: Duration::ZERO,
            jitter: Jitter::None,
        }
    }

    /// The same `delay` before every retry, without jitter unless
    /// [`with_jitter`](Self::with_jitter) adds some.
    pub const fn fixed(delay: Duration) -> Self {
        Backoff {
            kind: BackoffKind::Fixed,
            base: delay,
            multiplier: 1.0,
            cap: delay,
            jitter: Jitter::None,
        }
    }

    /// Exponential growth from `base`, doubling, capped at `cap`, with full
    /// jitter.
    pub const fn exponential(base: Duration, cap: Duration) -> Self {
        Backoff {
            kind: BackoffKind::Exponential,
            base,
            multiplier: 2.0,
            cap,
            jitter: Jitter::Full,
        }
    }

    /// Sets the growth factor.
    pub const fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets the jitter.
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Checks that the schedule can work: a non-zero base, a finite
    /// multiplier of at least 1 and a base no longer than the cap
    /// (`exponential`); `none` and `fixed` accept any value.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field out of range: a zero base
    /// for an exponential backoff, a multiplier below 1 (or not finite), or
    /// a cap shorter than the base.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use trellis_resilience::retry::Backoff;
    ///
    /// let shrinking = Backoff::exponential(Duration::from_millis(10), Duration::from_secs(1))
    ///     .with_multiplier(0.5);
    /// assert_eq!(shrinking.validate().unwrap_err().field, "multiplier");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kind != BackoffKind::Exponential {
            return Ok(());
        }
        if self.base.is_zero() {
            return Err(ConfigError::new(
                "retry",
                "backoff.base",
                "must be greater than zero for an exponential backoff (use kind = \"none\" for no wait)",
            ));
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(ConfigError::new(
                "retry",
                "multiplier",
                format!(
                    "must be a finite number of at least 1, not {}",
                    self.multiplier
                ),
            ));
        }
        if self.base > self.cap {
            return Err(ConfigError::new(
                "retry",
                "backoff.cap",
                format!(
                    "({:?}) must not be shorter than backoff.base ({:?})",
                    self.cap, self.base
                ),
            ));
        }
        Ok(())
    }

    /// The delay before retry number `retry` (0 for the first retry), given
    /// the previous delay (`None` before the first retry; only decorrelated
    /// jitter looks at it), drawn from the thread-local generator.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use trellis_resilience::retry::{Backoff, Jitter};
    ///
    /// let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2))
    ///     .with_jitter(Jitter::Equal);
    /// let third = backoff.next_delay(2, None);
    /// assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
    /// ```
    pub fn next_delay(&self, retry: u32, previous: Option<Duration>) -> Duration {
        self.next_delay_with(retry, previous, &mut rand::rng())
    }

    /// [`next_delay`](Self::next_delay) with a generator of your choice
    /// (seeded, for reproducible schedules).
    pub fn next_delay_with<R: Rng + ?Sized>(
        &self,
        retry: u32,
        previous: Option<Duration>,
        rng: &mut R,
    ) -> Duration {
        let (base, cap) = match self.kind {
            BackoffKind::None => return Duration::ZERO,
            BackoffKind::Fixed => (nanos(self.base), nanos(self.base)),
            BackoffKind::Exponential => (nanos(self.base), nanos(self.cap)),
        };
        let nominal = || -> u64 {
            if self.kind == BackoffKind::Fixed {
                return base;
            }
            let grown = base as f64 * self.multiplier.powi(retry.min(i32::MAX as u32) as i32);
            if grown.is_finite() && grown < cap as f64 {
                grown as u64
            } else {
                cap
            }
        };
        let chosen = match self.jitter {
            Jitter::None => nominal(),
            Jitter::Full => rng.random_range(0..=nominal()),
            Jitter::Equal => {
                let full = nominal();
                let low = full / 2;
                low + rng.random_range(0..=full - low)
            }
            Jitter::Decorrelated => {
                let previous = previous.map_or(base, nanos);
                let high = previous.saturating_mul(3).max(base);
                rng.random_range(base..=high).min(cap)
            }
        };
        Duration::from_nanos(chosen)
    }

    /// The infinite schedule of delays, one per retry; `take` as many as you
    /// allow retries.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use trellis_resilience::retry::Backoff;
    ///
    /// let waits: Vec<Duration> = Backoff::fixed(Duration::from_secs(1)).delays().take(3).collect();
    /// assert_eq!(waits, vec![Duration::from_secs(1); 3]);
    /// ```
    pub fn delays(&self) -> Delays {
        Delays {
            backoff: *self,
            retry: 0,
            previous: None,
            rng: SmallRng::from_rng(&mut rand::rng()),
        }
    }

    /// The schedule with a seeded generator, so the same seed gives the same
    /// delays.
    pub fn delays_seeded(&self, seed: u64) -> Delays {
        Delays {
            backoff: *self,
            retry: 0,
            previous: None,
            rng: SmallRng::seed_from_u64(seed),
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The iterator of delays made by [`Backoff::delays`]: endless, `Send`, and
/// cheap to keep in a saga's state.
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    retry: u32,
    previous: Option<Duration>,
    rng: SmallRng,
}

impl Delays {
    /// How many delays were handed out so far.
    pub fn retries(&self) -> u32 {
        self.retry
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self
            .backoff
            .next_delay_with(self.retry, self.previous, &mut self.rng);
        self.retry = self.retry.saturating_add(1);
        self.previous = Some(delay);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exp(base_ms: u64, mult: f64, cap_ms: u64, jitter: Jitter) -> Backoff {
        Backoff::exponential(
            Duration::from_millis(base_ms),
            Duration::from_millis(cap_ms),
        )
        .with_multiplier(mult)
        .with_jitter(jitter)
    }

    #[test]
    fn none_never_waits_and_fixed_always_waits_the_same() {
        assert!(Backoff::none().delays().take(10).all(|d| d.is_zero()));
        let fixed = Backoff::fixed(Duration::from_millis(7));
        assert!(
            fixed
                .delays()
                .take(10)
                .all(|d| d == Duration::from_millis(7))
        );
    }

    #[test]
    fn huge_retry_numbers_saturate_at_the_cap() {
        let b = exp(1, 10.0, 5_000, Jitter::None);
        assert_eq!(b.next_delay(u32::MAX, None), Duration::from_secs(5));
        assert_eq!(b.next_delay(400, None), Duration::from_secs(5));
    }

    #[test]
    fn seeded_schedules_repeat() {
        let b = exp(10, 2.0, 10_000, Jitter::Decorrelated);
        let one: Vec<_> = b.delays_seeded(42).take(20).collect();
        let two: Vec<_> = b.delays_seeded(42).take(20).collect();
        assert_eq!(one, two);
    }

    #[test]
    fn validate_rejects_impossible_schedules() {
        assert_eq!(
            exp(10, 0.9, 100, Jitter::Full)
                .validate()
                .unwrap_err()
                .field,
            "multiplier"
        );
        assert_eq!(
            exp(10, f64::NAN, 100, Jitter::Full)
                .validate()
                .unwrap_err()
                .field,
            "multiplier"
        );
        assert_eq!(
            exp(200, 2.0, 100, Jitter::Full)
                .validate()
                .unwrap_err()
                .field,
            "backoff.cap"
        );
        assert_eq!(
            exp(0, 2.0, 100, Jitter::Full).validate().unwrap_err().field,
            "backoff.base"
        );
        assert!(exp(10, 1.0, 10, Jitter::Equal).validate().is_ok());
        assert!(Backoff::fixed(Duration::ZERO).validate().is_ok());
    }

    fn nominal(base: u64, mult: f64, cap: u64, n: u32) -> u64 {
        let grown = base as f64 * mult.powi(n as i32);
        if grown < cap as f64 {
            grown as u64
        } else {
            cap
        }
    }

    proptest! {
        #[test]
        fn jitter_bounds_hold(
            base in 1u64..5_000,
            extra in 0u64..100_000,
            mult in 1.0f64..8.0,
            seed in any::<u64>(),
        ) {
            let cap = base + extra;
            let base_d = Duration::from_millis(base);
            let cap_d = Duration::from_millis(cap);
            let ms = |d: Duration| d.as_nanos() as u64;
            let (base_n, cap_n) = (ms(base_d), ms(cap_d));
            for jitter in [Jitter::None, Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
                let b = exp(base, mult, cap, jitter);
                prop_assert!(b.validate().is_ok());
                let mut previous = base_n;
                for (n, delay) in b.delays_seeded(seed).take(40).enumerate() {
                    let d = ms(delay);
                    let full = nominal(base_n, mult, cap_n, n as u32);
                    prop_assert!(d <= cap_n, "{jitter:?} {d} above cap {cap_n}");
                    match jitter {
                        Jitter::None => prop_assert_eq!(d, full),
                        Jitter::Full => prop_assert!(d <= full),
                        Jitter::Equal => prop_assert!(d >= full / 2 && d <= full, "{d} not in [{}, {full}]", full / 2),
                        Jitter::Decorrelated => {
                            let high = cap_n.min(previous.saturating_mul(3));
                            prop_assert!(d >= base_n && d <= high, "{d} not in [{base_n}, {high}]");
                        }
                    }
                    previous = d;
                }
            }
        }
    }
}
