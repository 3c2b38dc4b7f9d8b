use std::time::Duration;

#[cfg(feature = "config")]
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Configuration of a [`BulkheadLayer`](super::BulkheadLayer).
///
/// Not `#[non_exhaustive]`, on purpose: it is plain data (the serde form
/// of its configuration section) and every field has a default, so code
/// builds it as `Config { field, ..Config::default() }`, which keeps
/// compiling when fields are added; `#[non_exhaustive]` would forbid that
/// syntax outside this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct BulkheadConfig {
    /// Name used in tracing events and metric labels.
    pub name: String,
    /// The most calls that may run at once. Default 25, as resilience4j.
    pub max_concurrent: usize,
    /// How long a call may wait for a free slot before it is rejected; zero
    /// rejects at once. Default zero: a full bulkhead should shed load, not
    /// queue it.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub max_wait: Duration,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        BulkheadConfig {
            name: "default".to_owned(),
            max_concurrent: 25,
            max_wait: Duration::ZERO,
        }
    }
}

impl BulkheadConfig {
    /// Checks the configuration: `max_concurrent` must be at least one.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `max_concurrent` when it is zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrent == 0 {
            return Err(ConfigError::new(
                "bulkhead",
                "max_concurrent",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
