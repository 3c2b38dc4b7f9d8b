//! prometheus-client metrics of projection runners (feature `metrics`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

type Labels = Vec<(String, String)>;

/// `trellis_projection_lag` (events behind the head),
/// `trellis_projection_seconds_behind` (age of the last applied event while
/// lagging, 0 when caught up) and `trellis_projection_events_handled_total`,
/// labelled by `projection`.
///
/// # Examples
///
/// ```
/// use prometheus_client::registry::Registry;
/// let mut registry = Registry::default();
/// let metrics = trellis_cqrs::metrics::ProjectionMetrics::new(&mut registry);
/// metrics.handled("orders", 3);
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains("trellis_projection_events_handled_total{projection=\"orders\"} 3"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ProjectionMetrics {
    lag: Family<Labels, Gauge>,
    seconds_behind: Family<Labels, Gauge<f64, AtomicU64>>,
    handled: Family<Labels, Counter>,
}

impl ProjectionMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "trellis_projection_lag",
            "Events the projection is behind the store's head (EventStore::events_behind; 0 when caught up)",
            m.lag.clone(),
        );
        registry.register(
            "trellis_projection_seconds_behind",
            "Age of the last applied event while the projection lags, 0 when caught up",
            m.seconds_behind.clone(),
        );
        registry.register(
            "trellis_projection_events_handled",
            "Events applied and committed by the projection",
            m.handled.clone(),
        );
        m
    }

    /// Sets the lag of `projection`, in events.
    pub fn set_lag(&self, projection: &str, lag: u64) {
        self.lag
            .get_or_create(&labels(projection))
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// Sets how far behind `projection` is in time.
    pub fn set_seconds_behind(&self, projection: &str, behind: Duration) {
        self.seconds_behind
            .get_or_create(&labels(projection))
            .set(behind.as_secs_f64());
    }

    /// Counts `n` events handled by `projection`.
    pub fn handled(&self, projection: &str, n: u64) {
        self.handled.get_or_create(&labels(projection)).inc_by(n);
    }
}

fn labels(projection: &str) -> Labels {
    vec![("projection".to_owned(), projection.to_owned())]
}
