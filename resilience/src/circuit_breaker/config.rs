//! The circuit breaker's configuration, its serde format and its validation.

use std::time::Duration;

#[cfg(feature = "config")]
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

const COMPONENT: &str = "circuit_breaker";

/// The largest count window: the window keeps per-call outcomes and packs its
/// totals into one atomic word, 20 bits (plus sign) per total.
pub const MAX_COUNT_WINDOW: u32 = 100_000;
/// The largest number of buckets of a time window.
pub const MAX_TIME_BUCKETS: u32 = 3_600;
/// The largest number of trial calls in half-open.
pub const MAX_PERMITTED_IN_HALF_OPEN: u32 = 10_000;
/// The default [`CircuitBreakerConfig::max_wait_in_half_open`]: 60 s.
pub const DEFAULT_MAX_WAIT_IN_HALF_OPEN: Duration = Duration::from_secs(60);

/// Which calls the breaker looks at to decide whether to open.
///
/// In TOML:
///
/// ```toml
/// window = { type = "count", size = 100 }
/// # window = { type = "time", duration = "60s" }              # one bucket per second
/// # window = { type = "time", duration = "10s", buckets = 20 } # 500 ms buckets
/// # window = { type = "consecutive", failures = 5 }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(
    feature = "config",
    serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)
)]
pub enum SlidingWindow {
    /// The last `size` calls (resilience4j's `COUNT_BASED`).
    Count {
        /// How many of the most recent calls count, 1 to 100 000.
        size: u32,
    },
    /// The calls of the last `duration` (resilience4j's `TIME_BASED`), kept
    /// in `buckets` buckets so that old calls age out a bucket at a time,
    /// without a scan of individual calls.
    Time {
        /// How far back calls count.
        #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
        duration: Duration,
        /// How many buckets the window is cut into; `None` means one bucket
        /// per second (at least one, at most 3 600).
        #[cfg_attr(
            feature = "config",
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        buckets: Option<u32>,
    },
    /// No rate at all: open after `failures` failures in a row (a success
    /// resets the count). Slow-call settings do not apply in this mode.
    Consecutive {
        /// How many failures in a row open the breaker.
        failures: u32,
    },
}

impl SlidingWindow {
    /// The number of buckets of a time window (one per second when not
    /// configured), `None` for the other kinds.
    pub fn bucket_count(&self) -> Option<u32> {
        match *self {
            SlidingWindow::Time { duration, buckets } => Some(
                buckets
                    .unwrap_or_else(|| duration.as_secs().min(u64::from(MAX_TIME_BUCKETS)) as u32)
                    .max(1),
            ),
            _ => None,
        }
    }
}

