//! Analytics and recommendations: read models over the order events, in
//! analytics' own database — orders and revenue per customer, revenue per
//! hour, top products, products bought together.
//!
//! Only confirmed orders count, in the hour they were confirmed. `Placed`
//! stages the order (customer, total, lines); `Confirmed` adds it to every
//! model once; `Rejected` after confirmation (a refund) subtracts exactly
//! what was added, from the same hour. The runner applies each event once
//! (checkpoint in the same transaction), so the counters never drift. One
//! `Projection<sqlx::Any>` serves SQLite and PostgreSQL (see `readmodel`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};

use axum::Json;
use serde::{Deserialize, Serialize};
use trellis_auth::RequireScopesLayer;
use trellis_cqrs::{BoxError, Projection, ProjectionHandle};
use trellis_eventsourcing::{EventFilter, StoredEvent};

use crate::api::{ApiError, Error};
use crate::platform::readmodel::{Feed, Source, hour_of};
use crate::services::orders::client::{OrderEvent, decode};

/// Scope of every analytics route (operators' tokens carry it).
pub(crate) const SCOPE: &str = "analytics:read";

/// Rows a list answers with at most.
const TOP: i64 = 10;
const CUSTOMERS: i64 = 100;
const HOURS: i64 = 48;

const SETUP: [&str; 5] = [
    "CREATE TABLE IF NOT EXISTS analytics_orders (order_id TEXT PRIMARY KEY, customer TEXT NOT NULL, \
     total_cents BIGINT NOT NULL, lines TEXT NOT NULL, counted BIGINT NOT NULL, hour BIGINT)",
    "CREATE TABLE IF NOT EXISTS analytics_customers (customer TEXT PRIMARY KEY, \
     orders BIGINT NOT NULL, revenue_cents BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS analytics_revenue_hourly (hour BIGINT PRIMARY KEY, \
     orders BIGINT NOT NULL, revenue_cents BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS analytics_products (sku TEXT PRIMARY KEY, \
     units BIGINT NOT NULL, orders BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS analytics_pairs (sku_a TEXT NOT NULL, sku_b TEXT NOT NULL, \
     orders BIGINT NOT NULL, PRIMARY KEY (sku_a, sku_b))",
];
const STAGE: &str = "INSERT INTO analytics_orders (order_id, customer, total_cents, lines, counted) \
     VALUES ($1, $2, $3, $4, 0) ON CONFLICT (order_id) DO NOTHING";
const STAGED: &str = "SELECT customer, total_cents, lines, hour FROM analytics_orders \
     WHERE order_id = $1 AND counted = $2";
const KNOWN: &str = "SELECT COUNT(*) FROM analytics_orders WHERE order_id = $1";
const MARK: &str = "UPDATE analytics_orders SET counted = $2, hour = $3 WHERE order_id = $1";
const ADD_CUSTOMER: &str = "INSERT INTO analytics_customers (customer, orders, revenue_cents) \
     VALUES ($1, $2, $3) ON CONFLICT (customer) DO UPDATE SET \
     orders = analytics_customers.orders + excluded.orders, \
     revenue_cents = analytics_customers.revenue_cents + excluded.revenue_cents";
const ADD_HOUR: &str = "INSERT INTO analytics_revenue_hourly (hour, orders, revenue_cents) \
     VALUES ($1, $2, $3) ON CONFLICT (hour) DO UPDATE SET \
     orders = analytics_revenue_hourly.orders + excluded.orders, \
     revenue_cents = analytics_revenue_hourly.revenue_cents + excluded.revenue_cents";
const ADD_PRODUCT: &str = "INSERT INTO analytics_products (sku, units, orders) \
     VALUES ($1, $2, $3) ON CONFLICT (sku) DO UPDATE SET \
     units = analytics_products.units + excluded.units, \
     orders = analytics_products.orders + excluded.orders";
const ADD_PAIR: &str = "INSERT INTO analytics_pairs (sku_a, sku_b, orders) \
     VALUES ($1, $2, $3) ON CONFLICT (sku_a, sku_b) DO UPDATE SET \
     orders = analytics_pairs.orders + excluded.orders";
const SELECT_CUSTOMERS: &str = "SELECT customer, orders, revenue_cents FROM analytics_customers \
     WHERE orders > 0 ORDER BY orders DESC, revenue_cents DESC, customer LIMIT $1";
const SELECT_HOURS: &str = "SELECT hour, orders, revenue_cents FROM analytics_revenue_hourly \
     WHERE orders <> 0 OR revenue_cents <> 0 ORDER BY hour DESC LIMIT $1";
const SELECT_PRODUCTS: &str = "SELECT sku, units, orders FROM analytics_products \
     WHERE units > 0 ORDER BY units DESC, sku LIMIT $1";
