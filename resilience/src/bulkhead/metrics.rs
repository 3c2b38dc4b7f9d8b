//! prometheus-client metrics of the bulkhead (feature `metrics`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

    /// This bulkhead's counter as a child of `families`' counter.
    pub(super) fn in_families(name: &Arc<str>, families: &BulkheadMetricFamilies) -> Self {
        BulkheadMetrics {
            name: Arc::clone(name),
            rejected: families
                .rejected
                .get_or_create(&[("name", name.to_string())])
                .clone(),
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

type NameLabel = [(&'static str, String); 1];

/// The metric families of bulkheads, registered once per registry and
/// shared by every bulkhead reported in it (each with its own `name`
/// label), so that several bulkheads never register the same family twice
/// (a scrape with a family twice is invalid OpenMetrics).
///
/// # Examples
///
/// ```
/// use prometheus_client::registry::Registry;
/// use trellis_resilience::bulkhead::{BulkheadLayer, BulkheadMetricFamilies};
///
/// let mut registry = Registry::default();
/// let families = BulkheadMetricFamilies::new(&mut registry);
/// let mut layers = Vec::new();
/// for name in ["users", "payments"] {
///     let layer = BulkheadLayer::from_config(trellis_resilience::bulkhead::BulkheadConfig {
///         name: name.into(),
///         ..Default::default()
///     }).unwrap();
///     layer.register_metrics_in(&families);
///     // A bulkhead reports for as long as it lives.
///     layers.push(layer);
/// }
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains(r#"trellis_resilience_bulkhead_in_flight{name="users"} 0"#));
/// assert!(text.contains(r#"trellis_resilience_bulkhead_in_flight{name="payments"} 0"#));
/// assert_eq!(text.matches("# TYPE trellis_resilience_bulkhead_in_flight ").count(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct BulkheadMetricFamilies {
    rejected: Family<NameLabel, Counter>,
    /// The bulkheads whose gauges are read at scrape time; a dropped
    /// bulkhead drops out.
    bulkheads: Arc<Mutex<Vec<Weak<Shared>>>>,
}

impl BulkheadMetricFamilies {
    /// Registers the families in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let families = BulkheadMetricFamilies {
            rejected: Family::default(),
            bulkheads: Arc::default(),
        };
        registry.register(
            "trellis_resilience_bulkhead_rejections",
            "Calls rejected because the bulkhead was full",
            families.rejected.clone(),
        );
        registry.register_collector(Box::new(AllOccupancy(Arc::clone(&families.bulkheads))));
        families
    }

    pub(super) fn add(&self, shared: &Arc<Shared>) {
        let mut bulkheads = self
            .bulkheads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bulkheads.retain(|b| b.strong_count() > 0);
        bulkheads.push(Arc::downgrade(shared));
    }
}

/// A gauge read at scrape time: name, help, how to read it.
type Gauge = (&'static str, &'static str, fn(&Shared) -> usize);

/// [`Occupancy`] of every bulkhead in a [`BulkheadMetricFamilies`], one
/// descriptor per gauge and one sample per bulkhead.
#[derive(Debug)]
struct AllOccupancy(Arc<Mutex<Vec<Weak<Shared>>>>);

impl Collector for AllOccupancy {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live: Vec<Arc<Shared>> = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let gauges: [Gauge; 3] = [
            (
                "trellis_resilience_bulkhead_in_flight",
                "Calls running inside the bulkhead",
                |s| s.in_flight.load(Ordering::Relaxed),
            ),
            (
                "trellis_resilience_bulkhead_waiting",
                "Calls waiting for a bulkhead slot",
                |s| s.waiting.load(Ordering::Relaxed),
            ),
            (
                "trellis_resilience_bulkhead_max_concurrent",
                "Configured maximum of concurrent calls",
                |s| s.max_concurrent,
            ),
        ];
        for (name, help, read) in gauges {
            let mut metric = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for shared in &live {
                let labels = [("name", shared.name.to_string())];
                let gauge = ConstGauge::new(read(shared) as i64);
                gauge.encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
