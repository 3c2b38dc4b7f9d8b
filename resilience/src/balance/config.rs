use std::time::Duration;

#[cfg(feature = "config")]
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Configuration of a [`Balancer`](super::Balancer).
///
/// Not `#[non_exhaustive]`, on purpose: it is plain data (the serde form
/// of its configuration section) and every field has a default, so code
/// builds it as `Config { field, ..Config::default() }`, which keeps
/// compiling when fields are added; `#[non_exhaustive]` would forbid that
/// syntax outside this crate.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct BalanceConfig {
    /// Name used in tracing events.
    pub name: String,
    /// How fast an endpoint's latency estimate forgets: a slow answer
    /// weighs `1/e` after this long without answers. Default 10 s, as
    /// Finagle's and Linkerd's peak-EWMA.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub decay: Duration,
    /// The latency estimate of an endpoint that has not answered yet.
    /// Default 30 ms.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub default_rtt: Duration,
    /// Consecutive failures that eject an endpoint. Default 5, as Envoy's
    /// `consecutive_5xx`.
    pub consecutive_failures: u32,
    /// The first ejection lasts this long; each ejection in a row doubles
    /// it. Default 10 s.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub base_ejection: Duration,
    /// Ejections never last longer. Default 5 min, as Envoy's
    /// `max_ejection_time`.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub max_ejection: Duration,
    /// At most this fraction of the endpoints is ejected at once (at least
    /// one when there are two or more). Default 0.5.
    pub max_ejected_fraction: f64,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            name: "default".to_owned(),
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_fraction: 0.5,
        }
    }
}

impl BalanceConfig {
    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, problem: &str| Err(ConfigError::new("balance", field, problem));
        if self.decay.is_zero() {
            return err("decay", "must be greater than zero");
        }
        if self.consecutive_failures == 0 {
            return err("consecutive_failures", "must be at least 1");
        }
        if self.base_ejection.is_zero() || self.max_ejection < self.base_ejection {
            return err(
                "base_ejection",
                "must be greater than zero and at most max_ejection",
            );
        }
        if !(0.0..=1.0).contains(&self.max_ejected_fraction) {
            return err("max_ejected_fraction", "must be in 0.0..=1.0");
        }
        Ok(())
    }
}
