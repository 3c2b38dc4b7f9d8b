//! Retry: send a failed call again, a bounded number of times, after a
//! growing and randomized wait, within a budget.
//!
//! # Why
//!
//! Many failures are transient: a connection reset, a replica restarting, a
//! brief overload. Retrying hides them from the caller. Retrying carelessly
//! makes outages worse, so this layer bounds retries three ways:
//!
//! - **attempts** (`max_attempts`, the first included) and **total time**
//!   (`max_elapsed`: the layer never starts a wait that would end past it);
//! - a **backoff** between attempts ([`Backoff`]: none, fixed or exponential
//!   with a cap, with full, equal or decorrelated jitter) so clients that
//!   failed together do not retry together;
//! - a **retry budget** ([`RetryBudget`]) shared by every clone: retries may
//!   be at most a fraction of recent requests, so under a full outage the
//!   extra load stays a small fraction instead of multiplying by
//!   `max_attempts` (the [`budget`] module explains why this matters more
//!   than the attempt limit).
//!
//! # How it behaves
//!
//! A [`RetryPolicy`] classifies each attempt's outcome, **results as well as
//! errors** (a response saying "busy" can be retried), and copies the request
//! for re-sending. The [`DefaultRetryPolicy`] retries every error except
//! `CircuitOpen`, `BulkheadFull` and an inner `RetriesExhausted` (retrying
//! them cannot help), and retries `RateLimited` no sooner than its
//! `retry_after`. Closures are policies too.
//!
//! - When the policy says **don't retry**, the outcome passes through
//!   **unchanged**: the inner error (boxed) or the response.
//! - When the layer **gives up** on a retryable error it returns
//!   [`RetriesExhausted`](crate::error::RetriesExhausted) `{ attempts, reason,
//!   last_error }` (boxed), reason `MaxAttempts`, `MaxElapsed` (also when a
//!   requested `retry_after` is longer than `max_retry_after`) or
//!   `BudgetExhausted`. On a retryable **response** it returns that last
//!   response.
//! - Every retry emits a `debug` tracing event (attempt, delay); giving up a
//!   `warn` event. Behind feature `metrics`, `RetryLayer::register_metrics`
//!   (or one shared `RetryMetrics` for several layers) counts retries and
//!   give-ups by reason; the names are in `resilience/docs/retry.md`.
//!
//! The generic path needs `Request: Clone` (the policy's `clone_request`);
//! the HTTP policy in `http` (feature `http`) buffers request bodies up to a
//! bound instead, honours `Retry-After` and retries only idempotent methods.
//! The happy path allocates nothing: one request clone, one `Arc` clone, and
//! with a budget one relaxed load of the budget's coarse clock and one
//! compare-and-swap (a clock read instead, outside any tokio runtime; see
//! [`budget`]).
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use trellis_resilience::error::BoxError;
//! use trellis_resilience::retry::{Backoff, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = calls.clone();
//! let flaky = tower::service_fn(move |name: &'static str| {
//!     let n = counter.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         if n < 2 { Err::<String, BoxError>("connection reset".into()) } else { Ok(format!("hello {name}")) }
//!     }
//! });
//! let layer = RetryLayer::builder()
//!     .max_attempts(3)
//!     .backoff(Backoff::fixed(Duration::from_millis(1)))
//!     .build()
//!     .unwrap();
//! let mut service = ServiceBuilder::new().layer(layer).service(flaky);
//! let reply = service.ready().await.unwrap().call("trellis").await.unwrap();
//! assert_eq!(reply, "hello trellis");
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # }
//! ```

pub mod backoff;
pub mod budget;
mod config;
pub mod future;
#[cfg(feature = "http")]
pub mod http;
mod layer;
#[cfg(feature = "metrics")]
mod metrics;
mod policy;
mod service;

pub use backoff::{Backoff, BackoffKind, Delays, Jitter};
pub use budget::{BudgetConfig, RetryBudget};
pub use config::RetryConfig;
pub use layer::{RetryBuilder, RetryLayer};
#[cfg(feature = "metrics")]
pub use metrics::RetryMetrics;
pub use policy::{DefaultRetryPolicy, RetryDecision, RetryPolicy};
pub use service::Retry;
