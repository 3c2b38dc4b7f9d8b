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
    /// Feature flag evaluations (`trellis_flags_evaluations_total`), by
    /// flag, variant and reason.
    pub(crate) flags: trellis_flags::FlagMetrics,
    /// The process's latest slow requests, for the console.
    pub(crate) slow: SlowRequests,
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
        let flags = trellis_flags::FlagMetrics::new(&mut registry);
        ProcessMetrics {
            registry,
            http,
            projections,
            policies,
            flags,
            slow: SlowRequests::default(),
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

/// Requests slower than this are kept for the console (the latency SLO's
/// threshold, see deploy/observability/rules.yml).
pub(crate) const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_millis(500);

/// Slow requests kept.
const SLOW_KEPT: usize = 20;

/// One request slower than [`SLOW_REQUEST`], with its trace.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct SlowRequest {
    /// When it finished, Unix milliseconds.
    pub(crate) at_ms: u64,
    /// The method.
    pub(crate) method: String,
    /// The path (without the query).
    pub(crate) path: String,
    /// The status answered.
    pub(crate) status: u16,
    /// How long it took, ms.
    pub(crate) ms: u64,
    /// Its trace, when sampled.
    pub(crate) trace_id: Option<String>,
    /// A link to the trace ([`trace_url`]), when both are known.
    pub(crate) trace_url: Option<String>,
}

/// The last [`SLOW_KEPT`] slow requests of the process; clones share them.
#[derive(Debug, Clone, Default)]
pub(crate) struct SlowRequests(Arc<std::sync::Mutex<std::collections::VecDeque<SlowRequest>>>);

impl SlowRequests {
    fn push(&self, request: SlowRequest) {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() == SLOW_KEPT {
            kept.pop_front();
        }
        kept.push_back(request);
    }

    /// The slow requests kept, newest first.
    pub(crate) fn newest_first(&self) -> Vec<SlowRequest> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .rev()
            .cloned()
            .collect()
    }
}

/// Middleware (inside the server trace layer, so the request's span is
/// current) keeping requests slower than [`SLOW_REQUEST`] with their trace.
pub(crate) async fn record_slow(
    axum::extract::State(slow): axum::extract::State<SlowRequests>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let (method, path) = (
        request.method().to_string(),
        request.uri().path().to_owned(),
    );
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    if elapsed >= SLOW_REQUEST {
        let trace_id = trellis_observability::metrics::current_trace_id();
        slow.push(SlowRequest {
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            method,
            path,
            status: response.status().as_u16(),
            ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            trace_url: trace_id.as_deref().and_then(trace_url),
            trace_id,
        });
    }
    response
}

/// The environment variable holding the trace link template, e.g.
/// `http://jaeger:16686/trace/{trace_id}`.
pub(crate) const TRACE_URL_VAR: &str = "ECOMMERCE_TRACE_URL";

/// A link to trace `trace_id` from the template in [`TRACE_URL_VAR`]
/// (`{trace_id}` replaced), if one is set.
pub(crate) fn trace_url(trace_id: &str) -> Option<String> {
    static TEMPLATE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| std::env::var(TRACE_URL_VAR).ok().filter(|t| !t.is_empty()))
        .as_deref()
        .map(|template| render_trace_url(template, trace_id))
}

fn render_trace_url(template: &str, trace_id: &str) -> String {
    template.replace("{trace_id}", trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_link_template_takes_the_trace_id() {
        assert_eq!(
            render_trace_url(
                "http://jaeger:16686/trace/{trace_id}",
                "4bf92f3577b34da6a3ce929d0e0e4736"
            ),
            "http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn one_registry_holds_every_shared_family_once() {
        use trellis_resilience::policy::{PolicyConfig, ResiliencePolicy};
        let metrics = ProcessMetrics::new();
        for name in ["inventory", "payments"] {
            let policy: ResiliencePolicy =
                ResiliencePolicy::from_config(PolicyConfig::recommended(name)).unwrap();
            policy.register_metrics_in(&metrics.policies);
        }
        metrics.projections.set_lag("a", 1);
        metrics.projections.set_lag("b", 2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        for family in [
            "trellis_projection_lag",
            "trellis_resilience_circuit_breaker_state",
            "trellis_resilience_bulkhead_in_flight",
            "trellis_resilience_retry_retries",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {family} ")).count(),
                1,
                "{family}:\n{text}"
            );
        }
    }
}
