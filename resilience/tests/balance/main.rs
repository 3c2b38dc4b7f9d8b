//! Balancer on tokio's paused clock: traffic moves away from a slow or
//! failing replica and comes back after it recovers; ejections grow, are
//! capped in number, and end with a half-open probe.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceExt, service_fn};
use trellis_resilience::balance::{BalanceConfig, Balancer, EndpointHealth};
use trellis_resilience::error::{BoxError, Overloaded};

/// A replica whose latency and failure mode the test changes while it runs.
#[derive(Default)]
struct Replica {
    latency_ms: AtomicU64,
    failing: AtomicBool,
    overloaded: AtomicBool,
    calls: AtomicUsize,
}

fn replicas(
    n: usize,
) -> (
    Vec<Arc<Replica>>,
    Vec<
        impl Service<u32, Response = usize, Error = BoxError, Future: Send> + Clone + Send + 'static,
    >,
) {
    let states: Vec<Arc<Replica>> = (0..n)
        .map(|_| {
            let replica = Replica::default();
            replica.latency_ms.store(5, Ordering::SeqCst);
            Arc::new(replica)
        })
        .collect();
    let services = states
        .iter()
        .enumerate()
        .map(|(index, state)| {
            let state = Arc::clone(state);
            service_fn(move |_: u32| {
                let state = Arc::clone(&state);
                async move {
                    state.calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(
                        state.latency_ms.load(Ordering::SeqCst),
                    ))
                    .await;
                    if state.overloaded.load(Ordering::SeqCst) {
                        return Err(Box::new(Overloaded {
                            limit: 1,
                            retry_after: Duration::from_secs(1),
                        }) as BoxError);
                    }
                    if state.failing.load(Ordering::SeqCst) {
                        return Err("replica down".into());
                    }
                    Ok(index)
                }
            })
        })
        .collect();
    (states, services)
}

fn config() -> BalanceConfig {
    BalanceConfig {
        name: "test".into(),
        decay: Duration::from_secs(1),
        default_rtt: Duration::from_millis(5),
        consecutive_failures: 3,
        base_ejection: Duration::from_secs(1),
        max_ejection: Duration::from_secs(4),
        max_ejected_fraction: 0.5,
    }
}

/// `clients` closed-loop clients call for `duration`; returns how many
/// calls failed.
async fn load<S>(balancer: &S, clients: usize, duration: Duration) -> usize
where
    S: Service<u32, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let end = Instant::now() + duration;
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut svc = balancer.clone();
        let failed = Arc::clone(&failed);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                if svc.ready().await.unwrap().call(0).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    failed.load(Ordering::Relaxed)
}

