use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::error::RetryStop;

/// The retry layer's metrics, with their `name` label resolved once at
/// registration so the hot path only touches atomics.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) retries: Counter,
    max_attempts: Counter,
    max_elapsed: Counter,
    budget_exhausted: Counter,
}

impl Metrics {
    pub(crate) fn register(name: &str, registry: &mut Registry) -> Metrics {
        let retries = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "trellis_resilience_retry_retries",
            "Retries made (attempts after the first)",
            retries.clone(),
        );
        let exhausted = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "trellis_resilience_retry_exhausted",
            "Calls on which the retry layer gave up, by reason",
            exhausted.clone(),
        );
        let label = |reason: &str| {
            exhausted
                .get_or_create(&vec![
                    ("name".to_owned(), name.to_owned()),
                    ("reason".to_owned(), reason.to_owned()),
                ])
                .clone()
        };
        Metrics {
            retries: retries
                .get_or_create(&vec![("name".to_owned(), name.to_owned())])
                .clone(),
            max_attempts: label("max_attempts"),
            max_elapsed: label("max_elapsed"),
            budget_exhausted: label("budget_exhausted"),
        }
    }

    pub(crate) fn exhausted(&self, reason: RetryStop) -> &Counter {
        match reason {
            RetryStop::MaxAttempts => &self.max_attempts,
            RetryStop::BudgetExhausted => &self.budget_exhausted,
            RetryStop::MaxElapsed => &self.max_elapsed,
        }
    }
}
