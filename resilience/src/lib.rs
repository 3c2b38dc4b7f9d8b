//! # trellis-resilience
//!
//! Tower layers that keep a service standing when its dependencies are not.
//!
//! | module | what it does |
//! |---|---|
//! | [`error`] | the rejection types each layer returns, and one flat [`Error`] |
//! | [`bulkhead`] | a cap on concurrent calls with a bounded wait |
//! | [`timeout`] | a per-call deadline with a typed error |
//! | [`fallback`] | answer selected failures from a fallback service |
//! | [`fault`] | inject latency, errors and aborts, re-tunable at run time |
//! | `http` | HTTP answers for errors: 503, 429 with `Retry-After`, 504 (feature `http`) |
//! | [`config`] | build-time [`config::ConfigError`] and the duration format of serde configs |
//! | [`circuit_breaker`] | closed / open / half-open breaker with count, time and consecutive windows |
//! | [`rate_limit`] | GCRA rate limiter: lock-free, one limit or one per key (bounded), or shared through Redis |
//! | [`policy`] | the five layers composed in the recommended order, from code, TOML or environment |
//! | [`retry`] | retries with max attempts / elapsed time, jittered backoff, a shared retry budget, result predicates, an HTTP policy |
//!
//! Each middleware is a `Layer` + `Service` pair that wraps any
//! `Service<Request>`, shares its state across clones, and reports rejections
//! as concrete error types inside tower's `BoxError`.
//!
//! ## Features
//!
//! - `http` (default): HTTP adapters — status classification, `Retry-After`,
//!   429/503/504 responses.
//! - `redis`: a GCRA rate limiter shared by every replica through Redis.
//! - `metrics`: prometheus-client metrics registered in your `Registry`.
//!
//! MSRV: 1.88.

pub mod bulkhead;
pub mod circuit_breaker;
pub mod config;
pub mod error;
pub mod fallback;
pub mod fault;
#[cfg(feature = "http")]
pub mod http;
pub mod policy;
pub mod rate_limit;
pub mod retry;
pub mod timeout;

pub use circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use error::{BoxError, Error};
pub use policy::{PolicyConfig, ResiliencePolicy};
pub use rate_limit::{
    KeyedRateLimitLayer, KeyedRateLimiter, RateLimitConfig, RateLimitLayer, RateLimiter,
};
pub use retry::{Backoff, RetryConfig, RetryLayer};

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
