//! The console's business view: orders by outcome and their value,
//! pending validations, the steps that fail, the latest sagas and slow
//! requests, each linked to its trace (`ECOMMERCE_TRACE_URL`, e.g.
//! `http://jaeger:16686/trace/{trace_id}`), beside the technical panels.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::WebState;
use crate::platform::metrics::SlowRequest;
use crate::services::orders::metrics::BusinessSnapshot;

/// `GET /admin/business`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BusinessView {
    /// The orders service's business numbers (this process, since start).
    business: BusinessSnapshot,
    /// The latest requests slower than 500 ms, newest first.
    slow_requests: Vec<SlowRequest>,
    /// Whether trace links are configured (`ECOMMERCE_TRACE_URL`).
    trace_links: bool,
}

/// GET /api/v1/admin/business: the business numbers, recent sagas and slow
/// requests with their trace links.
#[utoipa::path(
    get,
    path = "/admin/business",
    tag = "orders",
    operation_id = "admin_business",
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "Orders by outcome and value (cents), pending validations, step failures, the latest sagas and slow requests with their traces", body = BusinessView),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn business(State(app): State<WebState>) -> Json<BusinessView> {
    Json(BusinessView {
        business: app.orders.metrics.snapshot(),
        slow_requests: app.orders.slow_requests.newest_first(),
        trace_links: crate::platform::metrics::trace_url("").is_some(),
    })
}
