//! Per-call cost of the simple layers in their happy state, each beside its
//! baseline in the same run: a bare `service_fn`, tower's equivalent layer.
//!
//! Every measurement drives one service in a tight loop on a current-thread
//! runtime (`iter_custom`), so the number is the cost of one
//! `ready().await` + `call().await`, not of criterion's async harness.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, service_fn};
use trellis_benches::{bare, current_thread_runtime, drive};
use trellis_resilience::bulkhead::BulkheadLayer;
use trellis_resilience::error::BoxError;
use trellis_resilience::fallback::FallbackLayer;
use trellis_resilience::fault::FaultHandle;
use trellis_resilience::timeout::TimeoutLayer;

fn layers(c: &mut Criterion) {
    let rt = current_thread_runtime();
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
