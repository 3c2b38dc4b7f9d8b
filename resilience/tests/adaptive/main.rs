//! Adaptive limit: convergence near capacity and bounded latency under a
//! load that a fixed limit lets explode; immediate, typed shedding.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use trellis_resilience::Error;
use trellis_resilience::adaptive::{
    AdaptiveConfig, AdaptiveLimitLayer, AimdConfig, Algorithm, GradientConfig,
};
use trellis_resilience::bulkhead::BulkheadLayer;
use trellis_resilience::error::BoxError;

const BASE: Duration = Duration::from_millis(10);
const PER_EXCESS_CALL: Duration = Duration::from_millis(2);
const CAPACITY: usize = 10;
const CLIENTS: usize = 60;

/// A service whose latency rises with its concurrency beyond `CAPACITY`:
/// `BASE + PER_EXCESS_CALL × max(0, in_flight − CAPACITY)`.
fn congestible(
    in_flight: Arc<AtomicUsize>,
) -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |()| {
        let in_flight = Arc::clone(&in_flight);
        async move {
            let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            let excess = n.saturating_sub(CAPACITY) as u32;
            tokio::time::sleep(BASE + PER_EXCESS_CALL * excess).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    })
}

#[derive(Debug)]
struct Run {
    p99: Duration,
    served: usize,
    shed: usize,
}

