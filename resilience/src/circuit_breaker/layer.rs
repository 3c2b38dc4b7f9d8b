use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::classify::DefaultClassifier;
use super::config::{CircuitBreakerConfig, SlidingWindow};
use super::handle::CircuitBreakerHandle;
use super::service::CircuitBreaker;
use super::state::{Local, Shared, StateListener};
use crate::config::ConfigError;

/// Wraps services in one shared circuit breaker.
///
/// Every service this layer makes, and every clone of them, shares the same
/// breaker: build one layer per downstream dependency.
///
/// # Examples
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use trellis_resilience::circuit_breaker::CircuitBreakerLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let breaker = CircuitBreakerLayer::builder()
///     .name("inventory")
///     .count_window(20)
///     .minimum_calls(10)
///     .build()?;
/// let handle = breaker.handle();
/// let service = ServiceBuilder::new()
///     .layer(breaker)
///     .service(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n * 2) }));
/// assert_eq!(service.oneshot(21).await?, 42);
/// assert_eq!(handle.metrics().calls, 1);
/// # Ok(())
/// # }
/// ```
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    shared: Arc<Shared>,
    classifier: C,
}

impl<C: Clone> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            shared: Arc::clone(&self.shared),
            classifier: self.classifier.clone(),
        }
    }
}

impl<C> std::fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.shared)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// Builds a breaker from a configuration, after validating it.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`CircuitBreakerConfig::validate`].
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_resilience::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
    ///
    /// let layer = CircuitBreakerLayer::from_config(CircuitBreakerConfig::default()).unwrap();
    /// let bad = CircuitBreakerConfig { permitted_calls_in_half_open: 0, ..Default::default() };
    /// assert!(CircuitBreakerLayer::from_config(bad).is_err());
    /// # drop(layer);
    /// ```
    pub fn from_config(config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        Ok(CircuitBreakerLayer {
            shared: Shared::new(config)?,
            classifier: DefaultClassifier,
        })
    }

    /// A builder starting from [`CircuitBreakerConfig::default`].
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::default()
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// The same breaker with another [`Classifier`](super::Classifier).
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_resilience::circuit_breaker::{CircuitBreakerLayer, Outcome};
    /// use trellis_resilience::error::BoxError;
    ///
    /// let layer = CircuitBreakerLayer::builder().build().unwrap()
    ///     .with_classifier(|r: &Result<u16, BoxError>| match r {
    ///         Ok(status) if *status >= 500 => Outcome::Failure,
    ///         Ok(_) => Outcome::Success,
    ///         Err(_) => Outcome::Failure,
    ///     });
    /// # drop(layer);
    /// ```
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            shared: self.shared,
            classifier,
        }
    }

    /// Adds a listener told of every state transition of this breaker.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_resilience::circuit_breaker::{CircuitBreakerLayer, StateTransition};
    ///
    /// let layer = CircuitBreakerLayer::builder().build().unwrap()
    ///     .on_state_transition(|t: &StateTransition| println!("{}: {} -> {}", t.name, t.from, t.to));
    /// layer.handle().force_open();
    /// ```
    pub fn on_state_transition<L: StateListener>(self, listener: L) -> Self {
        self.shared.add_listener(Arc::new(listener));
        self
    }

    /// A handle on the breaker: state, metrics, manual control, runtime
    /// reconfiguration.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(Arc::clone(&self.shared))
    }

    /// Registers this breaker's metrics (see `resilience/docs/circuit_breaker.md`)
    /// in `registry`. To put several breakers in one registry, register the
    /// families once with [`CircuitBreakerMetricFamilies::new`](super::CircuitBreakerMetricFamilies::new)
    /// and use [`register_metrics_in`](Self::register_metrics_in).
    ///
    /// # Examples
    ///
    /// ```
    /// use prometheus_client::registry::Registry;
    /// use trellis_resilience::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let mut registry = Registry::default();
    /// let layer = CircuitBreakerLayer::builder().name("payments").build().unwrap();
    /// layer.register_metrics(&mut registry);
    /// layer.handle().force_open();
    /// let mut text = String::new();
    /// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    /// assert!(text.contains(r#"trellis_resilience_circuit_breaker_state{name="payments"} 3"#));
    /// ```
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.register_metrics_in(&super::CircuitBreakerMetricFamilies::new(registry));
    }

    /// Registers this breaker's metrics in families shared with other
    /// breakers, labelled with this breaker's name. A breaker reports to the
    /// first families it is registered in.
    #[cfg(feature = "metrics")]
    pub fn register_metrics_in(&self, families: &super::CircuitBreakerMetricFamilies) {
        let metrics = families.for_breaker(&self.shared.name(), self.shared.state());
        let _ = self.shared.metrics.set(metrics);
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(
            inner,
            Local::new(Arc::clone(&self.shared), self.classifier.clone()),
        )
    }
}

