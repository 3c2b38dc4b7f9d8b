//! Bulkhead: capacity, bounded waits, release on completion and on cancel.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::Layer;
use tower::{Service, ServiceExt, service_fn};
use trellis_resilience::Error;
use trellis_resilience::bulkhead::{BulkheadConfig, BulkheadLayer};
use trellis_resilience::error::BoxError;

/// A service whose calls block until the test opens the gate.
fn gated(
    gate: Arc<Semaphore>,
) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |n: u32| {
        let gate = Arc::clone(&gate);
        async move {
            let _pass = gate.acquire().await.map_err(|e| Box::new(e) as BoxError)?;
            Ok(n)
        }
    })
}

fn bulkhead(max_concurrent: usize, max_wait: Duration) -> BulkheadLayer {
    BulkheadLayer::from_config(BulkheadConfig {
        name: "test".into(),
        max_concurrent,
        max_wait,
    })
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn rejects_at_once_when_full_and_frees_slots_when_calls_end() {
    let gate = Arc::new(Semaphore::new(0));
    let layer = bulkhead(2, Duration::ZERO);
    let mut svc = layer.layer(gated(Arc::clone(&gate)));

    let first = tokio::spawn(svc.ready().await.unwrap().call(1));
    let second = tokio::spawn(svc.ready().await.unwrap().call(2));
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 2);

    let error = svc.ready().await.unwrap().call(3).await.unwrap_err();
    assert!(matches!(
        Error::classify(error),
        Error::BulkheadFull { max_concurrent: 2 }
    ));

    gate.add_permits(2);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(second.await.unwrap().unwrap(), 2);
    assert_eq!(layer.in_flight(), 0);
    gate.add_permits(1);
    assert_eq!(svc.ready().await.unwrap().call(4).await.unwrap(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_releases_its_slot() {
    let gate = Arc::new(Semaphore::new(0));
    let layer = bulkhead(1, Duration::ZERO);
    let mut svc = layer.layer(gated(Arc::clone(&gate)));

    let pending = svc.ready().await.unwrap().call(1);
    assert_eq!(layer.in_flight(), 1);
    drop(pending);
    assert_eq!(layer.in_flight(), 0);

    // Cancelled by a deadline while running inside the bulkhead.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(10),
        svc.ready().await.unwrap().call(2),
    )
    .await;
    assert!(cancelled.is_err());
    assert_eq!(layer.in_flight(), 0);
    gate.add_permits(1);
    assert_eq!(svc.ready().await.unwrap().call(3).await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn waits_up_to_max_wait_for_a_slot() {
    let gate = Arc::new(Semaphore::new(0));
    let layer = bulkhead(1, Duration::from_millis(100));
    let mut svc = layer.layer(gated(Arc::clone(&gate)));

    let holder = tokio::spawn(svc.ready().await.unwrap().call(1));
    tokio::task::yield_now().await;

    // Nobody frees the slot: rejected after exactly max_wait.
    let started = tokio::time::Instant::now();
    let waiter = tokio::spawn(svc.ready().await.unwrap().call(2));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(layer.waiting(), 1);
    let error = waiter.await.unwrap().unwrap_err();
    assert!(matches!(Error::classify(error), Error::BulkheadFull { .. }));
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(layer.waiting(), 0);

    // The slot frees up within max_wait: the waiter gets it.
    let waiter = tokio::spawn(svc.ready().await.unwrap().call(3));
    tokio::time::sleep(Duration::from_millis(30)).await;
    gate.add_permits(2);
    assert_eq!(holder.await.unwrap().unwrap(), 1);
    assert_eq!(waiter.await.unwrap().unwrap(), 3);
    assert_eq!(layer.in_flight(), 0);
    assert_eq!(layer.waiting(), 0);
}

struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_never_exceed_capacity_and_leak_nothing() {
    const CAPACITY: usize = 5;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let layer = bulkhead(CAPACITY, Duration::from_millis(2));
    let inner = {
        let (running, peak) = (Arc::clone(&running), Arc::clone(&peak));
        service_fn(move |n: u32| {
            let (running, peak) = (Arc::clone(&running), Arc::clone(&peak));
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Counted out on drop too: cancelled calls end here.
                let _running = Running(running);
                tokio::time::sleep(Duration::from_micros(200 + u64::from(n % 7) * 100)).await;
                Ok::<_, BoxError>(n)
            }
        })
    };
    let svc = layer.layer(inner);

    let mut tasks = Vec::new();
    for n in 0..400u32 {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let call = svc.ready().await.unwrap().call(n);
            if n % 5 == 0 {
                // Every fifth caller gives up early: its slot must come back.
                let _ = tokio::time::timeout(Duration::from_micros(300), call).await;
                None
            } else {
                Some(call.await)
            }
        }));
    }
    let (mut ok, mut rejected) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Some(Ok(_)) => ok += 1,
            Some(Err(e)) => {
                assert!(matches!(Error::classify(e), Error::BulkheadFull { .. }));
                rejected += 1;
            }
            None => {}
        }
    }
    assert!(ok > 0, "some calls went through");
    assert_eq!(ok + rejected, 320);
    assert!(peak.load(Ordering::SeqCst) <= CAPACITY);
    assert_eq!(layer.in_flight(), 0, "no permit leaked");
    assert_eq!(layer.waiting(), 0);
}

#[test]
fn zero_capacity_is_a_configuration_error() {
    let error = BulkheadLayer::from_config(BulkheadConfig {
        max_concurrent: 0,
        ..BulkheadConfig::default()
    })
    .unwrap_err();
    assert_eq!(error.field, "max_concurrent");
}

#[test]
fn reads_from_toml() {
    let config: BulkheadConfig = toml::from_str("max_concurrent = 3\nmax_wait = \"20ms\"").unwrap();
    assert_eq!(config.max_concurrent, 3);
    assert_eq!(config.max_wait, Duration::from_millis(20));
    assert!(toml::from_str::<BulkheadConfig>("max_concurent = 3").is_err());
}

#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn metrics_report_occupancy_at_scrape_time_and_count_rejections() {
    let gate = Arc::new(Semaphore::new(0));
    let layer = bulkhead(1, Duration::ZERO);
    let mut registry = prometheus_client::registry::Registry::default();
    layer.register_metrics(&mut registry);
    let mut svc = layer.layer(gated(Arc::clone(&gate)));

    let holder = tokio::spawn(svc.ready().await.unwrap().call(1));
    tokio::task::yield_now().await;
    assert!(svc.ready().await.unwrap().call(2).await.is_err());

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("trellis_resilience_bulkhead_in_flight{name=\"test\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("trellis_resilience_bulkhead_rejections_total{name=\"test\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("trellis_resilience_bulkhead_waiting{name=\"test\"} 0"),
        "{text}"
    );
    gate.add_permits(1);
    holder.await.unwrap().unwrap();
}
