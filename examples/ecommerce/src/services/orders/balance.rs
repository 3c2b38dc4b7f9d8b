//! Orders' raw clients of inventory and payments over several replicas
//! (distributed mode, `peers.inventory = "http://a,http://b"`):
//! trellis-resilience's [`Balancer`], power of two choices over peak-EWMA
//! latency with outlier ejection, inside the resilience policy (retry ▸
//! breaker ▸ rate limit ▸ timeout ▸ bulkhead ▸ **balancer** ▸ replica).
//!
//! A slow replica loses traffic (its latency estimate is high); one that
//! fails 5 calls in a row, or answers 429 / 503 with `Retry-After`, is
//! ejected for 10 s, doubling while it keeps failing, and a half-open
//! probe brings it back. Each replica has its own timeout, shorter than
//! the policy's, so a replica that hangs is measured (and ejected) by the
//! balancer rather than cancelled from outside, unseen.
//!
//! Retrying on another replica is safe: every call orders makes carries
//! an idempotency key (reserve and charge the saga step's, release and
//! confirm the reservation's), and the replicas share one database that
//! deduplicates by it, so a call that reached a first replica and is
//! repeated on a second is answered, not done twice.
//!
//! Metrics per replica (`endpoint` = its base URL):
//! `orders_upstream_requests_total{service,endpoint,outcome}` (outcome
//! `success`, `failure`, `rejected`) and `orders_upstream_ejected{service,endpoint}`
//! (1 while ejected or probing).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use trellis_cqrs::BoxError;
use trellis_resilience::balance::{BalanceConfig, Balancer, EndpointHealth, Outcome};
use trellis_resilience::timeout::TimeoutLayer;

use crate::platform::transport::{Busy, Rejected};

/// Each replica's own timeout: shorter than the policy's 1 s per attempt,
/// so the balancer sees a hung replica's calls end (and counts them).
pub(crate) const REPLICA_TIMEOUT: Duration = Duration::from_millis(800);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    service: &'static str,
    endpoint: String,
    outcome: &'static str,
}

/// The per-replica metrics of orders' balancers, registered once in the
/// process registry.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamMetrics {
    requests: Family<Labels, Counter>,
    health: Arc<std::sync::Mutex<Vec<HealthSource>>>,
}

/// A balancer's replicas and how to read their health at scrape time.
struct HealthSource {
    service: &'static str,
    endpoints: Vec<String>,
    health: Box<dyn Fn() -> Vec<EndpointHealth> + Send + Sync>,
}

impl std::fmt::Debug for HealthSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthSource")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl UpstreamMetrics {
    /// The families, registered in `registry`.
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let metrics = UpstreamMetrics {
            requests: Family::default(),
            health: Arc::default(),
        };
        registry.register(
            "orders_upstream_requests",
            "Calls orders made to each replica of inventory and payments, by outcome",
            metrics.requests.clone(),
        );
        registry.register_collector(Box::new(Ejected(metrics.health.clone())));
        metrics
    }
}

/// `orders_upstream_ejected`, read from the balancers at scrape time.
#[derive(Debug)]
struct Ejected(Arc<std::sync::Mutex<Vec<HealthSource>>>);

