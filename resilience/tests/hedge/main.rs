//! Hedging on tokio's paused clock: a slow first attempt loses to the
//! hedge, a fast one is never hedged, the budget and the idempotency policy
//! hold, the loser is cancelled, and the default delay follows recent calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use trellis_resilience::error::BoxError;
use trellis_resilience::hedge::{HedgeConfig, HedgeDelay, HedgeLayer, Idempotent};
use trellis_resilience::retry::{BudgetConfig, RetryBudget};

/// Counts attempts started and attempts dropped before finishing.
#[derive(Debug, Default)]
struct Calls {
    started: AtomicUsize,
    cancelled: AtomicUsize,
}

struct CancelGuard(Arc<Calls>, bool);
impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Attempt `n` (from 0) takes `latencies[n]` (the last one repeats) and
/// answers `n`.
fn service(
    calls: Arc<Calls>,
    latencies: Vec<Duration>,
) -> impl Service<u32, Response = usize, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |_request: u32| {
        let n = calls.started.fetch_add(1, Ordering::SeqCst);
        let latency = latencies[n.min(latencies.len() - 1)];
        let guard = CancelGuard(Arc::clone(&calls), false);
        async move {
            let mut guard = guard;
            tokio::time::sleep(latency).await;
            guard.1 = true;
            Ok(n)
        }
    })
}

fn fixed(delay_ms: u64) -> HedgeConfig {
    HedgeConfig {
        name: "test".into(),
        delay: HedgeDelay::Fixed(Duration::from_millis(delay_ms)),
    }
}

fn all_idempotent() -> Idempotent<fn(&u32) -> bool> {
    Idempotent::new(|_| true)
}

#[tokio::test(start_paused = true)]
async fn slow_first_attempt_loses_to_the_hedge_and_is_cancelled() {
    let calls = Arc::new(Calls::default());
    let layer = HedgeLayer::from_config(fixed(50), all_idempotent()).unwrap();
    let mut svc = layer.layer(service(
        Arc::clone(&calls),
        vec![Duration::from_secs(1), Duration::from_millis(10)],
    ));
    let started = Instant::now();
    let answer = svc.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(answer, 1, "the hedge answered");
    assert_eq!(started.elapsed(), Duration::from_millis(60));
    assert_eq!(calls.started.load(Ordering::SeqCst), 2);
    assert_eq!(
        calls.cancelled.load(Ordering::SeqCst),
        1,
        "the slow attempt was dropped"
    );
    assert_eq!(layer.hedges_sent(), 1);
}

#[tokio::test(start_paused = true)]
async fn first_attempt_still_wins_when_it_answers_before_the_hedge() {
    let calls = Arc::new(Calls::default());
    let layer = HedgeLayer::from_config(fixed(50), all_idempotent()).unwrap();
    let mut svc = layer.layer(service(
        Arc::clone(&calls),
        vec![Duration::from_millis(70), Duration::from_millis(100)],
    ));
    let started = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 0);
    assert_eq!(started.elapsed(), Duration::from_millis(70));
    assert_eq!(calls.started.load(Ordering::SeqCst), 2);
    assert_eq!(
        calls.cancelled.load(Ordering::SeqCst),
        1,
        "the hedge was dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn fast_first_attempt_sends_no_hedge() {
    let calls = Arc::new(Calls::default());
    let layer = HedgeLayer::from_config(fixed(50), all_idempotent()).unwrap();
    let mut svc = layer.layer(service(Arc::clone(&calls), vec![Duration::from_millis(10)]));
    for _ in 0..20 {
        svc.ready().await.unwrap().call(1).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls.started.load(Ordering::SeqCst), 20);
    assert_eq!(layer.hedges_sent(), 0);
}

