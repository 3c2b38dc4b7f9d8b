use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tower_layer::Layer;

use super::limiter::{Limiter, Sample};
use super::{AdaptiveConfig, AdaptiveLimit};
use crate::config::ConfigError;

/// Shared by every clone of the layer and every service it made.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) name: Arc<str>,
    /// Calls admitted and not yet finished.
    pub(super) in_flight: AtomicUsize,
    /// The limit as last computed, read without a lock on admission.
    pub(super) limit: AtomicUsize,
    /// The Retry-After handed to refused calls, in nanoseconds.
    pub(super) retry_after_nanos: AtomicU64,
    /// Taken once per completed call, for a few arithmetic operations; never
    /// held across an await.
    pub(super) limiter: Mutex<Limiter>,
    #[cfg(feature = "metrics")]
    pub(super) metrics: std::sync::OnceLock<super::metrics::AdaptiveMetrics>,
}

/// Applies an [`AdaptiveLimit`] to a service. Clones share one limit.
///
/// # Examples
///
/// ```
/// use trellis_resilience::adaptive::{AdaptiveConfig, AdaptiveLimitLayer};
///
/// let layer = AdaptiveLimitLayer::from_config(AdaptiveConfig::default()).unwrap();
/// // The gradient starts by measuring the no-load latency at 3 calls.
/// assert_eq!(layer.limit(), 3);
/// assert_eq!(layer.in_flight(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct AdaptiveLimitLayer {
    pub(super) shared: Arc<Shared>,
}

impl AdaptiveLimitLayer {
    /// Builds the layer from a validated configuration.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`AdaptiveConfig::validate`].
    pub fn from_config(config: AdaptiveConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let limiter = Limiter::new(&config);
        let retry_after = limiter.recent_latency().unwrap_or(Duration::from_secs(1));
        Ok(AdaptiveLimitLayer {
            shared: Arc::new(Shared {
                name: config.name.into(),
                in_flight: AtomicUsize::new(0),
                limit: AtomicUsize::new(limiter.limit()),
                retry_after_nanos: AtomicU64::new(nanos(retry_after)),
                limiter: Mutex::new(limiter),
                #[cfg(feature = "metrics")]
                metrics: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The concurrency limit now.
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Ordering::Relaxed)
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Registers this limiter's gauges and rejection counter in `registry`
    /// (see the crate README for names). Call once per layer.
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let metrics = self
            .shared
            .metrics
            .get_or_init(|| super::metrics::AdaptiveMetrics::new(&self.shared.name));
        metrics.register(registry, Arc::clone(&self.shared));
    }
}

impl<S> Layer<S> for AdaptiveLimitLayer {
    type Service = AdaptiveLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimit::new(inner, Arc::clone(&self.shared))
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Shared {
    /// Takes a slot if the limit allows, without waiting.
    #[inline]
    pub(super) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let limit = self.limit.load(Ordering::Relaxed);
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Permit {
                        shared: Arc::clone(self),
                        started: Instant::now(),
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    pub(super) fn retry_after(&self) -> Duration {
        Duration::from_nanos(self.retry_after_nanos.load(Ordering::Relaxed))
    }

    fn record(&self, started: Instant, now: Instant, sample: Sample) {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        let before = limiter.limit();
        let limit = limiter.on_sample(started, now, in_flight, sample);
        let recent = limiter.recent_latency();
        drop(limiter);
        self.limit.store(limit, Ordering::Relaxed);
        if let Some(recent) = recent {
            self.retry_after_nanos
                .store(nanos(recent), Ordering::Relaxed);
        }
        if limit != before {
            tracing::trace!(adaptive = %self.name, before, limit, "concurrency limit moved");
        }
    }
}

/// A slot under the limit, given back on drop. A call that ends reports
/// its latency first ([`Permit::complete`]); a cancelled one reports nothing.
#[derive(Debug)]
pub(super) struct Permit {
    shared: Arc<Shared>,
    started: Instant,
}

impl Permit {
    /// Reports how the call ended, then frees the slot.
    pub(super) fn complete(self, dropped: bool) {
        // One clock read per call on completion: `elapsed` would be a second.
        let now = Instant::now();
        let sample = if dropped {
            Sample::Dropped
        } else {
            Sample::Answered(now.saturating_duration_since(self.started))
        };
        self.shared.record(self.started, now, sample);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::Release);
    }
}
