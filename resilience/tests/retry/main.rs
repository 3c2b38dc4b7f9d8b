//! Integration tests of the retry layer, on tokio's paused clock.

#[cfg(feature = "http")]
mod http;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use trellis_resilience::error::{
    BoxError, BulkheadFull, CircuitOpen, Error, RateLimited, RetriesExhausted, RetryStop,
};
use trellis_resilience::retry::{
    Backoff, BudgetConfig, DefaultRetryPolicy, Jitter, RetryBudget, RetryConfig, RetryDecision,
    RetryLayer,
};

/// One scripted answer: a value, or a maker of an error.
type Answer<T> = Result<T, fn() -> BoxError>;

/// A service that answers from a script (then repeats the last answer) and
/// records when each call arrived.
#[derive(Clone)]
struct Scripted<T: Clone> {
    script: Arc<Vec<Answer<T>>>,
    calls: Arc<Mutex<Vec<(u32, Instant)>>>,
    n: Arc<AtomicU32>,
}

impl<T: Clone> Scripted<T> {
    fn new(script: Vec<Answer<T>>) -> Self {
        Scripted {
            script: Arc::new(script),
            calls: Arc::default(),
            n: Arc::default(),
        }
    }
    fn calls(&self) -> Vec<(u32, Instant)> {
        self.calls.lock().unwrap().clone()
    }
    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

impl<T: Clone + Send + 'static> Service<u32> for Scripted<T> {
    type Response = T;
    type Error = BoxError;
    type Future = std::future::Ready<Result<T, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u32) -> Self::Future {
        self.calls.lock().unwrap().push((request, Instant::now()));
        let n = self.n.fetch_add(1, Ordering::SeqCst) as usize;
        let answer = &self.script[n.min(self.script.len() - 1)];
        std::future::ready(match answer {
            Ok(value) => Ok(value.clone()),
            Err(make) => Err(make()),
        })
    }
}

fn reset() -> BoxError {
    Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "reset",
    ))
}

fn config(max_attempts: u32, backoff: Backoff) -> RetryConfig {
    RetryConfig {
        name: "test".into(),
        max_attempts,
        backoff,
        budget: None,
        ..RetryConfig::default()
    }
}

async fn call<S: Service<u32>>(service: &mut S, request: u32) -> Result<S::Response, S::Error> {
    service.ready().await?.call(request).await
}

fn exhausted(error: BoxError) -> RetriesExhausted {
    *error
        .downcast::<RetriesExhausted>()
        .unwrap_or_else(|e| panic!("expected RetriesExhausted, got {e}"))
}

