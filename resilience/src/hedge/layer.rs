use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tower_layer::Layer;

use super::histogram::Histogram;
use super::{Hedge, HedgeConfig, HedgeDelay};
use crate::config::ConfigError;
use crate::retry::{BudgetConfig, RetryBudget};

/// Recent calls the percentile delay is computed over (halved when full).
const HISTORY: u32 = 1000;

/// Shared by every clone of the layer and every service it made.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) name: Arc<str>,
    delay: HedgeDelay,
    latencies: Histogram,
    /// Second attempts sent, for observation.
    pub(super) hedges: AtomicU64,
    /// The percentile delay in nanoseconds (0: not known yet), recomputed
    /// every `RECOMPUTE_EVERY` calls rather than on each: reading the
    /// histogram scans every bucket.
    cached_delay: AtomicU64,
}

/// Calls between recomputations of the percentile delay.
const RECOMPUTE_EVERY: u32 = 16;

impl Shared {
    /// How long a call may run before it is hedged now.
    pub(super) fn delay(&self) -> Duration {
        match self.delay {
            HedgeDelay::Fixed(delay) => delay,
            HedgeDelay::Percentile {
                percentile,
                min_samples,
                until_then,
            } => {
                if self.latencies.samples() < min_samples {
                    return until_then;
                }
                match self.cached_delay.load(Ordering::Relaxed) {
                    0 => self.latencies.quantile(percentile).unwrap_or(until_then),
                    nanos => Duration::from_nanos(nanos),
                }
            }
        }
    }

    /// Records a call's latency, and refreshes the percentile delay now and
    /// then.
    pub(super) fn record(&self, latency: Duration) {
        let samples = self.latencies.record(latency);
        if let HedgeDelay::Percentile {
            percentile,
            min_samples,
            ..
        } = self.delay
            && samples >= min_samples
            && (samples.is_multiple_of(RECOMPUTE_EVERY)
                || self.cached_delay.load(Ordering::Relaxed) == 0)
            && let Some(delay) = self.latencies.quantile(percentile)
        {
            let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX).max(1);
            self.cached_delay.store(nanos, Ordering::Relaxed);
        }
    }
}

/// Applies [`Hedge`] to a service. Clones share the latency history and the
/// budget.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trellis_resilience::hedge::{HedgeConfig, HedgeDelay, HedgeLayer, Idempotent};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = HedgeLayer::from_config(
///     HedgeConfig { delay: HedgeDelay::Fixed(Duration::from_millis(20)), ..HedgeConfig::default() },
///     Idempotent::new(|_: &u32| true),
/// )
/// .unwrap();
/// assert_eq!(layer.delay(), Duration::from_millis(20));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HedgeLayer<P> {
    pub(super) shared: Arc<Shared>,
    pub(super) budget: Arc<RetryBudget>,
    pub(super) policy: P,
}

impl<P> HedgeLayer<P> {
    /// A hedging layer for the requests `policy` lets through, with its own
    /// default retry budget (20 % of requests, 10 per second floor, over
    /// 10 s); share the retry layer's with [`HedgeLayer::with_budget`].
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`HedgeConfig::validate`].
    pub fn from_config(config: HedgeConfig, policy: P) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(HedgeLayer {
            shared: Arc::new(Shared {
                name: config.name.into(),
                delay: config.delay,
                latencies: Histogram::new(HISTORY),
                hedges: AtomicU64::new(0),
                cached_delay: AtomicU64::new(0),
            }),
            budget: Arc::new(RetryBudget::new(BudgetConfig::default())?),
            policy,
        })
    }

    /// Spends second attempts from `budget`, e.g. the one the retry layer
    /// uses, so that retries and hedges together stay within one bound.
    pub fn with_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// The delay a call would be hedged after now.
    pub fn delay(&self) -> Duration {
        self.shared.delay()
    }

    /// Second attempts sent so far.
    pub fn hedges_sent(&self) -> u64 {
        self.shared.hedges.load(Ordering::Relaxed)
    }
}

impl<S, P: Clone> Layer<S> for HedgeLayer<P> {
    type Service = Hedge<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge::new(
            inner,
            Arc::clone(&self.shared),
            Arc::clone(&self.budget),
            self.policy.clone(),
        )
    }
}
