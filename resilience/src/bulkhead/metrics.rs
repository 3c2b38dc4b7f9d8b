//! prometheus-client metrics of the bulkhead (feature `metrics`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::layer::Shared;

#[derive(Debug)]
pub(super) struct BulkheadMetrics {
    name: Arc<str>,
    pub(super) rejected: Counter,
}

impl BulkheadMetrics {
    pub(super) fn new(name: &Arc<str>) -> Self {
        BulkheadMetrics {
            name: Arc::clone(name),
            rejected: Counter::default(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry, shared: Arc<Shared>) {
        let sub = registry.sub_registry_with_label(("name".into(), self.name.to_string().into()));
        sub.register(
            "trellis_resilience_bulkhead_rejections",
            "Calls rejected because the bulkhead was full",
            self.rejected.clone(),
        );
        sub.register_collector(Box::new(Occupancy(shared)));
    }
}

/// Reads slots in use and waiters at scrape time, so the call path pays
/// nothing for these gauges.
#[derive(Debug)]
struct Occupancy(Arc<Shared>);

impl Collector for Occupancy {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let in_flight = self.0.in_flight.load(Ordering::Relaxed);
        let gauge = ConstGauge::new(in_flight as i64);
        let metric = encoder.encode_descriptor(
            "trellis_resilience_bulkhead_in_flight",
            "Calls running inside the bulkhead",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)?;
        let waiting = ConstGauge::new(self.0.waiting.load(Ordering::Relaxed) as i64);
        let metric = encoder.encode_descriptor(
            "trellis_resilience_bulkhead_waiting",
            "Calls waiting for a bulkhead slot",
            None,
            waiting.metric_type(),
        )?;
        waiting.encode(metric)?;
        let capacity = ConstGauge::new(self.0.max_concurrent as i64);
        let metric = encoder.encode_descriptor(
            "trellis_resilience_bulkhead_max_concurrent",
            "Configured maximum of concurrent calls",
            None,
            capacity.metric_type(),
        )?;
        capacity.encode(metric)
    }
}
