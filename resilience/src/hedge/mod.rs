//! Hedging: after a delay, send a second attempt of a slow call; the first
//! answer wins and the other attempt is cancelled.
//!
//! # Why
//!
//! Tail latency is mostly bad luck: a GC pause, a cold cache, a noisy
//! neighbour on one replica. Waiting for a slow call to fail and then
//! retrying pays its whole latency first. A hedge pays only the delay: if
//! the first attempt has not answered by the time most calls have
//! (by default the 95th percentile of recent calls), a second one goes out,
//! usually to another replica through a balancer, and whichever answers
//! first is the answer. "The Tail at Scale" (Dean and Barroso) measured the
//! 99.9th percentile falling by an order of magnitude for a few percent
//! more load. Polly v8's hedging strategy and tower's `hedge` do the same.
//!
//! # Behaviour
//!
//! - Only requests a [`HedgePolicy`] can copy are hedged: both attempts may
//!   reach the service, so only idempotent requests qualify
//!   ([`Idempotent`] with a predicate; `IdempotentMethods` for HTTP with
//!   feature `http`).
//! - The delay is fixed or a percentile of recent calls ([`HedgeDelay`]),
//!   kept in a small lock-free histogram (see `histogram.rs`); until
//!   `min_samples` calls are seen, `until_then` is used.
//! - Every request deposits into a [`RetryBudget`](crate::retry::RetryBudget)
//!   and every hedge withdraws from it, so under a full outage hedges add at
//!   most the budget's ratio to the load. Share the retry layer's budget
//!   with [`HedgeLayer::with_budget`].
//! - One hedge per call. The first attempt to finish, success or error, is
//!   the answer (as tower's `hedge`); the other is dropped, which cancels it.
//!
//! # Cost
//!
//! A call that the policy does not hedge pays one budget deposit and one
//! histogram record. A hedgeable call also clones the service and the
//! request and arms a timer.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use trellis_resilience::hedge::{HedgeConfig, HedgeDelay, HedgeLayer, Idempotent};
//!
//! let layer = HedgeLayer::from_config(
//!     HedgeConfig { delay: HedgeDelay::Fixed(Duration::from_millis(50)), ..HedgeConfig::default() },
//!     Idempotent::new(|_: &u64| true),
//! )
//! .unwrap();
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
//! let counter = calls.clone();
//! let mut svc = ServiceBuilder::new().layer(layer.clone()).service_fn(move |_: u64| {
//!     // The first attempt takes a second, the second 10 ms.
//!     let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         tokio::time::sleep(Duration::from_millis(if n == 0 { 1000 } else { 10 })).await;
//!         Ok::<_, std::convert::Infallible>(n)
//!     }
//! });
//! let started = tokio::time::Instant::now();
//! assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), 1);
//! assert_eq!(started.elapsed(), Duration::from_millis(60));
//! assert_eq!(layer.hedges_sent(), 1);
//! # }
//! ```

mod config;
pub mod future;
mod histogram;
#[cfg(feature = "http")]
mod http;
mod layer;
mod policy;
mod service;

pub use config::{HedgeConfig, HedgeDelay};
#[cfg(feature = "http")]
pub use http::IdempotentMethods;
pub use layer::HedgeLayer;
pub use policy::{HedgePolicy, Idempotent};
pub use service::Hedge;
