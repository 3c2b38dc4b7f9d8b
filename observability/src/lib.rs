#![doc = include_str!("../README.md")]
//!
//! # Crate map
//!
//! | module | what |
//! |---|---|
//! | [`Telemetry`] / [`TelemetryBuilder`] / [`TelemetryGuard`] | one `init` call: subscriber, filter, JSON logs, tracer provider, OTLP (feature `otlp`), flush on drop |
//! | [`JsonLogLayer`] | JSON log lines with `trace_id` / `span_id` |
//! | [`trace`] | W3C `traceparent`/`tracestate`: [`ServerTraceLayer`] extracts, [`ClientTraceLayer`] injects |
//! | [`request_id`] | `x-request-id`: [`RequestIdLayer`] keeps/makes/echoes, [`PropagateRequestIdLayer`] forwards |
//! | [`metrics`] | [`HttpMetrics`] server/client RED layers, [`MetricsService`] `/metrics`, [`ProcessCollector`] |
//! | [`RouteExtractor`] | where the `http_route` label comes from |
//! | [`Error`] | the crate's one error type |
//!
//! # Features
//!
//! - `otlp`: OTLP/HTTP (protobuf) span exporter, configured by the standard
//!   `OTEL_EXPORTER_OTLP_*` variables, on by default when the feature is on
//!   (`OTEL_TRACES_EXPORTER=none` or `TelemetryBuilder::otlp(false)` turns it off).
//!   It uses a blocking HTTP client on the batch processor's own thread, so
//!   it needs no particular async runtime. Plain `http://` endpoints only.
//! - `axum`: route templates from axum's `MatchedPath`.
//!
//! MSRV: the workspace's `rust-version`.

mod error;
mod http_util;
mod init;
mod json;
pub mod metrics;
pub mod request_id;
mod route;
pub mod trace;

pub use error::{BoxError, Error, Result};
pub use init::{Telemetry, TelemetryBuilder, TelemetryGuard};
pub use json::JsonLogLayer;
pub use metrics::{
    HttpMetrics, HttpMetricsBuilder, MetricsService, OPENMETRICS_CONTENT_TYPE, ProcessCollector,
    render,
};
pub use request_id::{PropagateRequestIdLayer, RequestId, RequestIdLayer, X_REQUEST_ID};
pub use route::{DefaultRouteExtractor, MatchedRoute, RouteExtractor};
pub use trace::{ClientTraceLayer, ServerTraceLayer};
