//! Circuit breaker overhead in its closed state, beside a bare
//! `tower::service_fn` call, failsafe's breaker and tower-resilience's
//! circuit breaker layer; and the per-call cost of two threads sharing one
//! breaker against one thread.
//!
//! Every service future here is ready at once, so each call is polled once
//! with a no-op waker: what is measured is the breaker, not an executor.
//! Results and the command: `benches/README.md`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::CircuitBreaker as _;
use tower::{Service, service_fn};
use trellis_resilience::circuit_breaker::CircuitBreakerLayer;

/// One ready-then-call round trip through `svc`, polled once.
#[inline]
fn call_once<S>(svc: &mut S, cx: &mut Context<'_>, request: u64) -> bool
where
    S: Service<u64, Response = u64>,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        _ => return false,
    }
    let future = pin!(svc.call(request));
    matches!(future.poll(cx), Poll::Ready(Ok(_)))
}

fn bare()
-> impl Service<u64, Response = u64, Error = std::convert::Infallible, Future: Send> + Clone + Send
{
    service_fn(|x: u64| std::future::ready(Ok::<_, std::convert::Infallible>(x.wrapping_add(1))))
}

/// The error of [`flaky`]; a unit type so that failing allocates nothing.
#[derive(Debug)]
struct Flaky;

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("flaky")
    }
}

impl std::error::Error for Flaky {}

/// Fails one request in a hundred: the window then really moves (cursor,
/// slot swaps, totals) instead of taking the all-success shortcut.
fn flaky() -> impl Service<u64, Response = u64, Error = Flaky, Future: Send> + Clone + Send {
    service_fn(|x: u64| {
        std::future::ready(if x.is_multiple_of(100) {
            Err(Flaky)
        } else {
            Ok(x)
        })
    })
}

fn trellis_breaker() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name("bench")
        .count_window(100)
        .minimum_calls(100)
        .build()
        .expect("valid breaker configuration")
}

fn closed_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("circuit_breaker_closed");
    let mut cx = Context::from_waker(Waker::noop());

    let mut svc = bare();
    group.bench_function("bare_service_fn", |b| {
        b.iter(|| black_box(call_once(&mut svc, &mut cx, black_box(1))))
    });

    let mut svc = tower::Layer::layer(&trellis_breaker(), bare());
    group.bench_function("trellis_count_window", |b| {
        b.iter(|| black_box(call_once(&mut svc, &mut cx, black_box(1))))
    });

    // A time window needs "now": one clock read per call.
    let time_window = CircuitBreakerLayer::builder()
        .name("bench")
        .time_window(Duration::from_secs(10))
        .minimum_calls(100)
        .build()
        .expect("valid breaker configuration");
    let mut svc = tower::Layer::layer(&time_window, bare());
    group.bench_function("trellis_time_window", |b| {
        b.iter(|| black_box(call_once(&mut svc, &mut cx, black_box(1))))
    });

    let mut svc = tower::Layer::layer(&trellis_breaker(), flaky());
    let mut i = 0u64;
    group.bench_function("trellis_count_window_1pct_failures", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(call_once(&mut svc, &mut cx, i))
        })
    });

    // failsafe is not a tower layer: its synchronous `call` wraps the same
    // work the bare service does.
    let breaker = failsafe::Config::new().build();
    group.bench_function("failsafe_call", |b| {
        b.iter(|| {
            black_box(breaker.call(|| Ok::<u64, ()>(black_box(1u64).wrapping_add(1)))).is_ok()
        })
    });

    // tower-resilience takes a tokio Mutex inside a boxed future per call;
    // its futures need no runtime when uncontended, but enter one anyway.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let layer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .sliding_window_size(100)
        .minimum_number_of_calls(100)
        .build()
        .expect("valid tower-resilience configuration");
    let mut svc = tower::Layer::layer(&layer, bare());
    group.bench_function("tower_resilience_layer", |b| {
        b.iter(|| black_box(call_once(&mut svc, &mut cx, black_box(1))))
    });
    group.finish();
}

/// Wall time for each of `threads` threads to make `iters` calls on its own
/// clone of `svc`, all started together: the per-call cost one caller sees
/// while the others hammer the same breaker.
fn parallel<S>(svc: &S, threads: usize, iters: u64) -> Duration
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let mut svc = svc.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut cx = Context::from_waker(Waker::noop());
                barrier.wait();
                let start = Instant::now();
                for i in 0..iters {
                    black_box(call_once(&mut svc, &mut cx, black_box(i)));
                }
                start.elapsed()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("bench thread"))
        .max()
        .unwrap_or_default()
}

fn contention(c: &mut Criterion) {
    let mut group = c.benchmark_group("circuit_breaker_threads");
    let svc = bare();
    group.bench_function("bare_1_thread", |b| {
        b.iter_custom(|iters| parallel(&svc, 1, iters))
    });
    group.bench_function("bare_2_threads", |b| {
        b.iter_custom(|iters| parallel(&svc, 2, iters))
    });
    let svc = tower::Layer::layer(&trellis_breaker(), bare());
    group.bench_function("trellis_1_thread", |b| {
        b.iter_custom(|iters| parallel(&svc, 1, iters))
    });
    group.bench_function("trellis_2_threads", |b| {
        b.iter_custom(|iters| parallel(&svc, 2, iters))
    });
    let svc = tower::Layer::layer(&trellis_breaker(), flaky());
    group.bench_function("trellis_1pct_failures_1_thread", |b| {
        b.iter_custom(|iters| parallel(&svc, 1, iters))
    });
    group.bench_function("trellis_1pct_failures_2_threads", |b| {
        b.iter_custom(|iters| parallel(&svc, 2, iters))
    });
    group.finish();
}

criterion_group!(benches, closed_state, contention);
criterion_main!(benches);
