use std::time::Duration;

#[cfg(feature = "config")]
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Configuration of an [`AdaptiveLimitLayer`](super::AdaptiveLimitLayer).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::adaptive::{AdaptiveConfig, Algorithm, AimdConfig};
///
/// let config = AdaptiveConfig {
///     algorithm: Algorithm::Aimd(AimdConfig {
///         latency_threshold: Duration::from_millis(50),
///         ..AimdConfig::default()
///     }),
///     ..AdaptiveConfig::default()
/// };
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
pub struct AdaptiveConfig {
    /// Name used in tracing events and metric labels.
    pub name: String,
    /// The limit before any call has completed. Default 20, as Netflix's
    /// concurrency-limits.
    pub initial_limit: usize,
    /// The limit never goes below this. Default 1.
    pub min_limit: usize,
    /// The limit never goes above this. Default 1000.
    pub max_limit: usize,
    /// How the limit follows latency. Default: the gradient.
    pub algorithm: Algorithm,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            name: "default".to_owned(),
            initial_limit: 20,
            min_limit: 1,
            max_limit: 1000,
            algorithm: Algorithm::Gradient(GradientConfig::default()),
        }
    }
}

/// How an adaptive limit follows latency.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Algorithm {
    /// Additive increase, multiplicative decrease around a latency threshold.
    Aimd(AimdConfig),
    /// Long-term against short-term latency, as Netflix's Gradient2 and
    /// Envoy's gradient controller.
    Gradient(GradientConfig),
}

/// AIMD: calls that succeed under `latency_threshold` while the limit is in
/// use add `increase_by` per round trip (`increase_by / limit` per call); a call that is slower, times out or is
/// rejected downstream multiplies the limit by `backoff_ratio` (at most once
/// per round trip: calls admitted before the last decrease do not decrease
/// it again, as TCP reacts once per window).
///
/// Not `#[non_exhaustive]`, on purpose: it is plain data (the serde form
/// of its configuration section) and every field has a default, so code
/// builds it as `Config { field, ..Config::default() }`, which keeps
/// compiling when fields are added; `#[non_exhaustive]` would forbid that
/// syntax outside this crate.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct AimdConfig {
    /// A call slower than this counts as a sign of overload. Default 100 ms.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub latency_threshold: Duration,
    /// Added to the limit per round trip of fast calls. Default 1.
    pub increase_by: usize,
    /// The limit is multiplied by this on overload, in `0.5..1.0`. Default
    /// 0.9, as Netflix's `AIMDLimit`.
    pub backoff_ratio: f64,
}

impl Default for AimdConfig {
    fn default() -> Self {
        AimdConfig {
            latency_threshold: Duration::from_millis(100),
            increase_by: 1,
            backoff_ratio: 0.9,
        }
    }
}

/// Gradient: once per window of calls, the limit is scaled by `tolerance ×
/// no-load latency / recent latency` (kept within `0.5..=1.0`) plus a
/// headroom of √limit, and smoothed. While latency stays within
/// `tolerance` of its no-load level the limit grows by √limit; when latency
/// rises beyond it, the limit shrinks in proportion. The no-load latency
/// is measured at start and every `probe_interval` by holding the limit at
/// `probe_limit` for one window, as Envoy's gradient controller measures
/// its minRTT (Netflix's Gradient2 uses a long-term average instead, which
/// drifts up with a load that starts high). No threshold to tune.
///
/// Not `#[non_exhaustive]`, on purpose: it is plain data (the serde form
/// of its configuration section) and every field has a default, so code
/// builds it as `Config { field, ..Config::default() }`, which keeps
/// compiling when fields are added; `#[non_exhaustive]` would forbid that
/// syntax outside this crate.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct GradientConfig {
    /// How much the short-term latency may exceed the long-term one before
    /// the limit shrinks. Default 1.5 (Gradient2's `rttTolerance`).
    pub tolerance: f64,
    /// Weight of each new limit in `(0, 1]`. Default 0.2.
    pub smoothing: f64,
    /// Calls per update: the recent latency is their mean. Default 10.
    pub window: u32,
    /// How often the no-load latency is measured again. Default 60 s, as
    /// Envoy's `min_rtt_calc_interval`.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub probe_interval: Duration,
    /// The limit while the no-load latency is measured (one window of
    /// calls). Default 3, as Envoy's `min_concurrency`.
    pub probe_limit: usize,
}

impl Default for GradientConfig {
    fn default() -> Self {
        GradientConfig {
            tolerance: 1.5,
            smoothing: 0.2,
            window: 10,
            probe_interval: Duration::from_secs(60),
            probe_limit: 3,
        }
    }
}

impl AdaptiveConfig {
    /// Checks the configuration: `1 <= min_limit <= initial_limit <=
    /// max_limit`, and the algorithm's parameters within their ranges.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, problem: &str| Err(ConfigError::new("adaptive", field, problem));
        if self.min_limit == 0 {
            return err("min_limit", "must be at least 1");
        }
        if self.initial_limit < self.min_limit || self.initial_limit > self.max_limit {
            return err("initial_limit", "must be between min_limit and max_limit");
        }
        match &self.algorithm {
            Algorithm::Aimd(aimd) => {
                if aimd.latency_threshold.is_zero() {
                    return err("latency_threshold", "must be greater than zero");
                }
                if !(0.5..1.0).contains(&aimd.backoff_ratio) {
                    return err("backoff_ratio", "must be in 0.5..1.0");
                }
            }
            Algorithm::Gradient(gradient) => {
                if !(1.0..=10.0).contains(&gradient.tolerance) {
                    return err("tolerance", "must be in 1.0..=10.0");
                }
                if !(gradient.smoothing > 0.0 && gradient.smoothing <= 1.0) {
                    return err("smoothing", "must be in (0, 1]");
                }
                if gradient.window == 0 {
                    return err("window", "must be at least 1");
                }
                if gradient.probe_limit == 0 || gradient.probe_interval.is_zero() {
                    return err(
                        "probe_limit",
                        "and probe_interval must be greater than zero",
                    );
                }
            }
        }
        Ok(())
    }
}
