//! Circuit breaker behaviour: every transition and window on tokio's paused
//! clock, concurrency with cancelled calls on a multi-thread runtime, and a
//! proptest against a reference model.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{advance, sleep};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use trellis_resilience::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState, Outcome,
    SlidingWindow, StateTransition,
};
use trellis_resilience::error::{BoxError, BulkheadFull, CircuitOpen, RateLimited};

mod model;

type BoxFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send + 'static>>;

/// What the inner service does with one request.
#[derive(Debug)]
enum Call {
    Ok,
    Fail,
    /// Fails with a rejection of this crate (a full bulkhead).
    Rejected,
    /// Takes this long, then succeeds or fails.
    Take(Duration, bool),
    /// Waits for the gate, then succeeds or fails; a dropped sender fails.
    Gate(oneshot::Receiver<bool>),
}

/// The inner service: does what each `Call` says, and counts its calls.
#[derive(Clone)]
struct Inner {
    called: Arc<AtomicUsize>,
}

impl Service<Call> for Inner {
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> BoxFuture {
        self.called.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let fail = match call {
                Call::Ok => false,
                Call::Fail => true,
                Call::Rejected => return Err(Box::new(BulkheadFull { max_concurrent: 1 }) as _),
                Call::Take(d, fail) => {
                    sleep(d).await;
                    fail
                }
                Call::Gate(gate) => !gate.await.unwrap_or(false),
            };
            if fail {
                Err(Box::new(std::io::Error::other("down")) as BoxError)
            } else {
                Ok(())
            }
        })
    }
}

type Svc = trellis_resilience::CircuitBreaker<Inner>;

/// A breaker over an [`Inner`] service, and the count of real calls.
fn breaker(layer: CircuitBreakerLayer) -> (Svc, Arc<AtomicUsize>) {
    let called = Arc::new(AtomicUsize::new(0));
    let inner = Inner {
        called: Arc::clone(&called),
    };
    (ServiceBuilder::new().layer(layer).service(inner), called)
}

async fn run(svc: &mut Svc, call: Call) -> Result<(), BoxError> {
    svc.ready().await?.call(call).await
}

fn open_error(result: Result<(), BoxError>) -> CircuitOpen {
    match result {
        Err(e) => match e.downcast::<CircuitOpen>() {
            Ok(open) => *open,
            Err(other) => panic!("expected CircuitOpen, got {other}"),
        },
        Ok(()) => panic!("expected CircuitOpen, got Ok"),
    }
}

fn config(size: u32, minimum: u32, threshold: f64) -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        name: "test".into(),
        window: SlidingWindow::Count { size },
        minimum_calls: minimum,
        failure_rate_threshold: threshold,
        wait_in_open: Duration::from_secs(10),
        permitted_calls_in_half_open: 2,
        ..Default::default()
    }
}

fn build(config: CircuitBreakerConfig) -> (CircuitBreakerLayer, CircuitBreakerHandle) {
    let layer = CircuitBreakerLayer::from_config(config).unwrap();
    let handle = layer.handle();
    (layer, handle)
}

/// Opens a breaker with `permitted` trial calls, then waits out the open
/// state so the next call is a trial.
async fn half_openable(permitted: u32) -> (Svc, CircuitBreakerHandle, Arc<AtomicUsize>) {
    let (layer, handle) = build(CircuitBreakerConfig {
        permitted_calls_in_half_open: permitted,
        ..config(4, 1, 100.0)
    });
    let (mut svc, called) = breaker(layer);
    run(&mut svc, Call::Fail).await.unwrap_err();
    assert_eq!(handle.state(), CircuitState::Open);
    advance(Duration::from_secs(10)).await;
    (svc, handle, called)
}

