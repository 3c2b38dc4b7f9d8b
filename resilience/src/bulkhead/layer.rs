use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tower_layer::Layer;

use super::{Bulkhead, BulkheadConfig};
use crate::config::ConfigError;

/// Shared by every clone of the layer and every service it made.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) name: Arc<str>,
    pub(super) semaphore: Arc<Semaphore>,
    pub(super) max_concurrent: usize,
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
    pub fn from_config(config: BulkheadConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(BulkheadLayer {
            shared: Arc::new(Shared {
                name: config.name.into(),
                semaphore: Arc::new(Semaphore::new(config.max_concurrent)),
                max_concurrent: config.max_concurrent,
                max_wait: config.max_wait,
                waiting: AtomicUsize::new(0),
                #[cfg(feature = "metrics")]
                metrics: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.shared.max_concurrent - self.shared.semaphore.available_permits()
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.shared.semaphore.available_permits()
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
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::new(inner, Arc::clone(&self.shared))
    }
}
