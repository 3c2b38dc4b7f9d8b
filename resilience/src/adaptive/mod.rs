//! Adaptive concurrency limit: a cap on concurrent calls that follows
//! latency, and sheds what is above it.
//!
//! # Why
//!
//! A fixed [bulkhead](crate::bulkhead) limit is always tuned wrong
//! somewhere: too high and, when the dependency slows down, calls pile up
//! inside it and every one of them waits (latency explodes, then timeouts
//! and retries follow); too low and capacity sits idle. The right limit is
//! the service's capacity, which moves with deploys, neighbours and data.
//! Little's law gives a way to find it: when concurrency rises beyond
//! capacity, latency rises with it. So the limit watches latency.
//!
//! # Behaviour
//!
//! Each call that finishes reports its latency to one of two algorithms
//! ([`Algorithm`]):
//!
//! - **AIMD** ([`AimdConfig`]): additive increase while calls are fast and
//!   the limit is in use, multiplicative decrease when a call is slower
//!   than a threshold, times out ([`Elapsed`](crate::error::Elapsed)) or is
//!   rejected downstream, at most once per round trip. Netflix's `AIMDLimit`
//!   and tower-resilience's `adaptive` AIMD.
//! - **Gradient** ([`GradientConfig`], the default): the ratio of long-term
//!   to short-term latency scales the limit, plus a √limit queue allowance;
//!   no threshold to tune. Netflix's `Gradient2Limit` and Envoy's adaptive
//!   concurrency gradient controller.
//!
//! A call above the limit is refused at once with
//! [`Overloaded`](crate::error::Overloaded), never queued: a queue in front
//! of an overloaded service only adds its wait to the latency. Its
//! `retry_after` is the recent latency; the `http` module answers it with
//! 503 and `Retry-After`. Failures other than timeouts and rejections say
//! nothing about capacity and count as answers. A cancelled call frees its
//! slot and reports nothing.
//!
//! # Cost
//!
//! Admission is one relaxed load of the limit and a compare-and-swap on the
//! in-flight counter, as the bulkhead. Each completed call reads the clock
//! and takes a mutex for a few floating-point operations (never across an
//! await).
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use trellis_resilience::adaptive::{AdaptiveConfig, AdaptiveLimitLayer};
//!
//! let layer = AdaptiveLimitLayer::from_config(AdaptiveConfig::default()).unwrap();
//! let mut svc = ServiceBuilder::new()
//!     .layer(layer.clone())
//!     .service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n * 2) });
//! assert_eq!(svc.ready().await.unwrap().call(21).await.unwrap(), 42);
//! assert_eq!(layer.in_flight(), 0);
//! # }
//! ```

mod config;
pub mod future;
mod layer;
mod limiter;
#[cfg(feature = "metrics")]
mod metrics;
mod service;

pub use config::{AdaptiveConfig, AimdConfig, Algorithm, GradientConfig};
pub use layer::AdaptiveLimitLayer;
pub use service::AdaptiveLimit;
