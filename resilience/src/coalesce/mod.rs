//! Request coalescing (singleflight): identical concurrent requests share
//! one inner call.
//!
//! # Why
//!
//! When a popular item's cache entry expires, or a dependency recovers, a
//! burst of identical reads arrives at once; each one makes the same call
//! and the dependency does the same work N times at the moment it is most
//! loaded (a "thundering herd"). Go's `singleflight`, Envoy's and
//! Varnish's request collapsing, and tower-resilience's `coalesce` let the
//! first request make the call and the others wait for its answer.
//!
//! # Behaviour
//!
//! - A key function maps each request to `Option<K>`: requests with equal
//!   keys coalesce while a call for that key is in flight; `None` (writes,
//!   anything not safe to share) always calls through.
//! - Every caller gets a clone of the answer (so `Response: Clone`); an
//!   error is shared as [`SharedError`](crate::error::SharedError), which
//!   [`Error::classify`](crate::Error::classify) sees through.
//! - Any caller drives the shared call: a caller that gives up, the first
//!   one included, strands no one. When every caller has given up, the
//!   call is dropped (cancelled).
//! - Not a cache: once the call finishes, the next request makes a new one.
//! - Bounded: at most `max_keys` keys in flight (governor#171: keyed maps
//!   invite DoS); beyond that, requests call through uncoalesced.
//!
//! # Cost
//!
//! A keyed request takes one mutex (never held across an await) to look
//! up its key, and the leader boxes nothing: the shared call is
//! `futures_util`'s `Shared` over the inner future, one allocation per
//! call.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use trellis_resilience::coalesce::CoalesceLayer;
//!
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counter = calls.clone();
//! let svc = ServiceBuilder::new()
//!     .layer(CoalesceLayer::new(1024, |id: &u64| Some(*id)))
//!     .service_fn(move |id: u64| {
//!         counter.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             tokio::task::yield_now().await;
//!             Ok::<_, std::convert::Infallible>(format!("product {id}"))
//!         }
//!     });
//! let (a, b) = tokio::join!(svc.clone().oneshot(7), svc.clone().oneshot(7));
//! assert_eq!(a.unwrap(), "product 7");
//! assert_eq!(b.unwrap(), "product 7");
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//! # }
//! ```

pub mod future;
mod layer;
mod map;
mod service;

pub use layer::CoalesceLayer;
pub use service::Coalesce;