/// Configuration of a circuit breaker, resilience4j's model.
///
/// Every field has a default ([`CircuitBreakerConfig::default`]); in serde
/// formats missing fields take it and unknown fields are an error.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::circuit_breaker::{CircuitBreakerConfig, SlidingWindow};
///
/// let config: CircuitBreakerConfig = toml::from_str(r#"
///     name = "inventory"
///     window = { type = "count", size = 20 }
///     failure_rate_threshold = 50.0
///     minimum_calls = 10
///     wait_in_open = "5s"
///     wait_in_open_multiplier = 2.0
///     max_wait_in_open = "1m"
/// "#).unwrap();
/// assert_eq!(config.window, SlidingWindow::Count { size: 20 });
/// assert_eq!(config.wait_in_open, Duration::from_secs(5));
/// config.validate().unwrap();
/// ```
///
/// Not `#[non_exhaustive]`, on purpose: it is plain data (the serde form
/// of its configuration section) and every field has a default, so code
/// builds it as `Config { field, ..Config::default() }`, which keeps
/// compiling when fields are added; `#[non_exhaustive]` would forbid that
/// syntax outside this crate. [`CircuitBreakerLayer::builder`](super::CircuitBreakerLayer::builder) is the builder.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct CircuitBreakerConfig {
    /// Label for tracing events, metrics and [`CircuitOpen`](crate::error::CircuitOpen) errors.
    pub name: String,
    /// Which calls count. Default: the last 100 calls.
    pub window: SlidingWindow,
    /// Percentage of failed calls in the window at or above which the breaker
    /// opens, in (0, 100]. Default 50.
    pub failure_rate_threshold: f64,
    /// Percentage of slow calls in the window at or above which the breaker
    /// opens, in (0, 100]. Default 100.
    pub slow_call_rate_threshold: f64,
    /// A call that takes at least this long is slow. `None` (the default)
    /// turns slow-call detection off, and with it the clock reads it needs.
    #[cfg_attr(
        feature = "config",
        serde(
            with = "crate::config::duration::option",
            skip_serializing_if = "Option::is_none"
        )
    )]
    pub slow_call_duration: Option<Duration>,
    /// Calls the window must hold before a rate counts (capped at the size of
    /// a count window). Default 100.
    pub minimum_calls: u32,
    /// How long the breaker stays open before it lets trial calls through.
    /// Default 60 s.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub wait_in_open: Duration,
    /// Each consecutive re-open (half-open trials failed again) multiplies the
    /// wait by this factor, up to `max_wait_in_open`. 1 (the default) keeps
    /// the wait fixed.
    pub wait_in_open_multiplier: f64,
    /// The cap of a growing wait (never below `wait_in_open`). Default 60 s.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub max_wait_in_open: Duration,
    /// How many trial calls half-open admits (1 to 10 000); their outcome
    /// closes or re-opens the breaker. Default 10.
    pub permitted_calls_in_half_open: u32,
    /// The longest the breaker may stay half-open: once it has passed, the
    /// next call re-opens it, so trial calls that never finish cannot keep it
    /// there. Default 60 s.
    ///
    /// Why bounded by default, unlike resilience4j: a breaker used without a
    /// timeout inside it can admit a trial call that hangs forever. A dropped
    /// trial gives its permit back, but one that is still pending holds
    /// half-open for good, and every other call is rejected meanwhile — the
    /// "stuck half-open" bug that resilience libraries' trackers report most.
    /// A trial that has not answered in a minute is no evidence of health.
    /// `None` waits for the trials without bound (only for services whose
    /// calls are bounded by a timeout inside the breaker; `null` in JSON, code
    /// only in TOML, which has no null).
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration::option"))]
    pub max_wait_in_half_open: Option<Duration>,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            name: "default".to_owned(),
            window: SlidingWindow::Count { size: 100 },
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: None,
            minimum_calls: 100,
            wait_in_open: Duration::from_secs(60),
            wait_in_open_multiplier: 1.0,
            max_wait_in_open: Duration::from_secs(60),
            permitted_calls_in_half_open: 10,
            max_wait_in_half_open: Some(DEFAULT_MAX_WAIT_IN_HALF_OPEN),
        }
    }
}

fn rate(field: &'static str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 && value <= 100.0 {
        Ok(())
    } else {
        Err(ConfigError::new(
            COMPONENT,
            field,
            format!("must be a percentage in (0, 100], got {value}"),
        ))
    }
}

