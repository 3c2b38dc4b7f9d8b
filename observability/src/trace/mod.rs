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

/// The current span's trace context as W3C `traceparent` and `tracestate`
/// values, for work that continues it later or elsewhere: an event's
/// metadata (an outbox relay publishes it as the child of this context), a
/// queued job, a message header written by hand.
///
/// `None` when there is no valid context: no OpenTelemetry layer in the
/// subscriber, or no span (then OpenTelemetry's own current context is
/// tried too). The `tracestate` is `None` when empty.
///
/// # Examples
///
/// ```
/// use trellis_observability::Telemetry;
/// use trellis_observability::trace::current_traceparent;
///
/// let (dispatch, guard) = Telemetry::builder("orders").filter("info").build()?;
/// tracing::dispatcher::with_default(&dispatch, || {
///     assert_eq!(current_traceparent(), None, "no span yet");
///     tracing::info_span!("place order").in_scope(|| {
///         let (traceparent, tracestate) = current_traceparent().expect("a live span");
///         assert!(traceparent.starts_with("00-"));
///         assert_eq!(tracestate, None);
///     });
/// });
/// guard.shutdown()?;
/// # Ok::<(), trellis_observability::Error>(())
/// ```
pub fn current_traceparent() -> Option<(String, Option<String>)> {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    let span = tracing::Span::current();
    let mut context = if span.is_disabled() {
        opentelemetry::Context::new()
    } else {
        span.context()
    };
    if !context.span().span_context().is_valid() {
        context = opentelemetry::Context::current();
    }
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut fields = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut fields);
    let traceparent = fields.remove("traceparent")?;
    let tracestate = fields.remove("tracestate").filter(|s| !s.is_empty());
    Some((traceparent, tracestate))
}

/// Makes `span` continue the current span's trace (its OpenTelemetry
/// parent is the current context) without making it a `tracing` child, and
/// returns it.
///
/// For background work that may outlive the request that started it: a
/// `tracing` child keeps its parent open until the child closes, so a
/// request's server span would end (and report its duration) only when the
/// work does. Create the span with `parent: None` and hand it here before
/// it is entered.
///
/// When `span` is disabled (filtered out), the current span is returned
/// instead, so the work still belongs to the trace (holding the current
/// span open, as `in_current_span` would). Without an OpenTelemetry layer,
/// or when the current span has no valid context, `span` is returned
/// unchanged.
///
/// # Examples
///
/// ```
/// use tracing::Instrument as _;
/// use trellis_observability::trace::continue_current_trace;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let run = continue_current_trace(tracing::info_span!(parent: None, "saga run"));
/// let task = tokio::spawn(async { /* outlives the request */ }.instrument(run));
/// # task.await.unwrap();
/// # });
/// ```
pub fn continue_current_trace(span: tracing::Span) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    let current = tracing::Span::current();
    if span.is_disabled() {
        return current;
    }
    if current.is_disabled() {
        return span;
    }
    let context = current.context();
    if context.span().span_context().is_valid() {
        // Fails only without an OpenTelemetry layer or once `span` started.
        let _ = span.set_parent(context);
    }
    span
}

/// Makes `span` continue the trace of a W3C `traceparent` (and
/// `tracestate`) kept from earlier: its OpenTelemetry parent becomes that
/// remote context, and returns it.
///
/// For work resumed later or elsewhere from a stored context: a saga
/// adopted by another process after its owner died (its state kept the
/// `traceparent` of the request that started it), a queued job. Create
/// the span with `parent: None`. A `traceparent` that does not parse, a
/// disabled `span` or a subscriber without an OpenTelemetry layer leave
/// `span` as it is (a root).
///
/// # Examples
///
/// ```
/// use trellis_observability::Telemetry;
/// use trellis_observability::trace::{continue_remote_trace, current_traceparent};
///
/// let (dispatch, guard) = Telemetry::builder("orders").filter("info").build()?;
/// tracing::dispatcher::with_default(&dispatch, || {
///     let kept = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
///     let span = continue_remote_trace(tracing::info_span!(parent: None, "resumed"), kept, None);
///     span.in_scope(|| {
///         let (traceparent, _) = current_traceparent().expect("a live span");
///         assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
///     });
/// });
/// guard.shutdown()?;
/// # Ok::<(), trellis_observability::Error>(())
/// ```
pub fn continue_remote_trace(
    span: tracing::Span,
    traceparent: &str,
    tracestate: Option<&str>,
) -> tracing::Span {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    if span.is_disabled() {
        return span;
    }
    let mut fields = std::collections::HashMap::new();
    fields.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(state) = tracestate {
        fields.insert("tracestate".to_owned(), state.to_owned());
    }
    let context = TraceContextPropagator::new().extract(&fields);
    if context.span().span_context().is_valid() {
        // Fails only without an OpenTelemetry layer or once `span` started.
        let _ = span.set_parent(context);
    }
    span
}

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
