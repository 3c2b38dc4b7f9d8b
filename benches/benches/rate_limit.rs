//! Rate limiter: Trellis's check against governor's (direct and keyed), the
//! layer against `tower::limit::RateLimit` on a bare `service_fn`, and two
//! threads sharing one limiter against one thread. Rates are set so high that
//! nothing is rejected: this measures the cost of an admitted check.
//!
//! `cargo bench -p trellis-benches --bench rate_limit -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use governor::{Quota, RateLimiter as Governor};
use tower::{Service, ServiceExt, service_fn};
use trellis_resilience::rate_limit::{
    KeyedRateLimiter, RateLimitConfig, RateLimitLayer, RateLimiter,
};

/// Keys cycled through by the keyed benches.
const KEYS: u64 = 1024;

fn trellis_config() -> RateLimitConfig {
    // One permit per nanosecond, a burst of a billion: never rejects here.
    RateLimitConfig::new(1_000_000_000, Duration::from_secs(1))
        .with_burst(1_000_000_000)
        .with_max_keys(100_000)
}

fn governor_quota() -> Quota {
    let max = NonZeroU32::new(u32::MAX).expect("non-zero");
    Quota::per_second(max).allow_burst(max)
}

fn direct(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit/check_direct");
    let ours = RateLimiter::from_config(trellis_config()).expect("valid config");
    let theirs = Governor::direct(governor_quota());
    group.bench_function("governor", |b| b.iter(|| black_box(theirs.check().is_ok())));
    group.bench_function("trellis", |b| b.iter(|| black_box(ours.check().is_ok())));
    group.finish();
}

fn keyed(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit/check_keyed");
    let ours = KeyedRateLimiter::<u64>::from_config(trellis_config()).expect("valid config");
    let dashmap = Governor::dashmap(governor_quota());
    let hashmap = Governor::hashmap(governor_quota());
    let mut key = 0u64;
    group.bench_function("governor_dashmap", |b| {
        b.iter(|| {
            key = (key + 1) % KEYS;
            black_box(dashmap.check_key(&key).is_ok())
        })
    });
    group.bench_function("governor_hashmap", |b| {
        b.iter(|| {
            key = (key + 1) % KEYS;
            black_box(hashmap.check_key(&key).is_ok())
        })
    });
    group.bench_function("trellis", |b| {
        b.iter(|| {
            key = (key + 1) % KEYS;
            black_box(ours.check_key(&key).is_ok())
        })
    });
    group.finish();
}

/// Calls a service `iters` times, polling readiness and the response once
/// each (every service here is always ready and answers at once).
fn drive<S: Service<u64>>(svc: &mut S, iters: u64) -> Duration
where
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for i in 0..iters {
        let ready = svc
            .ready()
            .now_or_never()
            .expect("never waits here")
            .expect("ready");
        black_box(ready.call(i).now_or_never());
    }
    start.elapsed()
}

fn layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    // tower's RateLimit creates its sleep at construction: needs a runtime.
    let _guard = runtime.enter();
    let mut group = c.benchmark_group("rate_limit/layer");
    let bare = service_fn(|x: u64| async move { Ok::<_, std::convert::Infallible>(x) });

    group.bench_function("bare_service_fn", |b| {
        let mut svc = bare;
        b.iter_custom(|iters| drive(&mut svc, iters))
    });
    group.bench_function("tower_rate_limit", |b| {
        // A rate so large that tower's limiter never sleeps.
        let mut svc = tower::ServiceBuilder::new()
            .rate_limit(u64::MAX / 2, Duration::from_secs(1))
            .service(bare);
        b.iter_custom(|iters| drive(&mut svc, iters))
    });
    group.bench_function("trellis_rate_limit", |b| {
        let layer = RateLimitLayer::from_config(trellis_config()).expect("valid config");
        let mut svc = tower::ServiceBuilder::new().layer(layer).service(bare);
        b.iter_custom(|iters| drive(&mut svc, iters))
    });
    group.finish();
}

/// Runs `check` `iters` times on each of `threads` threads at once; returns
/// the wall time.
fn on_threads(threads: usize, iters: u64, check: Arc<dyn Fn() -> bool + Send + Sync>) -> Duration {
    let barrier = Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (barrier, check) = (barrier.clone(), check.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..iters {
                    black_box(check());
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().expect("bench thread");
    }
    start.elapsed()
}

fn contention(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit/threads");
    let ours = RateLimiter::from_config(trellis_config()).expect("valid config");
    let theirs = Arc::new(Governor::direct(governor_quota()));
    for threads in [1usize, 2] {
        let limiter = ours.clone();
        group.bench_with_input(BenchmarkId::new("trellis", threads), &threads, |b, &n| {
            let limiter = limiter.clone();
            let check: Arc<dyn Fn() -> bool + Send + Sync> =
                Arc::new(move || limiter.check().is_ok());
            b.iter_custom(|iters| on_threads(n, iters, check.clone()))
        });
        let limiter = theirs.clone();
        group.bench_with_input(BenchmarkId::new("governor", threads), &threads, |b, &n| {
            let limiter = limiter.clone();
            let check: Arc<dyn Fn() -> bool + Send + Sync> =
                Arc::new(move || limiter.check().is_ok());
            b.iter_custom(|iters| on_threads(n, iters, check.clone()))
        });
    }
    group.finish();
}

criterion_group!(benches, direct, keyed, layer, contention);
criterion_main!(benches);
