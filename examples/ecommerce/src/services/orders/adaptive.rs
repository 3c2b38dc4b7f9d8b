//! The adaptive concurrency limit in front of `POST /orders` (issue #18):
//! trellis-resilience's [`AdaptiveLimitLayer`], its limit following the
//! latency of whole place-order sagas, configured by `[orders]`
//! ([`OrdersSettings`](crate::platform::config::OrdersSettings)).
//!
//! Why here: each order holds a saga, a connection to the event store and
//! a call to inventory and payments. When a dependency slows down, orders
//! admitted beyond what it can take only wait inside the clients'
//! bulkheads and timeouts, every one of them slower, until they fail. The
//! limit sees the latency rise and sheds what is above it at once, with
//! `503 overloaded` and `Retry-After`, before the handler runs: a shed
//! request left nothing behind (no order, no idempotency key, no saga), so
//! its retry, with the same `Idempotency-Key` or not, starts afresh. It
//! never queues: a queue in front of an overloaded service only adds its
//! wait to the latency.

use axum::error_handling::HandleErrorLayer;
use http::StatusCode;
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use trellis_cqrs::BoxError;
use trellis_resilience::adaptive::{AdaptiveConfig, AdaptiveLimitLayer};
use trellis_resilience::error::Overloaded;

use crate::api::ApiError;

/// The layer a route takes: the limit, and its refusal as the API's error.
pub(crate) type Shedding =
    ServiceBuilder<Stack<AdaptiveLimitLayer, Stack<HandleErrorLayer<ShedFn, ()>, Identity>>>;

/// Turns the limit's errors into responses.
pub(crate) type ShedFn = fn(BoxError) -> std::future::Ready<ApiError>;

/// Builds the limit of `config` with its metrics
/// (`trellis_resilience_adaptive_{limit,in_flight,rejections}{name="orders-place"}`)
/// in `registry`.
///
/// # Errors
///
/// The configuration is invalid.
pub(crate) fn limit(
    config: AdaptiveConfig,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<AdaptiveLimitLayer, crate::api::Error> {
    let layer = AdaptiveLimitLayer::from_config(config)?;
    layer.register_metrics(registry);
    Ok(layer)
}

/// `limit` as a route layer: a shed request is answered `503 overloaded`
/// with `Retry-After` (the recent latency, in whole seconds, at least 1).
pub(crate) fn shedding(limit: AdaptiveLimitLayer) -> Shedding {
    ServiceBuilder::new()
        .layer(HandleErrorLayer::new(shed as ShedFn))
        .layer(limit)
}

fn shed(error: BoxError) -> std::future::Ready<ApiError> {
    std::future::ready(match error.downcast_ref::<Overloaded>() {
        Some(overloaded) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "orders is shedding load ({} orders in progress): retry later",
                overloaded.limit
            ),
        )
        .retry_after(overloaded.retry_after),
        // The route itself never fails (axum handlers are infallible).
        None => ApiError::internal(error),
    })
}
