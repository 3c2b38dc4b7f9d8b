use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

#[cfg(feature = "config")]
use serde::{Deserialize, Serialize};
use tower_layer::Layer;

use super::FaultInjection;
use crate::config::ConfigError;

/// What faults to inject, and how often.
///
/// Not `#[non_exhaustive]`, on purpose: it is plain data (the serde form
/// of its configuration section) and every field has a default, so code
/// builds it as `Config { field, ..Config::default() }`, which keeps
/// compiling when fields are added; `#[non_exhaustive]` would forbid that
/// syntax outside this crate.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "config", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct FaultConfig {
    /// Master switch; nothing is injected while false.
    pub enabled: bool,
    /// Probability (0–1) that a call is delayed by `latency`.
    pub latency_probability: f64,
    /// The delay added to a call chosen for latency.
    #[cfg_attr(feature = "config", serde(with = "crate::config::duration"))]
    pub latency: Duration,
    /// Probability (0–1) that a call fails before reaching the inner service.
    pub error_probability: f64,
    /// Probability (0–1) that a call reaches the inner service but its
    /// response is discarded and an error returned.
    pub abort_probability: f64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            enabled: false,
            latency_probability: 0.0,
            latency: Duration::ZERO,
            error_probability: 0.0,
            abort_probability: 0.0,
        }
    }
}

impl FaultConfig {
    /// Checks that every probability lies in 0–1.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field out of range, such as a
    /// probability outside [0, 1].
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, p) in [
            ("latency_probability", self.latency_probability),
            ("error_probability", self.error_probability),
            ("abort_probability", self.abort_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(ConfigError::new(
                    "fault",
                    field,
                    format!("must be between 0 and 1, got {p}"),
                ));
            }
        }
        Ok(())
    }
}

/// How many faults of each kind were injected so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultCounts {
    /// Calls delayed.
    pub latency: u64,
    /// Calls failed before reaching the inner service.
    pub errors: u64,
    /// Calls whose response was discarded.
    pub aborts: u64,
}

/// Probabilities are kept in parts per million so the call path reads
/// integers from atomics, and a re-tune never takes a lock.
const SCALE: f64 = 1_000_000.0;

#[derive(Debug, Default)]
pub(super) struct Faults {
    enabled: AtomicBool,
    latency_ppm: AtomicU32,
    latency_nanos: AtomicU64,
    error_ppm: AtomicU32,
    abort_ppm: AtomicU32,
    latency_count: AtomicU64,
    error_count: AtomicU64,
    abort_count: AtomicU64,
}

/// The faults chosen for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    Pass,
    Fail,
    Run {
        delay: Option<Duration>,
        abort: bool,
    },
}

impl Faults {
    #[inline]
    pub(super) fn decide(&self) -> Decision {
        if !self.enabled.load(Ordering::Relaxed) {
            return Decision::Pass;
        }
        let roll = |ppm: &AtomicU32| {
            let ppm = ppm.load(Ordering::Relaxed);
            ppm > 0 && rand::random_range(0..1_000_000) < ppm
        };
        if roll(&self.error_ppm) {
            self.error_count.fetch_add(1, Ordering::Relaxed);
            return Decision::Fail;
        }
        let delay = roll(&self.latency_ppm).then(|| {
            self.latency_count.fetch_add(1, Ordering::Relaxed);
            Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
        });
        let abort = roll(&self.abort_ppm);
        if abort {
            self.abort_count.fetch_add(1, Ordering::Relaxed);
        }
        match (delay, abort) {
            (None, false) => Decision::Pass,
            (delay, abort) => Decision::Run { delay, abort },
        }
    }
}

/// A cloneable remote control for fault injection: every clone, and every
/// layer and service made from it, sees the same settings at once.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::fault::{FaultConfig, FaultHandle};
///
/// let handle = FaultHandle::new();
/// handle
///     .set(FaultConfig {
///         enabled: true,
///         latency_probability: 0.5,
///         latency: Duration::from_millis(200),
///         ..FaultConfig::default()
///     })
///     .unwrap();
/// assert!(handle.config().enabled);
/// assert!(handle.set(FaultConfig { error_probability: 1.5, ..FaultConfig::default() }).is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct FaultHandle {
    faults: Arc<Faults>,
}

impl FaultHandle {
    /// A handle with fault injection disabled.
    pub fn new() -> Self {
        FaultHandle::default()
    }

    /// A handle with the given settings.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`FaultConfig::validate`].
    pub fn from_config(config: FaultConfig) -> Result<Self, ConfigError> {
        let handle = FaultHandle::new();
        handle.set(config)?;
        Ok(handle)
    }

    /// Replaces every setting at once; invalid settings change nothing.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`FaultConfig::validate`]; the settings in force
    /// stay unchanged.
    pub fn set(&self, config: FaultConfig) -> Result<(), ConfigError> {
        config.validate()?;
        let f = &self.faults;
        // Switch off first, so no call sees half of the new settings with
        // injection on.
        f.enabled.store(false, Ordering::Relaxed);
        f.latency_ppm.store(
            (config.latency_probability * SCALE) as u32,
            Ordering::Relaxed,
        );
        f.latency_nanos.store(
            u64::try_from(config.latency.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        f.error_ppm
            .store((config.error_probability * SCALE) as u32, Ordering::Relaxed);
        f.abort_ppm
            .store((config.abort_probability * SCALE) as u32, Ordering::Relaxed);
        f.enabled.store(config.enabled, Ordering::Release);
        tracing::info!(?config, "fault injection re-tuned");
        Ok(())
    }

    /// The current settings.
    pub fn config(&self) -> FaultConfig {
        let f = &self.faults;
        FaultConfig {
            enabled: f.enabled.load(Ordering::Acquire),
            latency_probability: f64::from(f.latency_ppm.load(Ordering::Relaxed)) / SCALE,
            latency: Duration::from_nanos(f.latency_nanos.load(Ordering::Relaxed)),
            error_probability: f64::from(f.error_ppm.load(Ordering::Relaxed)) / SCALE,
            abort_probability: f64::from(f.abort_ppm.load(Ordering::Relaxed)) / SCALE,
        }
    }

    /// Switches injection on with the current probabilities.
    pub fn enable(&self) {
        self.faults.enabled.store(true, Ordering::Release);
        tracing::info!("fault injection enabled");
    }

    /// Switches injection off; calls pass through untouched.
    pub fn disable(&self) {
        self.faults.enabled.store(false, Ordering::Release);
        tracing::info!("fault injection disabled");
    }

    /// Faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        let f = &self.faults;
        FaultCounts {
            latency: f.latency_count.load(Ordering::Relaxed),
            errors: f.error_count.load(Ordering::Relaxed),
            aborts: f.abort_count.load(Ordering::Relaxed),
        }
    }

    /// A layer controlled by this handle.
    pub fn layer(&self) -> FaultInjectionLayer {
        FaultInjectionLayer {
            faults: Arc::clone(&self.faults),
        }
    }
}

/// Applies [`FaultInjection`] controlled by a [`FaultHandle`].
#[derive(Debug, Clone)]
pub struct FaultInjectionLayer {
    faults: Arc<Faults>,
}

impl FaultInjectionLayer {
    /// A layer controlled by `handle`.
    pub fn new(handle: &FaultHandle) -> Self {
        handle.layer()
    }
}

impl<S> Layer<S> for FaultInjectionLayer {
    type Service = FaultInjection<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultInjection::new(inner, Arc::clone(&self.faults))
    }
}
