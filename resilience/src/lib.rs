//! # trellis-resilience
//!
//! Tower layers that keep a service standing when its dependencies are not.
//!
//! | module | what it does |
//! |---|---|
//! | [`error`] | the rejection types each layer returns, and one flat [`Error`] |
//! | [`config`] | build-time [`config::ConfigError`] and the duration format of serde configs |
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

pub mod config;
pub mod error;
pub mod retry;

pub use error::{BoxError, Error};
pub use retry::{Backoff, RetryConfig, RetryLayer};