#[tokio::test(start_paused = true)]
async fn no_hedge_once_the_budget_is_spent() {
    let calls = Arc::new(Calls::default());
    // Two requests pay for one hedge; no floor.
    let budget = Arc::new(
        RetryBudget::new(BudgetConfig {
            ttl: Duration::from_secs(10),
            min_per_sec: 0,
            ratio: 0.5,
        })
        .unwrap(),
    );
    let layer = HedgeLayer::from_config(fixed(50), all_idempotent())
        .unwrap()
        .with_budget(budget);
    let mut svc = layer.layer(service(
        Arc::clone(&calls),
        vec![Duration::from_millis(200)],
    ));
    let (a, b) = tokio::join!(svc.clone().oneshot(1), svc.clone().oneshot(2),);
    a.unwrap();
    b.unwrap();
    assert_eq!(layer.hedges_sent(), 1, "one hedge paid for, one refused");
    let started = Instant::now();
    svc.ready().await.unwrap().call(3).await.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(200),
        "no hedge: waited it out"
    );
    assert_eq!(layer.hedges_sent(), 1);
    assert_eq!(calls.started.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn requests_the_policy_refuses_are_never_hedged() {
    let calls = Arc::new(Calls::default());
    // Even requests are reads; odd ones are writes.
    let layer =
        HedgeLayer::from_config(fixed(50), Idempotent::new(|n: &u32| n.is_multiple_of(2))).unwrap();
    let mut svc = layer.layer(service(
        Arc::clone(&calls),
        vec![Duration::from_millis(200)],
    ));
    let started = Instant::now();
    svc.ready().await.unwrap().call(3).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    assert_eq!(calls.started.load(Ordering::SeqCst), 1);
    svc.ready().await.unwrap().call(4).await.unwrap();
    assert_eq!(
        calls.started.load(Ordering::SeqCst),
        3,
        "the read was hedged"
    );
}

#[tokio::test(start_paused = true)]
async fn default_delay_is_the_95th_percentile_of_recent_calls() {
    let layer = HedgeLayer::from_config(HedgeConfig::default(), all_idempotent()).unwrap();
    assert_eq!(
        layer.delay(),
        Duration::from_millis(100),
        "until 20 calls are seen"
    );
    // Request `r > 0` takes `r` ms; request 0 takes 5 s the first time and
    // 1 ms after that.
    let zero_seen = Arc::new(AtomicUsize::new(0));
    let mut svc = layer.layer(service_fn(move |request: u32| {
        let attempt = if request == 0 {
            zero_seen.fetch_add(1, Ordering::SeqCst)
        } else {
            0
        };
        async move {
            let latency = match (request, attempt) {
                (0, 0) => Duration::from_secs(5),
                (0, _) => Duration::from_millis(1),
                (r, _) => Duration::from_millis(u64::from(r)),
            };
            tokio::time::sleep(latency).await;
            Ok::<_, BoxError>(attempt)
        }
    }));
    // 1..=100 ms in a scrambled order (37 is coprime to 100).
    for i in 0..100u32 {
        svc.ready()
            .await
            .unwrap()
            .call((i * 37) % 100 + 1)
            .await
            .unwrap();
    }
    let delay = layer.delay();
    assert!(
        (Duration::from_millis(95)..=Duration::from_millis(108)).contains(&delay),
        "{delay:?}"
    );
    let started = Instant::now();
    assert_eq!(
        svc.ready().await.unwrap().call(0).await.unwrap(),
        1,
        "the hedge answered"
    );
    assert!(
        started.elapsed() <= delay + Duration::from_millis(2),
        "{:?}",
        started.elapsed()
    );
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn http_hedges_gets_but_not_posts() {
    use trellis_resilience::hedge::IdempotentMethods;
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = HedgeLayer::from_config(fixed(50), IdempotentMethods).unwrap();
    let counter = Arc::clone(&calls);
    let mut svc = layer.layer(service_fn(move |request: http::Request<String>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, BoxError>(request.uri().path().to_owned())
        }
    }));
    let post = http::Request::post("/orders")
        .body("{}".to_owned())
        .unwrap();
    assert_eq!(
        svc.ready().await.unwrap().call(post).await.unwrap(),
        "/orders"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let get = http::Request::get("/orders/1").body(String::new()).unwrap();
    assert_eq!(
        svc.ready().await.unwrap().call(get).await.unwrap(),
        "/orders/1"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
