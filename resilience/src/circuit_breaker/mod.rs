//! Circuit breaker: stop calling a dependency that keeps failing, give it
//! time, then try it again carefully.
//!
//! # Why
//!
//! A failing dependency that is still called makes every caller wait for
//! its errors and keeps it from recovering. A breaker watches the outcomes
//! of recent calls; when too many fail (or are too slow) it *opens* and
//! rejects calls at once with [`CircuitOpen`](crate::error::CircuitOpen),
//! for a wait; then it goes *half-open* and lets a set number of trial calls
//! through, whose outcome *closes* it again or re-opens it.
//!
//! # How it behaves (resilience4j's model)
//!
//! - **Closed**: calls pass; outcomes go into the [`SlidingWindow`]: the last
//!   N calls, the calls of the last T (in buckets, so old calls age out a
//!   bucket at a time), or plain N-failures-in-a-row. Once the window holds
//!   [`minimum_calls`](CircuitBreakerConfig::minimum_calls), the breaker opens
//!   as soon as the failure rate or the slow-call rate reaches its threshold.
//! - **Open**: calls are rejected with `retry_after` set, for
//!   [`wait_in_open`](CircuitBreakerConfig::wait_in_open), which can grow
//!   exponentially, up to a cap, with each consecutive re-open.
//! - **Half-open**: exactly
//!   [`permitted_calls_in_half_open`](CircuitBreakerConfig::permitted_calls_in_half_open)
//!   trial calls pass, others are rejected. When all have finished, their
//!   failure and slow rates decide: re-open or close (with an empty window).
//!   A trial call dropped before it finishes (a cancelled future, a timeout)
//!   or whose outcome is ignored gives its permit back, and
//!   [`max_wait_in_half_open`](CircuitBreakerConfig::max_wait_in_half_open)
//!   (60 s by default) re-opens a breaker whose trials never end.
//! - **Forced open** and **disabled**: set by hand through the
//!   [`CircuitBreakerHandle`], until [`reset`](CircuitBreakerHandle::reset).
//!
//! Transitions out of open and half-open are made by the first call that
//! finds them due, not by a timer. What is a failure is up to the
//! [`Classifier`]: any error by default, except this crate's own rejections
//! (a full bulkhead or a rate limit says nothing about the dependency's
//! health); [`http::HttpClassifier`] also fails 5xx responses.
//!
//! Admission is decided in `call`, not in `poll_ready`, so that a client that
//! polls readiness long before it sends a request (hyper does, per
//! connection) never sits on a half-open trial permit.
//!
//! # Cost
//!
//! The closed state takes no lock and allocates nothing: admission is one
//! atomic load, recording is one `fetch_add` on the count window's cursor
//! (plus one on its packed totals when an outcome changes them), and nothing
//! shared at all while a full window holds only successes. With a count
//! window and slow-call detection off it reads no clock at all; a time
//! window reads it once per call, slow-call detection twice (start and end).
//! Every transition goes through one mutex, off the hot path. Under two
//! threads, see `benches/README.md`.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use trellis_resilience::circuit_breaker::{CircuitBreakerLayer, CircuitState};
//! use trellis_resilience::Error;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("inventory")
//!     .count_window(10)
//!     .minimum_calls(4)
//!     .failure_rate_threshold(50.0)
//!     .wait_in_open(Duration::from_secs(30))
//!     .build()
//!     .unwrap();
//! let handle = breaker.handle();
//! let mut service = ServiceBuilder::new().layer(breaker).service(service_fn(|fail: bool| async move {
//!     if fail { Err(std::io::Error::other("inventory down")) } else { Ok("reserved") }
//! }));
//!
//! for fail in [false, true, false, true] {
//!     let _ = service.ready().await.unwrap().call(fail).await;
//! }
//! assert_eq!(handle.state(), CircuitState::Open); // 2 of 4 failed: 50 %
//! let error = service.ready().await.unwrap().call(false).await.unwrap_err();
//! match Error::classify(error) {
//!     Error::CircuitOpen { name, retry_after } => {
//!         assert_eq!(&*name, "inventory");
//!         assert_eq!(retry_after, Some(Duration::from_secs(30)));
//!     }
//!     other => panic!("unexpected {other}"),
//! }
//! # }
//! ```
//!
//! Metrics (feature `metrics`) are listed on [`CircuitBreakerMetricFamilies`]
//! and in `resilience/docs/circuit_breaker.md`.

mod classify;
mod config;
pub mod future;
mod handle;
mod layer;
#[cfg(feature = "metrics")]
mod metrics;
mod service;
mod state;
mod window;

#[cfg(feature = "http")]
pub mod http;

pub use classify::{Classifier, DefaultClassifier, Outcome};
pub use config::{
    CircuitBreakerConfig, DEFAULT_MAX_WAIT_IN_HALF_OPEN, MAX_COUNT_WINDOW,
    MAX_PERMITTED_IN_HALF_OPEN, MAX_TIME_BUCKETS, SlidingWindow,
};
pub use handle::CircuitBreakerHandle;
pub use layer::{CircuitBreakerBuilder, CircuitBreakerLayer};
#[cfg(feature = "metrics")]
pub use metrics::CircuitBreakerMetricFamilies;
pub use service::CircuitBreaker;
pub use state::{CircuitBreakerMetrics, CircuitState, StateListener, StateTransition};
