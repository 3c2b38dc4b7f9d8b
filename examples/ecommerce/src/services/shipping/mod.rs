//! Shipping: a shipment per confirmed order, kept by a projection over the
//! order events (shipping owns its database; it never reads orders' tables).
//!
//! `Placed` records who ordered what (not shippable yet), `Confirmed` makes
//! the shipment `READY_TO_SHIP`, `Rejected` after that cancels it
//! (`CANCELLED`); an order rejected before confirmation never ships. The
//! projection is one `Projection<sqlx::Any>` for SQLite and PostgreSQL
//! (see `readmodel`).

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};

use axum::{Extension, Json};
use http::StatusCode;
use serde::Serialize;
use trellis_auth::{Claims, RequireScopesLayer};
use trellis_cqrs::{BoxError, Projection, ProjectionHandle};
use trellis_eventsourcing::{EventFilter, StoredEvent};

use crate::api::{ApiError, Error};
use crate::platform::readmodel::{Feed, Source, subject};
use crate::services::orders::client::{OrderEvent, decode, units};

/// Scope of `GET /shipments/{order_id}` (a customer reads their own).
pub(crate) const SCOPE: &str = "orders:read";

/// Internal states that are not shipments (yet, or ever).
const AWAITING: &str = "AWAITING_CONFIRMATION";
const NOT_SHIPPED: &str = "NOT_SHIPPED";

const SETUP: &str = "CREATE TABLE IF NOT EXISTS shipments (order_id TEXT PRIMARY KEY, \
     customer TEXT NOT NULL, items BIGINT NOT NULL, status TEXT NOT NULL, \
     ready_at BIGINT)";
const ON_PLACED: &str = "INSERT INTO shipments (order_id, customer, items, status) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING";
const ON_CONFIRMED: &str = "UPDATE shipments SET status = 'READY_TO_SHIP', ready_at = $2 \
     WHERE order_id = $1 AND status IN ('AWAITING_CONFIRMATION')";
const ON_REJECTED: &str = "UPDATE shipments SET status = CASE status \
     WHEN 'READY_TO_SHIP' THEN 'CANCELLED' ELSE 'NOT_SHIPPED' END \
     WHERE order_id = $1 AND status IN ('AWAITING_CONFIRMATION', 'READY_TO_SHIP')";
const KNOWN: &str = "SELECT COUNT(*) FROM shipments WHERE order_id = $1";
const SELECT: &str =
    "SELECT order_id, customer, items, status, ready_at FROM shipments WHERE order_id = $1";

/// The shipments read model.
#[derive(Debug)]
pub(crate) struct ShipmentProjection;

/// A shipment as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct Shipment {
    /// The order shipped.
    pub(crate) order_id: String,
    /// Who ordered it.
    pub(crate) customer: String,
    /// Units to pack.
    pub(crate) items: i64,
    /// `READY_TO_SHIP`, or `CANCELLED` when the order was rejected after
    /// confirmation.
    #[schema(value_type = ShipmentStatus)]
    pub(crate) status: String,
    /// When the order was confirmed (Unix seconds).
    pub(crate) ready_at: Option<i64>,
}

/// A shipment's state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // documentation only: stored as text
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum ShipmentStatus {
    /// Confirmed and waiting for the carrier.
    ReadyToShip,
    /// Rejected after confirmation: do not ship.
    Cancelled,
}

type Row = (String, String, i64, String, Option<i64>);

fn shipment((order_id, customer, items, status, ready_at): Row) -> Option<Shipment> {
    (status != AWAITING && status != NOT_SHIPPED).then_some(Shipment {
        order_id,
        customer,
        items,
        status,
        ready_at,
    })
}

impl Projection<sqlx::Any> for ShipmentProjection {
    fn name(&self) -> &str {
        "shipping_shipments_v1"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::category("order")
    }

    async fn setup(&self, pool: &sqlx::Pool<sqlx::Any>) -> Result<(), BoxError> {
        sqlx::query(SETUP).execute(pool).await?;
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        event: &StoredEvent,
    ) -> Result<(), BoxError> {
        let Some((order, decoded)) = decode(event)? else {
            return Ok(());
        };
        match decoded {
            OrderEvent::Placed {
                customer, lines, ..
            } => {
                sqlx::query(ON_PLACED)
                    .bind(order)
                    .bind(customer)
                    .bind(units(&lines))
                    .bind(AWAITING)
                    .execute(&mut **tx)
                    .await?;
            }
            OrderEvent::Confirmed { .. } | OrderEvent::Rejected { .. } => {
                let changed = if matches!(decoded, OrderEvent::Confirmed { .. }) {
                    sqlx::query(ON_CONFIRMED)
                        .bind(order)
                        .bind(crate::platform::readmodel::recorded_secs(event))
                        .execute(&mut **tx)
                        .await?
                } else {
                    sqlx::query(ON_REJECTED)
                        .bind(order)
                        .execute(&mut **tx)
                        .await?
                };
                // Nothing moved: a repeat (fine) or an order this
                // model never saw placed (an error to retry).
                if changed.rows_affected() == 0 {
                    let known: i64 = sqlx::query_scalar(KNOWN)
                        .bind(order)
                        .fetch_one(&mut **tx)
                        .await?;
                    if known == 0 {
                        return Err(crate::platform::readmodel::not_placed(order, event));
                    }
                }
            }
            OrderEvent::PendingValidation => {}
        }
        Ok(())
    }
}

