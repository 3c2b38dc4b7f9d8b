use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tower_layer::Layer;

use super::{Bulkhead, BulkheadConfig};
use crate::config::ConfigError;

/// Shared by every clone of the layer and every service it made.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) name: Arc<str>,
    /// Calls holding a slot. A plain counter, not a semaphore: tokio's
    /// semaphore takes a mutex on every release, and the happy path here is
    /// one compare-and-swap to enter and one subtraction to leave.
    pub(super) in_flight: AtomicUsize,
    pub(super) max_concurrent: usize,
    /// Wakes a waiting call when a slot frees up; only used when calls wait.
    pub(super) slot_freed: Notify,
    pub(super) max_wait: Duration,
    /// Calls currently waiting for a slot; only touched on the slow path.
    pub(super) waiting: AtomicUsize,
    #[cfg(feature = "metrics")]
    pub(super) metrics: std::sync::OnceLock<super::metrics::BulkheadMetrics>,
}

/// Applies a [`Bulkhead`] to a service. Clones share one set of slots.
///
/// # Examples
///
/// ```
/// use trellis_resilience::bulkhead::BulkheadLayer;
///
/// let layer = BulkheadLayer::new(4);
/// assert_eq!(layer.available(), 4);
/// ```
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    pub(super) shared: Arc<Shared>,
}

impl BulkheadLayer {
    /// A bulkhead of `max_concurrent` slots that rejects at once when full.
    ///
    /// # Panics
    ///
    /// When `max_concurrent` is zero; use [`BulkheadLayer::from_config`] to
    /// get an error instead.
    pub fn new(max_concurrent: usize) -> Self {
        Self::from_config(BulkheadConfig {
            max_concurrent,
            ..BulkheadConfig::default()
        })
        .expect("BulkheadLayer::new needs max_concurrent >= 1")
    }

    /// Builds the layer from a validated configuration.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`BulkheadConfig::validate`].
    pub fn from_config(config: BulkheadConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(BulkheadLayer {
            shared: Arc::new(Shared {
                name: config.name.into(),
                in_flight: AtomicUsize::new(0),
                max_concurrent: config.max_concurrent,
                slot_freed: Notify::new(),
                max_wait: config.max_wait,
                waiting: AtomicUsize::new(0),
                #[cfg(feature = "metrics")]
                metrics: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.shared
            .max_concurrent
            .saturating_sub(self.shared.in_flight.load(Ordering::Relaxed))
    }

    /// Calls waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Relaxed)
    }

    /// The configured maximum of concurrent calls.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_concurrent
    }

    /// Registers this bulkhead's gauges and rejection counter in `registry`
    /// (see the crate README for names). Call once per layer.
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let metrics = self
            .shared
            .metrics
            .get_or_init(|| super::metrics::BulkheadMetrics::new(&self.shared.name));
        metrics.register(registry, Arc::clone(&self.shared));
    }

    /// Reports this bulkhead in families shared with other bulkheads,
    /// labelled with its name. A bulkhead reports to the first families it
    /// is registered in (here or by [`register_metrics`](Self::register_metrics)).
    #[cfg(feature = "metrics")]
    pub fn register_metrics_in(&self, families: &super::BulkheadMetricFamilies) {
        if self
            .shared
            .metrics
            .set(super::metrics::BulkheadMetrics::in_families(
                &self.shared.name,
                families,
            ))
            .is_ok()
        {
            families.add(&self.shared);
        }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::new(inner, Arc::clone(&self.shared))
    }
}

impl Shared {
    /// Takes a slot if one is free, without waiting.
    #[inline]
    pub(super) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= self.max_concurrent {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Permit(Arc::clone(self))),
                Err(actual) => current = actual,
            }
        }
    }

    /// Waits for a slot. Not strictly first-come-first-served: a new call
    /// that finds a free slot takes it even while others wait, as with a
    /// non-fair semaphore; waiters are bounded by `max_wait` instead.
    pub(super) async fn acquire(self: Arc<Self>) -> Permit {
        loop {
            let freed = self.slot_freed.notified();
            tokio::pin!(freed);
            // Register before trying, so a release between the try and the
            // wait is not missed.
            freed.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            freed.await;
        }
    }
}

/// A slot in the bulkhead, given back on drop.
#[derive(Debug)]
pub(super) struct Permit(Arc<Shared>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
        // SeqCst pairs with the waiter's increment of `waiting` before it
        // tries: either it sees our decrement, or we see it waiting.
        if self.0.waiting.load(Ordering::SeqCst) > 0 {
            self.0.slot_freed.notify_one();
        }
    }
}
