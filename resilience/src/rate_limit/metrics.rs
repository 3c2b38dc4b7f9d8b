//! prometheus-client metrics of the rate limiters (feature `metrics`).
//!
//! The labelled counters are fetched once, at registration; the hot path
//! only increments atomics.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::limiter::Core;

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    families: Families,
    pub(crate) admitted: Counter,
    pub(crate) rejected: Counter,
    pub(crate) waited: Counter,
    pub(crate) wait_seconds: Counter<f64, AtomicU64>,
    /// Counted by the Redis limiter only.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) backend_errors: Counter,
}

#[derive(Debug, Clone, Default)]
struct Families {
    admitted: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
    waited: Family<Labels, Counter>,
    wait_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    backend_errors: Family<Labels, Counter>,
}

impl Metrics {
    pub(crate) fn new(name: &str) -> Metrics {
        let families = Families::default();
        let labels = vec![("name".to_owned(), name.to_owned())];
        let admitted = families.admitted.get_or_create(&labels).clone();
        let rejected = families.rejected.get_or_create(&labels).clone();
        let waited = families.waited.get_or_create(&labels).clone();
        let wait_seconds = families.wait_seconds.get_or_create(&labels).clone();
        let backend_errors = families.backend_errors.get_or_create(&labels).clone();
        Metrics {
            families,
            admitted,
            rejected,
            waited,
            wait_seconds,
            backend_errors,
        }
    }

    /// This limiter's counters as children of shared `families`.
    pub(crate) fn in_families(name: &str, families: &RateLimitMetricFamilies) -> Metrics {
        let families = families.0.clone();
        let labels = vec![("name".to_owned(), name.to_owned())];
        let admitted = families.admitted.get_or_create(&labels).clone();
        let rejected = families.rejected.get_or_create(&labels).clone();
        let waited = families.waited.get_or_create(&labels).clone();
        let wait_seconds = families.wait_seconds.get_or_create(&labels).clone();
        let backend_errors = families.backend_errors.get_or_create(&labels).clone();
        Metrics {
            families,
            admitted,
            rejected,
            waited,
            wait_seconds,
            backend_errors,
        }
    }

    pub(crate) fn register(core: &Core, registry: &mut Registry) {
        let m = core.metrics.get_or_init(|| Metrics::new(&core.name));
        m.register_in(registry, false);
    }

    pub(crate) fn register_in(&self, registry: &mut Registry, backend: bool) {
        let f = self.families.clone();
        registry.register(
            "trellis_resilience_rate_limit_admitted",
            "Calls admitted by the rate limiter",
            f.admitted,
        );
        registry.register(
            "trellis_resilience_rate_limit_rejected",
            "Calls rejected by the rate limiter",
            f.rejected,
        );
        registry.register(
            "trellis_resilience_rate_limit_waited",
            "Admitted calls that waited for a permit",
            f.waited,
        );
        registry.register(
            "trellis_resilience_rate_limit_wait_seconds",
            "Total time admitted calls waited for a permit",
            f.wait_seconds,
        );
        if backend {
            registry.register(
                "trellis_resilience_rate_limit_backend_errors",
                "Calls for which the shared (Redis) limiter failed or timed out",
                f.backend_errors,
            );
        }
    }

    /// Counts an admitted call and, when it waited, its wait.
    #[inline]
    pub(crate) fn admitted(&self, wait_nanos: u64) {
        self.admitted.inc();
        if wait_nanos > 0 {
            self.waited.inc();
            self.wait_seconds.inc_by(wait_nanos as f64 * 1e-9);
        }
    }
}

/// The metric families of rate limiters, registered once per registry and
/// shared by every limiter reported in it (each with its own `name`
/// label), so that several limiters never register the same family twice.
/// The Redis limiter's `backend_errors` family is not among them.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use prometheus_client::registry::Registry;
/// use trellis_resilience::rate_limit::{RateLimitConfig, RateLimitMetricFamilies, RateLimiter};
///
/// let mut registry = Registry::default();
/// let families = RateLimitMetricFamilies::new(&mut registry);
/// for name in ["users", "payments"] {
///     let config = RateLimitConfig::new(10, Duration::from_secs(1)).with_name(name);
///     RateLimiter::from_config(config).unwrap().register_metrics_in(&families);
/// }
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains(r#"trellis_resilience_rate_limit_admitted_total{name="users"} 0"#));
/// assert!(text.contains(r#"trellis_resilience_rate_limit_admitted_total{name="payments"} 0"#));
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitMetricFamilies(Families);

impl RateLimitMetricFamilies {
    /// Registers the families in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let families = Families::default();
        let metrics = Metrics {
            admitted: Counter::default(),
            rejected: Counter::default(),
            waited: Counter::default(),
            wait_seconds: Counter::default(),
            backend_errors: Counter::default(),
            families: families.clone(),
        };
        metrics.register_in(registry, false);
        RateLimitMetricFamilies(families)
    }
}
