use tower_layer::Layer;

use super::maybe::Maybe;
use super::{PolicyConfig, Resilient};
use crate::bulkhead::{Bulkhead, BulkheadLayer};
use crate::circuit_breaker::{
    CircuitBreaker, CircuitBreakerHandle, CircuitBreakerLayer, DefaultClassifier,
};
use crate::config::ConfigError;
use crate::rate_limit::{RateLimit, RateLimitLayer};
use crate::retry::{DefaultRetryPolicy, Retry, RetryLayer};
use crate::timeout::{Timeout, TimeoutLayer};

/// The stack inside a [`Resilient`] service, outermost first.
pub type Stack<S, P = DefaultRetryPolicy, C = DefaultClassifier> =
    Maybe<Retry<BreakerStack<S, C>, P>, BreakerStack<S, C>>;
/// The stack below the retry layer.
pub type BreakerStack<S, C = DefaultClassifier> =
    Maybe<CircuitBreaker<LimitStack<S>, C>, LimitStack<S>>;
/// The stack below the circuit breaker.
pub type LimitStack<S> = Maybe<RateLimit<TimeoutStack<S>>, TimeoutStack<S>>;
/// The stack below the rate limiter.
pub type TimeoutStack<S> = Maybe<Timeout<BulkheadStack<S>>, BulkheadStack<S>>;
/// The innermost layer: the bulkhead, or the service itself.
pub type BulkheadStack<S> = Maybe<Bulkhead<S>, S>;

/// The five resilience layers composed in the recommended order: retry ▸
/// circuit breaker ▸ rate limiter ▸ timeout ▸ bulkhead ▸ service. See the
/// [module docs](super) for why this order.
///
/// Each layer is optional. The services it makes answer with the flat
/// [`Error`](crate::Error).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use tower::{Layer, Service, ServiceExt, service_fn};
/// use trellis_resilience::policy::ResiliencePolicy;
/// use trellis_resilience::timeout::TimeoutLayer;
/// use trellis_resilience::bulkhead::BulkheadLayer;
///
/// let policy = ResiliencePolicy::new()
///     .with_timeout(TimeoutLayer::new(Duration::from_secs(1)))
///     .with_bulkhead(BulkheadLayer::new(32));
/// let mut svc = policy.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n + 1) }));
/// assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 2);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ResiliencePolicy<P = DefaultRetryPolicy, C = DefaultClassifier> {
    retry: Option<RetryLayer<P>>,
    circuit_breaker: Option<CircuitBreakerLayer<C>>,
    rate_limit: Option<RateLimitLayer>,
    timeout: Option<TimeoutLayer>,
    bulkhead: Option<BulkheadLayer>,
}

impl Default for ResiliencePolicy {
    fn default() -> Self {
        ResiliencePolicy::new()
    }
}

impl ResiliencePolicy {
    /// A policy with no layer; add them with the `with_*` methods.
    pub fn new() -> Self {
        ResiliencePolicy {
            retry: None,
            circuit_breaker: None,
            rate_limit: None,
            timeout: None,
            bulkhead: None,
        }
    }

    /// Builds every configured layer, validating each section.
    ///
    /// # Errors
    ///
    /// The first section's [`ConfigError`]: each layer validates its own
    /// section.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_resilience::policy::{PolicyConfig, ResiliencePolicy};
    ///
    /// let policy = ResiliencePolicy::from_config(PolicyConfig::recommended("inventory")).unwrap();
    /// assert!(policy.circuit_breaker().is_some());
    /// let mut bad = PolicyConfig::recommended("inventory");
    /// bad.bulkhead.as_mut().unwrap().max_concurrent = 0;
    /// assert!(ResiliencePolicy::from_config(bad).is_err());
    /// ```
    pub fn from_config(mut config: PolicyConfig) -> Result<Self, ConfigError> {
        config.name_sections();
        Ok(ResiliencePolicy {
            retry: config.retry.map(RetryLayer::from_config).transpose()?,
            circuit_breaker: config
                .circuit_breaker
                .map(CircuitBreakerLayer::from_config)
                .transpose()?,
            rate_limit: config
                .rate_limit
                .map(RateLimitLayer::from_config)
                .transpose()?,
            timeout: config.timeout.map(TimeoutLayer::from_config).transpose()?,
            bulkhead: config
                .bulkhead
                .map(BulkheadLayer::from_config)
                .transpose()?,
        })
    }
}

impl<P, C> ResiliencePolicy<P, C> {
    /// Sets the retry layer (outermost).
    pub fn with_retry<Q>(self, retry: RetryLayer<Q>) -> ResiliencePolicy<Q, C> {
        ResiliencePolicy {
            retry: Some(retry),
            circuit_breaker: self.circuit_breaker,
            rate_limit: self.rate_limit,
            timeout: self.timeout,
            bulkhead: self.bulkhead,
        }
    }

    /// Sets the circuit breaker (inside retry).
    pub fn with_circuit_breaker<D>(
        self,
        breaker: CircuitBreakerLayer<D>,
    ) -> ResiliencePolicy<P, D> {
        ResiliencePolicy {
            retry: self.retry,
            circuit_breaker: Some(breaker),
            rate_limit: self.rate_limit,
            timeout: self.timeout,
            bulkhead: self.bulkhead,
        }
    }

