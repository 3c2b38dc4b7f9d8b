//! The composed policy: every layer in the recommended order.
//!
//! [`ResiliencePolicy`] stacks the layers the way resilience4j documents
//! (`Retry ( CircuitBreaker ( RateLimiter ( TimeLimiter ( Bulkhead ( call ) ) ) ) )`),
//! outermost first:
//!
//! ```text
//! caller ─▶ retry ─▶ circuit breaker ─▶ rate limiter ─▶ timeout ─▶ bulkhead ─▶ service
//! ```
//!
//! Built in code with the `with_*` methods, or from a [`PolicyConfig`] read
//! from TOML or environment variables. Each layer is optional; the services
//! it makes answer with the flat [`Error`](crate::Error), so callers match
//! one enum whatever was configured.
//!
//! ## Why this order
//!
//! - **Retry outermost.** Each attempt goes through the whole stack again:
//!   it is counted by the breaker, pays for a rate-limit token, gets its own
//!   deadline and its own bulkhead slot. A retry never bypasses protection.
//! - **Circuit breaker outside the limiter, timeout and bulkhead.** The
//!   breaker sees the outcome of each attempt, timeouts included (a timeout
//!   is a failure, a slow success is a slow call). It does *not* count the
//!   limiter's or bulkhead's own rejections as failures, so a burst of local
//!   load shedding cannot open the circuit on a healthy dependency. And when
//!   the circuit is open, rejected calls cost nothing below it: no token, no
//!   slot, no timer. The default retry policy does not retry an open circuit.
//! - **Rate limiter outside timeout and bulkhead.** A call that is over the
//!   rate is turned away before it takes a slot or starts a timer.
//! - **Timeout outside the bulkhead.** The deadline covers the time a call
//!   waits for a bulkhead slot as well as the call itself, so a caller's
//!   latency is bounded even when the bulkhead queues (`max_wait > 0`).
//! - **Bulkhead innermost.** It bounds exactly the calls in flight to the
//!   dependency, and a slot is held no longer than the call.
//!
//! ## What changes when you reorder by hand
//!
//! The layers compose in any order with `tower::ServiceBuilder`; the
//! consequences are what this order avoids:
//!
//! - retry *inside* the breaker: one logical call that retries three times
//!   is one outcome for the breaker, which then reacts slower, and retries
//!   keep hammering a dependency whose circuit should have opened;
//! - timeout *outside* retry: one deadline covers all attempts (sometimes
//!   wanted as an overall budget — then add a second timeout outside, and
//!   keep the per-attempt one here);
//! - bulkhead *outside* the breaker or limiter: rejected calls still take
//!   a slot first, and slots run out while nothing reaches the dependency;
//! - breaker *inside* the timeout: the breaker never sees timeouts as
//!   failures, because the timeout drops the breaker's future.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use trellis_resilience::Error;
//! use trellis_resilience::policy::{PolicyConfig, ResiliencePolicy};
//!
//! let config = PolicyConfig::from_toml_str(r#"
//!     name = "inventory"
//!     [retry]
//!     max_attempts = 2
//!     [circuit_breaker]
//!     [rate_limit]
//!     rate = 1000
//!     burst = 50
//!     [timeout]
//!     timeout = "200ms"
//!     [bulkhead]
//!     max_concurrent = 32
//! "#).unwrap();
//! let policy = ResiliencePolicy::from_config(config).unwrap();
//! let mut inventory = policy.layer(service_fn(|sku: u32| async move {
//!     if sku == 0 { Err::<u32, _>(std::io::Error::other("no such sku")) } else { Ok(sku * 10) }
//! }));
//! assert_eq!(inventory.ready().await.unwrap().call(4).await.unwrap(), 40);
//! match inventory.ready().await.unwrap().call(0).await.unwrap_err() {
//!     Error::RetriesExhausted { attempts: 2, .. } => {}
//!     other => panic!("unexpected {other:?}"),
//! }
//! # }
//! ```

mod config;
mod layer;
mod maybe;
mod service;

pub use config::PolicyConfig;
#[cfg(feature = "metrics")]
pub use layer::PolicyMetricFamilies;
pub use layer::{BreakerStack, BulkheadStack, LimitStack, ResiliencePolicy, Stack, TimeoutStack};
pub use maybe::{Maybe, MaybeFuture};
pub use service::{Resilient, ResponseFuture};