impl CircuitBreakerConfig {
    /// Checks that the configuration can work.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field out of range: the window
    /// (size, duration, buckets, failures), a rate threshold outside
    /// (0, 100], a zero `slow_call_duration` or `minimum_calls`, or a wait
    /// or half-open setting.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_resilience::circuit_breaker::CircuitBreakerConfig;
    ///
    /// let config = CircuitBreakerConfig { failure_rate_threshold: 0.0, ..Default::default() };
    /// let error = config.validate().unwrap_err();
    /// assert_eq!(error.field, "failure_rate_threshold");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.window {
            SlidingWindow::Count { size } => {
                if size == 0 || size > MAX_COUNT_WINDOW {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "window.size",
                        format!("must be between 1 and {MAX_COUNT_WINDOW}, got {size}"),
                    ));
                }
            }
            SlidingWindow::Time { duration, buckets } => {
                if duration.is_zero() {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "window.duration",
                        "must be greater than zero",
                    ));
                }
                if let Some(b) = buckets
                    && (b == 0 || b > MAX_TIME_BUCKETS)
                {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "window.buckets",
                        format!("must be between 1 and {MAX_TIME_BUCKETS}, got {b}"),
                    ));
                }
                let count = self.window.bucket_count().unwrap_or(1);
                if duration.as_nanos() / u128::from(count) < 1_000_000 {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "window.buckets",
                        "buckets must be at least 1 ms long",
                    ));
                }
            }
            SlidingWindow::Consecutive { failures } => {
                if failures == 0 {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "window.failures",
                        "must be greater than zero",
                    ));
                }
            }
        }
        rate("failure_rate_threshold", self.failure_rate_threshold)?;
        rate("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        if self.slow_call_duration.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                COMPONENT,
                "slow_call_duration",
                "must be greater than zero (leave it unset to disable slow calls)",
            ));
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new(
                COMPONENT,
                "minimum_calls",
                "must be greater than zero",
            ));
        }
        if self.wait_in_open.is_zero() {
            return Err(ConfigError::new(
                COMPONENT,
                "wait_in_open",
                "must be greater than zero",
            ));
        }
        if !(self.wait_in_open_multiplier.is_finite() && self.wait_in_open_multiplier >= 1.0) {
            return Err(ConfigError::new(
                COMPONENT,
                "wait_in_open_multiplier",
                format!("must be at least 1, got {}", self.wait_in_open_multiplier),
            ));
        }
        if self.permitted_calls_in_half_open == 0
            || self.permitted_calls_in_half_open > MAX_PERMITTED_IN_HALF_OPEN
        {
            return Err(ConfigError::new(
                COMPONENT,
                "permitted_calls_in_half_open",
                format!(
                    "must be between 1 and {MAX_PERMITTED_IN_HALF_OPEN}, got {}",
                    self.permitted_calls_in_half_open
                ),
            ));
        }
        if self.max_wait_in_half_open.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                COMPONENT,
                "max_wait_in_half_open",
                "must be greater than zero (leave it unset for no limit)",
            ));
        }
        Ok(())
    }

    /// The wait in open after `reopens` consecutive re-opens: `wait_in_open`
    /// times `wait_in_open_multiplier` to the power `reopens`, capped at
    /// `max_wait_in_open` (or at `wait_in_open` if the cap is lower).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use trellis_resilience::circuit_breaker::CircuitBreakerConfig;
    ///
    /// let config = CircuitBreakerConfig {
    ///     wait_in_open: Duration::from_secs(1),
    ///     wait_in_open_multiplier: 2.0,
    ///     max_wait_in_open: Duration::from_secs(5),
    ///     ..Default::default()
    /// };
    /// assert_eq!(config.wait_after_reopens(0), Duration::from_secs(1));
    /// assert_eq!(config.wait_after_reopens(2), Duration::from_secs(4));
    /// assert_eq!(config.wait_after_reopens(3), Duration::from_secs(5));
    /// ```
    pub fn wait_after_reopens(&self, reopens: u32) -> Duration {
        let cap = self.max_wait_in_open.max(self.wait_in_open);
        let factor = self
            .wait_in_open_multiplier
            .powi(reopens.min(i32::MAX as u32) as i32);
        let secs = self.wait_in_open.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= cap.as_secs_f64() {
            cap
        } else {
            Duration::from_secs_f64(secs).min(cap)
        }
    }

    /// The minimum number of calls, capped at the size of a count window.
    pub(crate) fn effective_minimum_calls(&self) -> u32 {
        match self.window {
            SlidingWindow::Count { size } => self.minimum_calls.min(size),
            _ => self.minimum_calls,
        }
    }
}

