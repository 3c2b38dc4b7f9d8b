//! Timeout: typed error at exactly the deadline, fast calls untouched.

use std::time::Duration;

use tower::{Layer, Service, ServiceExt, service_fn};
use trellis_resilience::Error;
use trellis_resilience::error::BoxError;
use trellis_resilience::timeout::{TimeoutConfig, TimeoutLayer};

fn sleeper() -> impl Service<u64, Response = u64, Error = BoxError> {
    service_fn(|millis: u64| async move {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok::<_, BoxError>(millis)
    })
}

#[tokio::test(start_paused = true)]
async fn fails_at_exactly_the_deadline() {
    let mut svc = TimeoutLayer::new(Duration::from_millis(100)).layer(sleeper());
    let started = tokio::time::Instant::now();
    let error = svc.ready().await.unwrap().call(500).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    match Error::classify(error) {
        Error::Timeout { after } => assert_eq!(after, Duration::from_millis(100)),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn calls_within_the_deadline_pass() {
    let mut svc = TimeoutLayer::new(Duration::from_millis(100)).layer(sleeper());
    assert_eq!(svc.ready().await.unwrap().call(99).await.unwrap(), 99);
    // Ready at the deadline: the response wins over the timer.
    assert_eq!(svc.ready().await.unwrap().call(100).await.unwrap(), 100);
}

#[tokio::test]
async fn inner_errors_pass_through_unchanged() {
    let failing = service_fn(|()| async { Err::<(), _>(std::io::Error::other("refused")) });
    let mut svc = TimeoutLayer::new(Duration::from_secs(1)).layer(failing);
    let error = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(matches!(Error::classify(error), Error::Inner(e) if e.to_string() == "refused"));
}

#[test]
fn zero_deadline_is_a_configuration_error() {
    let config: TimeoutConfig = toml::from_str("timeout = \"0s\"").unwrap();
    assert_eq!(
        TimeoutLayer::from_config(config).unwrap_err().field,
        "timeout"
    );
}
