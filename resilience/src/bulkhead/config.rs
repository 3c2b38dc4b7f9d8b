use std::time::Duration;

#[cfg(feature = "config")]
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Configuration of a [`BulkheadLayer`](super::BulkheadLayer).
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
