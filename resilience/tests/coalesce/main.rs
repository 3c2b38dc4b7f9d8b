//! Request coalescing with real tasks on a multi-threaded runtime: one
//! inner call per key in flight, clones of the answer and of the error for
//! every caller, no stranded waiter when the leader is cancelled, and a
//! bounded map.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt, service_fn};
use trellis_resilience::Error;
use trellis_resilience::coalesce::CoalesceLayer;
use trellis_resilience::error::{BoxError, RateLimited};

/// Calls block until the test opens the gate; request `0` fails with a
/// rate-limit rejection. Counts inner calls and inner calls dropped
/// unfinished.
#[derive(Clone)]
struct Backend {
    gate: Arc<Semaphore>,
    calls: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
}

struct Unfinished(Arc<AtomicUsize>, bool);
impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Default for Backend {
    fn default() -> Self {
        Backend {
            gate: Arc::new(Semaphore::new(0)),
            calls: Arc::default(),
            cancelled: Arc::default(),
        }
    }
}

impl Backend {
    fn service(
        &self,
    ) -> impl Service<u64, Response = String, Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let this = self.clone();
        service_fn(move |id: u64| {
            let this = this.clone();
            this.calls.fetch_add(1, Ordering::SeqCst);
            let guard = Unfinished(Arc::clone(&this.cancelled), false);
            async move {
                let mut guard = guard;
                let _pass = this
                    .gate
                    .acquire()
                    .await
                    .map_err(|e| Box::new(e) as BoxError)?;
                guard.1 = true;
                if id == 0 {
                    return Err(Box::new(RateLimited {
                        retry_after: Duration::from_secs(3),
                    }) as BoxError);
                }
                Ok(format!("item {id}"))
            }
        })
    }
}

/// Waits until `n` inner calls have started (real tasks: poll, don't sleep
/// on a guess).
async fn until(counter: &AtomicUsize, n: usize) {
    while counter.load(Ordering::SeqCst) < n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_reads_share_one_call() {
    let backend = Backend::default();
    let svc = CoalesceLayer::new(64, |id: &u64| Some(*id)).layer(backend.service());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        tasks.push(tokio::spawn(svc.clone().oneshot(42)));
    }
    tasks.push(tokio::spawn(svc.clone().oneshot(7)));
    until(&backend.calls, 2).await;
    // Let every task reach the map before the answer arrives.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(svc.keys_in_flight(), 2);
    backend.gate.add_permits(100);
    let seven = tasks.pop().unwrap().await.unwrap().unwrap();
    assert_eq!(seven, "item 7");
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "item 42");
    }
    assert_eq!(backend.calls.load(Ordering::SeqCst), 2, "one call per key");
    assert_eq!(svc.keys_in_flight(), 0);

    // Not a cache: the next read calls again.
    svc.clone().oneshot(42).await.unwrap();
    assert_eq!(backend.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_key_are_never_coalesced() {
    let backend = Backend::default();
    // Odd ids are writes.
    let svc = CoalesceLayer::new(64, |id: &u64| id.is_multiple_of(2).then_some(*id))
        .layer(backend.service());
    let a = tokio::spawn(svc.clone().oneshot(3));
    let b = tokio::spawn(svc.clone().oneshot(3));
    until(&backend.calls, 2).await;
    backend.gate.add_permits(2);
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    assert_eq!(backend.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_strands_no_waiter() {
    let backend = Backend::default();
    let svc = CoalesceLayer::new(64, |id: &u64| Some(*id)).layer(backend.service());
    let leader = tokio::spawn(svc.clone().oneshot(9));
    until(&backend.calls, 1).await;
    let waiter = tokio::spawn(svc.clone().oneshot(9));
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    backend.gate.add_permits(1);
    assert_eq!(waiter.await.unwrap().unwrap(), "item 9");
    assert_eq!(
        backend.calls.load(Ordering::SeqCst),
        1,
        "the waiter drove the leader's call"
    );
    assert_eq!(backend.cancelled.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_every_caller_abandons_is_cancelled_and_forgotten() {
    let backend = Backend::default();
    let svc = CoalesceLayer::new(64, |id: &u64| Some(*id)).layer(backend.service());
    let a = tokio::spawn(svc.clone().oneshot(5));
    let b = tokio::spawn(svc.clone().oneshot(5));
    until(&backend.calls, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.abort();
    b.abort();
    let _ = (a.await, b.await);
    assert_eq!(
        backend.cancelled.load(Ordering::SeqCst),
        1,
        "the inner call was dropped"
    );
    // A new caller makes a new call rather than joining the dead one.
    backend.gate.add_permits(1);
    assert_eq!(svc.clone().oneshot(5).await.unwrap(), "item 5");
    assert_eq!(backend.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_gets_the_error_classified() {
    let backend = Backend::default();
    let svc = CoalesceLayer::new(64, |id: &u64| Some(*id)).layer(backend.service());
    let a = tokio::spawn(svc.clone().oneshot(0));
    let b = tokio::spawn(svc.clone().oneshot(0));
    until(&backend.calls, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    backend.gate.add_permits(1);
    for task in [a, b] {
        let error = task.await.unwrap().unwrap_err();
        assert!(matches!(
            Error::classify(error),
            Error::RateLimited { retry_after } if retry_after == Duration::from_secs(3)
        ));
    }
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_flight_are_bounded_and_the_overflow_calls_through() {
    let backend = Backend::default();
    let svc = CoalesceLayer::new(2, |id: &u64| Some(*id)).layer(backend.service());
    let mut tasks = Vec::new();
    for id in [1, 2, 3, 3] {
        tasks.push(tokio::spawn(svc.clone().oneshot(id)));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until(&backend.calls, 4).await;
    assert_eq!(svc.keys_in_flight(), 2, "the map never outgrows its bound");
    backend.gate.add_permits(10);
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        backend.calls.load(Ordering::SeqCst),
        4,
        "key 3 was not coalesced: no room"
    );
}
