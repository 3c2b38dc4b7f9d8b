//! Fallback: selected errors answered by the fallback, others untouched.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tower::{Layer, Service, ServiceExt, service_fn};
use trellis_resilience::Error;
use trellis_resilience::error::{BoxError, BulkheadFull, CircuitOpen};
use trellis_resilience::fallback::{FallbackLayer, OnRejection};

fn failing_with(
    make: fn() -> BoxError,
) -> impl Service<String, Response = String, Error = BoxError> + Clone {
    service_fn(move |_order: String| async move { Err::<String, _>(make()) })
}

fn open() -> BoxError {
    Box::new(CircuitOpen {
        name: "inventory".into(),
        retry_after: None,
    })
}

fn full() -> BoxError {
    Box::new(BulkheadFull { max_concurrent: 1 })
}

fn refused() -> BoxError {
    Box::new(std::io::Error::other("refused"))
}

fn pending_validation(
    calls: Arc<AtomicUsize>,
) -> impl Service<String, Response = String, Error = BoxError> + Clone {
    service_fn(move |order: String| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, BoxError>(format!("{order}: PENDING_VALIDATION")) }
    })
}

#[tokio::test]
async fn open_circuit_is_answered_by_the_fallback_with_the_same_request() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc =
        FallbackLayer::new(pending_validation(Arc::clone(&calls))).layer(failing_with(open));
    let answer = svc
        .ready()
        .await
        .unwrap()
        .call("order-7".into())
        .await
        .unwrap();
    assert_eq!(answer, "order-7: PENDING_VALIDATION");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn other_errors_pass_through_and_skip_the_fallback() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc =
        FallbackLayer::new(pending_validation(Arc::clone(&calls))).layer(failing_with(refused));
    let error = svc
        .ready()
        .await
        .unwrap()
        .call("order-8".into())
        .await
        .unwrap_err();
    assert!(matches!(Error::classify(error), Error::Inner(e) if e.to_string() == "refused"));
    // By default only an open circuit falls back, not a full bulkhead.
    let mut svc =
        FallbackLayer::new(pending_validation(Arc::clone(&calls))).layer(failing_with(full));
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call("order-9".into())
            .await
            .is_err()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn predicates_choose_what_falls_back() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = FallbackLayer::new(pending_validation(Arc::clone(&calls))).on(OnRejection);
    let mut svc = layer.layer(failing_with(full));
    assert!(svc.ready().await.unwrap().call("a".into()).await.is_ok());
    let layer = FallbackLayer::new(pending_validation(Arc::clone(&calls)))
        .on(|e: &BoxError| e.to_string() == "refused");
    let mut svc = layer.layer(failing_with(refused));
    assert!(svc.ready().await.unwrap().call("b".into()).await.is_ok());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failing_fallback_reports_its_own_error() {
    let broken = service_fn(|_: String| async { Err::<String, BoxError>("fallback down".into()) });
    let mut svc = FallbackLayer::new(broken).layer(failing_with(open));
    let error = svc
        .ready()
        .await
        .unwrap()
        .call("c".into())
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "fallback down");
}

#[tokio::test]
async fn falls_back_on_the_policy_s_flat_circuit_open_error_too() {
    let calls = Arc::new(AtomicUsize::new(0));
    let flat = service_fn(|_: String| async {
        Err::<String, Error>(Error::CircuitOpen {
            name: "inventory".into(),
            retry_after: None,
        })
    });
    let mut svc = FallbackLayer::new(pending_validation(Arc::clone(&calls))).layer(flat);
    assert!(svc.ready().await.unwrap().call("d".into()).await.is_ok());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
