//! Serde configuration of the rate limiters.

use std::time::Duration;

#[cfg(feature = "config")]
use serde::{Deserialize, Serialize};

use super::gcra::Params;
use crate::config::ConfigError;

/// What a limiter does with a call that finds no free permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(rename_all = "snake_case"))]
pub enum RateLimitMode {
    /// Reject at once with [`RateLimited`](crate::error::RateLimited), carrying
    /// the exact time after which the call would pass.
    #[default]
    Reject,
    /// Wait (a tokio sleep) for a permit if one frees up within
    /// [`RateLimitConfig::max_wait`], then proceed; reject at once when the
    /// wait would be longer.
    Wait,
}

/// Configuration of a rate limiter: `rate` calls per `period`, bursts of up
/// to `burst` calls.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::rate_limit::{RateLimitConfig, RateLimitMode};
///
/// let config: RateLimitConfig = toml::from_str(r#"
///     name = "payments"
///     rate = 100
///     period = "1s"
///     burst = 20
///     mode = "wait"
///     max_wait = "250ms"
/// "#).unwrap();
/// assert_eq!(config.mode, RateLimitMode::Wait);
/// assert_eq!(config.max_wait, Duration::from_millis(250));
/// config.validate().unwrap();
/// ```
///
/// Not `#[non_exhaustive]`, on purpose: it is plain data (the serde form
/// of its configuration section) and every field has a default, so code
/// builds it as `Config { field, ..Config::default() }`, which keeps
/// compiling when fields are added; `#[non_exhaustive]` would forbid that
/// syntax outside this crate.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct RateLimitConfig {
    /// Label of this limiter in metrics and tracing.
    pub name: String,
    /// Calls admitted per `period` in the long run. Must be above zero.
    pub rate: u64,
    /// The period `rate` is counted over. Must be above zero.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub period: Duration,
    /// Calls admitted at once after a quiet spell. Must be above zero.
    pub burst: u64,
    /// Reject at once, or wait up to `max_wait`.
    pub mode: RateLimitMode,
    /// The longest a call waits for a permit in [`RateLimitMode::Wait`].
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub max_wait: Duration,
    /// Keyed limiters only: the most keys tracked at once. Idle keys are
    /// evicted first when the map is full. Must be above zero.
    pub max_keys: usize,
}

impl Default for RateLimitConfig {
    /// 100 calls per second, bursts of 100, reject mode, 100 ms maximum wait
    /// (used in wait mode), at most 100 000 keys.
    fn default() -> Self {
        RateLimitConfig {
            name: "default".to_owned(),
            rate: 100,
            period: Duration::from_secs(1),
            burst: 100,
            mode: RateLimitMode::Reject,
            max_wait: Duration::from_millis(100),
            max_keys: 100_000,
        }
    }
}

impl RateLimitConfig {
    /// `rate` calls per `period` with bursts of `rate`, other fields default.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use trellis_resilience::rate_limit::RateLimitConfig;
    ///
    /// let config = RateLimitConfig::new(50, Duration::from_secs(1)).with_burst(5);
    /// assert_eq!((config.rate, config.burst), (50, 5));
    /// ```
    pub fn new(rate: u64, period: Duration) -> Self {
        RateLimitConfig {
            rate,
            period,
            burst: rate,
            ..RateLimitConfig::default()
        }
    }

    /// Sets the burst.
    pub fn with_burst(mut self, burst: u64) -> Self {
        self.burst = burst;
        self
    }

    /// Switches to [`RateLimitMode::Wait`] with this maximum wait.
    pub fn with_wait(mut self, max_wait: Duration) -> Self {
        self.mode = RateLimitMode::Wait;
        self.max_wait = max_wait;
        self
    }

    /// Sets the label used in metrics and tracing.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the keyed limiters' key cap.
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Checks that the configuration can work.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a zero `rate`, `period`, `burst` or `max_keys`,
    /// or a `burst × period / rate` too large to count in nanoseconds.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use trellis_resilience::rate_limit::RateLimitConfig;
    ///
    /// let error = RateLimitConfig::new(0, Duration::from_secs(1)).validate().unwrap_err();
    /// assert_eq!(error.field, "rate");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.params().map(|_| ())
    }

    pub(crate) fn params(&self) -> Result<Params, ConfigError> {
        let params = Params::new(self.rate, self.period, self.burst)?;
        if self.max_keys == 0 {
            return Err(ConfigError::new(
                "rate_limit",
                "max_keys",
                "must be greater than zero",
            ));
        }
        Ok(params)
    }

    /// The longest wait in nanoseconds: zero in reject mode.
    pub(crate) fn max_wait_nanos(&self) -> u64 {
        match self.mode {
            RateLimitMode::Reject => 0,
            RateLimitMode::Wait => super::gcra::nanos(self.max_wait),
        }
    }
}
