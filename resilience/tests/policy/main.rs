//! The composed policy: the order of the layers shows in what each one sees.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower::{Layer, Service, ServiceExt, service_fn};
use trellis_resilience::Error;
use trellis_resilience::circuit_breaker::CircuitState;
use trellis_resilience::error::{BoxError, RetryStop};
use trellis_resilience::policy::{PolicyConfig, ResiliencePolicy};

fn policy(toml: &str) -> ResiliencePolicy {
    ResiliencePolicy::from_config(PolicyConfig::from_toml_str(toml).unwrap()).unwrap()
}

/// A dependency that fails while `failing` is set and counts its calls.
#[derive(Clone, Default)]
struct Dependency {
    calls: Arc<AtomicUsize>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Dependency {
    fn service(
        &self,
    ) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send {
        let this = self.clone();
        service_fn(move |n: u32| {
            this.calls.fetch_add(1, Ordering::SeqCst);
            let failing = this.failing.load(Ordering::SeqCst);
            async move {
                if failing {
                    Err::<u32, BoxError>(Box::new(std::io::Error::other("dependency down")))
                } else {
                    Ok(n)
                }
            }
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

const RETRY_AND_BREAKER: &str = r#"
    name = "inventory"
    [retry]
    max_attempts = 3
    backoff = { kind = "fixed", base = "10ms" }
    [circuit_breaker]
    window = { type = "count", size = 10 }
    minimum_calls = 6
    failure_rate_threshold = 50
    wait_in_open = "1s"
"#;

#[tokio::test(start_paused = true)]
async fn every_retry_attempt_is_counted_by_the_breaker_and_an_open_circuit_is_not_retried() {
    let dependency = Dependency::default();
    dependency.failing.store(true, Ordering::SeqCst);
    let policy = policy(RETRY_AND_BREAKER);
    let breaker = policy.circuit_breaker_handle().unwrap();
    let mut svc = policy.layer(dependency.service());

    // Two logical calls of three attempts each: six failed calls in the
    // breaker's window, which reaches its minimum and opens.
    for _ in 0..2 {
        match svc.ready().await.unwrap().call(1).await.unwrap_err() {
            Error::RetriesExhausted {
                attempts: 3,
                reason: RetryStop::MaxAttempts,
                source,
            } => assert!(matches!(*source, Error::Inner(_))),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(dependency.calls(), 6);
    assert_eq!(breaker.state(), CircuitState::Open);

    // Now the circuit is open: one rejection, no retry, no call.
    match svc.ready().await.unwrap().call(1).await.unwrap_err() {
        Error::CircuitOpen { name, .. } => assert_eq!(&*name, "inventory"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(dependency.calls(), 6);

    // After the wait, a trial call succeeds and closes it.
    dependency.failing.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), 7);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_is_per_attempt_and_counts_as_a_breaker_failure() {
    let policy = policy(
        r#"
        [retry]
        max_attempts = 2
        backoff = { kind = "none" }
        [circuit_breaker]
        window = { type = "consecutive", failures = 2 }
        [timeout]
        timeout = "100ms"
        "#,
    );
    let breaker = policy.circuit_breaker_handle().unwrap();
    let slow = service_fn(|()| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, BoxError>(())
    });
    let mut svc = policy.layer(slow);
    let started = tokio::time::Instant::now();
    match svc.ready().await.unwrap().call(()).await.unwrap_err() {
        Error::RetriesExhausted {
            attempts: 2,
            source,
            ..
        } => assert!(matches!(*source, Error::Timeout { .. })),
        other => panic!("unexpected {other:?}"),
    }
    // Two attempts of 100 ms each: the deadline did not cover both.
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn bulkhead_and_rate_limit_rejections_never_open_the_breaker() {
    let policy = policy(
        r#"
        [circuit_breaker]
        window = { type = "consecutive", failures = 2 }
        [rate_limit]
        rate = 1
        period = "1s"
        burst = 1
        "#,
    );
    let breaker = policy.circuit_breaker_handle().unwrap();
    let dependency = Dependency::default();
    let mut svc = policy.layer(dependency.service());
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
    for _ in 0..5 {
        match svc.ready().await.unwrap().call(1).await.unwrap_err() {
            Error::RateLimited { retry_after } => assert!(retry_after <= Duration::from_secs(1)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(dependency.calls(), 1);

    let policy = policy_with_full_bulkhead();
    let breaker = policy.circuit_breaker_handle().unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let blocked = {
        let gate = Arc::clone(&gate);
        service_fn(move |()| {
            let gate = Arc::clone(&gate);
            async move {
                let _pass = gate.acquire().await.map_err(|e| Box::new(e) as BoxError)?;
                Ok::<_, BoxError>(())
            }
        })
    };
    let mut svc = policy.layer(blocked);
    let holder = tokio::spawn(svc.ready().await.unwrap().call(()));
    tokio::task::yield_now().await;
    for _ in 0..5 {
        assert!(matches!(
            svc.ready().await.unwrap().call(()).await.unwrap_err(),
            Error::BulkheadFull { max_concurrent: 1 }
        ));
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    gate.add_permits(1);
    holder.await.unwrap().unwrap();
}

fn policy_with_full_bulkhead() -> ResiliencePolicy {
    policy(
        r#"
        [circuit_breaker]
        window = { type = "consecutive", failures = 2 }
        [bulkhead]
        max_concurrent = 1
        "#,
    )
}

#[tokio::test]
async fn a_policy_with_no_layer_passes_calls_and_errors_through() {
    let mut svc = ResiliencePolicy::new().layer(service_fn(|n: u32| async move {
        if n == 0 {
            Err(std::io::Error::other("zero"))
        } else {
            Ok(n)
        }
    }));
    assert_eq!(svc.ready().await.unwrap().call(5).await.unwrap(), 5);
    assert!(matches!(
        svc.ready().await.unwrap().call(0).await.unwrap_err(),
        Error::Inner(e) if e.to_string() == "zero"
    ));
}

#[test]
fn sections_left_unnamed_take_the_policy_name() {
    let policy = policy(RETRY_AND_BREAKER);
    assert_eq!(
        &*policy.circuit_breaker_handle().unwrap().config().name,
        "inventory"
    );
}

#[test]
fn configuration_from_a_file_overridden_by_environment_variables() {
    let dir = std::env::temp_dir().join(format!("trellis-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.toml");
    std::fs::write(&file, "name = \"payments\"\n[timeout]\ntimeout = \"2s\"\n").unwrap();
    let base = std::fs::read_to_string(&file).unwrap();
    let config = PolicyConfig::from_vars(
        "PAYMENTS",
        &base,
        [
            ("PAYMENTS__TIMEOUT__TIMEOUT", "300ms"),
            ("PAYMENTS__CIRCUIT_BREAKER__FAILURE_RATE_THRESHOLD", "25.5"),
            ("PAYMENTS__RETRY__BACKOFF__KIND", "fixed"),
        ],
    )
    .unwrap();
    assert_eq!(config.name, "payments");
    assert_eq!(config.timeout.unwrap().timeout, Duration::from_millis(300));
    assert_eq!(config.circuit_breaker.unwrap().failure_rate_threshold, 25.5);
    assert!(config.retry.is_some());
    assert_eq!(
        PolicyConfig::from_toml_file(&file).unwrap().name,
        "payments"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_configuration_is_an_error_at_build_time() {
    let unknown = PolicyConfig::from_toml_str("[bulkhed]\nmax_concurrent = 1").unwrap_err();
    assert!(unknown.problem.contains("bulkhed"), "{unknown}");
    let zero = PolicyConfig::from_toml_str("[rate_limit]\nrate = 0").unwrap();
    let error = ResiliencePolicy::from_config(zero).unwrap_err();
    assert_eq!((error.component, error.field), ("rate_limit", "rate"));
    let threshold = PolicyConfig::from_vars(
        "X",
        "",
        [("X__CIRCUIT_BREAKER__FAILURE_RATE_THRESHOLD", "150")],
    )
    .unwrap();
    assert!(ResiliencePolicy::from_config(threshold).is_err());
    assert!(PolicyConfig::from_toml_file("/nonexistent/policy.toml").is_err());
}
