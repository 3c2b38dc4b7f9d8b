//! The process's one metrics registry: created by the run mode before any
//! service starts, handed to every service's `start` (which registers its
//! own metrics in it), then served on `/metrics`.
//!
//! A family may be registered once per registry (twice is an invalid
//! scrape), so the families several services or clients share are made
//! here, once: HTTP server/client metrics, projection runners' metrics, the
//! resilience policies' families. A service registers only what is its
//! own (the saga's metrics, the business metrics).

use std::sync::Arc;

use axum::Router;
use prometheus_client::registry::Registry;
use trellis_cqrs::metrics::ProjectionMetrics;
use trellis_observability::{HttpMetrics, MetricsService, ProcessCollector};
use trellis_resilience::policy::PolicyMetricFamilies;

/// The registry of this process and the shared families in it.
#[derive(Debug)]
pub(crate) struct ProcessMetrics {
    registry: Registry,
    /// HTTP server (every service's routes) and client (calls to peers)
    /// RED metrics.
    pub(crate) http: HttpMetrics,
    /// Every projection runner of the process (`projection` label).
    pub(crate) projections: ProjectionMetrics,
    /// Every resilience policy of the process (`name` label).
    pub(crate) policies: PolicyMetricFamilies,
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessMetrics {
    /// A registry with the process collector and the shared families.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics::new(&mut registry);
        registry.register_collector(Box::new(ProcessCollector::new()));
        let projections = ProjectionMetrics::new(&mut registry);
        let policies = PolicyMetricFamilies::new(&mut registry);
        ProcessMetrics {
            registry,
            http,
            projections,
            policies,
        }
    }

    /// The registry, for a service's own metrics.
    pub(crate) fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// `GET /metrics`, serving everything registered so far (and whatever
    /// the registered families record from then on).
    pub(crate) fn into_route(self) -> Router {
        Router::new().route_service("/metrics", MetricsService::new(Arc::new(self.registry)))
    }
}