/// `CLIENTS` closed-loop clients call `svc` for 20 s of paused time; a shed
/// client backs off 5 ms. Latencies of served calls after a 5 s warm-up.
async fn drive<S>(svc: S) -> Run
where
    S: Service<(), Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let start = Instant::now();
    let warm = start + Duration::from_secs(5);
    let end = start + Duration::from_secs(20);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let shed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut svc = svc.clone();
        let latencies = Arc::clone(&latencies);
        let shed = Arc::clone(&shed);
        clients.push(tokio::spawn(async move {
            while Instant::now() < end {
                let sent = Instant::now();
                match svc.ready().await.unwrap().call(()).await {
                    Ok(()) if sent >= warm => latencies.lock().unwrap().push(sent.elapsed()),
                    Ok(()) => {}
                    Err(error) => {
                        assert!(
                            matches!(Error::classify(error), Error::Overloaded { .. }),
                            "only shedding may fail a call"
                        );
                        shed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
    latencies.sort();
    Run {
        p99: latencies[latencies.len() * 99 / 100],
        served: latencies.len(),
        shed: shed.load(Ordering::Relaxed),
    }
}

async fn fixed_limit_run() -> Run {
    let svc = BulkheadLayer::new(1000).layer(congestible(Arc::new(AtomicUsize::new(0))));
    drive(svc).await
}

async fn adaptive_run(algorithm: Algorithm) -> (Run, usize) {
    let layer = AdaptiveLimitLayer::from_config(AdaptiveConfig {
        name: "test".into(),
        algorithm,
        ..AdaptiveConfig::default()
    })
    .unwrap();
    let run = drive(layer.layer(congestible(Arc::new(AtomicUsize::new(0))))).await;
    (run, layer.limit())
}

#[tokio::test(start_paused = true)]
async fn aimd_converges_near_capacity_and_bounds_p99_where_a_fixed_limit_explodes() {
    let fixed = fixed_limit_run().await;
    let (adaptive, limit) = adaptive_run(Algorithm::Aimd(AimdConfig {
        latency_threshold: Duration::from_millis(20),
        ..AimdConfig::default()
    }))
    .await;
    println!("fixed {fixed:?}; aimd {adaptive:?}, limit {limit}");
    // 60 calls at once: 10 ms + 2 ms × 50 = 110 ms each.
    assert!(fixed.p99 >= Duration::from_millis(100), "{fixed:?}");
    // Latency crosses 20 ms above 15 calls in flight: the limit saws below it.
    assert!(
        (CAPACITY / 2..=2 * CAPACITY).contains(&limit),
        "limit {limit}"
    );
    assert!(adaptive.p99 <= Duration::from_millis(30), "{adaptive:?}");
    assert!(adaptive.shed > 0);
    assert!(adaptive.served >= fixed.served, "{adaptive:?} vs {fixed:?}");
}

#[tokio::test(start_paused = true)]
async fn gradient_converges_near_capacity_and_bounds_p99_where_a_fixed_limit_explodes() {
    let fixed = fixed_limit_run().await;
    let (adaptive, limit) = adaptive_run(Algorithm::Gradient(GradientConfig::default())).await;
    println!("fixed {fixed:?}; gradient {adaptive:?}, limit {limit}");
    assert!(fixed.p99 >= Duration::from_millis(100), "{fixed:?}");
    assert!(
        (CAPACITY / 2..=3 * CAPACITY).contains(&limit),
        "limit {limit}"
    );
    assert!(adaptive.p99 <= Duration::from_millis(30), "{adaptive:?}");
    assert!(adaptive.shed > 0);
    assert!(adaptive.served >= fixed.served, "{adaptive:?} vs {fixed:?}");
}

#[tokio::test(start_paused = true)]
async fn refuses_at_once_above_the_limit_with_retry_after_and_frees_slots() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let layer = AdaptiveLimitLayer::from_config(AdaptiveConfig {
        initial_limit: 2,
        min_limit: 1,
        ..AdaptiveConfig::default()
    })
    .unwrap();
    let gated = {
        let gate = Arc::clone(&gate);
        service_fn(move |n: u32| {
            let gate = Arc::clone(&gate);
            async move {
                let _pass = gate.acquire().await.map_err(|e| Box::new(e) as BoxError)?;
                Ok::<_, BoxError>(n)
            }
        })
    };
    let mut svc = layer.layer(gated);
    let first = tokio::spawn(svc.ready().await.unwrap().call(1));
    let second = svc.ready().await.unwrap().call(2);
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 2);

    let refused_at = Instant::now();
    let error = svc.ready().await.unwrap().call(3).await.unwrap_err();
    assert_eq!(refused_at.elapsed(), Duration::ZERO, "never queued");
    match Error::classify(error) {
        Error::Overloaded { limit, retry_after } => {
            assert_eq!(limit, 2);
            assert!(retry_after > Duration::ZERO);
        }
        other => panic!("unexpected {other:?}"),
    }

    // A cancelled call gives its slot back.
    drop(second);
    assert_eq!(layer.in_flight(), 1);
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn timeouts_downstream_shrink_the_limit() {
    let layer = AdaptiveLimitLayer::from_config(AdaptiveConfig {
        initial_limit: 10,
        algorithm: Algorithm::Aimd(AimdConfig::default()),
        ..AdaptiveConfig::default()
    })
    .unwrap();
    let mut svc = layer.layer(service_fn(|()| async {
        Err::<(), BoxError>(Box::new(trellis_resilience::error::Elapsed {
            after: Duration::from_secs(1),
        }))
    }));
    for _ in 0..3 {
        let _ = svc.ready().await.unwrap().call(()).await;
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    // 10 × 0.9³ = 7.29
    assert_eq!(layer.limit(), 7);
}

#[cfg(feature = "http")]
#[test]
fn overload_answers_503_with_retry_after() {
    let response: http::Response<String> =
        trellis_resilience::http::error_response(&Error::Overloaded {
            limit: 4,
            retry_after: Duration::from_millis(30),
        });
    assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
}

#[cfg(feature = "config")]
#[test]
fn reads_from_toml() {
    let config: AdaptiveConfig = toml::from_str(
        "initial_limit = 10\n[algorithm.aimd]\nlatency_threshold = \"50ms\"\nbackoff_ratio = 0.8",
    )
    .unwrap();
    config.validate().unwrap();
    match config.algorithm {
        Algorithm::Aimd(aimd) => {
            assert_eq!(aimd.latency_threshold, Duration::from_millis(50));
            assert_eq!(aimd.backoff_ratio, 0.8);
        }
        other => panic!("unexpected {other:?}"),
    }
    let bad = AdaptiveConfig {
        initial_limit: 0,
        ..AdaptiveConfig::default()
    };
    assert!(bad.validate().is_err());
}

#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn metrics_report_the_limit_and_in_flight_at_scrape_time_and_count_shed_calls() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let layer = AdaptiveLimitLayer::from_config(AdaptiveConfig {
        name: "test".into(),
        initial_limit: 1,
        algorithm: Algorithm::Aimd(AimdConfig::default()),
        ..AdaptiveConfig::default()
    })
    .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    layer.register_metrics(&mut registry);
    let gated = {
        let gate = Arc::clone(&gate);
        service_fn(move |()| {
            let gate = Arc::clone(&gate);
            async move {
                let _pass = gate.acquire().await.map_err(|e| Box::new(e) as BoxError)?;
                Ok::<_, BoxError>(())
            }
        })
    };
    let mut svc = layer.layer(gated);
    let holder = tokio::spawn(svc.ready().await.unwrap().call(()));
    tokio::task::yield_now().await;
    assert!(svc.ready().await.unwrap().call(()).await.is_err());

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "trellis_resilience_adaptive_limit{name=\"test\"} 1",
        "trellis_resilience_adaptive_in_flight{name=\"test\"} 1",
        "trellis_resilience_adaptive_rejections_total{name=\"test\"} 1",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    gate.add_permits(1);
    holder.await.unwrap().unwrap();
}
