//! The HTTP retry policy: `Retry-After`, idempotent methods, retryable
//! statuses and connection errors, and request bodies buffered (up to a
//! bound) so they can be re-sent.
//!
//! [`HttpRetryLayer`] wraps a service taking `Request<RetryBody<B>>` and
//! gives a service taking `Request<B>`:
//!
//! 1. The request body is read into memory, up to `max_body_bytes`
//!    (64 KiB by default). A body that turns out larger is **not an error and
//!    never truncated**: what was read is sent first, the rest streams after
//!    it, and the request is sent **once, without retry**. An empty body
//!    (the usual `GET`) is not read at all.
//! 2. [`HttpRetryPolicy`] decides what is retried. By default:
//!    - only idempotent methods: `GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`,
//!      `TRACE` (a `POST` that failed may have been applied);
//!    - responses `429`, `502`, `503`, `504` (configurable);
//!    - connection errors: an `std::io::Error` of kind refused, reset,
//!      aborted, not connected, broken pipe, timed out or unexpected EOF
//!      anywhere in the error's source chain, and this crate's timeout
//!      ([`Elapsed`](crate::error::Elapsed)); other errors pass through, as do `CircuitOpen` and
//!      `BulkheadFull`; `RateLimited` is retried after its `retry_after`.
//! 3. A `Retry-After` header (delay-seconds, or an HTTP-date in any RFC 9110 form)
//!    makes the next wait at least that long; one longer than the layer's
//!    `max_retry_after` (or past `max_elapsed`) makes it give up at once,
//!    returning that response.
//!
//! # Examples
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use trellis_resilience::error::BoxError;
//! use trellis_resilience::retry::{Backoff, RetryConfig};
//! use trellis_resilience::retry::http::{HttpRetryLayer, RetryBody};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = HttpRetryLayer::from_config(RetryConfig {
//!     backoff: Backoff::none(),
//!     ..RetryConfig::default()
//! })
//! .unwrap();
//! let upstream = tower::service_fn(|_req: Request<RetryBody<Full<Bytes>>>| async {
//!     Ok::<_, BoxError>(Response::new(()))
//! });
//! let mut client = ServiceBuilder::new().layer(layer).service(upstream);
//! let request = Request::put("http://inventory/items/7").body(Full::new(Bytes::from("{}"))).unwrap();
//! let response = client.ready().await.unwrap().call(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! # }
//! ```

mod body;
pub mod future;
mod layer;
mod policy;
mod service;

pub use body::RetryBody;
pub use future::ResponseFuture;
pub use layer::HttpRetryLayer;
pub use policy::{DEFAULT_MAX_BODY_BYTES, HttpRetryPolicy, is_connection_error, parse_retry_after};
pub use service::HttpRetry;
