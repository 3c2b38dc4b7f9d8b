//! The operator's routes on orders' clients: inventory's breaker and the
//! payment provider's faults.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use serde::Deserialize;
use trellis_resilience::fault::FaultConfig;

use super::OrdersState;
use super::validator::validate_pending_locked;
use crate::api::{ApiError, ApiJson, BreakerOutcome, OrderState, ValidatedOrder};

/// `POST /admin/inventory/breaker`'s body (the drills send it too).
#[derive(Debug, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BreakerBody {
    /// Open (hold the breaker open) or close it.
    pub(crate) open: bool,
}

/// Opens inventory's breaker, or closes it and validates the orders accepted
/// as PENDING_VALIDATION meanwhile.
#[utoipa::path(
    post,
    path = "/admin/inventory/breaker",
    tag = "orders",
    request_body = BreakerBody,
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "The breaker's state and the orders validated", body = crate::api::BreakerOutcome),
        crate::api::AuthErrors,
        crate::api::BodyErrors,
    )
)]
pub(crate) async fn set_breaker(
    State(app): State<OrdersState>,
    ApiJson(body): ApiJson<BreakerBody>,
) -> Result<Json<BreakerOutcome>, ApiError> {
    let mut validated = Vec::new();
    if body.open {
        app.inventory_breaker.force_open();
    } else {
        // Hold the validation lock from the reset on, so this request (not
        // the watcher woken by the reset) validates and reports the orders.
        let _one_pass = app.validating.lock().await;
        app.inventory_breaker.reset();
        validated = validate_pending_locked(&app).await?;
    }
    let validated = validated
        .into_iter()
        .map(|(order_id, status)| {
            let status = OrderState::parse(&status)
                .ok_or_else(|| ApiError::internal(format!("order state {status:?}")))?;
            Ok(ValidatedOrder { order_id, status })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Json(BreakerOutcome {
        state: format!("{:?}", app.inventory_breaker.state()),
        validated,
    }))
}

/// Sets the faults injected in front of the payment provider.
#[utoipa::path(
    post,
    path = "/admin/payments/faults",
    tag = "payments",
    request_body = crate::api::FaultSettings,
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "The faults now in force", body = crate::api::FaultSettings),
        crate::api::AuthErrors,
        crate::api::BodyErrors,
    )
)]
pub(crate) async fn set_payment_faults(
    State(app): State<OrdersState>,
    ApiJson(body): ApiJson<FaultConfig>,
) -> Result<Json<FaultConfig>, ApiError> {
    app.payment_faults.set(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_faults",
            e.to_string(),
        )
    })?;
    Ok(Json(app.payment_faults.config()))
}
