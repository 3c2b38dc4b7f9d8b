use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::error::RetryStop;

type Labels = Vec<(String, String)>;

/// The retry metric families, registered once per registry and shared by
/// any number of retry layers (each labels its series with its own
/// `name`), so that several layers never register the same family twice.
///
/// # Examples
///
/// ```
/// use prometheus_client::registry::Registry;
/// use trellis_resilience::retry::{RetryLayer, RetryMetrics};
///
/// let mut registry = Registry::default();
/// let metrics = RetryMetrics::new(&mut registry);
/// let inventory = RetryLayer::builder().name("inventory").build().unwrap();
/// let payments = RetryLayer::builder().name("payments").build().unwrap();
/// inventory.attach_metrics(&metrics);
/// payments.attach_metrics(&metrics);
/// ```
#[derive(Debug, Clone)]
pub struct RetryMetrics {
    retries: Family<Labels, Counter>,
    exhausted: Family<Labels, Counter>,
}

impl RetryMetrics {
    /// Registers `trellis_resilience_retry_retries` and
    /// `trellis_resilience_retry_exhausted` in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = RetryMetrics {
            retries: Family::default(),
            exhausted: Family::default(),
        };
        registry.register(
            "trellis_resilience_retry_retries",
            "Retries made (attempts after the first)",
            metrics.retries.clone(),
        );
        registry.register(
            "trellis_resilience_retry_exhausted",
            "Calls on which the retry layer gave up, by reason",
            metrics.exhausted.clone(),
        );
        metrics
    }

    /// The series of one layer, resolved once.
    pub(crate) fn series(&self, name: &str) -> Series {
        let label = |reason: &str| {
            self.exhausted
                .get_or_create(&vec![
                    ("name".to_owned(), name.to_owned()),
                    ("reason".to_owned(), reason.to_owned()),
                ])
                .clone()
        };
        Series {
            retries: self
                .retries
                .get_or_create(&vec![("name".to_owned(), name.to_owned())])
                .clone(),
            max_attempts: label("max_attempts"),
            max_elapsed: label("max_elapsed"),
            budget_exhausted: label("budget_exhausted"),
        }
    }
}

/// One layer's counters, with their labels resolved at registration so the
/// retry path only touches atomics.
#[derive(Debug)]
pub(crate) struct Series {
    pub(crate) retries: Counter,
    max_attempts: Counter,
    max_elapsed: Counter,
    budget_exhausted: Counter,
}

impl Series {
    pub(crate) fn exhausted(&self, reason: RetryStop) -> &Counter {
        match reason {
            RetryStop::MaxAttempts => &self.max_attempts,
            RetryStop::BudgetExhausted => &self.budget_exhausted,
            RetryStop::MaxElapsed => &self.max_elapsed,
        }
    }
}
