//! Fault injection: latency, errors and aborted calls, on purpose.
//!
//! A resilience policy that has never seen a failure is a hypothesis. This
//! layer makes failures happen — with given probabilities, switched on and
//! re-tuned while the service runs through a cloneable [`FaultHandle`] — so
//! drills can show what the breaker, retry and fallback really do. It is
//! Polly's chaos strategies and Envoy's fault filter as a tower layer.
//!
//! Three faults, decided independently per call:
//!
//! - **latency**: the call is delayed by `latency` before it reaches the
//!   inner service;
//! - **error**: the call fails with [`InjectedFault`] `{ kind: "error" }`
//!   *without* reaching the inner service (a dependency that is down);
//! - **abort**: the call *does* reach the inner service, but its response is
//!   thrown away and the caller gets [`InjectedFault`] `{ kind: "abort" }` (a
//!   connection lost after the server acted: the case idempotency keys exist
//!   for).
//!
//! When disabled (the default) a call costs one atomic load.
//!
//! [`InjectedFault`]: crate::error::InjectedFault
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use trellis_resilience::Error;
//! use trellis_resilience::fault::{FaultConfig, FaultHandle};
//!
//! let faults = FaultHandle::new();
//! let mut svc = ServiceBuilder::new()
//!     .layer(faults.layer())
//!     .service_fn(|()| async { Ok::<_, std::convert::Infallible>("ok") });
//! assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "ok");
//!
//! // A payment outage drill: every call fails until switched off again.
//! faults.set(FaultConfig { enabled: true, error_probability: 1.0, ..FaultConfig::default() }).unwrap();
//! let error = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! assert!(matches!(Error::classify(error), Error::Injected { kind: "error" }));
//! faults.disable();
//! assert!(svc.ready().await.unwrap().call(()).await.is_ok());
//! # }
//! ```

pub mod future;
mod handle;
mod service;

pub use handle::{FaultConfig, FaultCounts, FaultHandle, FaultInjectionLayer};
pub use service::FaultInjection;
