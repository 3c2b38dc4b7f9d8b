//! Per-call cost of hedging when the first attempt answers at once (the
//! common case: no hedge sent), beside tower's `hedge` in the same run.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;
use trellis_benches::{bare, current_thread_runtime, drive};
use trellis_resilience::hedge::{HedgeConfig, HedgeDelay, HedgeLayer, Idempotent};

/// tower's hedge policy: every request may be hedged.
#[derive(Clone)]
struct AlwaysHedge;

impl tower::hedge::Policy<u64> for AlwaysHedge {
    fn clone_request(&self, request: &u64) -> Option<u64> {
        Some(*request)
    }

    fn can_retry(&self, _request: &u64) -> bool {
        true
    }
}

fn hedge(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let mut group = c.benchmark_group("hedge");

    let mut svc = bare();
    group.bench_function("bare service_fn", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });

    // p95 over 10 s periods once 10 data points are in, as tower's docs.
    let mut svc = rt.block_on(async {
        tower::hedge::Hedge::new(bare(), AlwaysHedge, 10, 0.95, Duration::from_secs(10))
    });
    group.bench_function("tower Hedge (p95)", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });

    let layer = rt.block_on(async {
        HedgeLayer::from_config(HedgeConfig::default(), Idempotent::new(|_: &u64| true))
            .expect("valid config")
    });
    let mut svc = layer.layer(bare());
    group.bench_function("trellis Hedge (p95, budget)", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });

    let layer = rt.block_on(async {
        HedgeLayer::from_config(
            HedgeConfig {
                delay: HedgeDelay::Fixed(Duration::from_secs(1)),
                ..HedgeConfig::default()
            },
            Idempotent::new(|_: &u64| true),
        )
        .expect("valid config")
    });
    let mut svc = layer.layer(bare());
    group.bench_function("trellis Hedge (fixed delay, budget)", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });

    let layer = rt.block_on(async {
        HedgeLayer::from_config(HedgeConfig::default(), Idempotent::new(|_: &u64| false))
            .expect("valid config")
    });
    let mut svc = layer.layer(bare());
    group.bench_function("trellis Hedge (request not idempotent)", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });
    group.finish();
}

criterion_group!(benches, hedge);
criterion_main!(benches);
