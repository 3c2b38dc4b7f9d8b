//! Per-call cost of the adaptive concurrency limit in its happy state
//! (under the limit), beside a plain bulkhead, tower's `ConcurrencyLimit`
//! and tower-resilience 0.13's `adaptive` (AIMD) in the same run.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;
use trellis_benches::{bare, current_thread_runtime, drive};
use trellis_resilience::adaptive::{
    AdaptiveConfig, AdaptiveLimitLayer, AimdConfig, Algorithm, GradientConfig,
};
use trellis_resilience::bulkhead::BulkheadLayer;

fn adaptive(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let mut group = c.benchmark_group("adaptive");

    let mut svc = bare();
    group.bench_function("bare service_fn", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });
    let mut svc = tower::limit::ConcurrencyLimitLayer::new(64).layer(bare());
    group.bench_function("tower ConcurrencyLimit (fixed)", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });
    let mut svc = BulkheadLayer::new(64).layer(bare());
    group.bench_function("trellis Bulkhead (fixed)", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });

    let aimd = tower_resilience::adaptive::Aimd::builder()
        .initial_limit(20)
        .min_limit(1)
        .max_limit(1000)
        .latency_threshold(Duration::from_millis(100))
        .build()
        .expect("valid AIMD");
    let mut svc = tower_resilience::adaptive::AdaptiveLimiterLayer::new(aimd).layer(bare());
    group.bench_function("tower-resilience adaptive (AIMD)", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });

    let layer = AdaptiveLimitLayer::from_config(AdaptiveConfig {
        algorithm: Algorithm::Aimd(AimdConfig::default()),
        ..AdaptiveConfig::default()
    })
    .expect("valid config");
    let mut svc = layer.layer(bare());
    group.bench_function("trellis adaptive (AIMD)", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });
    let layer = AdaptiveLimitLayer::from_config(AdaptiveConfig {
        algorithm: Algorithm::Gradient(GradientConfig::default()),
        ..AdaptiveConfig::default()
    })
    .expect("valid config");
    let mut svc = layer.layer(bare());
    group.bench_function("trellis adaptive (gradient)", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });
    group.finish();
}

criterion_group!(benches, adaptive);
criterion_main!(benches);