fn shares(states: &[Arc<Replica>]) -> Vec<usize> {
    states
        .iter()
        .map(|s| s.calls.swap(0, Ordering::SeqCst))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn traffic_moves_away_from_a_slow_replica_and_comes_back() {
    let (states, services) = replicas(3);
    let balancer = Balancer::new(services, config()).unwrap();
    load(&balancer, 6, Duration::from_secs(2)).await;
    let even = shares(&states);
    assert!(even.iter().all(|&n| n > 300), "even spread first: {even:?}");

    states[0].latency_ms.store(100, Ordering::SeqCst);
    load(&balancer, 6, Duration::from_secs(5)).await;
    let slow = shares(&states);
    let total: usize = slow.iter().sum();
    assert!(
        slow[0] * 50 < total,
        "the slow replica gets under 2%: {slow:?}"
    );

    // Recovered: its estimate decays (1 s window), it is tried again, its
    // fast answers bring its estimate down, and it wins back its share.
    states[0].latency_ms.store(5, Ordering::SeqCst);
    load(&balancer, 6, Duration::from_secs(3)).await;
    let returning = shares(&states);
    assert!(returning[0] > 0, "{returning:?}");
    load(&balancer, 6, Duration::from_secs(3)).await;
    let back = shares(&states);
    let total: usize = back.iter().sum();
    assert!(back[0] * 4 > total, "it wins back over 25%: {back:?}");
    assert_eq!(balancer.health(), vec![EndpointHealth::Healthy; 3]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_replica_is_ejected_for_growing_times_and_probed_back() {
    let (states, services) = replicas(3);
    let balancer = Balancer::new(services, config()).unwrap();
    states[1].failing.store(true, Ordering::SeqCst);
    let failed = load(&balancer, 3, Duration::from_millis(200)).await;
    assert!(failed >= 3, "three failures in a row eject it");
    assert_eq!(balancer.health()[1], EndpointHealth::Ejected);

    // Ejected for 1 s (from when it was ejected): no traffic at all.
    shares(&states);
    load(&balancer, 3, Duration::from_millis(500)).await;
    assert_eq!(shares(&states)[1], 0, "no call reaches an ejected replica");

    // Once the ejection ends, one probe; it fails, so 2 s this time.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(balancer.health()[1], EndpointHealth::Probing);
    let failed = load(&balancer, 3, Duration::from_millis(100)).await;
    assert_eq!(failed, 1, "one probe, and it failed");
    assert_eq!(balancer.health()[1], EndpointHealth::Ejected);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        balancer.health()[1],
        EndpointHealth::Ejected,
        "2 s the second time"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(balancer.health()[1], EndpointHealth::Probing);

    // The replica recovers: the probe succeeds and it takes traffic again.
    states[1].failing.store(false, Ordering::SeqCst);
    shares(&states);
    let failed = load(&balancer, 3, Duration::from_secs(2)).await;
    assert_eq!(failed, 0);
    assert_eq!(balancer.health()[1], EndpointHealth::Healthy);
    let back = shares(&states);
    assert!(back[1] * 5 > back.iter().sum::<usize>(), "{back:?}");
}

#[tokio::test(start_paused = true)]
async fn an_overload_rejection_ejects_at_once() {
    let (states, services) = replicas(2);
    let mut balancer = Balancer::new(services, config()).unwrap();
    states[0].overloaded.store(true, Ordering::SeqCst);
    // Until the overloaded replica is picked once.
    while states[0].calls.load(Ordering::SeqCst) == 0 {
        let _ = balancer.ready().await.unwrap().call(0).await;
    }
    assert_eq!(balancer.health()[0], EndpointHealth::Ejected);
}

#[tokio::test(start_paused = true)]
async fn never_ejects_more_than_the_allowed_fraction() {
    let (states, services) = replicas(4);
    let balancer = Balancer::new(services, config()).unwrap();
    for state in &states[..3] {
        state.failing.store(true, Ordering::SeqCst);
    }
    load(&balancer, 4, Duration::from_millis(300)).await;
    let health = balancer.health();
    let ejected = health
        .iter()
        .filter(|h| **h != EndpointHealth::Healthy)
        .count();
    assert_eq!(ejected, 2, "half of four: {health:?}");
}

#[test]
fn an_empty_set_of_endpoints_is_a_configuration_error() {
    let none: Vec<tower::util::BoxCloneService<u32, u32, BoxError>> = Vec::new();
    assert!(Balancer::new(none, BalanceConfig::default()).is_err());
}

#[cfg(feature = "http")]
#[test]
fn http_answers_are_classified() {
    use trellis_resilience::balance::{Classify, HttpClassifier, Outcome};
    let answer = |status: u16, retry_after: bool| {
        let mut response = http::Response::new(());
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        if retry_after {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        HttpClassifier.classify(&Ok(response))
    };
    assert_eq!(answer(200, false), Outcome::Success);
    assert_eq!(answer(404, false), Outcome::Success);
    assert_eq!(answer(500, false), Outcome::Failure);
    assert_eq!(answer(503, false), Outcome::Failure);
    assert_eq!(answer(503, true), Outcome::Rejected);
    assert_eq!(answer(429, false), Outcome::Rejected);
}
