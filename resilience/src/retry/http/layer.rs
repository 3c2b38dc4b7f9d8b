//! [`HttpRetryLayer`]: the configuration that wraps services in [`HttpRetry`].

use tower_layer::Layer;

use super::{DEFAULT_MAX_BODY_BYTES, HttpRetry, HttpRetryPolicy};
use crate::config::ConfigError;
use crate::retry::{RetryConfig, RetryLayer};

/// Wraps services in [`HttpRetry`]: a [`RetryLayer`] with the
/// [`HttpRetryPolicy`], plus request-body buffering.
#[derive(Debug, Clone)]
pub struct HttpRetryLayer {
    retry: RetryLayer<HttpRetryPolicy>,
    max_body_bytes: usize,
}

impl HttpRetryLayer {
    /// The HTTP policy on top of `retry`'s configuration and budget, with
    /// the default [`HttpRetryPolicy`] and a 64 KiB body bound.
    pub fn new<P>(retry: RetryLayer<P>) -> Self {
        HttpRetryLayer {
            retry: retry.with_policy(HttpRetryPolicy::default()),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// Validates `config` and builds the layer.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`RetryConfig::validate`].
    pub fn from_config(config: RetryConfig) -> Result<Self, ConfigError> {
        Ok(HttpRetryLayer::new(RetryLayer::from_config(config)?))
    }

    /// Replaces the policy.
    pub fn with_policy(mut self, policy: HttpRetryPolicy) -> Self {
        self.retry = self.retry.with_policy(policy);
        self
    }

    /// Sets the largest request body buffered for re-sending.
    pub fn with_max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// The underlying retry layer (budget, metrics registration).
    pub fn retry_layer(&self) -> &RetryLayer<HttpRetryPolicy> {
        &self.retry
    }
}

impl<S> Layer<S> for HttpRetryLayer {
    type Service = HttpRetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpRetry {
            inner: self.retry.layer(inner),
            max_body_bytes: self.max_body_bytes,
        }
    }
}
