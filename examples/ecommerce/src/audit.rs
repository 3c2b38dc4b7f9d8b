//! `GET /api/v1/admin/audit` (scope `ops:admin`): the invariants a fault
//! drill checks, read from the services' own data, so a drill can audit a
//! system it reaches only over HTTP (`ecommerce drill --url`).
//!
//! - **Charges**: no order has more than one standing charge (charged and
//!   not refunded), no rejected order keeps one, every confirmed order has
//!   exactly one.
//! - **Stock**: per SKU, the units the inventory accounts for (available +
//!   reserved + confirmed) equal what it accounted for when this process
//!   started (its baseline: the seed on a fresh data directory). A
//!   difference is stock leaked (or invented) since the start.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use sqlx::{AnyPool, SqlitePool};

use crate::error::ApiError;

/// What the audit reads: inventory's and payments' databases and the order
/// summary, all in this process (one-process mode).
#[derive(Debug)]
pub(crate) struct AuditState {
    pub(crate) inventory: AnyPool,
    pub(crate) payments: AnyPool,
    pub(crate) read_db: SqlitePool,
    /// Stock accounted for at startup, the audit's reference.
    pub(crate) stock_baseline: BTreeMap<String, StockLine>,
}

/// `GET /admin/audit` (relative to `/api/v1`), scope `ops:admin`, behind
/// `validator`.
pub(crate) fn router(state: Arc<AuditState>, validator: trellis_auth::Validator) -> axum::Router {
    axum::Router::new()
        .route(
            "/admin/audit",
            axum::routing::get(audit)
                .route_layer(trellis_auth::RequireScopesLayer::all([crate::OPS_SCOPE])),
        )
        .layer(trellis_auth::JwtAuthLayer::new(validator))
        .with_state(state)
}

/// Order ids listed per violation at most (the counts are complete).
const LISTED: usize = 20;

/// Units per SKU the inventory accounts for: available + reserved + confirmed.
///
/// NOTE: reads inventory's tables (`stock`, `reservations` with `lines` as a
/// JSON array of `{sku, quantity}`) directly; keep in step with inventory.rs.
pub(crate) async fn stock_totals(
    inventory: &AnyPool,
) -> Result<BTreeMap<String, StockLine>, sqlx::Error> {
    let mut totals: BTreeMap<String, StockLine> = BTreeMap::new();
    let available: Vec<(String, i64)> = sqlx::query_as("SELECT sku, available FROM stock")
        .fetch_all(inventory)
        .await?;
    for (sku, n) in available {
        totals.entry(sku).or_default().available = n;
    }
    let held: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT r.status, json_extract(l.value, '$.sku'), SUM(json_extract(l.value, '$.quantity')) \
         FROM reservations r, json_each(r.lines) l \
         WHERE r.status IN ('RESERVED', 'CONFIRMED') GROUP BY r.status, json_extract(l.value, '$.sku')",
    )
    .fetch_all(inventory)
    .await?;
    for (status, sku, n) in held {
        let line = totals.entry(sku).or_default();
        if status == "RESERVED" {
            line.reserved = n;
        } else {
            line.confirmed = n;
        }
    }
    Ok(totals)
}

/// One SKU's stock accounting.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub(crate) struct StockLine {
    available: i64,
    reserved: i64,
    confirmed: i64,
}