const SELECT_PAIRS: &str = "SELECT sku_b AS sku, orders FROM analytics_pairs WHERE sku_a = $1 AND orders > 0 \
     UNION ALL SELECT sku_a AS sku, orders FROM analytics_pairs WHERE sku_b = $1 AND orders > 0 \
     ORDER BY 2 DESC, 1 LIMIT $2";

/// The analytics read models.
#[derive(Debug)]
pub(crate) struct AnalyticsProjection;

/// Confirmed orders and revenue of one customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct CustomerOrders {
    /// The customer (their user id).
    pub(crate) customer: String,
    /// Confirmed orders, refunds subtracted.
    pub(crate) orders: i64,
    /// Their total, in cents.
    pub(crate) revenue_cents: i64,
}

/// Confirmed orders and revenue in one hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct HourlyRevenue {
    /// Start of the hour, Unix seconds (UTC).
    pub(crate) hour: i64,
    /// Orders confirmed in it, refunds subtracted.
    pub(crate) orders: i64,
    /// Their total, in cents.
    pub(crate) revenue_cents: i64,
}

/// Sales of one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct ProductSales {
    /// The product.
    pub(crate) sku: String,
    /// Units sold.
    pub(crate) units: i64,
    /// Orders that contained it.
    pub(crate) orders: i64,
}

/// A product bought in the same orders as another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct BoughtWith {
    /// The other product.
    pub(crate) sku: String,
    /// Confirmed orders that contained both.
    pub(crate) orders: i64,
}

#[derive(Debug, Deserialize)]
struct Line {
    sku: String,
    quantity: i64,
}

/// Units per SKU of an order's lines (a SKU on two lines counts once per order).
fn units_per_sku(lines: &str) -> Result<BTreeMap<String, i64>, BoxError> {
    let lines: Vec<Line> = serde_json::from_str(lines)?;
    let mut units = BTreeMap::new();
    for line in lines {
        *units.entry(line.sku).or_insert(0) += line.quantity;
    }
    Ok(units)
}

impl Projection<sqlx::Any> for AnalyticsProjection {
    fn name(&self) -> &str {
        "analytics_v1"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::category("order")
    }

    async fn setup(&self, pool: &sqlx::Pool<sqlx::Any>) -> Result<(), BoxError> {
        for statement in SETUP {
            sqlx::query(statement).execute(pool).await?;
        }
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
                customer,
                lines,
                total_cents,
            } => {
                sqlx::query(STAGE)
                    .bind(order)
                    .bind(customer)
                    .bind(total_cents)
                    .bind(serde_json::to_string(&lines)?)
                    .execute(&mut **tx)
                    .await?;
            }
            // Counted once, in the hour of confirmation.
            OrderEvent::Confirmed { .. } => {
                queries::count(tx, order, 0, 1, Some(hour_of(event))).await?;
            }
            // A refund takes back exactly what was counted.
            OrderEvent::Rejected { .. } => {
                queries::count(tx, order, 1, -1, None).await?;
            }
            OrderEvent::PendingValidation => {}
        }
        Ok(())
    }
}

/// Writes and queries of the analytics read models on this database.
pub(crate) mod queries {
    use super::*;

    type Staged = (String, i64, String, Option<i64>);

