use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::{Backoff, BudgetConfig, DefaultRetryPolicy, Retry, RetryBudget, RetryConfig};
use crate::config::ConfigError;

/// Settings read by every attempt, fixed when the layer is built.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: Arc<str>,
    pub(crate) max_attempts: u32,
    pub(crate) max_elapsed: Option<Duration>,
    pub(crate) max_retry_after: Duration,
    pub(crate) backoff: Backoff,
}

/// State shared by the layer and every service and future it makes.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: std::sync::OnceLock<super::metrics::Series>,
}

impl Shared {
    fn new(settings: Settings, budget: Option<Arc<RetryBudget>>) -> Arc<Self> {
        Arc::new(Shared {
            settings,
            budget,
            #[cfg(feature = "metrics")]
            metrics: std::sync::OnceLock::new(),
        })
    }
}

/// Wraps services in [`Retry`]: the configuration, the retry budget shared by
/// every service it makes, and the [`RetryPolicy`](super::RetryPolicy).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::retry::{Backoff, RetryLayer};
///
/// let layer = RetryLayer::builder()
///     .name("payments")
///     .max_attempts(4)
///     .backoff(Backoff::exponential(Duration::from_millis(20), Duration::from_secs(1)))
///     .build()
///     .unwrap();
/// assert!(layer.budget().is_some()); // the default budget is on
/// ```
#[derive(Debug, Clone)]
pub struct RetryLayer<P = DefaultRetryPolicy> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) policy: P,
}

impl RetryLayer {
    /// Builds the layer from a validated [`RetryConfig`], with the
    /// [`DefaultRetryPolicy`].
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`RetryConfig::validate`].
    pub fn from_config(config: RetryConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let budget = config
            .budget
            .map(RetryBudget::new)
            .transpose()?
            .map(Arc::new);
        let settings = Settings {
            name: config.name.into(),
            max_attempts: config.max_attempts,
            max_elapsed: config.max_elapsed,
            max_retry_after: config.max_retry_after,
            backoff: config.backoff,
        };
        Ok(RetryLayer {
            shared: Shared::new(settings, budget),
            policy: DefaultRetryPolicy,
        })
    }

    /// A builder starting from [`RetryConfig::default`].
    pub fn builder() -> RetryBuilder {
        RetryBuilder {
            config: RetryConfig::default(),
        }
    }
}

impl<P> RetryLayer<P> {
    /// Replaces the policy that decides what is retried (a
    /// [`RetryPolicy`](super::RetryPolicy) or a closure).
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_resilience::error::BoxError;
    /// use trellis_resilience::retry::{RetryConfig, RetryLayer};
    ///
    /// let layer = RetryLayer::from_config(RetryConfig::default())
    ///     .unwrap()
    ///     .with_policy(|result: Result<&u16, &BoxError>| !matches!(result, Ok(200)));
    /// # drop(layer);
    /// ```
    pub fn with_policy<Q>(self, policy: Q) -> RetryLayer<Q> {
        RetryLayer {
            shared: self.shared,
            policy,
        }
    }

    /// Shares `budget` with other layers (e.g. every client of one
    /// dependency), replacing this layer's own. Call it before
    /// `register_metrics` and before making services.
    pub fn with_budget(self, budget: Arc<RetryBudget>) -> Self {
        RetryLayer {
            shared: Shared::new(self.shared.settings.clone(), Some(budget)),
            policy: self.policy,
        }
    }

    /// The retry budget, if one is configured.
    pub fn budget(&self) -> Option<&Arc<RetryBudget>> {
        self.shared.budget.as_ref()
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }
}

impl<S, P: Clone> Layer<S> for RetryLayer<P> {
    type Service = Retry<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            shared: self.shared.clone(),
            policy: self.policy.clone(),
            spare: None,
        }
    }
}

/// Builder of a [`RetryLayer`]; every setter overrides one field of
/// [`RetryConfig`], and [`build`](Self::build) validates.
#[derive(Debug, Clone)]
pub struct RetryBuilder {
    config: RetryConfig,
}

impl RetryBuilder {
    /// Label for tracing and metrics.
    pub fn name(&mut self, name: impl Into<String>) -> &mut Self {
        self.config.name = name.into();
        self
    }

    /// Attempts in total, the first one included.
    pub fn max_attempts(&mut self, attempts: u32) -> &mut Self {
        self.config.max_attempts = attempts;
        self
    }

    /// Limit on the total time spent, waits included.
    pub fn max_elapsed(&mut self, max: Duration) -> &mut Self {
        self.config.max_elapsed = Some(max);
        self
    }

    /// The longest `Retry-After` honoured.
    pub fn max_retry_after(&mut self, max: Duration) -> &mut Self {
        self.config.max_retry_after = max;
        self
    }

    /// The wait between attempts.
    pub fn backoff(&mut self, backoff: Backoff) -> &mut Self {
        self.config.backoff = backoff;
        self
    }

    /// The retry budget (`None` disables it).
    pub fn budget(&mut self, budget: Option<BudgetConfig>) -> &mut Self {
        self.config.budget = budget;
        self
    }

    /// Validates and builds the layer.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`RetryConfig::validate`] for the configuration
    /// built so far.
    pub fn build(&self) -> Result<RetryLayer, ConfigError> {
        RetryLayer::from_config(self.config.clone())
    }
}

#[cfg(feature = "metrics")]
impl<P> RetryLayer<P> {
    /// Registers the retry metric families (see `resilience/docs/retry.md`)
    /// in `registry` and reports this layer's calls there, labelled with its
    /// name. For several retry layers in one registry, create one
    /// [`RetryMetrics`](super::RetryMetrics) and
    /// [`attach_metrics`](Self::attach_metrics) each layer instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use prometheus_client::registry::Registry;
    /// use trellis_resilience::retry::RetryLayer;
    ///
    /// let layer = RetryLayer::builder().name("inventory").build().unwrap();
    /// let mut registry = Registry::default();
    /// layer.register_metrics(&mut registry);
    /// ```
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.attach_metrics(&super::RetryMetrics::new(registry));
    }

    /// Reports this layer's calls (and those of every service it already
    /// made) in `metrics`. The first attachment wins.
    pub fn attach_metrics(&self, metrics: &super::RetryMetrics) {
        self.shared
            .metrics
            .get_or_init(|| metrics.series(&self.shared.settings.name));
    }
}
