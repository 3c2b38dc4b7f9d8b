//! prometheus-client metrics of the adaptive limit (feature `metrics`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::layer::Shared;

#[derive(Debug)]
pub(super) struct AdaptiveMetrics {
    name: Arc<str>,
    pub(super) rejected: Counter,
}

impl AdaptiveMetrics {
    pub(super) fn new(name: &Arc<str>) -> Self {
        AdaptiveMetrics {
            name: Arc::clone(name),
            rejected: Counter::default(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry, shared: Arc<Shared>) {
        let sub = registry.sub_registry_with_label(("name".into(), self.name.to_string().into()));
        sub.register(
            "trellis_resilience_adaptive_rejections",
            "Calls shed because the adaptive concurrency limit was reached",
            self.rejected.clone(),
        );
        sub.register_collector(Box::new(Gauges(shared)));
    }
}

/// Reads the limit and the calls in flight at scrape time.
#[derive(Debug)]
struct Gauges(Arc<Shared>);

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let limit = ConstGauge::new(self.0.limit.load(Ordering::Relaxed) as i64);
        let metric = encoder.encode_descriptor(
            "trellis_resilience_adaptive_limit",
            "The adaptive concurrency limit now",
            None,
            limit.metric_type(),
        )?;
        limit.encode(metric)?;
        let in_flight = ConstGauge::new(self.0.in_flight.load(Ordering::Relaxed) as i64);
        let metric = encoder.encode_descriptor(
            "trellis_resilience_adaptive_in_flight",
            "Calls running under the adaptive limit",
            None,
            in_flight.metric_type(),
        )?;
        in_flight.encode(metric)
    }
}