/// Queries of the shipments read model on this database.
pub(crate) mod queries {
    use super::*;

    /// The shipment of `order_id`, if the order was confirmed.
    pub(crate) async fn shipment(
        pool: &sqlx::Pool<sqlx::Any>,
        order_id: &str,
    ) -> Result<Option<Shipment>, sqlx::Error> {
        let row: Option<Row> = sqlx::query_as(SELECT)
            .bind(order_id)
            .fetch_optional(pool)
            .await?;
        Ok(row.and_then(super::shipment))
    }
}

/// Starts the shipping read model from `source` (SQLite fed from the
/// in-process bus in one process, PostgreSQL fed from JetStream distributed) and `GET /shipments/{order_id}` behind
/// `validator`, in either run mode. The service is the read model's feed
/// and its projection.
///
/// # Errors
///
/// The database cannot be opened or the projection cannot start.
pub(crate) async fn start(
    source: Source<'_>,
    validator: trellis_auth::Validator,
    metrics: &mut crate::platform::metrics::ProcessMetrics,
) -> Result<crate::services::Started<(Arc<Feed>, Arc<ProjectionHandle>)>, Error> {
    let (feed, projection) =
        Feed::start(source, "shipping", ShipmentProjection, &metrics.projections).await?;
    Ok(crate::services::Started {
        router: routes()
            .layer(trellis_auth::JwtAuthLayer::new(validator))
            .with_state(feed.clone()),
        service: (feed, projection),
        background: Vec::new(),
    })
}

/// `GET /shipments/{order_id}` on a feed (either database).
pub(crate) fn routes() -> crate::services::ApiRouter<Arc<Feed>> {
    crate::services::ApiRouter::default()
        .routes(utoipa_axum::routes!(get_shipment))
        .route_layer(RequireScopesLayer::all([SCOPE]))
}

/// The shipment of one of the caller's confirmed orders.
#[utoipa::path(
    get,
    path = "/shipments/{order_id}",
    tag = "shipping",
    params(("order_id" = String, Path, description = "The order id")),
    security(("bearer" = ["orders:read"])),
    responses(
        (status = 200, description = "The shipment", body = Shipment),
        (status = 404, description = "`not_found`: no shipment for an order of the caller's (not confirmed, rejected before confirmation, or another customer's)", body = crate::api::ErrorBody),
        (status = 503, description = "`read_model_behind`", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn get_shipment(
    State(feed): State<Arc<Feed>>,
    Extension(claims): Extension<Claims>,
    UrlPath(order): UrlPath<String>,
) -> Result<Json<Shipment>, ApiError> {
    let customer = subject(&claims)?;
    feed.caught_up().await?;
    let shipment = queries::shipment(&feed.pool, &order).await?;
    match shipment {
        Some(shipment) if shipment.customer == customer => Ok(Json(shipment)),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no shipment for this order",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::readmodel::testing::{self, T0};

    fn ready(order: &str, customer: &str, items: i64, at: u64) -> Option<Shipment> {
        Some(Shipment {
            order_id: order.into(),
            customer: customer.into(),
            items,
            status: "READY_TO_SHIP".into(),
            ready_at: Some(at as i64),
        })
    }

    /// The expected shipments of `testing::scenario_events`, whichever database.
    fn expected() -> Vec<(&'static str, Option<Shipment>)> {
        let mut cancelled = ready("c", "bob", 4, T0 + 1200);
        if let Some(c) = cancelled.as_mut() {
            c.status = "CANCELLED".into();
        }
        vec![
            ("a", ready("a", "ada", 3, T0 + 300)),
            ("b", ready("b", "ada", 2, T0 + 4200)),
            ("c", cancelled),
            ("d", None),
            ("e", None),
            ("x", None),
        ]
    }

    #[tokio::test]
    async fn sqlite_keeps_a_shipment_per_confirmed_order() {
        let pool = testing::sqlite().await;
        testing::apply(&pool, &ShipmentProjection, &testing::scenario_events()).await;
        for (order, shipment) in expected() {
            assert_eq!(
                queries::shipment(&pool, order).await.unwrap(),
                shipment,
                "{order}"
            );
        }
    }

    #[tokio::test]
    async fn postgres_keeps_a_shipment_per_confirmed_order() {
        let Some((pool, schema)) = testing::postgres("shipping").await else {
            return;
        };
        testing::apply(&pool, &ShipmentProjection, &testing::scenario_events()).await;
        for (order, shipment) in expected() {
            assert_eq!(
                queries::shipment(&pool, order).await.unwrap(),
                shipment,
                "{order}"
            );
        }
        testing::drop_schema(pool, &schema).await;
    }

    #[tokio::test]
    async fn an_event_of_an_order_never_placed_is_an_error() {
        let pool = testing::sqlite().await;
        testing::unseen_orders_are_errors(&pool, &ShipmentProjection).await;
        if let Some((pool, schema)) = testing::postgres("shipping_unseen").await {
            testing::unseen_orders_are_errors(&pool, &ShipmentProjection).await;
            testing::drop_schema(pool, &schema).await;
        }
    }
}
