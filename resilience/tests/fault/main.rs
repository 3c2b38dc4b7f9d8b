//! Fault injection: each fault kind, probabilities, live re-tuning.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower::{Layer, Service, ServiceExt, service_fn};
use trellis_resilience::Error;
use trellis_resilience::error::BoxError;
use trellis_resilience::fault::{FaultConfig, FaultHandle};

fn counting(
    calls: Arc<AtomicUsize>,
) -> impl Service<(), Response = &'static str, Error = BoxError> + Clone {
    service_fn(move |()| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>("done") }
    })
}

#[tokio::test(start_paused = true)]
async fn disabled_by_default_and_passes_through() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = FaultHandle::new();
    let mut svc = handle.layer().layer(counting(Arc::clone(&calls)));
    for _ in 0..10 {
        assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "done");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    assert_eq!(handle.counts().errors, 0);
}

#[tokio::test(start_paused = true)]
async fn error_fails_before_the_service_and_abort_after_it() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = FaultHandle::from_config(FaultConfig {
        enabled: true,
        error_probability: 1.0,
        ..FaultConfig::default()
    })
    .unwrap();
    let mut svc = handle.layer().layer(counting(Arc::clone(&calls)));
    let error = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(matches!(
        Error::classify(error),
        Error::Injected { kind: "error" }
    ));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "an injected error never reaches the service"
    );

    handle
        .set(FaultConfig {
            enabled: true,
            abort_probability: 1.0,
            ..FaultConfig::default()
        })
        .unwrap();
    let error = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(matches!(
        Error::classify(error),
        Error::Injected { kind: "abort" }
    ));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "an aborted call did reach the service"
    );
    assert_eq!(handle.counts().errors, 1);
    assert_eq!(handle.counts().aborts, 1);
}

#[tokio::test(start_paused = true)]
async fn latency_delays_by_exactly_the_configured_time() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = FaultHandle::from_config(FaultConfig {
        enabled: true,
        latency_probability: 1.0,
        latency: Duration::from_millis(250),
        ..FaultConfig::default()
    })
    .unwrap();
    let mut svc = handle.layer().layer(counting(Arc::clone(&calls)));
    let started = tokio::time::Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "done");
    assert_eq!(started.elapsed(), Duration::from_millis(250));

    // Re-tuned through a clone of the handle while the service lives on.
    handle.clone().disable();
    let started = tokio::time::Instant::now();
    svc.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(handle.counts().latency, 1);
}

#[tokio::test]
async fn probabilities_are_honoured_roughly() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = FaultHandle::from_config(FaultConfig {
        enabled: true,
        error_probability: 0.3,
        ..FaultConfig::default()
    })
    .unwrap();
    let mut svc = handle.layer().layer(counting(Arc::clone(&calls)));
    let mut failed = 0;
    for _ in 0..10_000 {
        if svc.ready().await.unwrap().call(()).await.is_err() {
            failed += 1;
        }
    }
    // 30% of 10,000 with a standard deviation of about 46: ±400 is > 8 sigma.
    assert!((2_600..=3_400).contains(&failed), "{failed} failures");
    assert_eq!(calls.load(Ordering::SeqCst), 10_000 - failed);
}

#[test]
fn probabilities_outside_zero_to_one_are_rejected_and_change_nothing() {
    let handle = FaultHandle::new();
    let error = handle
        .set(FaultConfig {
            enabled: true,
            abort_probability: -0.1,
            ..FaultConfig::default()
        })
        .unwrap_err();
    assert_eq!(error.field, "abort_probability");
    assert!(!handle.config().enabled);
}