/// A percentage in (0, 100] as parts per million, so the hot path compares
/// integers: `bad * 1_000_000 >= ppm * calls`.
pub(crate) fn to_ppm(percent: f64) -> u64 {
    (percent * 10_000.0).round().clamp(1.0, 1_000_000.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_round_trips_through_serde() {
        let config = CircuitBreakerConfig {
            slow_call_duration: Some(Duration::from_millis(250)),
            max_wait_in_half_open: Some(Duration::from_secs(30)),
            window: SlidingWindow::Time {
                duration: Duration::from_secs(10),
                buckets: Some(20),
            },
            ..Default::default()
        };
        config.validate().unwrap();
        let text = serde_json::to_string(&config).unwrap();
        let back: CircuitBreakerConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, config);
        let from_toml: CircuitBreakerConfig = toml::from_str(
            r#"
            slow_call_duration = "250ms"
            max_wait_in_half_open = "30s"
            window = { type = "time", duration = "10s", buckets = 20 }
            "#,
        )
        .unwrap();
        assert_eq!(from_toml, config);
        CircuitBreakerConfig::default().validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(toml::from_str::<CircuitBreakerConfig>("failure_rate = 3.0").is_err());
        assert!(
            toml::from_str::<CircuitBreakerConfig>("window = { type = \"count\", sise = 3 }")
                .is_err()
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: Vec<(CircuitBreakerConfig, &str)> = vec![
            (
                CircuitBreakerConfig {
                    window: SlidingWindow::Count { size: 0 },
                    ..Default::default()
                },
                "window.size",
            ),
            (
                CircuitBreakerConfig {
                    window: SlidingWindow::Time {
                        duration: Duration::ZERO,
                        buckets: None,
                    },
                    ..Default::default()
                },
                "window.duration",
            ),
            (
                CircuitBreakerConfig {
                    window: SlidingWindow::Time {
                        duration: Duration::from_secs(1),
                        buckets: Some(0),
                    },
                    ..Default::default()
                },
                "window.buckets",
            ),
            (
                CircuitBreakerConfig {
                    window: SlidingWindow::Consecutive { failures: 0 },
                    ..Default::default()
                },
                "window.failures",
            ),
            (
                CircuitBreakerConfig {
                    failure_rate_threshold: 100.5,
                    ..Default::default()
                },
                "failure_rate_threshold",
            ),
            (
                CircuitBreakerConfig {
                    failure_rate_threshold: f64::NAN,
                    ..Default::default()
                },
                "failure_rate_threshold",
            ),
            (
                CircuitBreakerConfig {
                    slow_call_rate_threshold: 0.0,
                    ..Default::default()
                },
                "slow_call_rate_threshold",
            ),
            (
                CircuitBreakerConfig {
                    permitted_calls_in_half_open: 0,
                    ..Default::default()
                },
                "permitted_calls_in_half_open",
            ),
            (
                CircuitBreakerConfig {
                    minimum_calls: 0,
                    ..Default::default()
                },
                "minimum_calls",
            ),
            (
                CircuitBreakerConfig {
                    wait_in_open_multiplier: 0.5,
                    ..Default::default()
                },
                "wait_in_open_multiplier",
            ),
            (
                CircuitBreakerConfig {
                    slow_call_duration: Some(Duration::ZERO),
                    ..Default::default()
                },
                "slow_call_duration",
            ),
        ];
        for (config, field) in cases {
            let error = config.validate().unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert_eq!(error.component, "circuit_breaker");
        }
    }

    #[test]
    fn a_time_window_has_one_bucket_per_second_by_default() {
        let window = SlidingWindow::Time {
            duration: Duration::from_secs(60),
            buckets: None,
        };
        assert_eq!(window.bucket_count(), Some(60));
        let short = SlidingWindow::Time {
            duration: Duration::from_millis(500),
            buckets: None,
        };
        assert_eq!(short.bucket_count(), Some(1));
    }

    #[test]
    fn growing_wait_stops_at_the_cap() {
        let config = CircuitBreakerConfig {
            wait_in_open: Duration::from_secs(2),
            wait_in_open_multiplier: 3.0,
            max_wait_in_open: Duration::from_secs(30),
            ..Default::default()
        };
        let waits: Vec<u64> = (0..5)
            .map(|k| config.wait_after_reopens(k).as_secs())
            .collect();
        assert_eq!(waits, [2, 6, 18, 30, 30]);
        assert_eq!(config.wait_after_reopens(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn percent_to_ppm() {
        assert_eq!(to_ppm(50.0), 500_000);
        assert_eq!(to_ppm(100.0), 1_000_000);
        assert_eq!(to_ppm(0.0001), 1);
    }
}
