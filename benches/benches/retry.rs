//! Retry on the happy path: a bare `service_fn`, Trellis' retry layer and
//! `tower::retry::Retry` with an equivalent policy (3 attempts, retry any
//! error), with and without a retry budget. Calls complete synchronously,
//! so what is measured is each layer's own overhead.
//!
//! `retry/happy_path*` drive `ready().await` + `call().await` on a
//! current-thread runtime, where services run (the layers are built before
//! the runtime is entered, as a service's setup code often does).
//! `retry/outside_a_runtime` polls once with `now_or_never` on a thread
//! without a runtime: there the budget has no coarse clock and reads the
//! clock on every deposit.
//!
//! Run: `cargo bench -p trellis-benches --bench retry -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service, ServiceExt};
use trellis_benches::{current_thread_runtime, drive};
use trellis_resilience::retry::{Backoff, BudgetConfig, RetryConfig, RetryLayer};

/// tower's retry needs a `Policy`: retry any error, at most `remaining` times.
#[derive(Clone)]
struct Attempts {
    remaining: usize,
}

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Attempts {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Err(_) if self.remaining > 0 => {
                self.remaining -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// The same with tower's `TpsBudget` (deposit on success, withdraw per
/// retry), as in tower's own docs.
#[derive(Clone)]
struct Budgeted {
    remaining: usize,
    budget: Arc<TpsBudget>,
}

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Budgeted {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.budget.deposit();
                None
            }
            Err(_) if self.remaining > 0 && self.budget.withdraw() => {
                self.remaining -= 1;
                Some(ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn bare()
-> impl Service<u64, Response = u64, Error = Infallible, Future = Ready<Result<u64, Infallible>>> + Clone
{
    tower::service_fn(|request: u64| ready(Ok::<_, Infallible>(request.wrapping_add(1))))
}

fn run<S: Service<u64>>(service: &mut S, request: u64) -> Option<Result<S::Response, S::Error>> {
    match service.ready().now_or_never()? {
        Ok(service) => service.call(black_box(request)).now_or_never(),
        Err(error) => Some(Err(error)),
    }
}

fn ours(budget: Option<BudgetConfig>) -> RetryLayer {
    RetryLayer::from_config(RetryConfig {
        name: "bench".into(),
        max_attempts: 3,
        backoff: Backoff::exponential(Duration::from_millis(10), Duration::from_secs(1)),
        budget,
        ..RetryConfig::default()
    })
    .expect("valid bench configuration")
}

fn happy_path(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let mut group = c.benchmark_group("retry/happy_path");

    let mut service = bare();
    group.bench_function("bare service_fn", |b| {
        b.iter_custom(|iters| drive(&rt, &mut service, iters))
    });

    let mut service = tower::retry::RetryLayer::new(Attempts { remaining: 2 }).layer(bare());
    group.bench_function("tower Retry", |b| {
        b.iter_custom(|iters| drive(&rt, &mut service, iters))
    });

    let mut service = ours(None).layer(bare());
    group.bench_function("trellis Retry", |b| {
        b.iter_custom(|iters| drive(&rt, &mut service, iters))
    });

    let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
    let mut service = tower::retry::RetryLayer::new(Budgeted {
        remaining: 2,
        budget,
    })
    .layer(bare());
    group.bench_function("tower Retry + TpsBudget", |b| {
        b.iter_custom(|iters| drive(&rt, &mut service, iters))
    });

    // The defaults a user gets: `RetryLayer::builder().build()` has the
    // default budget on.
    let mut service = RetryLayer::builder()
        .build()
        .expect("default retry")
        .layer(bare());
    group.bench_function("trellis Retry + budget (defaults)", |b| {
        b.iter_custom(|iters| drive(&rt, &mut service, iters))
    });

    group.finish();
}

fn outside_a_runtime(c: &mut Criterion) {
    let mut group = c.benchmark_group("retry/outside_a_runtime");

    let mut service = bare();
    group.bench_function("bare service_fn", |b| b.iter(|| run(&mut service, 7)));

    let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
    let mut service = tower::retry::RetryLayer::new(Budgeted {
        remaining: 2,
        budget,
    })
    .layer(bare());
    group.bench_function("tower Retry + TpsBudget", |b| {
        b.iter(|| run(&mut service, 7))
    });

    let mut service = ours(Some(BudgetConfig::default())).layer(bare());
    group.bench_function("trellis Retry + budget (clock per deposit)", |b| {
        b.iter(|| run(&mut service, 7))
    });

    group.finish();
}

/// A more realistic inner service: it owns shared state behind an `Arc`
/// (like a connection pool), so cloning it per call costs a refcount round
/// trip, for tower's retry and ours alike.
fn pooled()
-> impl Service<u64, Response = u64, Error = Infallible, Future = Ready<Result<u64, Infallible>>> + Clone
{
    let pool = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tower::service_fn(move |request: u64| {
        let served = pool.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ready(Ok::<_, Infallible>(request.wrapping_add(served)))
    })
}

fn happy_path_pooled(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let mut group = c.benchmark_group("retry/happy_path_arc_service");

    let mut service = pooled();
    group.bench_function("bare service_fn", |b| {
        b.iter_custom(|iters| drive(&rt, &mut service, iters))
    });

    let mut service = tower::retry::RetryLayer::new(Attempts { remaining: 2 }).layer(pooled());
    group.bench_function("tower Retry", |b| {
        b.iter_custom(|iters| drive(&rt, &mut service, iters))
    });

    let mut service = ours(None).layer(pooled());
    group.bench_function("trellis Retry", |b| {
        b.iter_custom(|iters| drive(&rt, &mut service, iters))
    });

    let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
    let mut service = tower::retry::RetryLayer::new(Budgeted {
        remaining: 2,
        budget,
    })
    .layer(pooled());
    group.bench_function("tower Retry + TpsBudget", |b| {
        b.iter_custom(|iters| drive(&rt, &mut service, iters))
    });

    let mut service = ours(Some(BudgetConfig::default())).layer(pooled());
    group.bench_function("trellis Retry + budget", |b| {
        b.iter_custom(|iters| drive(&rt, &mut service, iters))
    });

    group.finish();
}

criterion_group!(benches, happy_path, happy_path_pooled, outside_a_runtime);
criterion_main!(benches);