    /// Adds (`delta` 1) or subtracts (-1) the staged order whose
    /// `counted` flag is `from`, then flips the flag.
    pub(super) async fn count(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        order: &str,
        from: i64,
        delta: i64,
        hour: Option<i64>,
    ) -> Result<(), BoxError> {
        let staged: Option<Staged> = sqlx::query_as(STAGED)
            .bind(order)
            .bind(from)
            .fetch_optional(&mut **tx)
            .await?;
        let Some((customer, total, lines, counted_hour)) = staged else {
            // Counted (or taken back) before: a repeat. Never
            // staged: an order this model did not see placed.
            let known: i64 = sqlx::query_scalar(KNOWN)
                .bind(order)
                .fetch_one(&mut **tx)
                .await?;
            if known == 0 {
                return Err(format!("order {order} was never placed here").into());
            }
            return Ok(());
        };
        let hour = hour.or(counted_hour).unwrap_or(0);
        sqlx::query(ADD_CUSTOMER)
            .bind(&customer)
            .bind(delta)
            .bind(delta * total)
            .execute(&mut **tx)
            .await?;
        sqlx::query(ADD_HOUR)
            .bind(hour)
            .bind(delta)
            .bind(delta * total)
            .execute(&mut **tx)
            .await?;
        let units = units_per_sku(&lines)?;
        for (sku, quantity) in &units {
            sqlx::query(ADD_PRODUCT)
                .bind(sku)
                .bind(delta * quantity)
                .bind(delta)
                .execute(&mut **tx)
                .await?;
        }
        // Each unordered pair once, smaller SKU first (the keys are sorted).
        let skus: Vec<&String> = units.keys().collect();
        for (i, a) in skus.iter().enumerate() {
            for b in &skus[i + 1..] {
                sqlx::query(ADD_PAIR)
                    .bind(*a)
                    .bind(*b)
                    .bind(delta)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        sqlx::query(MARK)
            .bind(order)
            .bind(from + delta)
            .bind(hour)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Customers by confirmed orders.
    pub(crate) async fn customers(
        pool: &sqlx::Pool<sqlx::Any>,
    ) -> Result<Vec<CustomerOrders>, sqlx::Error> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(SELECT_CUSTOMERS)
            .bind(CUSTOMERS)
            .fetch_all(pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(customer, orders, revenue_cents)| CustomerOrders {
                customer,
                orders,
                revenue_cents,
            })
            .collect())
    }

    /// Revenue of the latest hours with sales, newest first.
    pub(crate) async fn revenue_per_hour(
        pool: &sqlx::Pool<sqlx::Any>,
    ) -> Result<Vec<HourlyRevenue>, sqlx::Error> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(SELECT_HOURS)
            .bind(HOURS)
            .fetch_all(pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(hour, orders, revenue_cents)| HourlyRevenue {
                hour,
                orders,
                revenue_cents,
            })
            .collect())
    }

    /// The best-selling products by units.
    pub(crate) async fn top_products(
        pool: &sqlx::Pool<sqlx::Any>,
    ) -> Result<Vec<ProductSales>, sqlx::Error> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(SELECT_PRODUCTS)
            .bind(TOP)
            .fetch_all(pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(sku, units, orders)| ProductSales { sku, units, orders })
            .collect())
    }

    /// The products most often confirmed in the same order as `sku`.
    pub(crate) async fn bought_together(
        pool: &sqlx::Pool<sqlx::Any>,
        sku: &str,
    ) -> Result<Vec<BoughtWith>, sqlx::Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(SELECT_PAIRS)
            .bind(sku)
            .bind(TOP)
            .fetch_all(pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(sku, orders)| BoughtWith { sku, orders })
            .collect())
    }
}

/// Starts the analytics read model from `source` (SQLite fed from the
/// in-process bus in one process, PostgreSQL fed from JetStream distributed) and the `/analytics/...` routes behind
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
    let (feed, projection) = Feed::start(
        source,
        "analytics",
        AnalyticsProjection,
        &metrics.projections,
    )
    .await?;
    Ok(crate::services::Started {
        router: routes()
            .layer(trellis_auth::JwtAuthLayer::new(validator))
            .with_state(feed.clone()),
        service: (feed, projection),
        background: Vec::new(),
    })
}

/// The `/analytics/...` routes on a feed (either database).
pub(crate) fn routes() -> crate::services::ApiRouter<Arc<Feed>> {
    use utoipa_axum::routes;
    crate::services::ApiRouter::default()
        .routes(routes!(customers))
        .routes(routes!(revenue_per_hour))
        .routes(routes!(top_products))
        .routes(routes!(bought_together))
        .route_layer(RequireScopesLayer::all([SCOPE]))
}

