use tower_layer::Layer;

use super::config::RateLimitConfig;
use super::keyed::KeyedRateLimiter;
use super::limiter::RateLimiter;
use super::service::{KeyedRateLimit, RateLimit};
use crate::config::ConfigError;

/// Applies one rate limit, shared by every service it wraps and every clone
/// of them, to all calls.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower::{Service, ServiceExt, service_fn};
/// use trellis_resilience::error::RateLimited;
/// use trellis_resilience::rate_limit::{RateLimitConfig, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = RateLimitLayer::from_config(
///     RateLimitConfig::new(5, Duration::from_secs(1)).with_burst(1),
/// ).unwrap();
/// let mut svc = tower::ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x) }));
///
/// assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
/// let error = svc.ready().await.unwrap().call(2).await.unwrap_err();
/// let limited = error.downcast_ref::<RateLimited>().unwrap();
/// assert_eq!(limited.retry_after, Duration::from_millis(200));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: RateLimiter,
}

impl RateLimitLayer {
    /// Validates `config` and builds the shared limiter.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`RateLimitConfig::validate`].
    pub fn from_config(config: RateLimitConfig) -> Result<Self, ConfigError> {
        RateLimiter::from_config(config).map(Self::with_limiter)
    }

    /// A layer around an existing limiter (to share it with other code).
    pub fn with_limiter(limiter: RateLimiter) -> Self {
        RateLimitLayer { limiter }
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Registers the limiter's metrics; see [`RateLimiter::register_metrics`].
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.limiter.register_metrics(registry);
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.limiter.clone())
    }
}

/// Applies a separate rate limit per key (client address, header, subject…),
/// the key taken from each request by `E`, with at most
/// [`RateLimitConfig::max_keys`] keys in memory.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower::{Service, ServiceExt, service_fn};
/// use trellis_resilience::rate_limit::{KeyedRateLimitLayer, RateLimitConfig};
///
/// struct Request { user: &'static str }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = KeyedRateLimitLayer::from_config(
///     RateLimitConfig::new(1, Duration::from_secs(1)),
///     |r: &Request| r.user,
/// ).unwrap();
/// let mut svc = tower::ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|r: Request| async move { Ok::<_, std::convert::Infallible>(r.user) }));
///
/// assert!(svc.ready().await.unwrap().call(Request { user: "ann" }).await.is_ok());
/// assert!(svc.ready().await.unwrap().call(Request { user: "ann" }).await.is_err());
/// assert!(svc.ready().await.unwrap().call(Request { user: "bo" }).await.is_ok());
/// # }
/// ```
pub struct KeyedRateLimitLayer<K, E> {
    limiter: KeyedRateLimiter<K>,
    extractor: E,
}

impl<K, E> std::fmt::Debug for KeyedRateLimitLayer<K, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedRateLimitLayer")
            .field("limiter", &self.limiter)
            .field("extractor", &std::any::type_name::<E>())
            .finish()
    }
}

impl<K, E: Clone> Clone for KeyedRateLimitLayer<K, E> {
    fn clone(&self) -> Self {
        KeyedRateLimitLayer {
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, E> KeyedRateLimitLayer<K, E> {
    /// Validates `config` and builds the shared keyed limiter.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`RateLimitConfig::validate`].
    pub fn from_config(config: RateLimitConfig, extractor: E) -> Result<Self, ConfigError> {
        KeyedRateLimiter::from_config(config).map(|limiter| Self::with_limiter(limiter, extractor))
    }

    /// A layer around an existing keyed limiter.
    pub fn with_limiter(limiter: KeyedRateLimiter<K>, extractor: E) -> Self {
        KeyedRateLimitLayer { limiter, extractor }
    }

    /// The shared keyed limiter.
    pub fn limiter(&self) -> &KeyedRateLimiter<K> {
        &self.limiter
    }

    /// Registers the limiter's metrics; see
    /// [`KeyedRateLimiter::register_metrics`].
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.limiter.register_metrics(registry);
    }
}

impl<S, K, E: Clone> Layer<S> for KeyedRateLimitLayer<K, E> {
    type Service = KeyedRateLimit<S, K, E>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit::new(inner, self.limiter.clone(), self.extractor.clone())
    }
}
