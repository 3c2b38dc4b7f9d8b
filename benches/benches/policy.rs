//! The whole composed policy (five layers) beside a bare service and beside
//! tower's four equivalent layers stacked by hand, in the same run.
//!
//! Each iteration is `ready().await` + `call().await` on a current-thread
//! runtime; the layers are built before the runtime is entered.
//!
//! Run: `cargo bench -p trellis-benches --bench policy -- --warm-up-time 1 --measurement-time 3`
//!
//! tower has no circuit breaker, so its stack is rate limit ▸ retry ▸
//! timeout ▸ concurrency limit; ours adds the breaker and still has to cost
//! no more. Every layer is in its happy state: nothing fails, nothing is
//! limited.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, ServiceBuilder};
use trellis_benches::{bare, current_thread_runtime, drive};
use trellis_resilience::policy::{PolicyConfig, ResiliencePolicy};
use trellis_resilience::rate_limit::RateLimitConfig;

/// Retries every error up to 3 attempts, as our default policy does.
#[derive(Clone)]
struct Attempts(usize);

impl<E> tower::retry::Policy<u64, u64, E> for Attempts {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _req: &mut u64, result: &mut Result<u64, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => None,
            Err(_) if self.0 > 1 => {
                self.0 -= 1;
                Some(std::future::ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

const ALL_FIVE: &str = r#"
    name = "bench"
    [retry]
    max_attempts = 3
    [circuit_breaker]
    window = { type = "count", size = 100 }
    [rate_limit]
    rate = 1000000000
    period = "1s"
    burst = 1000000000
    [timeout]
    timeout = "1s"
    [bulkhead]
    max_concurrent = 64
"#;

fn policy(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let mut group = c.benchmark_group("policy");

    let mut svc = bare();
    group.bench_function("bare service_fn", |b| {
        b.iter_custom(|iters| drive(&rt, &mut svc, iters))
    });

    // tower's RateLimit must be created inside the runtime (it arms a timer),
    // and sits outside retry because it is not `Clone` (retry clones its
    // inner service); the per-call work is the same in either position.
    let mut tower_stack = rt.block_on(async {
        ServiceBuilder::new()
            .rate_limit(1_000_000_000, Duration::from_secs(1))
            .retry(Attempts(3))
            .timeout(Duration::from_secs(1))
            .concurrency_limit(64)
            .service(bare())
    });
    group.bench_function("tower: rate_limit+retry+timeout+concurrency_limit", |b| {
        b.iter_custom(|iters| drive(&rt, &mut tower_stack, iters))
    });

    // tower's four in the order of issue #17: timeout ▸ concurrency limit ▸
    // rate limit ▸ retry (outermost first).
    let mut tower_goal_order = rt.block_on(async {
        ServiceBuilder::new()
            .timeout(Duration::from_secs(1))
            .concurrency_limit(64)
            .rate_limit(1_000_000_000, Duration::from_secs(1))
            .retry(Attempts(3))
            .service(bare())
    });
    group.bench_function("tower: timeout+concurrency_limit+rate_limit+retry", |b| {
        b.iter_custom(|iters| drive(&rt, &mut tower_goal_order, iters))
    });

    // The defaults a user gets: every section at its default (retry budget
    // on, count-window breaker, 1 s timeout, 25-slot bulkhead) except the
    // rate, whose default (100/s) this loop would exceed.
    let mut defaults = PolicyConfig::recommended("bench");
    defaults.rate_limit = Some(RateLimitConfig::new(1_000_000_000, Duration::from_secs(1)));
    let mut ours = ResiliencePolicy::from_config(defaults)
        .expect("policy")
        .layer(bare());
    group.bench_function("trellis: ResiliencePolicy (5 layers, defaults)", |b| {
        b.iter_custom(|iters| drive(&rt, &mut ours, iters))
    });

    let config = PolicyConfig::from_toml_str(ALL_FIVE).expect("policy config");
    let mut ours = ResiliencePolicy::from_config(config.clone())
        .expect("policy")
        .layer(bare());
    group.bench_function(
        "trellis: ResiliencePolicy (5 layers, retry budget on)",
        |b| b.iter_custom(|iters| drive(&rt, &mut ours, iters)),
    );

    // The same five layers stacked by hand, without the policy's optional
    // slots: what the layers cost on their own.
    let policy = ResiliencePolicy::from_config(config.clone()).expect("policy");
    let mut by_hand = ServiceBuilder::new()
        .layer(policy.retry().expect("retry").clone())
        .layer(policy.circuit_breaker().expect("breaker").clone())
        .layer(policy.rate_limit().expect("limit").clone())
        .layer(*policy.timeout().expect("timeout"))
        .layer(policy.bulkhead().expect("bulkhead").clone())
        .service(bare());
    group.bench_function("trellis: the same five layers stacked by hand", |b| {
        b.iter_custom(|iters| drive(&rt, &mut by_hand, iters))
    });

    let mut no_budget = config;
    if let Some(retry) = no_budget.retry.as_mut() {
        retry.budget = None;
    }
    let mut ours = ResiliencePolicy::from_config(no_budget)
        .expect("policy")
        .layer(bare());
    group.bench_function(
        "trellis: ResiliencePolicy (5 layers, no retry budget)",
        |b| b.iter_custom(|iters| drive(&rt, &mut ours, iters)),
    );

    // Where the time goes: the policy with one layer at a time.
    let sections = [
        ("retry", "[retry]\nmax_attempts = 3"),
        (
            "circuit_breaker",
            "[circuit_breaker]\nwindow = { type = \"count\", size = 100 }",
        ),
        (
            "rate_limit",
            "[rate_limit]\nrate = 1000000000\nburst = 1000000000",
        ),
        ("timeout", "[timeout]\ntimeout = \"1s\""),
        ("bulkhead", "[bulkhead]\nmax_concurrent = 64"),
    ];
    for (label, toml) in sections {
        let config = PolicyConfig::from_toml_str(toml).expect("section config");
        let mut one = ResiliencePolicy::from_config(config)
            .expect("policy")
            .layer(bare());
        group.bench_function(format!("trellis: policy with only {label}"), |b| {
            b.iter_custom(|iters| drive(&rt, &mut one, iters))
        });
    }
    group.finish();
}

criterion_group!(benches, policy);
criterion_main!(benches);