    /// Sets the rate limiter (inside the breaker).
    pub fn with_rate_limit(mut self, limit: RateLimitLayer) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Sets the per-attempt timeout (inside the limiter).
    pub fn with_timeout(mut self, timeout: TimeoutLayer) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the bulkhead (innermost).
    pub fn with_bulkhead(mut self, bulkhead: BulkheadLayer) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// The retry layer, if any.
    pub fn retry(&self) -> Option<&RetryLayer<P>> {
        self.retry.as_ref()
    }

    /// The circuit breaker layer, if any.
    pub fn circuit_breaker(&self) -> Option<&CircuitBreakerLayer<C>> {
        self.circuit_breaker.as_ref()
    }

    /// A handle on the circuit breaker (state, metrics, manual control).
    pub fn circuit_breaker_handle(&self) -> Option<CircuitBreakerHandle> {
        self.circuit_breaker
            .as_ref()
            .map(CircuitBreakerLayer::handle)
    }

    /// The rate limiter layer, if any.
    pub fn rate_limit(&self) -> Option<&RateLimitLayer> {
        self.rate_limit.as_ref()
    }

    /// The timeout layer, if any.
    pub fn timeout(&self) -> Option<&TimeoutLayer> {
        self.timeout.as_ref()
    }

    /// The bulkhead layer, if any.
    pub fn bulkhead(&self) -> Option<&BulkheadLayer> {
        self.bulkhead.as_ref()
    }

    /// Registers the metrics of every layer in `registry`.
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Some(retry) = &self.retry {
            retry.register_metrics(registry);
        }
        if let Some(breaker) = &self.circuit_breaker {
            breaker.register_metrics(registry);
        }
        if let Some(limit) = &self.rate_limit {
            limit.register_metrics(registry);
        }
        if let Some(bulkhead) = &self.bulkhead {
            bulkhead.register_metrics(registry);
        }
    }

    /// Reports every layer in families shared with other policies (each
    /// series labelled with its layer's name): unlike
    /// [`register_metrics`](Self::register_metrics), any number of
    /// policies can report to one registry this way.
    #[cfg(feature = "metrics")]
    pub fn register_metrics_in(&self, families: &PolicyMetricFamilies) {
        if let Some(retry) = &self.retry {
            retry.attach_metrics(&families.retry);
        }
        if let Some(breaker) = &self.circuit_breaker {
            breaker.register_metrics_in(&families.circuit_breaker);
        }
        if let Some(limit) = &self.rate_limit {
            limit.limiter().register_metrics_in(&families.rate_limit);
        }
        if let Some(bulkhead) = &self.bulkhead {
            bulkhead.register_metrics_in(&families.bulkhead);
        }
    }
}

/// The metric families of every layer of [`ResiliencePolicy`], registered
/// once per registry and shared by any number of policies
/// ([`ResiliencePolicy::register_metrics_in`]).
///
/// # Examples
///
/// ```
/// use prometheus_client::registry::Registry;
/// use trellis_resilience::policy::{PolicyConfig, PolicyMetricFamilies, ResiliencePolicy};
///
/// let mut registry = Registry::default();
/// let families = PolicyMetricFamilies::new(&mut registry);
/// let mut policies = Vec::new();
/// for name in ["inventory", "payments"] {
///     let policy: ResiliencePolicy = ResiliencePolicy::from_config(PolicyConfig::recommended(name)).unwrap();
///     policy.register_metrics_in(&families);
///     // Its bulkhead's gauges report for as long as it lives.
///     policies.push(policy);
/// }
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains(r#"trellis_resilience_circuit_breaker_state{name="inventory"} 0"#));
/// assert!(text.contains(r#"trellis_resilience_bulkhead_in_flight{name="payments"} 0"#));
/// assert_eq!(text.matches("# TYPE trellis_resilience_circuit_breaker_state ").count(), 1);
/// ```
#[cfg(feature = "metrics")]
#[derive(Debug, Clone)]
pub struct PolicyMetricFamilies {
    retry: crate::retry::RetryMetrics,
    circuit_breaker: crate::circuit_breaker::CircuitBreakerMetricFamilies,
    rate_limit: crate::rate_limit::RateLimitMetricFamilies,
    bulkhead: crate::bulkhead::BulkheadMetricFamilies,
}

#[cfg(feature = "metrics")]
impl PolicyMetricFamilies {
    /// Registers the families of every layer in `registry`.
    pub fn new(registry: &mut prometheus_client::registry::Registry) -> Self {
        PolicyMetricFamilies {
            retry: crate::retry::RetryMetrics::new(registry),
            circuit_breaker: crate::circuit_breaker::CircuitBreakerMetricFamilies::new(registry),
            rate_limit: crate::rate_limit::RateLimitMetricFamilies::new(registry),
            bulkhead: crate::bulkhead::BulkheadMetricFamilies::new(registry),
        }
    }
}

fn maybe<L: Layer<S>, S>(layer: Option<&L>, inner: S) -> Maybe<L::Service, S> {
    match layer {
        Some(layer) => Maybe::On(layer.layer(inner)),
        None => Maybe::Off(inner),
    }
}

impl<S, P: Clone, C: Clone> Layer<S> for ResiliencePolicy<P, C> {
    type Service = Resilient<Stack<S, P, C>>;

    fn layer(&self, service: S) -> Self::Service {
        let stack = maybe(self.bulkhead.as_ref(), service);
        let stack = maybe(self.timeout.as_ref(), stack);
        let stack = maybe(self.rate_limit.as_ref(), stack);
        let stack = maybe(self.circuit_breaker.as_ref(), stack);
        let stack = maybe(self.retry.as_ref(), stack);
        Resilient::new(stack)
    }
}
