//! Inventory: stock per SKU and reservations, deduplicated by the caller's
//! idempotency key.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;

use crate::error::{ApiError, ApiJson, Error};

/// One order line as inventory sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = ReservationLine)]
pub(crate) struct Line {
    pub(crate) sku: String,
    #[schema(minimum = 1, maximum = 100)]
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
}

#[derive(Debug, Clone)]
pub(crate) struct Inventory {
    pool: AnyPool,
}

impl Inventory {
    pub(crate) async fn open(pool: AnyPool, seed: &[(&str, i64)]) -> Result<Self, Error> {
        sqlx::query("CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available BIGINT NOT NULL CHECK (available >= 0))")
            .execute(&pool)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS reservations (id TEXT PRIMARY KEY, order_id TEXT NOT NULL, \
             lines TEXT NOT NULL, status TEXT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        for (sku, stock) in seed {
            sqlx::query(
                "INSERT INTO stock (sku, available) VALUES ($1, $2) ON CONFLICT (sku) DO NOTHING",
            )
            .bind(sku)
            .bind(stock)
            .execute(&pool)
            .await?;
        }
        Ok(Inventory { pool })
    }

    pub(crate) async fn available(&self, sku: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT available FROM stock WHERE sku = $1")
            .bind(sku)
            .fetch_optional(&self.pool)
            .await
            .map(|n| n.unwrap_or(0))
    }

    pub(crate) async fn reservation_status(&self, id: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT status FROM reservations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    pub(crate) async fn call(
        &self,
        request: InventoryRequest,
    ) -> Result<InventoryReply, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let reply = match request {
            InventoryRequest::Reserve {
                key,
                order_id,
                lines,
            } => {
                // The reservation id is the idempotency key: a repeated call
                // finds it and answers the same. A call arriving after its
                // release (see Release) finds the id taken too and takes no
                // stock; its saga is compensating and ignores the answer.
                let existing: Option<String> =
                    sqlx::query_scalar("SELECT status FROM reservations WHERE id = $1")
                        .bind(&key)
                        .fetch_optional(&mut *tx)
                        .await?;
                if existing.is_some() {
                    return Ok(InventoryReply::Reserved { reservation: key });
                }
                for line in &lines {
                    let taken = sqlx::query("UPDATE stock SET available = available - $1 WHERE sku = $2 AND available >= $3")
                        .bind(line.quantity)
                        .bind(&line.sku)
                        .bind(line.quantity)
                        .execute(&mut *tx)
                        .await?;
                    if taken.rows_affected() == 0 {
                        // Dropping the transaction rolls back earlier lines.
                        return Ok(InventoryReply::Insufficient {
                            sku: line.sku.clone(),
                        });
                    }
                }
                let encoded =
                    serde_json::to_string(&lines).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                sqlx::query("INSERT INTO reservations (id, order_id, lines, status) VALUES ($1, $2, $3, 'RESERVED')")
                    .bind(&key)
                    .bind(&order_id)
                    .bind(encoded)
                    .execute(&mut *tx)
                    .await?;
                InventoryReply::Reserved { reservation: key }
            }
            InventoryRequest::Release { reservation } => {
                let found: Option<(String, String)> =
                    sqlx::query_as("SELECT lines, status FROM reservations WHERE id = $1")
                        .bind(&reservation)
                        .fetch_optional(&mut *tx)
                        .await?;
                match found {
                    Some((lines, status)) if status == "RESERVED" => {
                        let lines: Vec<Line> = serde_json::from_str(&lines)
                            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                        for line in lines {
                            sqlx::query(
                                "UPDATE stock SET available = available + $1 WHERE sku = $2",
                            )
                            .bind(line.quantity)
                            .bind(&line.sku)
                            .execute(&mut *tx)
                            .await?;
                        }
                        sqlx::query("UPDATE reservations SET status = 'RELEASED' WHERE id = $1")
                            .bind(&reservation)
                            .execute(&mut *tx)
                            .await?;
                    }
                    Some(_) => {}
                    None => {
                        // Released before it was made: the reserve call may
                        // still be in flight. Remember the release so that
                        // call finds the id taken and holds no stock.
                        sqlx::query(
                            "INSERT INTO reservations (id, order_id, lines, status) VALUES ($1, '', '[]', 'RELEASED')",
                        )
                        .bind(&reservation)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                InventoryReply::Done
            }
            InventoryRequest::Confirm { reservation } => {
                sqlx::query("UPDATE reservations SET status = 'CONFIRMED' WHERE id = $1 AND status = 'RESERVED'")
                    .bind(&reservation)
                    .execute(&mut *tx)
                    .await?;
                InventoryReply::Done
            }
        };
        tx.commit().await?;
        Ok(reply)
    }
}

// ---------------------------------------------------------------- HTTP (distributed mode)

/// The caller's `Idempotency-Key`, required on every internal write.
pub(crate) fn idempotency_key(headers: &http::HeaderMap) -> Result<String, ApiError> {
    headers
        .get(crate::remote::IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "missing_idempotency_key",
                "internal writes need an Idempotency-Key header (1 to 200 characters)",
            )
        })
}

/// `POST /inventory/reservations`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReserveBody {
    /// The order the stock is held for.
    order_id: String,
    /// 1 or more lines, each of quantity 1 to 100.
    #[schema(min_items = 1)]
    lines: Vec<Line>,
}