/// Builds a [`CircuitBreakerLayer`] field by field; `build` validates.
#[derive(Debug, Clone, Default)]
pub struct CircuitBreakerBuilder {
    config: CircuitBreakerConfig,
}

impl CircuitBreakerBuilder {
    /// The breaker's name, for tracing, metrics and errors.
    pub fn name(&mut self, name: impl Into<String>) -> &mut Self {
        self.config.name = name.into();
        self
    }

    /// Counts the last `size` calls.
    pub fn count_window(&mut self, size: u32) -> &mut Self {
        self.config.window = SlidingWindow::Count { size };
        self
    }

    /// Counts the calls of the last `duration`, one bucket per second.
    pub fn time_window(&mut self, duration: Duration) -> &mut Self {
        self.config.window = SlidingWindow::Time {
            duration,
            buckets: None,
        };
        self
    }

    /// Counts the calls of the last `duration` in `buckets` buckets.
    pub fn time_window_with_buckets(&mut self, duration: Duration, buckets: u32) -> &mut Self {
        self.config.window = SlidingWindow::Time {
            duration,
            buckets: Some(buckets),
        };
        self
    }

    /// Opens after `failures` failures in a row instead of on a rate.
    pub fn consecutive_failures(&mut self, failures: u32) -> &mut Self {
        self.config.window = SlidingWindow::Consecutive { failures };
        self
    }

    /// Failure rate (percent) at which the breaker opens.
    pub fn failure_rate_threshold(&mut self, percent: f64) -> &mut Self {
        self.config.failure_rate_threshold = percent;
        self
    }

    /// Slow-call rate (percent) at which the breaker opens.
    pub fn slow_call_rate_threshold(&mut self, percent: f64) -> &mut Self {
        self.config.slow_call_rate_threshold = percent;
        self
    }

    /// Calls taking at least `duration` are slow.
    pub fn slow_call_duration(&mut self, duration: Duration) -> &mut Self {
        self.config.slow_call_duration = Some(duration);
        self
    }

    /// Calls needed in the window before a rate counts.
    pub fn minimum_calls(&mut self, calls: u32) -> &mut Self {
        self.config.minimum_calls = calls;
        self
    }

    /// A fixed wait in open.
    pub fn wait_in_open(&mut self, wait: Duration) -> &mut Self {
        self.config.wait_in_open = wait;
        self.config.wait_in_open_multiplier = 1.0;
        self
    }

    /// A wait in open that starts at `initial` and is multiplied by
    /// `multiplier` at each consecutive re-open, up to `max`.
    pub fn exponential_wait_in_open(
        &mut self,
        initial: Duration,
        multiplier: f64,
        max: Duration,
    ) -> &mut Self {
        self.config.wait_in_open = initial;
        self.config.wait_in_open_multiplier = multiplier;
        self.config.max_wait_in_open = max;
        self
    }

    /// Trial calls admitted in half-open.
    pub fn permitted_calls_in_half_open(&mut self, calls: u32) -> &mut Self {
        self.config.permitted_calls_in_half_open = calls;
        self
    }

    /// The longest the breaker stays half-open.
    pub fn max_wait_in_half_open(&mut self, max: Duration) -> &mut Self {
        self.config.max_wait_in_half_open = Some(max);
        self
    }

    /// The configuration so far.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.config
    }

    /// Validates the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`CircuitBreakerConfig::validate`] for the
    /// configuration built so far.
    pub fn build(&self) -> Result<CircuitBreakerLayer, ConfigError> {
        CircuitBreakerLayer::from_config(self.config.clone())
    }
}
