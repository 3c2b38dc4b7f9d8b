//! Inventory's client: the requests orders makes of inventory, the answers,
//! and the client that sends them over HTTP (distributed mode). In one
//! process the same requests are served in-process.

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower::util::BoxCloneSyncService;
use trellis_cqrs::BoxError;

use crate::platform::transport::{Transport, json_body, send, unexpected};
use crate::services::identity::client::ServiceToken;

/// One order line as inventory sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = ReservationLine)]
// Unknown fields refused, and the document says so (additionalProperties
// false): an ignored field could still carry a U+0000 the body check
// refuses, a schema-valid request answered 422.
#[serde(deny_unknown_fields)]
pub(crate) struct Line {
    #[schema(pattern = "^[^\\x00]*$")]
    pub(crate) sku: String,
    #[schema(minimum = 1, maximum = 100)]
    #[serde(deserialize_with = "crate::api::integer")]
    pub(crate) quantity: i64,
}

/// A call to inventory. Every variant carries the caller's idempotency key.
#[derive(Debug, Clone)]
pub(crate) enum InventoryRequest {
    Reserve {
        key: String,
        order_id: String,
        lines: Vec<Line>,
    },
    Release {
        reservation: String,
    },
    Confirm {
        reservation: String,
    },
}

/// Inventory's answers. Business outcomes are answers, not errors, so they
/// neither trip the breaker nor get retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InventoryReply {
    Reserved {
        reservation: String,
    },
    Insufficient {
        sku: String,
    },
    /// The fallback's answer while the breaker is open: nothing reserved, the
    /// order is accepted for validation later.
    Deferred,
    Done,
    /// Confirm of a reservation that holds no stock: `EXPIRED` (its stock
    /// went back to the shelf), `RELEASED`, or `UNKNOWN` (never made).
    NotHeld {
        status: String,
    },
}

/// Inventory over HTTP: reserve / release / confirm.
pub(crate) fn inventory_client(
    transport: Transport,
    base: String,
    token: ServiceToken,
) -> BoxCloneSyncService<InventoryRequest, InventoryReply, BoxError> {
    BoxCloneSyncService::new(tower::service_fn(move |request: InventoryRequest| {
        let (transport, base, token) = (transport.clone(), base.clone(), token.clone());
        async move {
            let bearer = token.get().await?;
            match request {
                InventoryRequest::Reserve {
                    key,
                    order_id,
                    lines,
                } => {
                    let response = send(
                        &transport,
                        Method::POST,
                        format!("{base}/api/v1/inventory/reservations"),
                        Some(&bearer),
                        Some(&key),
                        Some(json!({ "order_id": order_id, "lines": lines })),
                    )
                    .await?;
                    let body = json_body(&response).unwrap_or_default();
                    match response.status() {
                        StatusCode::CREATED | StatusCode::OK => Ok(InventoryReply::Reserved {
                            reservation: body["reservation"]
                                .as_str()
                                .ok_or("reservation answer has no id")?
                                .to_owned(),
                        }),
                        StatusCode::CONFLICT if body["error"] == "insufficient_stock" => {
                            Ok(InventoryReply::Insufficient {
                                sku: body["sku"].as_str().unwrap_or_default().to_owned(),
                            })
                        }
                        StatusCode::CONFLICT if body["error"] == "reservation_released" => {
                            Ok(InventoryReply::NotHeld {
                                status: "RELEASED".into(),
                            })
                        }
                        _ => Err(unexpected("inventory", &response)),
                    }
                }
                InventoryRequest::Release { reservation } => {
                    done(&transport, &base, &bearer, &reservation, "release").await
                }
                InventoryRequest::Confirm { reservation } => {
                    done(&transport, &base, &bearer, &reservation, "confirm").await
                }
            }
        }
    }))
}

async fn done(
    transport: &Transport,
    base: &str,
    bearer: &str,
    reservation: &str,
    action: &str,
) -> Result<InventoryReply, BoxError> {
    let response = send(
        transport,
        Method::POST,
        format!("{base}/api/v1/inventory/reservations/{action}"),
        Some(bearer),
        Some(&format!("{reservation}/{action}")),
        Some(json!({ "reservation": reservation })),
    )
    .await?;
    if response.status().is_success() {
        return Ok(InventoryReply::Done);
    }
    // A confirm refused because the reservation holds no stock is an
    // answer (the saga compensates), not a failure to retry.
    let status = match json_body(&response).unwrap_or_default()["error"].as_str() {
        Some("reservation_expired") => "EXPIRED",
        Some("reservation_released") => "RELEASED",
        Some("reservation_not_found") => "UNKNOWN",
        _ => return Err(unexpected("inventory", &response)),
    };
    Ok(InventoryReply::NotHeld {
        status: status.into(),
    })
}
