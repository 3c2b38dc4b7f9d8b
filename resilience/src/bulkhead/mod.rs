//! Bulkhead: a cap on concurrent calls, with a bounded wait for a free slot.
//!
//! A slow dependency should not be able to take every task, connection and
//! buffer of the caller with it. The bulkhead admits at most
//! `max_concurrent` calls at once; a call that finds no free slot waits up to
//! `max_wait` for one (zero: it is rejected at once) and is then rejected with
//! [`BulkheadFull`](crate::error::BulkheadFull).
//!
//! Unlike [`tower::limit::ConcurrencyLimit`], which makes `poll_ready` wait
//! for a permit without bound, the bulkhead decides in `call`. That keeps an
//! idle connection from holding a permit (hyper polls readiness before a
//! request arrives) and gives a caller a prompt, typed rejection instead of an
//! unbounded queue.
//!
//! A slot is held by the response future and released when the call ends or
//! the future is dropped, so cancelled calls never leak capacity. Calls in
//! flight and waiting are observable through [`BulkheadLayer::in_flight`] and
//! [`BulkheadLayer::waiting`], and behind the `metrics` feature as gauges.
//!
//! [`tower::limit::ConcurrencyLimit`]: https://docs.rs/tower/latest/tower/limit/struct.ConcurrencyLimit.html
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use trellis_resilience::bulkhead::{BulkheadConfig, BulkheadLayer};
//!
//! let layer = BulkheadLayer::from_config(BulkheadConfig {
//!     max_concurrent: 8,
//!     max_wait: Duration::from_millis(10),
//!     ..BulkheadConfig::default()
//! })
//! .unwrap();
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
#[cfg(feature = "metrics")]
mod metrics;
mod service;

pub use config::BulkheadConfig;
pub use layer::BulkheadLayer;
#[cfg(feature = "metrics")]
pub use metrics::BulkheadMetricFamilies;
pub use service::Bulkhead;