/// Customers by confirmed orders (at most 100).
#[utoipa::path(
    get,
    path = "/analytics/customers",
    tag = "analytics",
    security(("bearer" = ["analytics:read"])),
    responses(
        (status = 200, description = "Orders and revenue per customer, most orders first", body = [CustomerOrders]),
        (status = 503, description = "`read_model_behind`", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn customers(
    State(feed): State<Arc<Feed>>,
) -> Result<Json<Vec<CustomerOrders>>, ApiError> {
    feed.caught_up().await?;
    Ok(Json(queries::customers(&feed.pool).await?))
}

/// Revenue per hour of confirmation (the latest 48 hours with sales).
#[utoipa::path(
    get,
    path = "/analytics/revenue/hourly",
    tag = "analytics",
    security(("bearer" = ["analytics:read"])),
    responses(
        (status = 200, description = "Orders and revenue per hour, newest first", body = [HourlyRevenue]),
        (status = 503, description = "`read_model_behind`", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn revenue_per_hour(
    State(feed): State<Arc<Feed>>,
) -> Result<Json<Vec<HourlyRevenue>>, ApiError> {
    feed.caught_up().await?;
    Ok(Json(queries::revenue_per_hour(&feed.pool).await?))
}

/// The 10 best-selling products by units.
#[utoipa::path(
    get,
    path = "/analytics/products/top",
    tag = "analytics",
    security(("bearer" = ["analytics:read"])),
    responses(
        (status = 200, description = "Products by units sold", body = [ProductSales]),
        (status = 503, description = "`read_model_behind`", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn top_products(
    State(feed): State<Arc<Feed>>,
) -> Result<Json<Vec<ProductSales>>, ApiError> {
    feed.caught_up().await?;
    Ok(Json(queries::top_products(&feed.pool).await?))
}

/// The 10 products most often bought in the same order as `sku`.
#[utoipa::path(
    get,
    path = "/analytics/products/{sku}/bought-together",
    tag = "analytics",
    params(("sku" = String, Path, description = "The product")),
    security(("bearer" = ["analytics:read"])),
    responses(
        (status = 200, description = "Products bought with it, most orders first (empty for an unknown SKU)", body = [BoughtWith]),
        (status = 503, description = "`read_model_behind`", body = crate::api::ErrorBody),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn bought_together(
    State(feed): State<Arc<Feed>>,
    UrlPath(sku): UrlPath<String>,
) -> Result<Json<Vec<BoughtWith>>, ApiError> {
    feed.caught_up().await?;
    Ok(Json(queries::bought_together(&feed.pool, &sku).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::readmodel::testing::{self, T0};

    struct Expected {
        customers: Vec<CustomerOrders>,
        hours: Vec<HourlyRevenue>,
        products: Vec<ProductSales>,
        with_tea: Vec<BoughtWith>,
        with_biscuits: Vec<BoughtWith>,
    }

    /// What `testing::scenario_events` leaves, whichever database: a and b
    /// confirmed (ada), c confirmed then refunded (bob), d rejected before
    /// confirmation, e pending.
    fn expected() -> Expected {
        let customer = |customer: &str, orders, revenue_cents| CustomerOrders {
            customer: customer.into(),
            orders,
            revenue_cents,
        };
        let product = |sku: &str, units, orders| ProductSales {
            sku: sku.into(),
            units,
            orders,
        };
        let with = |sku: &str, orders| BoughtWith {
            sku: sku.into(),
            orders,
        };
        let t0 = T0 as i64;
        Expected {
            customers: vec![customer("ada", 2, 4300 + 7650)],
            hours: vec![
                HourlyRevenue {
                    hour: t0 + 3600,
                    orders: 1,
                    revenue_cents: 7650,
                },
                HourlyRevenue {
                    hour: t0,
                    orders: 1,
                    revenue_cents: 4300,
                },
            ],
            products: vec![
                product("TEA-001", 3, 2),
                product("KET-003", 1, 1),
                product("MUG-002", 1, 1),
            ],
            with_tea: vec![with("KET-003", 1), with("MUG-002", 1)],
            with_biscuits: vec![],
        }
    }

    macro_rules! assert_read_models {
        ($module:ident, $pool:expr) => {{
            let pool = $pool;
            let expected = expected();
            assert_eq!($module::customers(pool).await.unwrap(), expected.customers);
            assert_eq!(
                $module::revenue_per_hour(pool).await.unwrap(),
                expected.hours
            );
            assert_eq!(
                $module::top_products(pool).await.unwrap(),
                expected.products
            );
            assert_eq!(
                $module::bought_together(pool, "TEA-001").await.unwrap(),
                expected.with_tea
            );
            assert_eq!(
                $module::bought_together(pool, "BIS-004").await.unwrap(),
                expected.with_biscuits
            );
            // The pair table is symmetric in use: asked from the other side.
            assert_eq!(
                $module::bought_together(pool, "MUG-002").await.unwrap(),
                vec![BoughtWith {
                    sku: "TEA-001".into(),
                    orders: 1
                }]
            );
        }};
    }

    #[tokio::test]
    async fn sqlite_read_models_count_confirmed_orders_once() {
        let pool = testing::sqlite().await;
        testing::apply(&pool, &AnalyticsProjection, &testing::scenario_events()).await;
        assert_read_models!(queries, &pool);
    }

    #[tokio::test]
    async fn postgres_read_models_count_confirmed_orders_once() {
        let Some((pool, schema)) = testing::postgres("analytics").await else {
            return;
        };
        testing::apply(&pool, &AnalyticsProjection, &testing::scenario_events()).await;
        assert_read_models!(queries, &pool);
        testing::drop_schema(pool, &schema).await;
    }

    #[test]
    fn lines_are_summed_per_sku() {
        let units = units_per_sku(
            r#"[{"sku":"A","quantity":2},{"sku":"B","quantity":1},{"sku":"A","quantity":3}]"#,
        )
        .unwrap();
        assert_eq!(units, BTreeMap::from([("A".into(), 5), ("B".into(), 1)]));
        assert!(units_per_sku("not json").is_err());
    }

    #[tokio::test]
    async fn an_event_of_an_order_never_placed_is_an_error() {
        let pool = testing::sqlite().await;
        testing::unseen_orders_are_errors(&pool, &AnalyticsProjection).await;
        if let Some((pool, schema)) = testing::postgres("analytics_unseen").await {
            testing::unseen_orders_are_errors(&pool, &AnalyticsProjection).await;
            testing::drop_schema(pool, &schema).await;
        }
    }
}
