//! Criterion benches for Trellis; see `benches/README.md` for the tables and
//! the commands that produce them. The benches live in `benches/benches/*.rs`;
//! this library holds the harness pieces several of them share.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use tower::{Service, ServiceExt, service_fn};

/// A current-thread runtime with timers, for per-call layer benches.
///
/// # Panics
///
/// When the runtime cannot be built (the bench cannot run at all then).
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
}

/// The baseline service: answers at once, allocates nothing.
pub fn bare() -> impl Service<u64, Response = u64, Error = Infallible, Future: Send> + Clone {
    service_fn(|n: u64| std::future::ready(Ok::<_, Infallible>(n.wrapping_add(1))))
}

/// Drives `iters` calls (`ready().await` + `call().await`) through `svc` in
/// a tight loop and returns the time they took, for `iter_custom`: the
/// number is the cost of the calls, not of criterion's async harness.
///
/// # Panics
///
/// When a call fails: a bench measures the happy path only.
pub fn drive<S>(rt: &tokio::runtime::Runtime, svc: &mut S, iters: u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            let out = svc
                .ready()
                .await
                .expect("service ready")
                .call(i)
                .await
                .expect("call succeeds");
            std::hint::black_box(out);
        }
        start.elapsed()
    })
}
