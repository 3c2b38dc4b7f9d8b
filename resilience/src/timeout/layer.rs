use std::time::Duration;

#[cfg(feature = "config")]
use serde::{Deserialize, Serialize};
use tower_layer::Layer;

use super::Timeout;
use crate::config::ConfigError;

/// Configuration of a [`TimeoutLayer`], for serde configs.
///
/// Not `#[non_exhaustive]`, on purpose: it is plain data (the serde form
/// of its configuration section) and every field has a default, so code
/// builds it as `Config { field, ..Config::default() }`, which keeps
/// compiling when fields are added; `#[non_exhaustive]` would forbid that
/// syntax outside this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct TimeoutConfig {
    /// Name used in tracing events.
    pub name: String,
    /// The deadline of each call. Default 1 s, as resilience4j's TimeLimiter.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub timeout: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            name: "default".to_owned(),
            timeout: Duration::from_secs(1),
        }
    }
}

impl TimeoutConfig {
    /// Checks the configuration: a zero deadline would fail every call.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `timeout` when it is zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::new(
                "timeout",
                "timeout",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// Applies a [`Timeout`] to a service.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::timeout::{TimeoutConfig, TimeoutLayer};
///
/// let layer = TimeoutLayer::new(Duration::from_secs(2));
/// assert_eq!(layer.timeout(), Duration::from_secs(2));
/// let bad = TimeoutLayer::from_config(TimeoutConfig { timeout: Duration::ZERO, ..Default::default() });
/// assert!(bad.is_err());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// A layer that gives each call `timeout` to finish.
    pub const fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }

    /// Builds the layer from a validated configuration.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`TimeoutConfig::validate`].
    pub fn from_config(config: TimeoutConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(TimeoutLayer::new(config.timeout))
    }

    /// The configured deadline.
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.timeout)
    }
}