#[tokio::test(start_paused = true)]
async fn opens_at_exactly_the_failure_rate_once_the_minimum_is_reached() {
    let (layer, handle) = build(config(10, 5, 40.0));
    let (mut svc, called) = breaker(layer);
    // 2 of 4 failed (50 %) but the minimum is 5 calls: still closed.
    for call in [Call::Fail, Call::Fail, Call::Ok, Call::Ok] {
        let _ = run(&mut svc, call).await;
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.metrics().failure_rate, None);
    // The fifth call makes it 2 of 5 = 40 %: open, exactly now.
    run(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    let metrics = handle.metrics();
    assert_eq!((metrics.calls, metrics.failed_calls), (5, 2));
    assert_eq!(metrics.failure_rate, Some(40.0));
    let open = open_error(run(&mut svc, Call::Ok).await);
    assert_eq!(&*open.name, "test");
    assert_eq!(open.retry_after, Some(Duration::from_secs(10)));
    assert_eq!(
        called.load(Ordering::SeqCst),
        5,
        "a rejected call never reaches the service"
    );
    assert_eq!(handle.metrics().rejected_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_just_below_the_failure_rate() {
    let (layer, handle) = build(config(5, 5, 40.0));
    let (mut svc, _) = breaker(layer);
    for call in [Call::Fail, Call::Ok, Call::Ok, Call::Ok, Call::Ok] {
        let _ = run(&mut svc, call).await;
    }
    // 1 of 5 = 20 %; the window slides: the failure is overwritten.
    for _ in 0..5 {
        run(&mut svc, Call::Ok).await.unwrap();
    }
    assert_eq!(handle.metrics().failed_calls, 0);
    // Now 1 failure of the last 5 again, then a second one: 2 of 5 = 40 %.
    let _ = run(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), CircuitState::Closed);
    let _ = run(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn opens_at_exactly_the_slow_call_rate() {
    let (layer, handle) = build(CircuitBreakerConfig {
        slow_call_duration: Some(Duration::from_millis(100)),
        slow_call_rate_threshold: 50.0,
        ..config(10, 4, 100.0)
    });
    let (mut svc, _) = breaker(layer);
    let fast = || Call::Take(Duration::from_millis(99), false);
    let slow = || Call::Take(Duration::from_millis(100), false);
    for call in [fast(), slow(), fast()] {
        run(&mut svc, call).await.unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.metrics().slow_calls, 1);
    // 2 slow of 4 = 50 %.
    run(&mut svc, slow()).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(handle.metrics().slow_call_rate, Some(50.0));
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_the_permitted_calls_and_their_success_closes_it() {
    let (mut svc, handle, _) = half_openable(3).await;
    let mut gates = Vec::new();
    let mut trials = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = oneshot::channel();
        gates.push(tx);
        let mut s = svc.clone();
        trials.push(tokio::spawn(
            async move { run(&mut s, Call::Gate(rx)).await },
        ));
    }
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    // The fourth call is rejected while the three trials run.
    let open = open_error(run(&mut svc, Call::Ok).await);
    assert_eq!(open.retry_after, None);
    for gate in gates {
        gate.send(true).unwrap();
    }
    for trial in trials {
        trial.await.unwrap().unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.metrics().calls, 0, "closing starts an empty window");
    run(&mut svc, Call::Ok).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failed_trials_reopen_it() {
    let (mut svc, handle, _) = half_openable(2).await;
    run(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    run(&mut svc, Call::Fail).await.unwrap_err();
    // 1 of 2 trials failed: 50 %, below the 100 % threshold: it closes.
    assert_eq!(handle.state(), CircuitState::Closed);

    let (mut svc, handle, _) = half_openable(2).await;
    run(&mut svc, Call::Fail).await.unwrap_err();
    run(&mut svc, Call::Fail).await.unwrap_err();
    assert_eq!(handle.state(), CircuitState::Open);
    let open = open_error(run(&mut svc, Call::Ok).await);
    assert_eq!(open.retry_after, Some(Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn an_ignored_or_dropped_trial_gives_its_permit_back() {
    let (mut svc, handle, _) = half_openable(1).await;
    // A rejection from an inner layer is ignored: the permit comes back.
    run(&mut svc, Call::Rejected).await.unwrap_err();
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    // A trial dropped mid-call gives its permit back too.
    let (_gate, rx) = oneshot::channel::<bool>();
    let mut future = svc.ready().await.unwrap().call(Call::Gate(rx));
    assert!(futures_util::FutureExt::now_or_never(&mut future).is_none());
    open_error(run(&mut svc, Call::Ok).await);
    drop(future);
    // And through a timeout.
    let (_gate, rx) = oneshot::channel::<bool>();
    let timed = tokio::time::timeout(Duration::from_secs(1), run(&mut svc, Call::Gate(rx))).await;
    assert!(timed.is_err());
    run(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn readiness_polling_holds_no_trial_permit() {
    let (svc, handle, _) = half_openable(1).await;
    // Many idle clones (connections) poll readiness and never send.
    let mut idle: Vec<Svc> = (0..10).map(|_| svc.clone()).collect();
    for s in &mut idle {
        s.ready().await.unwrap();
    }
    let mut caller = svc.clone();
    run(&mut caller, Call::Ok).await.unwrap();
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "the one trial got through"
    );
}

#[tokio::test(start_paused = true)]
async fn the_wait_in_open_grows_exponentially_to_its_cap() {
    let (layer, handle) = build(CircuitBreakerConfig {
        wait_in_open: Duration::from_secs(1),
        wait_in_open_multiplier: 2.0,
        max_wait_in_open: Duration::from_secs(5),
        permitted_calls_in_half_open: 1,
        ..config(4, 1, 100.0)
    });
    let (mut svc, _) = breaker(layer);
    run(&mut svc, Call::Fail).await.unwrap_err();
    let mut waits = Vec::new();
    for _ in 0..5 {
        let wait = open_error(run(&mut svc, Call::Ok).await)
            .retry_after
            .unwrap();
        waits.push(wait.as_secs());
        advance(wait - Duration::from_millis(1)).await;
        open_error(run(&mut svc, Call::Ok).await);
        advance(Duration::from_millis(1)).await;
        run(&mut svc, Call::Fail).await.unwrap_err(); // the trial fails: re-open
        assert_eq!(handle.state(), CircuitState::Open);
    }
    assert_eq!(waits, [1, 2, 4, 5, 5]);
    // A successful trial closes it, and the next opening starts over at 1 s.
    advance(Duration::from_secs(5)).await;
    run(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    run(&mut svc, Call::Fail).await.unwrap_err();
    let open = open_error(run(&mut svc, Call::Ok).await);
    assert_eq!(open.retry_after, Some(Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn max_wait_in_half_open_reopens_a_breaker_whose_trials_never_end() {
    let (layer, handle) = build(CircuitBreakerConfig {
        permitted_calls_in_half_open: 1,
        max_wait_in_half_open: Some(Duration::from_secs(30)),
        ..config(4, 1, 100.0)
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    handle.on_state_transition(move |t: &StateTransition| log.lock().unwrap().push((t.from, t.to)));
    let (mut svc, _) = breaker(layer);
    run(&mut svc, Call::Fail).await.unwrap_err();
    advance(Duration::from_secs(10)).await;
    // The only trial hangs.
    let (_gate, rx) = oneshot::channel::<bool>();
    let mut hanging = svc.ready().await.unwrap().call(Call::Gate(rx));
    assert!(futures_util::FutureExt::now_or_never(&mut hanging).is_none());
    advance(Duration::from_secs(29)).await;
    open_error(run(&mut svc, Call::Ok).await);
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    advance(Duration::from_secs(1)).await;
    let open = open_error(run(&mut svc, Call::Ok).await);
    assert_eq!(handle.state(), CircuitState::Open);
    assert!(open.retry_after.is_some());
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (CircuitState::Closed, CircuitState::Open),
            (CircuitState::Open, CircuitState::HalfOpen),
            (CircuitState::HalfOpen, CircuitState::Open),
        ]
    );
    drop(hanging);
}

/// The hanging-probe case with the DEFAULT half-open bound: a breaker used
/// without a timeout inside it must not stay half-open behind a trial call
/// that never settles.
#[tokio::test(start_paused = true)]
async fn by_default_a_hanging_trial_cannot_wedge_half_open() {
    let defaults = CircuitBreakerConfig::default();
    assert_eq!(
        defaults.max_wait_in_half_open,
        Some(trellis_resilience::circuit_breaker::DEFAULT_MAX_WAIT_IN_HALF_OPEN)
    );
    let bound = defaults.max_wait_in_half_open.unwrap();
    // Only what opens the breaker quickly differs from the defaults.
    let (layer, handle) = build(CircuitBreakerConfig {
        name: "hanging".into(),
        window: SlidingWindow::Count { size: 1 },
        minimum_calls: 1,
        permitted_calls_in_half_open: 1,
        ..defaults.clone()
    });
    let (mut svc, called) = breaker(layer);
    run(&mut svc, Call::Fail).await.unwrap_err();
    assert_eq!(handle.state(), CircuitState::Open);
    advance(defaults.wait_in_open).await;
    // The only trial hangs forever (its gate is never opened nor dropped).
    let (_gate, rx) = oneshot::channel::<bool>();
    let mut hanging = svc.ready().await.unwrap().call(Call::Gate(rx));
    assert!(futures_util::FutureExt::now_or_never(&mut hanging).is_none());
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    // Until the bound, everyone else is rejected without reaching the service.
    advance(bound - Duration::from_millis(1)).await;
    open_error(run(&mut svc, Call::Ok).await);
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    assert_eq!(called.load(Ordering::SeqCst), 2);
    // Past it, the next call re-opens the breaker...
    advance(Duration::from_millis(1)).await;
    open_error(run(&mut svc, Call::Ok).await);
    assert_eq!(handle.state(), CircuitState::Open);
    // ...and after the open wait a fresh trial is admitted and closes it,
    // although the first trial is still pending.
    advance(defaults.wait_in_open).await;
    run(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(called.load(Ordering::SeqCst), 3);
    assert!(futures_util::FutureExt::now_or_never(&mut hanging).is_none());
}

#[tokio::test(start_paused = true)]
async fn the_time_window_forgets_old_calls() {
    let time_config = CircuitBreakerConfig {
        window: SlidingWindow::Time {
            duration: Duration::from_secs(10),
            buckets: None,
        },
        ..config(1, 3, 50.0)
    };
    // Control: three failures within the window open it.
    let (layer, handle) = build(time_config.clone());
    let (mut svc, _) = breaker(layer);
    for _ in 0..3 {
        run(&mut svc, Call::Fail).await.unwrap_err();
        advance(Duration::from_secs(4)).await;
    }
    assert_eq!(handle.state(), CircuitState::Open);

    let (layer, handle) = build(time_config);
    let (mut svc, _) = breaker(layer);
    run(&mut svc, Call::Fail).await.unwrap_err();
    run(&mut svc, Call::Fail).await.unwrap_err();
    assert_eq!(handle.metrics().calls, 2);
    advance(Duration::from_secs(9)).await;
    assert_eq!(handle.metrics().calls, 2, "still inside the window");
    advance(Duration::from_secs(2)).await;
    assert_eq!(handle.metrics().calls, 0, "aged out");
    run(&mut svc, Call::Fail).await.unwrap_err();
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "one call is below the minimum"
    );
    let metrics = handle.metrics();
    assert_eq!((metrics.calls, metrics.failed_calls), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_mode() {
    let (layer, handle) = build(CircuitBreakerConfig {
        window: SlidingWindow::Consecutive { failures: 3 },
        permitted_calls_in_half_open: 2,
        ..config(1, 1, 50.0)
    });
    let (mut svc, _) = breaker(layer);
    for call in [Call::Fail, Call::Fail, Call::Ok, Call::Fail, Call::Fail] {
        let _ = run(&mut svc, call).await;
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.metrics().failed_calls, 2);
    run(&mut svc, Call::Rejected).await.unwrap_err(); // ignored, not a success
    run(&mut svc, Call::Fail).await.unwrap_err();
    assert_eq!(handle.state(), CircuitState::Open);
    advance(Duration::from_secs(10)).await;
    run(&mut svc, Call::Ok).await.unwrap();
    run(&mut svc, Call::Fail).await.unwrap_err();
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "a failed trial re-opens it"
    );
    advance(Duration::from_secs(10)).await;
    run(&mut svc, Call::Ok).await.unwrap();
    run(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn forced_open_disabled_and_reset() {
    let (layer, handle) = build(config(4, 1, 50.0));
    let (mut svc, called) = breaker(layer);
    handle.force_open();
    let open = open_error(run(&mut svc, Call::Ok).await);
    assert_eq!(open.retry_after, None);
    advance(Duration::from_secs(3600)).await;
    open_error(run(&mut svc, Call::Ok).await);
    assert_eq!(
        handle.state(),
        CircuitState::ForcedOpen,
        "no wait ends a forced open"
    );
    assert_eq!(called.load(Ordering::SeqCst), 0);

    handle.disable();
    for _ in 0..10 {
        run(&mut svc, Call::Fail).await.unwrap_err();
    }
    assert_eq!(handle.state(), CircuitState::Disabled);
    assert_eq!(
        handle.metrics().calls,
        0,
        "a disabled breaker records nothing"
    );
    assert_eq!(called.load(Ordering::SeqCst), 10);

    handle.reset();
    run(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.metrics().calls, 1);
    handle.reset();
    assert_eq!(handle.metrics().calls, 0, "reset clears the window");
    run(&mut svc, Call::Fail).await.unwrap_err();
    assert_eq!(handle.state(), CircuitState::Open);
    handle.reset();
    assert_eq!(handle.state(), CircuitState::Closed);
    run(&mut svc, Call::Ok).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn replacing_the_configuration_keeps_the_state() {
    let (layer, handle) = build(config(10, 4, 50.0));
    let (mut svc, _) = breaker(layer);
    for call in [Call::Fail, Call::Ok, Call::Ok] {
        let _ = run(&mut svc, call).await;
    }
    // Same window: its calls are kept; a lower threshold applies at once.
    let mut lower = handle.config();
    lower.failure_rate_threshold = 25.0;
    handle.replace_config(lower.clone()).unwrap();
    assert_eq!(handle.metrics().calls, 3);
    run(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open, "1 of 4 = 25 %");

    // While open: the state and its deadline survive a replacement.
    advance(Duration::from_secs(4)).await;
    let renamed = CircuitBreakerConfig {
        name: "renamed".into(),
        wait_in_open: Duration::from_secs(100),
        ..lower
    };
    handle.replace_config(renamed.clone()).unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    let open = open_error(run(&mut svc, Call::Ok).await);
    assert_eq!(open.retry_after, Some(Duration::from_secs(6)));
    assert_eq!(&*open.name, "renamed");

    // A bad configuration is refused and the old one stays.
    let bad = CircuitBreakerConfig {
        window: SlidingWindow::Count { size: 0 },
        ..renamed.clone()
    };
    assert_eq!(handle.replace_config(bad).unwrap_err().field, "window.size");
    assert_eq!(handle.config(), renamed);

    // A new window shape starts empty but keeps the state.
    handle.reset();
    run(&mut svc, Call::Ok).await.unwrap();
    handle
        .replace_config(CircuitBreakerConfig {
            window: SlidingWindow::Count { size: 3 },
            minimum_calls: 3,
            ..renamed
        })
        .unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.metrics().calls, 0);
    for _ in 0..3 {
        run(&mut svc, Call::Ok).await.unwrap();
    }
    assert_eq!(handle.metrics().calls, 3);
}

#[tokio::test(start_paused = true)]
async fn fewer_trial_calls_at_runtime_restart_the_trials() {
    let (mut svc, handle, _) = half_openable(3).await;
    run(&mut svc, Call::Ok).await.unwrap();
    run(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    handle
        .replace_config(CircuitBreakerConfig {
            permitted_calls_in_half_open: 1,
            ..handle.config()
        })
        .unwrap();
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    // One trial now decides; a second concurrent one would be rejected.
    let (gate, rx) = oneshot::channel();
    let mut trial = svc.clone();
    let trial = tokio::spawn(async move { run(&mut trial, Call::Gate(rx)).await });
    tokio::task::yield_now().await;
    open_error(run(&mut svc, Call::Ok).await);
    gate.send(true).unwrap();
    trial.await.unwrap().unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn listeners_and_watchers_see_every_transition() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let layer = CircuitBreakerLayer::from_config(config(2, 2, 50.0))
        .unwrap()
        .on_state_transition(move |t: &StateTransition| {
            log.lock().unwrap().push((t.from, t.to, t.reason))
        });
    let handle = layer.handle();
    let mut watch = handle.subscribe();
    let (mut svc, _) = breaker(layer);
    run(&mut svc, Call::Fail).await.unwrap_err();
    run(&mut svc, Call::Ok).await.unwrap();
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), CircuitState::Open);
    advance(Duration::from_secs(10)).await;
    run(&mut svc, Call::Ok).await.unwrap();
    run(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(*watch.borrow_and_update(), CircuitState::Closed);
    handle.force_open();
    handle.disable();
    handle.reset();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (CircuitState::Closed, CircuitState::Open, "failure rate"),
            (
                CircuitState::Open,
                CircuitState::HalfOpen,
                "wait in open elapsed"
            ),
            (
                CircuitState::HalfOpen,
                CircuitState::Closed,
                "half-open trials succeeded"
            ),
            (
                CircuitState::Closed,
                CircuitState::ForcedOpen,
                "forced open by hand"
            ),
            (
                CircuitState::ForcedOpen,
                CircuitState::Disabled,
                "disabled by hand"
            ),
            (
                CircuitState::Disabled,
                CircuitState::Closed,
                "reset by hand"
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn rejections_of_other_layers_are_not_failures_by_default() {
    let (layer, handle) = build(config(4, 1, 50.0));
    let (mut svc, _) = breaker(layer);
    for _ in 0..20 {
        let e = run(&mut svc, Call::Rejected).await.unwrap_err();
        assert!(
            e.is::<BulkheadFull>(),
            "the rejection passes through unchanged"
        );
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.metrics().calls, 0);

    // A closure classifier can decide otherwise.
    let layer = CircuitBreakerLayer::from_config(config(4, 1, 50.0))
        .unwrap()
        .with_classifier(|r: &Result<(), BoxError>| match r {
            Err(e) if e.is::<RateLimited>() => Outcome::Failure,
            Err(_) => Outcome::Ignored,
            Ok(()) => Outcome::Success,
        });
    let handle = layer.handle();
    let mut svc =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|limited: bool| async move {
                if limited {
                    Err::<(), BoxError>(Box::new(RateLimited {
                        retry_after: Duration::ZERO,
                    }))
                } else {
                    Err(Box::new(std::io::Error::other("ignored")) as BoxError)
                }
            }));
    svc.ready().await.unwrap().call(false).await.unwrap_err();
    assert_eq!(handle.state(), CircuitState::Closed);
    svc.ready().await.unwrap().call(true).await.unwrap_err();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn the_http_classifier_counts_server_errors() {
    use http::{Response, StatusCode};
    use trellis_resilience::circuit_breaker::http::HttpClassifier;

    let layer = CircuitBreakerLayer::from_config(config(4, 4, 50.0))
        .unwrap()
        .with_classifier(HttpClassifier::server_errors());
    let handle = layer.handle();
    let mut svc =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|status: u16| async move {
                Ok::<_, std::convert::Infallible>(
                    Response::builder().status(status).body(()).unwrap(),
                )
            }));
    for status in [200, 404, 503] {
        let response = svc.ready().await.unwrap().call(status).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "responses pass through");
    }
    assert_eq!(handle.metrics().failed_calls, 1);
    svc.ready().await.unwrap().call(500).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open, "2 of 4 are 5xx");

    // Configurable: only 503 fails.
    let only_503 = HttpClassifier::statuses([StatusCode::SERVICE_UNAVAILABLE]);
    let layer = CircuitBreakerLayer::from_config(config(2, 1, 100.0))
        .unwrap()
        .with_classifier(only_503);
    let handle = layer.handle();
    let mut svc =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|status: u16| async move {
                Ok::<_, std::convert::Infallible>(
                    Response::builder().status(status).body(()).unwrap(),
                )
            }));
    svc.ready().await.unwrap().call(500).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    svc.ready().await.unwrap().call(503).await.unwrap();
    svc.ready().await.unwrap().call(503).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn metrics_count_outcomes_states_and_transitions() {
    use prometheus_client::registry::Registry;

    let mut registry = Registry::default();
    let (layer, handle) = build(CircuitBreakerConfig {
        slow_call_duration: Some(Duration::from_secs(1)),
        ..config(4, 4, 50.0)
    });
    layer.register_metrics(&mut registry);
    let (mut svc, _) = breaker(layer);
    run(&mut svc, Call::Ok).await.unwrap();
    run(&mut svc, Call::Take(Duration::from_secs(2), false))
        .await
        .unwrap();
    run(&mut svc, Call::Rejected).await.unwrap_err();
    run(&mut svc, Call::Fail).await.unwrap_err();
    run(&mut svc, Call::Fail).await.unwrap_err();
    open_error(run(&mut svc, Call::Ok).await);
    assert_eq!(handle.state(), CircuitState::Open);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        r#"trellis_resilience_circuit_breaker_calls_total{name="test",outcome="success"} 1"#,
        r#"trellis_resilience_circuit_breaker_calls_total{name="test",outcome="slow_success"} 1"#,
        r#"trellis_resilience_circuit_breaker_calls_total{name="test",outcome="failure"} 2"#,
        r#"trellis_resilience_circuit_breaker_calls_total{name="test",outcome="ignored"} 1"#,
        r#"trellis_resilience_circuit_breaker_calls_total{name="test",outcome="rejected"} 1"#,
        r#"trellis_resilience_circuit_breaker_state{name="test"} 1"#,
        r#"trellis_resilience_circuit_breaker_transitions_total{name="test",from="closed",to="open"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

/// Many tasks on a multi-thread runtime hammer one breaker in half-open,
/// and most of them are cancelled mid-call; afterwards the breaker still
/// admits exactly its permitted trial calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_trial_calls_never_leak_permits() {
    const PERMITTED: usize = 5;
    const TASKS: usize = 40;
    let (layer, handle) = build(CircuitBreakerConfig {
        permitted_calls_in_half_open: PERMITTED as u32,
        ..config(4, 1, 50.0)
    });
    let (svc, _) = breaker(layer);
    // Half-open once: every round below must find all the permits that the
    // previous round's cancelled calls held.
    handle.half_open();
    for round in 0..20 {
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(TASKS);
        let mut gates = Vec::new();
        let mut cancels = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (gate, rx) = oneshot::channel::<bool>();
            gates.push(gate);
            let (cancel, cancelled) = oneshot::channel::<()>();
            cancels.push(cancel);
            let mut svc = svc.clone();
            let done = done_tx.clone();
            tasks.push(tokio::spawn(async move {
                let call = run(&mut svc, Call::Gate(rx));
                let result = if round % 2 == 0 {
                    call.await // cancelled by abort below
                } else {
                    // Cancelled by dropping the future inside the task.
                    tokio::select! {
                        result = call => result,
                        _ = cancelled => return,
                    }
                };
                let _ = done.send(result.is_err()).await;
            }));
        }
        // Every call but the admitted trials is rejected at once.
        for _ in 0..TASKS - PERMITTED {
            let rejected = tokio::time::timeout(Duration::from_secs(20), done_rx.recv())
                .await
                .expect("rejections arrive")
                .unwrap();
            assert!(rejected);
        }
        assert_eq!(handle.state(), CircuitState::HalfOpen);
        // Cancel the admitted trials while they are in flight.
        drop(cancels);
        if round % 2 == 0 {
            for task in &tasks {
                task.abort();
            }
        }
        for task in tasks {
            let _ = task.await;
        }
        drop(gates);
        assert!(done_rx.try_recv().is_err(), "no trial finished");
        assert_eq!(handle.state(), CircuitState::HalfOpen);
    }
    // After 20 rounds of cancellations: still exactly PERMITTED trials.
    let mut gates = Vec::new();
    let mut trials = Vec::new();
    for _ in 0..PERMITTED {
        let (gate, rx) = oneshot::channel::<bool>();
        gates.push(gate);
        let mut s = svc.clone();
        let future = s.ready().await.unwrap().call(Call::Gate(rx));
        trials.push(tokio::spawn(future));
    }
    let mut s = svc.clone();
    open_error(run(&mut s, Call::Ok).await);
    for gate in gates {
        gate.send(true).unwrap();
    }
    for trial in trials {
        trial.await.unwrap().unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Closed);
}

/// Many tasks record into one closed breaker at once: the window's totals
/// stay consistent and the verdict follows the failure rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_in_the_closed_state() {
    let (layer, handle) = build(config(100, 100, 50.0));
    let (svc, _) = breaker(layer);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                for i in 0..500 {
                    let call = if (i + t) % 10 == 0 {
                        Call::Fail
                    } else {
                        Call::Ok
                    };
                    let _ = run(&mut svc, call).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let metrics = handle.metrics();
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(metrics.calls, 100, "the window is full, not over-full");
    assert!(metrics.failed_calls <= 50, "{metrics:?}");
    // Now everything fails: the breaker opens and stops calling.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                let mut rejected = 0;
                for _ in 0..200 {
                    if let Err(e) = run(&mut svc, Call::Fail).await {
                        rejected += usize::from(e.is::<CircuitOpen>());
                    }
                }
                rejected
            })
        })
        .collect();
    let mut rejected = 0;
    for task in tasks {
        rejected += task.await.unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Open);
    assert!(rejected > 1_000, "{rejected} rejections");
}

/// Collects (level, message, breaker field) of every event.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(tracing::Level, String, String)>>>);

impl tracing::Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String, String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.0 = format!("{value:?}"),
                    "breaker" => self.1 = format!("{value:?}"),
                    _ => {}
                }
            }
        }
        let mut fields = Fields(String::new(), String::new());
        event.record(&mut fields);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields.0, fields.1));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(start_paused = true)]
async fn transitions_and_rejections_are_traced() {
    let events = Events::default();
    let _guard = tracing::subscriber::set_default(events.clone());
    let (layer, _handle) = build(config(4, 1, 50.0));
    let (mut svc, _) = breaker(layer);
    run(&mut svc, Call::Fail).await.unwrap_err();
    open_error(run(&mut svc, Call::Ok).await);
    let seen = events.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (
                tracing::Level::INFO,
                "circuit breaker state changed".to_owned(),
                "test".to_owned()
            ),
            (
                tracing::Level::DEBUG,
                "circuit breaker rejected a call".to_owned(),
                "test".to_owned()
            ),
        ]
    );
}
