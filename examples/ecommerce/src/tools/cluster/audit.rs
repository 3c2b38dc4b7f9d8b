//! [`SchemaAudit`]: the distributed system's invariants read from the
//! services' schemas directly, and the saga leases `reschedule` watches.

use std::collections::BTreeMap;

use super::{System, fail};
use crate::api::Error;
use crate::platform::config::ServiceName;

/// The invariants read from the services' schemas directly.
#[derive(Debug, Default, Clone)]
pub struct SchemaAudit {
    /// Orders in orders' read model, by status.
    pub orders: BTreeMap<String, u64>,
    /// Sagas started.
    pub sagas: i64,
    /// Sagas not `completed` or `compensated`.
    pub sagas_open: i64,
    /// Completed sagas whose order orders' read model lacks.
    pub lost: u64,
    /// Orders with more than one standing charge.
    pub charged_twice: u64,
    /// Rejected orders with a standing charge plus confirmed ones without.
    pub charge_mismatch: u64,
    /// Rejected orders with a standing charge.
    pub refunds_missing: u64,
    /// Final orders whose reservation does not match their status.
    pub reservation_mismatch: u64,
    /// Orders shipping or analytics disagree on with orders.
    pub read_model_mismatch: u64,
    /// Reservations still merely `RESERVED`.
    pub reservations_open: u64,
    /// Reservations `CONFIRMED`.
    pub reservations_confirmed: u64,
    /// Σ over SKUs of |seed − (available + reserved + confirmed)|.
    pub stock_leaked: i64,
}

impl SchemaAudit {
    /// Nothing open or out of step: what a drill waits for after its load.
    pub fn settled(&self) -> bool {
        self.sagas_open == 0
            && self.lost == 0
            && self.charged_twice == 0
            && self.charge_mismatch == 0
            && self.reservation_mismatch == 0
            && self.read_model_mismatch == 0
            && self.stock_leaked == 0
    }
}

/// Audits `system` through its orders, payments, inventory, shipping and
/// analytics schemas, with the one-process audit's per-order checks
/// ([`crate::run::audit::check_orders`]).
pub async fn audit(system: &System) -> Result<SchemaAudit, Error> {
    use crate::run::audit::{ANALYTICS_ORDERS, RESERVATIONS, SAGAS, SHIPMENTS, STANDING_CHARGES};
    let orders_db = system.schema(ServiceName::Orders).await?;
    let payments_db = system.schema(ServiceName::Payments).await?;
    let inventory_db = system.schema(ServiceName::Inventory).await?;
    let shipping_db = system.schema(ServiceName::Shipping).await?;
    let analytics_db = system.schema(ServiceName::Analytics).await?;
    let standing: Vec<(String, i64)> = sqlx::query_as(STANDING_CHARGES)
        .fetch_all(&payments_db)
        .await?;
    // A read model whose runner has not created its table yet is empty.
    let shipments = sqlx::query_as(SHIPMENTS)
        .fetch_all(&shipping_db)
        .await
        .unwrap_or_default();
    let analytics = sqlx::query_as(ANALYTICS_ORDERS)
        .fetch_all(&analytics_db)
        .await
        .unwrap_or_default();
    let input = crate::run::audit::AuditInput {
        orders: sqlx::query_as("SELECT order_id, status FROM order_summaries")
            .fetch_all(&orders_db)
            .await?,
        standing: standing.into_iter().collect(),
        reservations: sqlx::query_as(RESERVATIONS)
            .fetch_all(&inventory_db)
            .await?,
        sagas: sqlx::query_as(SAGAS).fetch_all(&orders_db).await?,
        shipments,
        analytics,
    };
    let checked = crate::run::audit::check_orders(&input);
    let sagas = input.sagas.len() as i64;
    let sagas_open = checked.sagas_open.count as i64;

    let stock: Vec<(String, i64)> = sqlx::query_as("SELECT sku, available FROM stock")
        .fetch_all(&inventory_db)
        .await?;
    let reservations: Vec<(String, String)> =
        sqlx::query_as("SELECT lines, status FROM reservations")
            .fetch_all(&inventory_db)
            .await?;
    let mut total: BTreeMap<String, i64> = stock.into_iter().collect();
    let (mut reservations_open, mut reservations_confirmed) = (0, 0);
    for (lines, status) in &reservations {
        match status.as_str() {
            "RESERVED" => reservations_open += 1,
            "CONFIRMED" => reservations_confirmed += 1,
            _ => continue,
        }
        let lines: serde_json::Value = serde_json::from_str(lines).map_err(fail)?;
        for line in lines.as_array().into_iter().flatten() {
            let sku = line["sku"].as_str().unwrap_or_default().to_owned();
            *total.entry(sku).or_default() += line["quantity"].as_i64().unwrap_or(0);
        }
    }
    let stock_leaked = total
        .values()
        .map(|units| (system.seed_stock - units).abs())
        .sum();
    for pool in [
        orders_db,
        payments_db,
        inventory_db,
        shipping_db,
        analytics_db,
    ] {
        pool.close().await;
    }
    Ok(SchemaAudit {
        orders: checked.orders,
        sagas,
        sagas_open,
        lost: checked.lost.count,
        charged_twice: checked.charged_twice.count,
        charge_mismatch: checked.refunds_missing.count + checked.confirmed_not_charged.count,
        refunds_missing: checked.refunds_missing.count,
        reservation_mismatch: checked.reservation_mismatch.count,
        read_model_mismatch: checked.read_model_mismatch.count,
        reservations_open,
        reservations_confirmed,
        stock_leaked,
    })
}

/// Whose saga leases are live in orders' schema right now.
#[derive(Debug, Clone)]
pub struct LiveLeases {
    /// The owner holding the most live leases (the one orders process).
    pub owner: String,
    /// How many open sagas it holds with an unexpired lease.
    pub live: i64,
}

/// The owner holding live leases on open sagas, and how many.
///
/// NOTE: reads the saga log's `trellis_sagas` columns (`lease_owner`,
/// `lease_until` in unix ms); keep in step with saga/src/log.
pub async fn audit_owners(system: &System) -> Result<LiveLeases, Error> {
    let orders_db = system.schema(ServiceName::Orders).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT lease_owner, COUNT(*) FROM trellis_sagas WHERE status IN ('running', 'compensating') \
         AND lease_until > $1 AND lease_owner IS NOT NULL GROUP BY lease_owner ORDER BY 2 DESC LIMIT 1",
    )
    .bind(now)
    .fetch_optional(&orders_db)
    .await?;
    orders_db.close().await;
    let (owner, live) = row.unwrap_or_default();
    Ok(LiveLeases { owner, live })
}

/// Open sagas whose lease `owner` holds or held last.
pub async fn open_sagas_of(system: &System, owner: &str) -> Result<i64, Error> {
    let orders_db = system.schema(ServiceName::Orders).await?;
    let n = sqlx::query_scalar(
        "SELECT COUNT(*) FROM trellis_sagas WHERE status IN ('running', 'compensating') \
         AND lease_owner = $1",
    )
    .bind(owner)
    .fetch_one(&orders_db)
    .await?;
    orders_db.close().await;
    Ok(n)
}
