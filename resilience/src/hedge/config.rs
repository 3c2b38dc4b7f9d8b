use std::time::Duration;

#[cfg(feature = "config")]
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Configuration of a [`HedgeLayer`](super::HedgeLayer).
///
/// Not `#[non_exhaustive]`, on purpose: it is plain data (the serde form
/// of its configuration section) and every field has a default, so code
/// builds it as `Config { field, ..Config::default() }`, which keeps
/// compiling when fields are added; `#[non_exhaustive]` would forbid that
/// syntax outside this crate.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct HedgeConfig {
    /// Name used in tracing events.
    pub name: String,
    /// When to send the second attempt. Default: the 95th percentile of
    /// recent calls.
    pub delay: HedgeDelay,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        HedgeConfig {
            name: "default".to_owned(),
            delay: HedgeDelay::default(),
        }
    }
}

/// How long a call may run before a second attempt is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum HedgeDelay {
    /// A fixed delay.
    Fixed(#[cfg_attr(feature = "config", serde(with = "crate::config::duration"))] Duration),
    /// A percentile of the latency of recent calls: only the slowest
    /// `1 − percentile` of calls are hedged.
    Percentile {
        /// In `(0, 1)`, e.g. `0.95`.
        percentile: f64,
        /// Calls to see before the percentile is trusted.
        min_samples: u32,
        /// The delay until then.
        #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
        until_then: Duration,
    },
}

impl Default for HedgeDelay {
    /// p95 of recent calls once 20 have been seen, 100 ms until then.
    fn default() -> Self {
        HedgeDelay::Percentile {
            percentile: 0.95,
            min_samples: 20,
            until_then: Duration::from_millis(100),
        }
    }
}

impl HedgeConfig {
    /// Checks that the percentile is within `(0, 1)`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let HedgeDelay::Percentile { percentile, .. } = self.delay
            && !(percentile > 0.0 && percentile < 1.0)
        {
            return Err(ConfigError::new(
                "hedge",
                "delay.percentile",
                "must be in (0, 1)",
            ));
        }
        Ok(())
    }
}
