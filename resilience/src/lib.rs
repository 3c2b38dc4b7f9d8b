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
//! One feature per middleware, as tower has, so a crate that needs only a
//! breaker builds only the breaker. `full` (the default) turns on all of
//! them plus `config` and `http`.
//!
//! - `circuit-breaker`, `retry`, `rate-limit`, `bulkhead`, `timeout`,
//!   `fallback`, `fault`: the middleware of the same name.
//! - `policy`: the composed [`ResiliencePolicy`] (turns on the five layers it
//!   composes and `config`).
//! - `config`: serde (de)serialization of every configuration type and the
//!   TOML/environment loaders; without it the configs are plain structs and
//!   neither serde nor toml is built.
//! - `http`: HTTP adapters — status classification, `Retry-After`,
//!   429/503/504 responses (and the HTTP retry policy with `retry`).
//! - `redis`: a GCRA rate limiter shared by every replica through Redis
//!   (turns on `rate-limit`).
//! - `metrics`: prometheus-client metrics registered in your `Registry`.
//!
//! MSRV: 1.88.

#[cfg(feature = "bulkhead")]
pub mod bulkhead;
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker;
pub mod config;
pub mod error;
#[cfg(feature = "fallback")]
pub mod fallback;
#[cfg(feature = "fault")]
pub mod fault;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "policy")]
pub mod policy;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
#[cfg(feature = "retry")]
pub mod retry;
#[cfg(feature = "timeout")]
pub mod timeout;

#[cfg(feature = "circuit-breaker")]
pub use circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use error::{BoxError, Error};
#[cfg(feature = "policy")]
pub use policy::{PolicyConfig, ResiliencePolicy};
#[cfg(feature = "rate-limit")]
pub use rate_limit::{
    KeyedRateLimitLayer, KeyedRateLimiter, RateLimitConfig, RateLimitLayer, RateLimiter,
};
#[cfg(feature = "retry")]
pub use retry::{Backoff, RetryConfig, RetryLayer};

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "full"))]
pub struct ReadmeDoctests;
