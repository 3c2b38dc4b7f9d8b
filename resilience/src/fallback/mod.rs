//! Fallback: graceful degradation when a call fails in a chosen way.
//!
//! When the wrapped service fails with an error that the predicate selects
//! (by default an open circuit, [`OnCircuitOpen`]), the same request is sent
//! to a fallback service instead, and its answer is returned. This is how a
//! caller degrades rather than fails: the reference system's order service
//! accepts an order as *pending validation* when inventory's breaker is open,
//! and validates it later.
//!
//! The fallback needs the request after the primary call has consumed it, so
//! requests must be `Clone`; the clone is made once per call, before the
//! primary call. Errors the predicate does not select pass through untouched.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use trellis_resilience::error::{BoxError, CircuitOpen};
//! use trellis_resilience::fallback::FallbackLayer;
//!
//! let cached = service_fn(|sku: &'static str| async move { Ok::<_, BoxError>(format!("{sku}: price from cache")) });
//! let mut prices = ServiceBuilder::new()
//!     .layer(FallbackLayer::new(cached))
//!     .service_fn(|_sku: &'static str| async {
//!         Err::<String, BoxError>(Box::new(CircuitOpen { name: "pricing".into(), retry_after: None }))
//!     });
//! let answer = prices.ready().await.unwrap().call("sku-1").await.unwrap();
//! assert_eq!(answer, "sku-1: price from cache");
//! # }
//! ```

pub mod future;
mod layer;
mod predicate;
mod service;

pub use layer::FallbackLayer;
pub use predicate::{FallbackPredicate, OnAnyError, OnCircuitOpen, OnRejection};
pub use service::Fallback;
