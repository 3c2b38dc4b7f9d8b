use std::time::Duration;

#[cfg(feature = "config")]
use serde::{Deserialize, Serialize};

use super::{Backoff, BudgetConfig};
use crate::config::ConfigError;

/// The serde configuration of a [`RetryLayer`](super::RetryLayer).
///
/// Durations read as `"250ms"`, `"2s"` or a number of seconds.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::retry::{BackoffKind, Jitter, RetryConfig, RetryLayer};
///
/// let config: RetryConfig = toml::from_str(r#"
///     name = "inventory"
///     max_attempts = 4
///     max_elapsed = "5s"
///
///     [backoff]
///     kind = "exponential"
///     base = "50ms"
///     multiplier = 3.0
///     cap = "2s"
///     jitter = "decorrelated"
///
///     [budget]
///     ttl = "10s"
///     min_per_sec = 5
///     ratio = 0.1
/// "#).unwrap();
/// assert_eq!(config.backoff.jitter, Jitter::Decorrelated);
/// assert_eq!(config.max_elapsed, Some(Duration::from_secs(5)));
/// let layer = RetryLayer::from_config(config).unwrap();
/// # drop(layer);
/// ```
///
/// Not `#[non_exhaustive]`, on purpose: it is plain data (the serde form
/// of its configuration section) and every field has a default, so code
/// builds it as `Config { field, ..Config::default() }`, which keeps
/// compiling when fields are added; `#[non_exhaustive]` would forbid that
/// syntax outside this crate. [`RetryLayer::builder`](super::RetryLayer::builder) is the builder.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct RetryConfig {
    /// Label for tracing and metrics.
    pub name: String,
    /// Attempts in total, the first one included (1 = never retry).
    pub max_attempts: u32,
    /// Give up rather than start a wait that would end more than this long
    /// after the first attempt started. `None`: no limit (and no clock read
    /// per call).
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration::option"))]
    pub max_elapsed: Option<Duration>,
    /// The longest `Retry-After` / `RateLimited::retry_after` honoured; a
    /// longer one makes the layer give up at once (reason `MaxElapsed`).
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub max_retry_after: Duration,
    /// The wait between attempts.
    pub backoff: Backoff,
    /// The retry budget shared by every clone of the layer's services;
    /// `None` disables it (only `max_attempts` and `max_elapsed` limit
    /// retries then).
    pub budget: Option<BudgetConfig>,
}

impl Default for RetryConfig {
    /// 3 attempts, the default [`Backoff`] (100 ms doubling to 10 s, full
    /// jitter), no elapsed-time limit, `Retry-After` honoured up to 60 s,
    /// and the default [`BudgetConfig`] (20 % of requests, 10/s floor, 10 s
    /// window).
    fn default() -> Self {
        RetryConfig {
            name: "default".to_owned(),
            max_attempts: 3,
            max_elapsed: None,
            max_retry_after: Duration::from_secs(60),
            backoff: Backoff::default(),
            budget: Some(BudgetConfig::default()),
        }
    }
}

impl RetryConfig {
    /// Checks every field: at least one attempt, a non-zero `max_elapsed`
    /// when set, a workable backoff and budget.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `max_attempts` when zero, `max_elapsed` when
    /// zero, or the first invalid field of the backoff or the budget.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_resilience::retry::RetryConfig;
    ///
    /// let config = RetryConfig { max_attempts: 0, ..RetryConfig::default() };
    /// assert_eq!(config.validate().unwrap_err().field, "max_attempts");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new(
                "retry",
                "max_attempts",
                "must be at least 1 (the first attempt counts)",
            ));
        }
        if self.max_elapsed.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "retry",
                "max_elapsed",
                "must be greater than zero when set",
            ));
        }
        self.backoff.validate()?;
        if let Some(budget) = &self.budget {
            budget.validate()?;
        }
        Ok(())
    }
}
