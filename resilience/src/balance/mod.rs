//! A balancer over replicas: power of two choices over peak-EWMA latency,
//! with per-endpoint outlier ejection.
//!
//! # Why
//!
//! Round-robin keeps sending a slow or failing replica its full share. A
//! balancer that measures each replica moves traffic away from it, and
//! one that ejects a replica that keeps failing stops paying for it at
//! all, until probes show it is back. Linkerd's failure accrual, Envoy's
//! outlier detection, Finagle's and tower's peak-EWMA balancers, and
//! tower-resilience's `outlier` do this.
//!
//! # Behaviour
//!
//! - **Choosing**: two healthy endpoints at random, the one with the lower
//!   cost wins; cost = latency estimate × (calls in flight + 1). The
//!   estimate is a *peak* EWMA: a slower answer takes over at once, faster
//!   ones are averaged in over `decay`, and an endpoint that has not
//!   answered for a while decays toward zero so it is tried again (that is
//!   how a recovered slow endpoint wins traffic back).
//! - **Ejecting**: `consecutive_failures` failures in a row, or one
//!   rejection (an overload answer, HTTP 429 or 503 with `Retry-After`;
//!   see [`Classify`]), eject the endpoint for `base_ejection × 2ⁿ` (n:
//!   ejections in a row), capped at `max_ejection`. Never more than
//!   `max_ejected_fraction` of the endpoints at once (at least one of two).
//! - **Coming back**: when the ejection ends, the next call is a probe
//!   (half-open). Success returns the endpoint to service and resets its
//!   backoff; failure ejects it again for twice as long.
//!
//! # Cost
//!
//! One mutex over the endpoints' state, taken once to choose and once to
//! report (never across an await); a call clones the chosen endpoint's
//! service and waits for it to be ready in the response future.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tower::{Service, ServiceExt, service_fn};
//! use trellis_resilience::balance::{BalanceConfig, Balancer, EndpointHealth};
//!
//! let replicas = (0..3)
//!     .map(|replica| service_fn(move |n: u32| async move { Ok::<_, std::convert::Infallible>((replica, n)) }))
//!     .collect();
//! let mut balancer = Balancer::new(replicas, BalanceConfig::default()).unwrap();
//! let (_replica, n) = balancer.ready().await.unwrap().call(7).await.unwrap();
//! assert_eq!(n, 7);
//! assert_eq!(balancer.health(), vec![EndpointHealth::Healthy; 3]);
//! # }
//! ```

mod classify;
mod config;
mod endpoints;
pub mod future;
mod service;

#[cfg(feature = "http")]
pub use classify::HttpClassifier;
pub use classify::{Classify, DefaultClassifier, Outcome};
pub use config::BalanceConfig;
pub use endpoints::EndpointHealth;
pub use service::Balancer;
