//! Shipping (distributed mode): a shipment per order, kept by a projection
//! of orders' events that arrive over NATS JetStream.
//!
//! NOTE: a minimal read model for the distributed end-to-end test; the full
//! shipping read model (SQLite and PostgreSQL) replaces [`Shipments`] when
//! the branches merge; the wiring in [`crate::bus`] stays.

use axum::Json;
use axum::extract::{Extension, Path, State};
use http::StatusCode;
use serde::Serialize;
use sqlx::{PgPool, SqlitePool};
use trellis_auth::Claims;
use trellis_cqrs::{BoxError, Projection};
use trellis_eventsourcing::StoredEvent;

use crate::error::ApiError;

/// Shipments: `AWAITING_PAYMENT` once placed, `READY_TO_SHIP` once the order
/// is confirmed, `CANCELLED` if it is rejected.
#[derive(Debug)]
pub(crate) struct Shipments;

const DDL: &str = "CREATE TABLE IF NOT EXISTS shipments (order_id TEXT PRIMARY KEY, \
    customer TEXT NOT NULL, status TEXT NOT NULL)";

fn change(event: &StoredEvent) -> Option<(&str, &'static str, Option<&str>)> {
    let order_id = event.stream_id.strip_prefix("order-")?;
    match event.event_type.as_str() {
        "Placed" => Some((
            order_id,
            "AWAITING_PAYMENT",
            Some(event.payload["customer"].as_str().unwrap_or_default()),
        )),
        "Confirmed" => Some((order_id, "READY_TO_SHIP", None)),
        "Rejected" => Some((order_id, "CANCELLED", None)),
        _ => None,
    }
}

macro_rules! shipments_projection {
    ($db:ty, $pool:ty) => {
        impl Projection<$db> for Shipments {
            fn name(&self) -> &str {
                "shipments_v1"
            }

            async fn setup(&self, pool: &$pool) -> Result<(), BoxError> {
                sqlx::query(DDL).execute(pool).await?;
                Ok(())
            }

            async fn handle(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                event: &StoredEvent,
            ) -> Result<(), BoxError> {
                match change(event) {
                    None => {}
                    Some((order_id, status, Some(customer))) => {
                        sqlx::query(
                            "INSERT INTO shipments (order_id, customer, status) VALUES ($1, $2, $3) \
                             ON CONFLICT (order_id) DO NOTHING",
                        )
                        .bind(order_id)
                        .bind(customer)
                        .bind(status)
                        .execute(&mut **tx)
                        .await?;
                    }
                    Some((order_id, status, None)) => {
                        sqlx::query("UPDATE shipments SET status = $1 WHERE order_id = $2")
                            .bind(status)
                            .bind(order_id)
                            .execute(&mut **tx)
                            .await?;
                    }
                }
                Ok(())
            }
        }
    };
}

shipments_projection!(sqlx::Sqlite, SqlitePool);
shipments_projection!(sqlx::Postgres, PgPool);

#[derive(Debug, Serialize)]
struct Shipment {
    order_id: String,
    status: String,
}

/// `GET /shipments/{order_id}` (scope `orders:read`, own orders only).
pub(crate) fn router(pool: PgPool, validator: trellis_auth::Validator) -> axum::Router {
    use axum::routing::get;
    use trellis_auth::{JwtAuthLayer, RequireScopesLayer};
    axum::Router::new()
        .route("/shipments/{order_id}", get(one))
        .route_layer(RequireScopesLayer::all(["orders:read"]))
        .layer(JwtAuthLayer::new(validator))
        .with_state(pool)
}

async fn one(
    State(pool): State<PgPool>,
    Extension(claims): Extension<Claims>,
    Path(order_id): Path<String>,
) -> Result<Json<Shipment>, ApiError> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT status, customer FROM shipments WHERE order_id = $1")
            .bind(&order_id)
            .fetch_optional(&pool)
            .await?;
    match row {
        Some((status, customer)) if claims.sub.as_deref() == Some(customer.as_str()) => {
            Ok(Json(Shipment { order_id, status }))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no shipment for this order",
        )),
    }
}
