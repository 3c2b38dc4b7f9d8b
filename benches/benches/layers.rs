//! Per-call cost of the simple layers in their happy state, each beside its
//! baseline in the same run: a bare `service_fn`, tower's equivalent layer.
//!
//! Every measurement drives one service in a tight loop on a current-thread
//! runtime (`iter_custom`), so the number is the cost of one
//! `ready().await` + `call().await`, not of criterion's async harness.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceExt, service_fn};
use trellis_resilience::bulkhead::BulkheadLayer;
use trellis_resilience::error::BoxError;
use trellis_resilience::fallback::FallbackLayer;
use trellis_resilience::fault::FaultHandle;
use trellis_resilience::timeout::TimeoutLayer;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// Measures `iters` calls of `svc` and returns the elapsed time.
fn drive<S>(rt: &tokio::runtime::Runtime, svc: &mut S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            let out = svc.ready().await.unwrap().call(i).await.unwrap();
            std::hint::black_box(out);
        }
        start.elapsed()
    })
}

fn bare() -> impl Service<u64, Response = u64, Error = Infallible, Future: Send> + Clone {
    service_fn(|n: u64| std::future::ready(Ok::<_, Infallible>(n.wrapping_add(1))))
}

fn layers(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("layers");

    let mut svc = bare();
    group.bench_function("bare service_fn", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });

    let mut svc = tower::timeout::TimeoutLayer::new(Duration::from_secs(1)).layer(bare());
    group.bench_function("timeout/tower", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });
    let mut svc = TimeoutLayer::new(Duration::from_secs(1)).layer(bare());
    group.bench_function("timeout/trellis", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });

    let mut svc = tower::limit::ConcurrencyLimitLayer::new(64).layer(bare());
    group.bench_function("concurrency/tower ConcurrencyLimit", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });
    let mut svc = BulkheadLayer::new(64).layer(bare());
    group.bench_function("concurrency/trellis Bulkhead", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });

    let fallback = service_fn(|_: u64| std::future::ready(Ok::<_, BoxError>(0)));
    let mut svc = FallbackLayer::new(fallback).layer(bare());
    group.bench_function("fallback/trellis (primary succeeds)", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });

    let faults = FaultHandle::new();
    let mut svc = faults.layer().layer(bare());
    group.bench_function("fault/trellis (disabled)", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });
    group.finish();
}

criterion_group!(benches, layers);
criterion_main!(benches);
