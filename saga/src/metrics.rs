//! prometheus-client metrics (feature `metrics`).
//!
//! | name | labels | meaning |
//! |---|---|---|
//! | `trellis_saga_steps_total` | `outcome` = succeeded, failed, compensated, compensation_failed | step outcomes |
//! | `trellis_saga_finished_total` | `status` = completed, compensated, needs_attention | sagas that reached an end |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::log::SagaStatus;

type Labels = Vec<(&'static str, &'static str)>;

/// The orchestrator's counters; clones share them.
///
/// # Examples
///
/// ```
/// use prometheus_client::registry::Registry;
/// use trellis_saga::{MemorySagaLog, Orchestrator, metrics::SagaMetrics};
///
/// let mut registry = Registry::default();
/// let orchestrator = Orchestrator::new(MemorySagaLog::new(), "node-1")
///     .with_metrics(SagaMetrics::new(&mut registry));
/// # let _ = orchestrator;
/// ```
#[derive(Debug, Clone, Default)]
pub struct SagaMetrics {
    steps: Family<Labels, Counter>,
    finished: Family<Labels, Counter>,
}

impl SagaMetrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = SagaMetrics::default();
        registry.register(
            "trellis_saga_steps",
            "Saga step outcomes",
            metrics.steps.clone(),
        );
        registry.register(
            "trellis_saga_finished",
            "Sagas that reached an end state",
            metrics.finished.clone(),
        );
        metrics
    }

    pub(crate) fn step(&self, outcome: &'static str) {
        self.steps.get_or_create(&vec![("outcome", outcome)]).inc();
    }

    pub(crate) fn finished(&self, status: SagaStatus) {
        self.finished
            .get_or_create(&vec![("status", status.as_str())])
            .inc();
    }
}
