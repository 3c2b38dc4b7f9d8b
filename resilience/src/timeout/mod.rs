//! Timeout: a per-call deadline with a typed error.
//!
//! Every call gets `timeout` to finish, counted from the moment it first
//! yields (a call that completes at once never reads the clock); past it, the inner future is dropped
//! (cancelling the call) and the caller gets
//! [`Elapsed`](crate::error::Elapsed), which [`Error::classify`] turns into
//! [`Error::Timeout`]. The deadline covers the call only, not the wait for
//! readiness: readiness is the bulkhead's and rate limiter's business, and
//! they bound it themselves.
//!
//! The HTTP adapter ([`crate::http`]) answers an elapsed deadline with 504.
//!
//! [`Error::classify`]: crate::Error::classify
//! [`Error::Timeout`]: crate::Error::Timeout
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use trellis_resilience::{Error, timeout::TimeoutLayer};
//!
//! let mut slow = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_millis(100)))
//!     .service_fn(|()| async {
//!         tokio::time::sleep(Duration::from_secs(1)).await;
//!         Ok::<_, std::convert::Infallible>("late")
//!     });
//! let error = slow.ready().await.unwrap().call(()).await.unwrap_err();
//! assert!(matches!(Error::classify(error), Error::Timeout { .. }));
//! # }
//! ```

pub mod future;
mod layer;
mod service;

pub use layer::{TimeoutConfig, TimeoutLayer};
pub use service::Timeout;
