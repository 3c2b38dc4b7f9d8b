//! The consuming side of the bus (distributed mode): shipping and analytics
//! keep their read models in their own PostgreSQL schema, fed from orders'
//! events on NATS JetStream by `trellis_cqrs::JetStreamRunner` (each event
//! applied once, together with its checkpoint).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use serde::Serialize;
use sqlx::PgPool;
use trellis_cqrs::{BoxError, JetStreamRunner, Projection, ProjectionHandle, ProjectionState};
use trellis_eventsourcing::StoredEvent;
use trellis_health::checks::{NatsCheck, PgCheck};
use trellis_health::{Check, Group, HealthBuilder};

use crate::config::{ServiceName, Settings};
use crate::error::{ApiError, Error};
use crate::shipping::Shipments;
use crate::{db, distributed};

/// A running consumer: its routes, its projection and its JWKS refresh.
pub(crate) struct Consumer {
    pub(crate) router: Router,
    pub(crate) projection: Arc<ProjectionHandle>,
    pub(crate) refresh: tokio::task::JoinHandle<()>,
}

/// Starts shipping's or analytics' projection and routes.
pub(crate) async fn start_consumer(
    settings: &Settings,
    service: ServiceName,
    schema: &str,
    health: &mut HealthBuilder,
) -> Result<Consumer, Error> {
    let pool = db::open_pg(distributed::pg_target(settings, schema), 5).await?;
    let client = distributed::nats(settings).await?;
    for check in [
        Check::new(format!("{service}-db"), PgCheck::new(pool.clone())),
        Check::new("nats", NatsCheck::new(client.clone())),
    ] {
        health.check(
            check
                .timeout(Duration::from_millis(800))
                .groups([Group::Readiness, Group::Startup]),
        );
    }
    let js = async_nats::jetstream::new(client);
    let stream = distributed::order_stream(&js, settings).await?;
    let (validator, refresh) = distributed::jwks_validator(settings)?;
    let (router, projection) = match service {
        ServiceName::Shipping => (
            crate::shipping::router(pool.clone(), validator),
            run(stream, pool, Shipments).await?,
        ),
        _ => (
            analytics_router(pool.clone(), validator),
            run(stream, pool, OrderTotals).await?,
        ),
    };
    let projection = Arc::new(projection);
    let watched = projection.clone();
    // Ready only while the projection runs: parked on a poison event, the
    // service would serve an ever older read model.
    health.check(
        Check::new("projection", move || {
            let state = watched.status().state;
            async move {
                match state {
                    ProjectionState::Running => Ok(()),
                    other => Err(BoxError::from(format!("projection {other:?}"))),
                }
            }
        })
        .groups([Group::Readiness]),
    );
    Ok(Consumer {
        router,
        projection,
        refresh,
    })
}

async fn run<P: Projection<sqlx::Postgres>>(
    stream: async_nats::jetstream::stream::Stream,
    pool: PgPool,
    projection: P,
) -> Result<ProjectionHandle, Error> {
    Ok(JetStreamRunner::new(stream, pool, projection)
        .spawn()
        .await?)
}

// ------------------------------------------------------------ analytics

/// NOTE: a minimal analytics read model (confirmed orders and revenue) for
/// the distributed mode; the full analytics read models replace it when
/// the branches merge. Its counters are not idempotent on their own, which
/// is what the runner's checkpoint makes safe.
#[derive(Debug)]
pub(crate) struct OrderTotals;

impl Projection<sqlx::Postgres> for OrderTotals {
    fn name(&self) -> &str {
        "order_totals_v1"
    }

    async fn setup(&self, pool: &PgPool) -> Result<(), BoxError> {
        for ddl in [
            "CREATE TABLE IF NOT EXISTS analytics_orders (order_id TEXT PRIMARY KEY, total_cents BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS analytics_totals (id INT PRIMARY KEY, confirmed_orders BIGINT NOT NULL, revenue_cents BIGINT NOT NULL)",
            "INSERT INTO analytics_totals (id, confirmed_orders, revenue_cents) VALUES (1, 0, 0) ON CONFLICT (id) DO NOTHING",
        ] {
            sqlx::query(ddl).execute(pool).await?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        event: &StoredEvent,
    ) -> Result<(), BoxError> {
        let Some(order_id) = event.stream_id.strip_prefix("order-") else {
            return Ok(());
        };
        match event.event_type.as_str() {
            "Placed" => {
                sqlx::query(
                    "INSERT INTO analytics_orders (order_id, total_cents) VALUES ($1, $2) ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order_id)
                .bind(event.payload["total_cents"].as_i64().unwrap_or(0))
                .execute(&mut **tx)
                .await?;
            }
            "Confirmed" => {
                sqlx::query(
                    "UPDATE analytics_totals SET confirmed_orders = confirmed_orders + 1, \
                     revenue_cents = revenue_cents + COALESCE((SELECT total_cents FROM analytics_orders WHERE order_id = $1), 0) \
                     WHERE id = 1",
                )
                .bind(order_id)
                .execute(&mut **tx)
                .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct Totals {
    confirmed_orders: i64,
    revenue_cents: i64,
}

fn analytics_router(pool: PgPool, validator: trellis_auth::Validator) -> Router {
    use axum::routing::get;
    use trellis_auth::{JwtAuthLayer, RequireScopesLayer};
    Router::new()
        .route("/analytics/totals", get(totals))
        .route_layer(RequireScopesLayer::all([crate::OPS_SCOPE]))
        .layer(JwtAuthLayer::new(validator))
        .with_state(pool)
}

async fn totals(State(pool): State<PgPool>) -> Result<Json<Totals>, ApiError> {
    let (confirmed_orders, revenue_cents): (i64, i64) =
        sqlx::query_as("SELECT confirmed_orders, revenue_cents FROM analytics_totals WHERE id = 1")
            .fetch_one(&pool)
            .await?;
    Ok(Json(Totals {
        confirmed_orders,
        revenue_cents,
    }))
}
