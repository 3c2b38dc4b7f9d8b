//! Inventory's HTTP routes (distributed mode: orders' saga calls them with
//! its service token); in one process orders calls [`Inventory`] directly.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use http::StatusCode;
use serde::Deserialize;

use super::Inventory;
use super::client::{InventoryReply, InventoryRequest, Line};
use crate::api::idempotency_key;
use crate::api::{ApiError, ApiJson};

/// `POST /inventory/reservations`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReserveBody {
    /// The order the stock is held for.
    #[schema(pattern = "^[^\\x00]*$")]
    order_id: String,
    /// 1 or more lines, each of quantity 1 to 100.
    #[schema(min_items = 1)]
    lines: Vec<Line>,
}

/// Inventory's internal routes (relative to `/api/v1`), for orders' service
/// token (scope `inventory:write`).
pub(crate) fn routes() -> crate::services::ApiRouter<Inventory> {
    use trellis_auth::RequireScopesLayer;
    use utoipa_axum::routes;
    crate::services::ApiRouter::default()
        .routes(routes!(reserve))
        .routes(routes!(finish))
        .route_layer(RequireScopesLayer::all(["inventory:write"]))
}

/// [`routes`] behind `validator`.
pub(crate) fn router(
    inventory: Inventory,
    validator: trellis_auth::Validator,
) -> crate::services::ApiRouter {
    routes()
        .layer(trellis_auth::JwtAuthLayer::new(validator))
        .with_state(inventory)
}

/// Reserves stock for an order (service to service: orders' saga). The
/// `Idempotency-Key` is the reservation id: a repeated call answers the same.
#[utoipa::path(
    post,
    path = "/inventory/reservations",
    tag = "inventory",
    operation_id = "reserve_stock",
    params(crate::api::IdempotencyKey),
    request_body = ReserveBody,
    security(("bearer" = ["inventory:write"])),
    responses(
        (status = 201, description = "Reserved (or reserved before with this key)", body = crate::api::Reservation),
        (status = 409, description = "`insufficient_stock`: a business outcome, nothing reserved; `reservation_released`: this key's reservation was released (a compensation overtook the call), nothing reserved", body = crate::api::InsufficientStock),
        crate::api::InternalWriteErrors,
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn reserve(
    State(inventory): State<Inventory>,
    headers: http::HeaderMap,
    ApiJson(body): ApiJson<ReserveBody>,
) -> Result<axum::response::Response, ApiError> {
    let key = idempotency_key(&headers)?;
    if body.lines.is_empty() || body.lines.iter().any(|l| !(1..=100).contains(&l.quantity)) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_lines",
            "1 or more lines, each of quantity 1 to 100",
        ));
    }
    let reply = inventory
        .call(InventoryRequest::Reserve {
            key,
            order_id: body.order_id,
            lines: body.lines,
        })
        .await?;
    Ok(match reply {
        InventoryReply::Reserved { reservation } => (
            StatusCode::CREATED,
            Json(crate::api::Reservation { reservation }),
        )
            .into_response(),
        InventoryReply::Insufficient { sku } => (
            StatusCode::CONFLICT,
            Json(crate::api::InsufficientStock {
                error: crate::api::InsufficientStockCode::InsufficientStock,
                message: format!("not enough {sku} in stock"),
                sku,
            }),
        )
            .into_response(),
        InventoryReply::NotHeld { status } => return Err(not_held(&status)),
        other => return Err(ApiError::internal(format!("unexpected reply {other:?}"))),
    })
}

/// `POST /inventory/reservations/{action}`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReservationBody {
    /// The reservation id (the reserve call's idempotency key).
    #[schema(pattern = "^[^\\x00]*$")]
    reservation: String,
}

/// `release` or `confirm` a reservation; both are idempotent in their
/// target state (the key is still required, for the caller's logs).
#[utoipa::path(
    post,
    path = "/inventory/reservations/{action}",
    tag = "inventory",
    operation_id = "finish_reservation",
    params(
        ("action" = crate::api::FinishAction, Path, description = "`release` (stock returns) or `confirm`"),
        crate::api::IdempotencyKey,
    ),
    request_body = ReservationBody,
    security(("bearer" = ["inventory:write"])),
    responses(
        (status = 200, description = "Done (also when it was already in that state)", body = crate::api::Finished),
        (status = 404, description = "`not_found`: an action other than `release` or `confirm`; `reservation_not_found`: a confirm of a reservation never made", body = crate::api::ErrorBody),
        (status = 409, description = "`reservation_expired` or `reservation_released`: a confirm of a reservation that no longer holds stock (a business outcome: the order must not be confirmed)", body = crate::api::ErrorBody),
        crate::api::InternalWriteErrors,
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn finish(
    State(inventory): State<Inventory>,
    headers: http::HeaderMap,
    Path(action): Path<String>,
    ApiJson(ReservationBody { reservation: id }): ApiJson<ReservationBody>,
) -> Result<Json<crate::api::Finished>, ApiError> {
    idempotency_key(&headers)?;
    let (request, done) = match action.as_str() {
        "release" => (
            InventoryRequest::Release { reservation: id },
            crate::api::FinishAction::Release,
        ),
        "confirm" => (
            InventoryRequest::Confirm { reservation: id },
            crate::api::FinishAction::Confirm,
        ),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route",
            ));
        }
    };
    match inventory.call(request).await? {
        InventoryReply::Done => Ok(Json(crate::api::Finished { status: done })),
        InventoryReply::NotHeld { status } => Err(not_held(&status)),
        other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
    }
}

/// The refusal of a confirm whose reservation holds no stock; the code
/// names why, and orders' client maps it back to
/// [`InventoryReply::NotHeld`].
fn not_held(status: &str) -> ApiError {
    match status {
        "EXPIRED" => ApiError::new(
            StatusCode::CONFLICT,
            "reservation_expired",
            "the reservation expired and its stock was returned; place the order again",
        ),
        "RELEASED" => ApiError::new(
            StatusCode::CONFLICT,
            "reservation_released",
            "the reservation was released; its stock is no longer held",
        ),
        _ => ApiError::new(
            StatusCode::NOT_FOUND,
            "reservation_not_found",
            "no such reservation",
        ),
    }
}