impl StockLine {
    fn total(&self) -> i64 {
        self.available + self.reserved + self.confirmed
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StockAudit {
    sku: String,
    baseline: i64,
    available: i64,
    reserved: i64,
    confirmed: i64,
    /// baseline − (available + reserved + confirmed): 0 when nothing leaked.
    leaked: i64,
}

#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub(crate) struct Violations {
    pub(crate) count: u64,
    order_ids: Vec<String>,
}

impl Violations {
    fn add(&mut self, order_id: &str) {
        self.count += 1;
        if self.order_ids.len() < LISTED {
            self.order_ids.push(order_id.to_owned());
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Audit {
    /// Orders in the read model by status.
    orders: BTreeMap<String, u64>,
    /// Orders with more than one standing charge.
    charged_twice: Violations,
    /// Rejected orders that still have a standing charge.
    charged_not_confirmed: Violations,
    /// Confirmed orders without a standing charge.
    confirmed_not_charged: Violations,
    /// Per SKU.
    stock: Vec<StockAudit>,
    /// Sum of |leaked| over the SKUs.
    stock_leaked: i64,
}

/// Standing charges (charged, not refunded) per order, from payments'
/// `charges` and `refunds` tables (SQLite and PostgreSQL alike).
///
/// NOTE: reads payments' tables directly; keep in step with payments.rs.
pub(crate) const STANDING_CHARGES: &str = "SELECT c.order_id, COUNT(*) FROM charges c WHERE c.status = 'CHARGED' \
     AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.payment_id = c.payment_id) GROUP BY c.order_id";

/// Orders by status and the charge violations among them.
pub(crate) struct ChargeCheck {
    pub(crate) orders: BTreeMap<String, u64>,
    pub(crate) charged_twice: Violations,
    pub(crate) charged_not_confirmed: Violations,
    pub(crate) confirmed_not_charged: Violations,
}

/// Checks every order's `(order_id, status)` (from orders' read model)
/// against `standing` charges per order: shared by this endpoint and the
/// distributed drills' audit ([`crate::cluster::audit`]).
pub(crate) fn check_charges(
    statuses: &[(String, String)],
    standing: &BTreeMap<String, i64>,
) -> ChargeCheck {
    let mut orders: BTreeMap<String, u64> = BTreeMap::new();
    let (mut charged_twice, mut charged_not_confirmed, mut confirmed_not_charged) = (
        Violations::default(),
        Violations::default(),
        Violations::default(),
    );
    for (order_id, status) in statuses {
        *orders.entry(status.clone()).or_default() += 1;
        let charges = standing.get(order_id).copied().unwrap_or(0);
        if charges > 1 {
            charged_twice.add(order_id);
        }
        match status.as_str() {
            "REJECTED" if charges > 0 => charged_not_confirmed.add(order_id),
            "CONFIRMED" if charges == 0 => confirmed_not_charged.add(order_id),
            _ => {}
        }
    }
    // A charge for an order the read model does not know is counted too.
    for (order_id, charges) in standing {
        if *charges > 1 && !statuses.iter().any(|(id, _)| id == order_id) {
            charged_twice.add(order_id);
        }
    }
    ChargeCheck {
        orders,
        charged_twice,
        charged_not_confirmed,
        confirmed_not_charged,
    }
}

/// The drills' audit: orders by status, charge violations and stock leaked
/// since the process started.
#[utoipa::path(
    get,
    path = "/api/v1/admin/audit",
    tag = "orders",
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "Orders by status, charge violations, stock per SKU", body = Audit),
        crate::openapi::AuthErrors,
    )
)]
pub(crate) async fn audit(
    State(app): State<Arc<AuditState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let standing: Vec<(String, i64)> = sqlx::query_as(STANDING_CHARGES)
        .fetch_all(&app.payments)
        .await?;
    let statuses: Vec<(String, String)> =
        sqlx::query_as("SELECT order_id, status FROM order_summaries")
            .fetch_all(&app.read_db)
            .await?;
    let ChargeCheck {
        orders,
        charged_twice,
        charged_not_confirmed,
        confirmed_not_charged,
    } = check_charges(&statuses, &standing.into_iter().collect());
    let now = stock_totals(&app.inventory).await?;
    let mut stock = Vec::new();
    let mut stock_leaked = 0;
    let skus: std::collections::BTreeSet<&String> =
        app.stock_baseline.keys().chain(now.keys()).collect();
    for sku in skus {
        let baseline = app.stock_baseline.get(sku).map_or(0, StockLine::total);
        let line = now.get(sku).copied().unwrap_or_default();
        let leaked = baseline - line.total();
        stock_leaked += leaked.abs();
        stock.push(StockAudit {
            sku: sku.clone(),
            baseline,
            available: line.available,
            reserved: line.reserved,
            confirmed: line.confirmed,
            leaked,
        });
    }
    let audit = Audit {
        orders,
        charged_twice,
        charged_not_confirmed,
        confirmed_not_charged,
        stock,
        stock_leaked,
    };
    Ok(Json(
        serde_json::to_value(audit).map_err(ApiError::internal)?,
    ))
}