/// Inventory's internal routes (relative to `/api/v1`), for orders' service
/// token (scope `inventory:write`).
pub(crate) fn router(inventory: Inventory, validator: trellis_auth::Validator) -> axum::Router {
    use axum::routing::post;
    use trellis_auth::{JwtAuthLayer, RequireScopesLayer};
    axum::Router::new()
        .route("/inventory/reservations", post(reserve))
        .route("/inventory/reservations/{action}", post(finish))
        .route_layer(RequireScopesLayer::all(["inventory:write"]))
        .layer(JwtAuthLayer::new(validator))
        .with_state(inventory)
}

/// Reserves stock for an order (service to service: orders' saga). The
/// `Idempotency-Key` is the reservation id: a repeated call answers the same.
#[utoipa::path(
    post,
    path = "/api/v1/inventory/reservations",
    tag = "inventory",
    operation_id = "reserve_stock",
    params(crate::openapi::IdempotencyKey),
    request_body = ReserveBody,
    security(("bearer" = ["inventory:write"])),
    responses(
        (status = 201, description = "Reserved (or reserved before with this key)", body = crate::openapi::Reservation),
        (status = 409, description = "`insufficient_stock`: a business outcome, nothing reserved", body = crate::openapi::InsufficientStock),
        crate::openapi::InternalWriteErrors,
        crate::openapi::AuthErrors,
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
            Json(serde_json::json!({ "reservation": reservation })),
        )
            .into_response(),
        InventoryReply::Insufficient { sku } => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({
                "error": "insufficient_stock",
                "message": format!("not enough {sku} in stock"),
                "sku": sku,
            })),
        )
            .into_response(),
        other => return Err(ApiError::internal(format!("unexpected reply {other:?}"))),
    })
}

/// `POST /inventory/reservations/{action}`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReservationBody {
    /// The reservation id (the reserve call's idempotency key).
    reservation: String,
}

/// `release` or `confirm` a reservation; both are idempotent in their
/// target state (the key is still required, for the caller's logs).
#[utoipa::path(
    post,
    path = "/api/v1/inventory/reservations/{action}",
    tag = "inventory",
    operation_id = "finish_reservation",
    params(
        ("action" = crate::openapi::FinishAction, Path, description = "`release` (stock returns) or `confirm`"),
        crate::openapi::IdempotencyKey,
    ),
    request_body = ReservationBody,
    security(("bearer" = ["inventory:write"])),
    responses(
        (status = 200, description = "Done (also when it was already in that state)", body = crate::openapi::Finished),
        (status = 404, description = "`not_found`: an action other than `release` or `confirm`", body = crate::openapi::ErrorBody),
        crate::openapi::InternalWriteErrors,
        crate::openapi::AuthErrors,
    )
)]
pub(crate) async fn finish(
    State(inventory): State<Inventory>,
    headers: http::HeaderMap,
    Path(action): Path<String>,
    ApiJson(ReservationBody { reservation: id }): ApiJson<ReservationBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    idempotency_key(&headers)?;
    let request = match action.as_str() {
        "release" => InventoryRequest::Release { reservation: id },
        "confirm" => InventoryRequest::Confirm { reservation: id },
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route",
            ));
        }
    };
    inventory.call(request).await?;
    Ok(Json(serde_json::json!({ "status": action })))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn inventory(name: &str) -> (Inventory, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "ecommerce-inventory-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pool = crate::db::open_any(&dir, "inventory").await.unwrap();
        (Inventory::open(pool, &[("TEA-001", 5)]).await.unwrap(), dir)
    }

    fn reserve(key: &str, quantity: i64) -> InventoryRequest {
        InventoryRequest::Reserve {
            key: key.into(),
            order_id: "o1".into(),
            lines: vec![Line {
                sku: "TEA-001".into(),
                quantity,
            }],
        }
    }

    #[tokio::test]
    async fn a_reserve_arriving_after_its_release_holds_no_stock() {
        let (inventory, dir) = inventory("late").await;
        // The compensation's release overtakes the reserve call that timed out.
        let released = InventoryRequest::Release {
            reservation: "o1/1/action".into(),
        };
        assert_eq!(
            inventory.call(released).await.unwrap(),
            InventoryReply::Done
        );
        inventory.call(reserve("o1/1/action", 2)).await.unwrap();
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 5);
        assert_eq!(
            inventory
                .reservation_status("o1/1/action")
                .await
                .unwrap()
                .as_deref(),
            Some("RELEASED")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn release_returns_stock_once_and_repeats_are_harmless() {
        let (inventory, dir) = inventory("once").await;
        let key = "o2/1/action";
        assert_eq!(
            inventory.call(reserve(key, 3)).await.unwrap(),
            InventoryReply::Reserved {
                reservation: key.into()
            }
        );
        // A retried reserve with the same key takes nothing more.
        inventory.call(reserve(key, 3)).await.unwrap();
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 2);
        for _ in 0..2 {
            let release = InventoryRequest::Release {
                reservation: key.into(),
            };
            inventory.call(release).await.unwrap();
        }
        assert_eq!(inventory.available("TEA-001").await.unwrap(), 5);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
