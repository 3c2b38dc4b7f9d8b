//! Rate limiting: GCRA with a lock-free atomic state, one limit or one per
//! key, in process or shared through Redis.
//!
//! # Why
//!
//! A rate limiter protects a dependency (or yourself) from more calls than it
//! can take, and shares capacity fairly between clients. Trellis uses the
//! generic cell rate algorithm ([`Gcra`]): the whole state of a limit is one
//! "theoretical arrival time" in an `AtomicU64`, updated with a single
//! compare-and-swap, so concurrent callers never take a lock and a check costs
//! one clock read plus one atomic update.
//!
//! # How it behaves
//!
//! A limit is `rate` calls per `period` with bursts of `burst`: after a quiet
//! spell `burst` calls pass at once, then one every `period / rate`. A call
//! that finds no permit either
//!
//! - is rejected at once ([`RateLimitMode::Reject`]) with
//!   [`RateLimited { retry_after }`](crate::error::RateLimited), `retry_after`
//!   being the exact time after which the same call would pass, or
//! - waits ([`RateLimitMode::Wait`]): it reserves the next free permit and
//!   sleeps until then, if that is within `max_wait`; otherwise it is
//!   rejected at once, as above. A reservation is kept even if the waiting
//!   call is cancelled.
//!
//! | limiter | layer | state |
//! |---|---|---|
//! | [`RateLimiter`] | [`RateLimitLayer`] → [`RateLimit`] | one cell for all calls |
//! | [`KeyedRateLimiter`] | [`KeyedRateLimitLayer`] → [`KeyedRateLimit`] | one cell per key ([`KeyExtractor`]), at most `max_keys` keys: idle keys are evicted first (governor#171) |
//! | `redis::RedisRateLimiter` (feature `redis`) | `redis::RedisRateLimitLayer` | one Redis key per key, shared by every replica, failing open or closed when Redis is down |
//!
//! # Clock
//!
//! A check reads the clock once. `Instant::now()` can cost more than the rest
//! of the check (about 30 ns against about 10 ns), so a limiter reads the CPU's
//! time-stamp counter through `quanta` (the clock governor uses), except when it
//! is built while tokio's clock is paused (`#[tokio::test(start_paused = true)]`,
//! `tokio::time::pause()`): then it reads `tokio::time::Instant`, so tests drive
//! it with `tokio::time::advance`. Pause the clock before building the limiter.
//!
//! Limits are decided in `call`, not in `poll_ready`, so readiness polled on
//! an idle connection takes no permit. In wait mode the ready inner service
//! moves into the response future while it sleeps (so the inner service must
//! be `Clone`, like tower's `Retry` requires).
//!
//! HTTP key extractors (feature `http`) are in [`http`]. Metrics (feature
//! `metrics`) are listed in `docs/rate_limit.md`.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceExt, service_fn};
//! use trellis_resilience::Error;
//! use trellis_resilience::rate_limit::{RateLimitConfig, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // 10 calls per second, bursts of 2, waiting at most 50 ms for a permit.
//! let config = RateLimitConfig::new(10, Duration::from_secs(1))
//!     .with_burst(2)
//!     .with_wait(Duration::from_millis(50));
//! let mut svc = tower::ServiceBuilder::new()
//!     .layer(RateLimitLayer::from_config(config).unwrap())
//!     .service(service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x) }));
//!
//! for i in 0..2 {
//!     assert_eq!(svc.ready().await.unwrap().call(i).await.unwrap(), i);
//! }
//! // The third would wait 100 ms, more than 50 ms: rejected at once.
//! let error = svc.ready().await.unwrap().call(3).await.unwrap_err();
//! match Error::classify(error) {
//!     Error::RateLimited { retry_after } => assert_eq!(retry_after, Duration::from_millis(100)),
//!     other => panic!("{other}"),
//! }
//! // 60 ms later the wait is 40 ms: it waits, then passes.
//! tokio::time::advance(Duration::from_millis(60)).await;
//! let start = tokio::time::Instant::now();
//! assert_eq!(svc.ready().await.unwrap().call(4).await.unwrap(), 4);
//! assert_eq!(start.elapsed(), Duration::from_millis(40));
//! # }
//! ```

mod config;
pub mod future;
mod gcra;
#[cfg(feature = "http")]
pub mod http;
mod key;
mod keyed;
mod layer;
mod limiter;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "redis")]
pub mod redis;
mod service;

pub use config::{RateLimitConfig, RateLimitMode};
pub use gcra::Gcra;
pub use key::{GlobalKey, KeyExtractor};
pub use keyed::KeyedRateLimiter;
pub use layer::{KeyedRateLimitLayer, RateLimitLayer};
pub use limiter::RateLimiter;
#[cfg(feature = "metrics")]
pub use metrics::RateLimitMetricFamilies;
pub use service::{KeyedRateLimit, RateLimit};