#[tokio::test(start_paused = true)]
async fn retries_up_to_max_attempts_exactly_and_waits_between() {
    let inner = Scripted::<&str>::new(vec![Err(reset)]);
    let layer =
        RetryLayer::from_config(config(4, Backoff::fixed(Duration::from_millis(100)))).unwrap();
    let mut service = layer.layer(inner.clone());
    let start = Instant::now();
    let error = exhausted(call(&mut service, 7).await.unwrap_err());
    assert_eq!(error.attempts, 4);
    assert_eq!(error.reason, RetryStop::MaxAttempts);
    assert_eq!(error.last_error.to_string(), "reset");
    assert_eq!(inner.count(), 4);
    assert!(
        inner.calls().iter().all(|(req, _)| *req == 7),
        "same request each time"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn waits_the_exponential_backoff_between_attempts() {
    let inner = Scripted::new(vec![Err(reset), Err(reset), Err(reset), Ok("up")]);
    let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_millis(250))
        .with_jitter(Jitter::None);
    let mut service = RetryLayer::from_config(config(5, backoff))
        .unwrap()
        .layer(inner.clone());
    let start = Instant::now();
    assert_eq!(call(&mut service, 1).await.unwrap(), "up");
    let offsets: Vec<Duration> = inner.calls().iter().map(|(_, at)| *at - start).collect();
    assert_eq!(
        offsets,
        [0, 100, 300, 550].map(Duration::from_millis).to_vec(),
        "100 ms, 200 ms, then capped at 250 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn jittered_waits_stay_within_their_bounds() {
    let inner = Scripted::<&str>::new(vec![Err(reset)]);
    let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1))
        .with_jitter(Jitter::Equal);
    let mut service = RetryLayer::from_config(config(4, backoff))
        .unwrap()
        .layer(inner.clone());
    call(&mut service, 1).await.unwrap_err();
    let calls = inner.calls();
    for (n, pair) in calls.windows(2).enumerate() {
        let waited = pair[1].1 - pair[0].1;
        let full = Duration::from_millis(100 << n);
        assert!(
            waited >= full / 2 && waited <= full,
            "retry {n} waited {waited:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn stops_at_max_elapsed_time() {
    let inner = Scripted::<&str>::new(vec![Err(reset)]);
    let mut cfg = config(100, Backoff::fixed(Duration::from_secs(1)));
    cfg.max_elapsed = Some(Duration::from_millis(3500));
    let mut service = RetryLayer::from_config(cfg).unwrap().layer(inner.clone());
    let start = Instant::now();
    let error = exhausted(call(&mut service, 1).await.unwrap_err());
    assert_eq!(error.reason, RetryStop::MaxElapsed);
    assert_eq!(
        error.attempts, 4,
        "attempts at 0 s, 1 s, 2 s, 3 s; a wait to 4 s would pass 3.5 s"
    );
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(3),
        "gave up without sleeping past the limit"
    );
}

#[tokio::test(start_paused = true)]
async fn predicate_on_the_result_retries_a_busy_response() {
    let inner = Scripted::new(vec![Ok("busy"), Ok("busy"), Ok("done")]);
    let layer = RetryLayer::from_config(config(5, Backoff::none()))
        .unwrap()
        .with_policy(|result: Result<&&str, &BoxError>| matches!(result, Ok(&"busy") | Err(_)));
    let mut service = layer.layer(inner.clone());
    assert_eq!(call(&mut service, 1).await.unwrap(), "done");
    assert_eq!(inner.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn giving_up_on_a_retryable_response_returns_that_response() {
    let inner = Scripted::new(vec![Ok("busy")]);
    let layer = RetryLayer::from_config(config(3, Backoff::none()))
        .unwrap()
        .with_policy(|result: Result<&&str, &BoxError>| matches!(result, Ok(&"busy")));
    let mut service = layer.layer(inner.clone());
    assert_eq!(call(&mut service, 1).await.unwrap(), "busy");
    assert_eq!(inner.count(), 3);
}

#[derive(Debug, PartialEq)]
struct NotFound;
impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not found")
    }
}
impl std::error::Error for NotFound {}

#[tokio::test(start_paused = true)]
async fn predicate_on_the_error_passes_non_retryable_errors_through_unchanged() {
    let inner = Scripted::<&str>::new(vec![Err(|| Box::new(NotFound)), Ok("never")]);
    let layer = RetryLayer::from_config(config(5, Backoff::none()))
        .unwrap()
        .with_policy(|result: Result<&&str, &BoxError>| {
            result.is_err_and(|e| e.is::<std::io::Error>())
        });
    let mut service = layer.layer(inner.clone());
    let error = call(&mut service, 1).await.unwrap_err();
    assert_eq!(
        error.downcast_ref::<NotFound>(),
        Some(&NotFound),
        "not wrapped"
    );
    assert_eq!(inner.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn default_policy_does_not_retry_circuit_open_or_bulkhead_full() {
    fn open() -> BoxError {
        Box::new(CircuitOpen {
            name: "db".into(),
            retry_after: None,
        })
    }
    fn full() -> BoxError {
        Box::new(BulkheadFull { max_concurrent: 1 })
    }
    for make in [open as fn() -> BoxError, full] {
        let inner = Scripted::<&str>::new(vec![Err(make), Ok("never")]);
        let mut service = RetryLayer::from_config(config(5, Backoff::none()))
            .unwrap()
            .layer(inner.clone());
        let error = call(&mut service, 1).await.unwrap_err();
        assert!(Error::classify(error).is_rejection());
        assert_eq!(inner.count(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limited_is_retried_no_sooner_than_retry_after() {
    fn limited() -> BoxError {
        Box::new(RateLimited {
            retry_after: Duration::from_secs(2),
        })
    }
    let inner = Scripted::new(vec![Err(limited), Ok("ok")]);
    let mut service = RetryLayer::from_config(config(3, Backoff::fixed(Duration::from_millis(10))))
        .unwrap()
        .layer(inner.clone());
    let start = Instant::now();
    assert_eq!(call(&mut service, 1).await.unwrap(), "ok");
    assert_eq!(start.elapsed(), Duration::from_secs(2));

    // A wait longer than `max_retry_after` is not honoured: give up at once.
    let inner = Scripted::new(vec![Err(limited), Ok("ok")]);
    let mut cfg = config(3, Backoff::none());
    cfg.max_retry_after = Duration::from_secs(1);
    let mut service = RetryLayer::from_config(cfg).unwrap().layer(inner.clone());
    let error = exhausted(call(&mut service, 1).await.unwrap_err());
    assert_eq!(error.reason, RetryStop::MaxElapsed);
    assert!(error.last_error.is::<RateLimited>());
    assert_eq!(inner.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_single_attempt_never_retries() {
    let inner = Scripted::<&str>::new(vec![Err(reset), Ok("never")]);
    let mut service = RetryLayer::from_config(config(1, Backoff::none()))
        .unwrap()
        .layer(inner.clone());
    let error = call(&mut service, 1).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "reset",
        "nothing to exhaust: the error is returned as is"
    );
    assert_eq!(inner.count(), 1);
}

fn budgeted(min_per_sec: u32, ratio: f64, ttl_secs: u64) -> RetryConfig {
    RetryConfig {
        budget: Some(BudgetConfig {
            ttl: Duration::from_secs(ttl_secs),
            min_per_sec,
            ratio,
        }),
        ..config(5, Backoff::none())
    }
}

#[tokio::test(start_paused = true)]
async fn a_tiny_budget_caps_retries_under_a_full_outage() {
    let inner = Scripted::<&str>::new(vec![Err(reset)]);
    let layer = RetryLayer::from_config(budgeted(0, 0.2, 10)).unwrap();
    // Two clones of the service (two tasks' handles) share one budget.
    let mut a = layer.layer(inner.clone());
    let mut b = a.clone();
    let requests = 20;
    let mut budget_stops = 0;
    for i in 0..requests {
        let service = if i % 2 == 0 { &mut a } else { &mut b };
        let error = exhausted(call(service, i).await.unwrap_err());
        if error.reason == RetryStop::BudgetExhausted {
            budget_stops += 1;
        }
    }
    let retries = inner.count() - requests as usize;
    // Without a budget, 20 failing requests × 5 attempts = 100 calls.
    assert_eq!(retries, 4, "20 requests × 20 % = 4 retries");
    assert!(budget_stops >= 16);
}

#[tokio::test(start_paused = true)]
async fn budget_refills_with_successful_requests() {
    let inner = Scripted::new(vec![Err(reset), Ok("a"), Ok("b"), Err(reset), Ok("c")]);
    let mut service = RetryLayer::from_config(budgeted(0, 0.5, 10))
        .unwrap()
        .layer(inner.clone());
    // First call: half a retry deposited, not enough to retry.
    let error = exhausted(call(&mut service, 1).await.unwrap_err());
    assert_eq!(
        (error.reason, error.attempts),
        (RetryStop::BudgetExhausted, 1)
    );
    // Two successes deposit a whole retry more.
    assert_eq!(call(&mut service, 2).await.unwrap(), "a");
    assert_eq!(call(&mut service, 3).await.unwrap(), "b");
    // Now a failure can be retried.
    assert_eq!(call(&mut service, 4).await.unwrap(), "c");
}

#[tokio::test(start_paused = true)]
async fn budget_refills_over_time_through_its_floor() {
    let inner = Scripted::<&str>::new(vec![Err(reset)]);
    let mut service = RetryLayer::from_config(budgeted(1, 0.0, 1))
        .unwrap()
        .layer(inner.clone());
    let first = exhausted(call(&mut service, 1).await.unwrap_err());
    assert_eq!(first.attempts, 2, "the floor pays for one retry per second");
    let second = exhausted(call(&mut service, 2).await.unwrap_err());
    assert_eq!(
        (second.reason, second.attempts),
        (RetryStop::BudgetExhausted, 1)
    );
    tokio::time::advance(Duration::from_millis(1100)).await;
    let third = exhausted(call(&mut service, 3).await.unwrap_err());
    assert_eq!(third.attempts, 2, "the spent retry aged out of the window");
}

#[tokio::test(start_paused = true)]
async fn a_budget_can_be_shared_between_layers() {
    let budget = Arc::new(
        RetryBudget::new(BudgetConfig {
            ttl: Duration::from_secs(10),
            min_per_sec: 0,
            ratio: 1.0,
        })
        .unwrap(),
    );
    let inner = Scripted::<&str>::new(vec![Err(reset)]);
    let one = RetryLayer::from_config(config(2, Backoff::none()))
        .unwrap()
        .with_budget(budget.clone());
    let two = RetryLayer::from_config(config(2, Backoff::none()))
        .unwrap()
        .with_budget(budget.clone());
    let mut a = one.layer(inner.clone());
    let mut b = two.layer(inner.clone());
    // a deposits one retry; b deposits another and spends one; a spends the last.
    call(&mut b, 1).await.unwrap_err();
    call(&mut a, 2).await.unwrap_err();
    assert_eq!(inner.count(), 4);
    assert_eq!(budget.remaining(), 0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_the_budget() {
    let inner = Scripted::<u32>::new(vec![Err(reset)]);
    let layer = RetryLayer::from_config(RetryConfig {
        backoff: Backoff::fixed(Duration::from_millis(5)),
        ..budgeted(0, 0.1, 10)
    })
    .unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let mut service = layer.layer(inner.clone());
            tokio::spawn(async move { call(&mut service, i).await.is_err() })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap());
    }
    assert!(
        inner.count() - 50 <= 5,
        "at most 10 % of 50 requests retried, got {}",
        inner.count() - 50
    );
}

#[tokio::test(start_paused = true)]
async fn the_retried_request_is_an_identical_copy_and_readiness_is_awaited() {
    let layer = RetryLayer::from_config(config(3, Backoff::fixed(Duration::from_secs(1)))).unwrap();
    let (mut service, mut handle) = tower_test::mock::spawn_layer::<String, &str, _>(layer);
    tokio_test::assert_ready_ok!(service.poll_ready());
    let response = tokio::spawn(service.call("order 42".to_owned()));
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request, "order 42");
    handle.allow(0);
    send.send_error(std::io::Error::other("flaky"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !response.is_finished(),
        "waiting for the inner service to be ready"
    );
    handle.allow(1);
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request, "order 42");
    send.send_response("ok");
    assert_eq!(response.await.unwrap().unwrap(), "ok");
}

#[test]
fn bad_configuration_is_a_config_error_at_build_time() {
    let cases: Vec<(RetryConfig, &str)> = vec![
        (
            RetryConfig {
                max_attempts: 0,
                ..RetryConfig::default()
            },
            "max_attempts",
        ),
        (
            RetryConfig {
                max_elapsed: Some(Duration::ZERO),
                ..RetryConfig::default()
            },
            "max_elapsed",
        ),
        (
            RetryConfig {
                backoff: Backoff::exponential(Duration::from_millis(10), Duration::from_secs(1))
                    .with_multiplier(0.5),
                ..RetryConfig::default()
            },
            "multiplier",
        ),
        (
            RetryConfig {
                backoff: Backoff::exponential(Duration::from_secs(5), Duration::from_secs(1)),
                ..RetryConfig::default()
            },
            "backoff.cap",
        ),
        (
            RetryConfig {
                budget: Some(BudgetConfig {
                    ratio: 10.01,
                    ..BudgetConfig::default()
                }),
                ..RetryConfig::default()
            },
            "budget.ratio",
        ),
        (
            RetryConfig {
                budget: Some(BudgetConfig {
                    ratio: -0.1,
                    ..BudgetConfig::default()
                }),
                ..RetryConfig::default()
            },
            "budget.ratio",
        ),
        (
            RetryConfig {
                budget: Some(BudgetConfig {
                    ttl: Duration::ZERO,
                    ..BudgetConfig::default()
                }),
                ..RetryConfig::default()
            },
            "budget.ttl",
        ),
    ];
    for (config, field) in cases {
        let error = RetryLayer::from_config(config).unwrap_err();
        assert_eq!(error.component, "retry");
        assert_eq!(error.field, field);
    }
    let error = RetryLayer::builder().max_attempts(0).build().unwrap_err();
    assert_eq!(error.field, "max_attempts");
}

#[test]
fn config_reads_toml_and_rejects_unknown_fields() {
    let config: RetryConfig = toml::from_str(
        "max_attempts = 5\nbudget = { ttl = \"5s\", min_per_sec = 2, ratio = 0.5 }\n[backoff]\nkind = \"fixed\"\nbase = \"250ms\"",
    )
    .unwrap();
    assert_eq!(config.max_attempts, 5);
    assert_eq!(
        config.backoff.kind,
        trellis_resilience::retry::BackoffKind::Fixed
    );
    assert_eq!(config.backoff.base, Duration::from_millis(250));
    assert_eq!(
        config.backoff.jitter,
        Jitter::Full,
        "unset fields keep their defaults"
    );
    assert_eq!(config.budget.unwrap().min_per_sec, 2);
    assert_eq!(config.name, "default");
    assert!(toml::from_str::<RetryConfig>("max_atempts = 5").is_err());
    assert!(toml::from_str::<RetryConfig>("[backoff]\njitter = \"wild\"").is_err());
    let round_trip: RetryConfig =
        serde_json::from_str(&serde_json::to_string(&RetryConfig::default()).unwrap()).unwrap();
    assert_eq!(round_trip, RetryConfig::default());
}

#[test]
fn default_policy_classifies_rejections() {
    let limited: BoxError = Box::new(RateLimited {
        retry_after: Duration::from_secs(3),
    });
    assert_eq!(
        DefaultRetryPolicy::classify_error(&limited),
        RetryDecision::RetryAfter(Duration::from_secs(3))
    );
    let nested: BoxError = Box::new(RetriesExhausted {
        attempts: 2,
        reason: RetryStop::MaxAttempts,
        last_error: reset(),
    });
    assert_eq!(
        DefaultRetryPolicy::classify_error(&nested),
        RetryDecision::Return
    );
}

#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn metrics_count_retries_and_exhaustion() {
    let inner = Scripted::<&str>::new(vec![Err(reset)]);
    let layer = RetryLayer::from_config(config(3, Backoff::none())).unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    layer.register_metrics(&mut registry);
    let mut service = layer.layer(inner.clone());
    call(&mut service, 1).await.unwrap_err();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("trellis_resilience_retry_retries_total{name=\"test\"} 2"),
        "{text}"
    );
    assert!(
        text.contains(
            "trellis_resilience_retry_exhausted_total{name=\"test\",reason=\"max_attempts\"} 1"
        ),
        "{text}"
    );
}

#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn several_layers_share_one_set_of_metric_families() {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = trellis_resilience::retry::RetryMetrics::new(&mut registry);
    let inner = Scripted::<&str>::new(vec![Err(reset)]);
    let mut one_config = config(2, Backoff::none());
    one_config.name = "one".into();
    let mut two_config = RetryConfig {
        budget: Some(BudgetConfig {
            min_per_sec: 0,
            ..BudgetConfig::default()
        }),
        ..config(2, Backoff::none())
    };
    two_config.name = "two".into();
    let one = RetryLayer::from_config(one_config).unwrap();
    let two = RetryLayer::from_config(two_config).unwrap();
    let mut a = one.layer(inner.clone()); // made before attaching: still reports
    one.attach_metrics(&metrics);
    two.attach_metrics(&metrics);
    let mut b = two.layer(inner.clone());
    call(&mut a, 1).await.unwrap_err();
    call(&mut b, 2).await.unwrap_err();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert_eq!(
        text.matches("# TYPE trellis_resilience_retry_retries counter")
            .count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("trellis_resilience_retry_retries_total{name=\"one\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "trellis_resilience_retry_exhausted_total{name=\"two\",reason=\"budget_exhausted\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_mid_backoff_stops_retrying() {
    let inner = Scripted::<u32>::new(vec![Err(reset)]);
    let mut service = RetryLayer::from_config(config(5, Backoff::fixed(Duration::from_secs(1))))
        .unwrap()
        .layer(inner.clone());
    let pending = tokio::spawn({
        let mut service = service.clone();
        async move { call(&mut service, 1).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        inner.count(),
        2,
        "first attempt at 0 s, retry at 1 s, now backing off"
    );
    pending.abort();
    assert!(pending.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(inner.count(), 2, "no attempt after the call was dropped");
    // The service itself still works.
    let error = exhausted(call(&mut service, 2).await.unwrap_err());
    assert_eq!(error.attempts, 5);
}

#[tokio::test(start_paused = true)]
async fn a_readiness_error_while_retrying_is_returned() {
    let layer = RetryLayer::from_config(config(3, Backoff::none())).unwrap();
    let (mut service, mut handle) = tower_test::mock::spawn_layer::<u32, &str, _>(layer);
    tokio_test::assert_ready_ok!(service.poll_ready());
    let response = tokio::spawn(service.call(1));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(std::io::Error::other("flaky"));
    handle.send_error(std::io::Error::other("service gone"));
    let error = response.await.unwrap().unwrap_err();
    assert_eq!(error.to_string(), "service gone");
}