impl Collector for Ejected {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sources = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut family = encoder.encode_descriptor(
            "orders_upstream_ejected",
            "1 while a replica of inventory or payments is ejected (or probed) by orders' balancer",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for source in sources.iter() {
            for (endpoint, health) in source.endpoints.iter().zip((source.health)()) {
                let labels = [("service", source.service), ("endpoint", endpoint.as_str())];
                let gauge = ConstGauge::new(i64::from(health != EndpointHealth::Healthy));
                gauge.encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// What an answer says about the replica that gave it: a reply (a
/// business outcome included) or a 4xx refusal (the same request would be
/// refused by any replica) is a success; a 429 / 503 with `Retry-After`
/// ([`Busy`]) or a rejection by a resilience layer ejects at once; any
/// other error (5xx, transport, this module's timeout) is a failure.
fn classify<R>(result: &Result<R, BoxError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(error) if error.is::<Rejected>() => Outcome::Success,
        Err(error) if error.is::<Busy>() || trellis_resilience::error::is_rejection(&**error) => {
            Outcome::Rejected
        }
        Err(_) => Outcome::Failure,
    }
}

fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "success",
        Outcome::Rejected => "rejected",
        _ => "failure",
    }
}

/// One client over `replicas` (base URL, raw client of that replica),
/// balanced, each replica behind [`REPLICA_TIMEOUT`] and counted in
/// `metrics`. A single replica is returned as it is (nothing to balance).
///
/// # Errors
///
/// `replicas` is empty.
pub(crate) fn balanced<Req, Rep>(
    service: &'static str,
    replicas: Vec<(String, BoxCloneSyncService<Req, Rep, BoxError>)>,
    metrics: &UpstreamMetrics,
) -> Result<BoxCloneSyncService<Req, Rep, BoxError>, crate::api::Error>
where
    Req: Send + 'static,
    Rep: Send + 'static,
{
    if let [(_, only)] = replicas.as_slice() {
        return Ok(only.clone());
    }
    let endpoints: Vec<String> = replicas.iter().map(|(url, _)| url.clone()).collect();
    let services: Vec<BoxCloneSyncService<Req, Rep, BoxError>> = replicas
        .into_iter()
        .map(|(endpoint, client)| {
            let requests = metrics.requests.clone();
            let timed = tower::Layer::layer(&TimeoutLayer::new(REPLICA_TIMEOUT), client);
            BoxCloneSyncService::new(timed.map_result(move |result: Result<Rep, BoxError>| {
                requests
                    .get_or_create(&Labels {
                        service,
                        endpoint: endpoint.clone(),
                        outcome: outcome_label(classify(&result)),
                    })
                    .inc();
                result
            }))
        })
        .collect();
    let balancer = Balancer::new(
        services,
        BalanceConfig {
            name: service.to_owned(),
            ..BalanceConfig::default()
        },
    )?
    .with_classifier(classify::<Rep> as fn(&Result<Rep, BoxError>) -> Outcome);
    let watched = balancer.clone();
    metrics
        .health
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(HealthSource {
            service,
            endpoints,
            health: Box::new(move || watched.health()),
        });
    Ok(BoxCloneSyncService::new(balancer))
}

/// [`balanced`] over every replica of `service` in `peers`, each a client
/// made by `client(base_url)`.
///
/// # Errors
///
/// No replica URL.
pub(crate) fn over<Req, Rep>(
    peers: &crate::platform::config::Peers,
    service: crate::platform::config::ServiceName,
    metrics: &UpstreamMetrics,
    client: impl Fn(String) -> BoxCloneSyncService<Req, Rep, BoxError>,
) -> Result<BoxCloneSyncService<Req, Rep, BoxError>, crate::api::Error>
where
    Req: Send + 'static,
    Rep: Send + 'static,
{
    let replicas = peers
        .urls(service)
        .into_iter()
        .map(|url| (url.clone(), client(url)))
        .collect();
    balanced(service.as_str(), replicas, metrics)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use tower::ServiceExt;
    use tower::util::BoxCloneSyncService;
    use trellis_cqrs::BoxError;

    use super::*;

    type Client = BoxCloneSyncService<u32, u32, BoxError>;

    /// A replica answering after `delay`, or failing at once with `fail()`.
    fn replica(delay: Duration, fail: Option<fn() -> BoxError>) -> Client {
        BoxCloneSyncService::new(tower::service_fn(move |n: u32| async move {
            match fail {
                Some(fail) => Err(fail()),
                None => {
                    tokio::time::sleep(delay).await;
                    Ok(n)
                }
            }
        }))
    }

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    /// Places 40 calls one after another; returns how many failed.
    async fn forty(client: &Client) -> usize {
        let mut failed = 0;
        for n in 0..40 {
            if client.clone().oneshot(n).await.is_err() {
                failed += 1;
            }
        }
        failed
    }

    /// The failing replica answers fastest, so power of two choices
    /// prefers it until its 5th failure in a row ejects it; then every
    /// call goes to the other. Both show in the per-replica metrics.
    #[tokio::test(start_paused = true)]
    async fn a_failing_replica_is_ejected_and_counted_per_replica() {
        let mut registry = Registry::default();
        let metrics = UpstreamMetrics::new(&mut registry);
        let client = balanced(
            "payments",
            vec![
                ("http://a".into(), replica(Duration::from_millis(50), None)),
                (
                    "http://b".into(),
                    replica(Duration::ZERO, Some(|| "connection refused".into())),
                ),
            ],
            &metrics,
        )
        .unwrap();
        assert_eq!(forty(&client).await, 5);
        let text = scrape(&registry);
        for line in [
            r#"orders_upstream_requests_total{service="payments",endpoint="http://b",outcome="failure"} 5"#,
            r#"orders_upstream_requests_total{service="payments",endpoint="http://a",outcome="success"} 35"#,
            r#"orders_upstream_ejected{service="payments",endpoint="http://b"} 1"#,
            r#"orders_upstream_ejected{service="payments",endpoint="http://a"} 0"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }

    /// A replica that answers 503 with `Retry-After` (its adaptive limit
    /// shed the call) is ejected at its first such answer; a 4xx refusal
    /// is an answer like any other (the same request fails everywhere).
    #[tokio::test(start_paused = true)]
    async fn an_overloaded_answer_ejects_at_once_a_refusal_does_not() {
        fn answer(status: u16, retry_after: bool) -> BoxError {
            let mut response = http::Response::new(Bytes::new());
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            if retry_after {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from(1));
            }
            crate::platform::transport::unexpected("payments", &response)
        }
        let mut registry = Registry::default();
        let metrics = UpstreamMetrics::new(&mut registry);
        let client = balanced(
            "payments",
            vec![
                ("http://a".into(), replica(Duration::from_millis(50), None)),
                (
                    "http://b".into(),
                    replica(Duration::ZERO, Some(|| answer(503, true))),
                ),
            ],
            &metrics,
        )
        .unwrap();
        assert_eq!(forty(&client).await, 1, "ejected at the first 503");
        assert!(scrape(&registry).contains(
            r#"orders_upstream_requests_total{service="payments",endpoint="http://b",outcome="rejected"} 1"#
        ));

        let metrics = UpstreamMetrics::new(&mut Registry::default());
        let client = balanced(
            "payments",
            vec![
                ("http://a".into(), replica(Duration::from_millis(50), None)),
                (
                    "http://b".into(),
                    replica(Duration::ZERO, Some(|| answer(403, false))),
                ),
            ],
            &metrics,
        )
        .unwrap();
        assert!(forty(&client).await > 5, "a refusal never ejects");
    }

    /// A replica that hangs is cut at the per-replica timeout and counted
    /// as a failure (the policy's own 1 s timeout would cancel it unseen).
    #[tokio::test(start_paused = true)]
    async fn a_hung_replica_times_out_inside_the_balancer() {
        let mut registry = Registry::default();
        let metrics = UpstreamMetrics::new(&mut registry);
        let client = balanced(
            "inventory",
            vec![
                ("http://a".into(), replica(Duration::from_secs(60), None)),
                ("http://b".into(), replica(Duration::from_secs(60), None)),
            ],
            &metrics,
        )
        .unwrap();
        let started = tokio::time::Instant::now();
        assert!(client.oneshot(1).await.is_err());
        assert_eq!(started.elapsed(), REPLICA_TIMEOUT);
        assert!(scrape(&registry).contains(r#"outcome="failure"} 1"#));
    }
}
