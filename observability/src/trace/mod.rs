//! W3C trace-context propagation (`traceparent` / `tracestate`).
//!
//! [`ServerTraceLayer`] extracts the remote context from an incoming request
//! and runs the inner service inside a server span that is its child;
//! [`ClientTraceLayer`] runs an outgoing request inside a client span and
//! injects that span's context into the request headers. Both use
//! OpenTelemetry's [`TraceContextPropagator`] directly, so they work
//! whether or not a global propagator is installed.
//!
//! Spans follow the OpenTelemetry HTTP semantic conventions
//! (`http.request.method`, `url.path`, `http.route`,
//! `http.response.status_code`, `otel.kind`, `otel.status_code` on 5xx or
//! an inner error), and the server span has a `request_id` field that
//! [`RequestIdLayer`](crate::RequestIdLayer) fills.
//!
//! # Examples
//!
//! ```
//! use tower::ServiceBuilder;
//! use trellis_observability::{ClientTraceLayer, ServerTraceLayer};
//! # let inner = tower::service_fn(|_req: http::Request<String>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! # });
//! let server = ServiceBuilder::new().layer(ServerTraceLayer::new()).service(inner.clone());
//! let client = ServiceBuilder::new().layer(ClientTraceLayer::new()).service(inner);
//! # let _ = (server, client);
//! ```

mod client;
pub mod future;
mod server;

pub use client::{ClientTrace, ClientTraceLayer};
pub use server::{ServerTrace, ServerTraceLayer};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};
pub use opentelemetry_sdk::propagation::TraceContextPropagator;

/// Reads propagation fields from request headers.
pub(crate) struct HeaderExtractor<'a>(pub(crate) &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes propagation fields into request headers.
pub(crate) struct HeaderInjector<'a>(pub(crate) &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::try_from(value),
        ) {
            self.0.insert(name, value);
        }
    }
}
