//! `GET /api/v1/admin/audit` (scope `ops:admin`): the invariants a fault
//! drill checks, read from the services' own data, so a drill can audit a
//! system it reaches only over HTTP (`ecommerce drill --url`).
//!
//! Per order, every check counts toward the verdict ([`check_orders`]):
//!
//! - **Lost**: every completed place-order saga has its order in the read
//!   model.
//! - **Charges**: a CONFIRMED order has exactly one standing charge
//!   (charged and not refunded), any other order none (a refunded charge
//!   does not stand): more than one is "charged twice", one on an order
//!   not confirmed is a "refund missing".
//! - **Reservations**: a CONFIRMED order's reservation is CONFIRMED; any
//!   other final order's is RELEASED or EXPIRED (or it has none).
//! - **Sagas**: none left running or compensating (once a drill settled).
//! - **Read models**: shipping has a READY_TO_SHIP shipment for exactly
//!   the confirmed orders, analytics counts exactly the confirmed orders.
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

use crate::api::ApiError;

/// What the audit reads: inventory's and payments' databases, the order
/// summary, the saga log and the shipping and analytics read models, all
/// in this process (one-process mode).
#[derive(Debug)]
pub(crate) struct AuditState {
    pub(crate) inventory: AnyPool,
    pub(crate) payments: AnyPool,
    pub(crate) read_db: AnyPool,
    pub(crate) sagas: SqlitePool,
    pub(crate) shipping: AnyPool,
    pub(crate) analytics: AnyPool,
    /// Stock accounted for at startup, the audit's reference.
    pub(crate) stock_baseline: BTreeMap<String, StockLine>,
}

/// `GET /admin/audit` (relative to `/api/v1`), scope `ops:admin`, behind
/// `validator`.
pub(crate) fn router(
    state: Arc<AuditState>,
    validator: trellis_auth::Validator,
) -> crate::services::ApiRouter {
    routes()
        .layer(trellis_auth::JwtAuthLayer::new(validator))
        .with_state(state)
}

/// `GET /admin/audit`, scope `ops:admin` (one process only: the
/// distributed system audits through `tools::cluster::audit`).
pub(crate) fn routes() -> crate::services::ApiRouter<Arc<AuditState>> {
    crate::services::ApiRouter::default()
        .routes(utoipa_axum::routes!(audit))
        .route_layer(trellis_auth::RequireScopesLayer::all([
            crate::api::OPS_SCOPE,
        ]))
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

#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
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
    /// Completed sagas whose order the read model lacks.
    lost: Violations,
    /// Orders with more than one standing charge.
    charged_twice: Violations,
    /// Orders not confirmed that still have a standing charge.
    refunds_missing: Violations,
    /// The same orders, under the name older clients read.
    charged_not_confirmed: Violations,
    /// Confirmed orders without a standing charge.
    confirmed_not_charged: Violations,
    /// Orders whose reservation does not match their status.
    reservation_mismatch: Violations,
    /// Sagas still running or compensating (by saga id).
    sagas_open: Violations,
    /// Orders shipping or analytics disagree on with the orders' status.
    read_model_mismatch: Violations,
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

/// Everything the per-order checks read, from whichever databases hold it
/// (one process: SQLite files; distributed: each service's schema).
#[derive(Debug, Default, Clone)]
pub(crate) struct AuditInput {
    /// `(order_id, status)` from orders' read model.
    pub(crate) orders: Vec<(String, String)>,
    /// Standing charges per order ([`STANDING_CHARGES`]).
    pub(crate) standing: BTreeMap<String, i64>,
    /// `(order_id, status)` of inventory's reservations ([`RESERVATIONS`]).
    pub(crate) reservations: Vec<(String, String)>,
    /// `(saga_id, status)` of the place-order sagas ([`SAGAS`]).
    pub(crate) sagas: Vec<(String, String)>,
    /// `(order_id, status)` of shipping's shipments ([`SHIPMENTS`]).
    pub(crate) shipments: Vec<(String, String)>,
    /// `(order_id, counted)` of analytics' orders ([`ANALYTICS_ORDERS`]).
    pub(crate) analytics: Vec<(String, i64)>,
}

/// Reservations per order (the early-release markers carry no order).
pub(crate) const RESERVATIONS: &str =
    "SELECT order_id, status FROM reservations WHERE order_id <> ''";
/// Every saga's id and status (the orders service runs only place-order).
pub(crate) const SAGAS: &str = "SELECT id, status FROM trellis_sagas";
/// Shipments per order.
pub(crate) const SHIPMENTS: &str = "SELECT order_id, status FROM shipments";
/// Analytics' staged orders and whether each is counted.
pub(crate) const ANALYTICS_ORDERS: &str = "SELECT order_id, counted FROM analytics_orders";

/// The per-order verdicts of [`check_orders`].
#[derive(Debug, Default)]
pub(crate) struct OrderChecks {
    pub(crate) orders: BTreeMap<String, u64>,
    pub(crate) lost: Violations,
    pub(crate) charged_twice: Violations,
    pub(crate) refunds_missing: Violations,
    pub(crate) confirmed_not_charged: Violations,
    pub(crate) reservation_mismatch: Violations,
    pub(crate) sagas_open: Violations,
    pub(crate) read_model_mismatch: Violations,
}

/// Cross-checks every order (see the module docs): shared by this endpoint
/// and the distributed drills' audit ([`crate::tools::cluster::audit`]).
pub(crate) fn check_orders(input: &AuditInput) -> OrderChecks {
    use std::collections::{BTreeSet, HashMap};
    let mut checks = OrderChecks::default();
    let status: HashMap<&str, &str> = input
        .orders
        .iter()
        .map(|(id, s)| (id.as_str(), s.as_str()))
        .collect();
    let mut reservations: HashMap<&str, Vec<&str>> = HashMap::new();
    for (order, s) in &input.reservations {
        reservations.entry(order).or_default().push(s);
    }
    let shipments: HashMap<&str, &str> = input
        .shipments
        .iter()
        .map(|(id, s)| (id.as_str(), s.as_str()))
        .collect();
    let counted: HashMap<&str, i64> = input
        .analytics
        .iter()
        .map(|(id, c)| (id.as_str(), *c))
        .collect();
    for (saga, s) in &input.sagas {
        // Running, compensating, or parked for an operator: not settled.
        if s != "completed" && s != "compensated" {
            checks.sagas_open.add(saga);
        }
        // A completed original saga recorded its order (validations are
        // `{order}/validate...`).
        if s == "completed" && !saga.contains('/') && !status.contains_key(saga.as_str()) {
            checks.lost.add(saga);
        }
    }
    for (order_id, s) in &input.orders {
        *checks.orders.entry(s.clone()).or_default() += 1;
        let confirmed = s == "CONFIRMED";
        let final_ = confirmed || s == "REJECTED";
        let charges = input.standing.get(order_id).copied().unwrap_or(0);
        if charges > 1 {
            checks.charged_twice.add(order_id);
        } else if charges == 1 && !confirmed && final_ {
            checks.refunds_missing.add(order_id);
        }
        if confirmed && charges == 0 {
            checks.confirmed_not_charged.add(order_id);
        }
        if final_ {
            let held = reservations.get(order_id.as_str());
            let held = held.map_or(&[][..], Vec::as_slice);
            let ok = if confirmed {
                held.contains(&"CONFIRMED") && !held.contains(&"RESERVED")
            } else {
                held.iter().all(|r| *r == "RELEASED" || *r == "EXPIRED")
            };
            if !ok {
                checks.reservation_mismatch.add(order_id);
            }
            let shipped = shipments.get(order_id.as_str()) == Some(&"READY_TO_SHIP");
            let in_analytics = counted.get(order_id.as_str()).copied().unwrap_or(0) == 1;
            if shipped != confirmed || in_analytics != confirmed {
                checks.read_model_mismatch.add(order_id);
            }
        }
    }
    // A charge, a shipment or a count for an order the read model does
    // not know is counted too.
    let known: BTreeSet<&str> = status.keys().copied().collect();
    for (order_id, charges) in &input.standing {
        if !known.contains(order_id.as_str()) && *charges > 0 {
            if *charges > 1 {
                checks.charged_twice.add(order_id);
            } else {
                checks.refunds_missing.add(order_id);
            }
        }
    }
    for (order_id, s) in &input.shipments {
        if !known.contains(order_id.as_str()) && s == "READY_TO_SHIP" {
            checks.read_model_mismatch.add(order_id);
        }
    }
    for (order_id, c) in &input.analytics {
        if !known.contains(order_id.as_str()) && *c != 0 {
            checks.read_model_mismatch.add(order_id);
        }
    }
    checks
}

/// The drills' audit: orders by status, charge violations and stock leaked
/// since the process started.
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "orders",
    security(("bearer" = ["ops:admin"])),
    responses(
        (status = 200, description = "Orders by status, every per-order violation (lost, charges, reservations, open sagas, read models), stock per SKU", body = Audit),
        crate::api::AuthErrors,
    )
)]
pub(crate) async fn audit(State(app): State<Arc<AuditState>>) -> Result<Json<Audit>, ApiError> {
    let standing: Vec<(String, i64)> = sqlx::query_as(STANDING_CHARGES)
        .fetch_all(&app.payments)
        .await?;
    let input = AuditInput {
        orders: sqlx::query_as("SELECT order_id, status FROM order_summaries")
            .fetch_all(&app.read_db)
            .await?,
        standing: standing.into_iter().collect(),
        reservations: sqlx::query_as(RESERVATIONS)
            .fetch_all(&app.inventory)
            .await?,
        sagas: sqlx::query_as(SAGAS).fetch_all(&app.sagas).await?,
        shipments: sqlx::query_as(SHIPMENTS).fetch_all(&app.shipping).await?,
        analytics: sqlx::query_as(ANALYTICS_ORDERS)
            .fetch_all(&app.analytics)
            .await?,
    };
    let checks = check_orders(&input);
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
        orders: checks.orders,
        lost: checks.lost,
        charged_twice: checks.charged_twice,
        charged_not_confirmed: checks.refunds_missing.clone(),
        refunds_missing: checks.refunds_missing,
        confirmed_not_charged: checks.confirmed_not_charged,
        reservation_mismatch: checks.reservation_mismatch,
        sagas_open: checks.sagas_open,
        read_model_mismatch: checks.read_model_mismatch,
        stock,
        stock_leaked,
    };
    Ok(Json(audit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(rows: &[(&str, &str)]) -> Vec<(String, String)> {
        rows.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    /// A clean system: o1 confirmed (charged once, reservation confirmed,
    /// shipped, counted), o2 rejected (refunded, reservation released,
    /// not shipped, not counted), o3 rejected before reserving, a
    /// validation saga completed.
    fn clean() -> AuditInput {
        AuditInput {
            orders: pairs(&[("o1", "CONFIRMED"), ("o2", "REJECTED"), ("o3", "REJECTED")]),
            standing: [("o1".to_owned(), 1)].into_iter().collect(),
            reservations: pairs(&[("o1", "CONFIRMED"), ("o2", "RELEASED")]),
            sagas: pairs(&[
                ("o1", "completed"),
                ("o2", "compensated"),
                ("o3", "compensated"),
                ("o1/validate", "completed"),
            ]),
            shipments: pairs(&[("o1", "READY_TO_SHIP"), ("o2", "NOT_SHIPPED")]),
            analytics: vec![("o1".into(), 1), ("o2".into(), 0)],
        }
    }

    /// The checks that flag anything, with their counts.
    fn flagged(input: &AuditInput) -> Vec<(&'static str, u64)> {
        let c = check_orders(input);
        [
            ("lost", &c.lost),
            ("charged_twice", &c.charged_twice),
            ("refunds_missing", &c.refunds_missing),
            ("confirmed_not_charged", &c.confirmed_not_charged),
            ("reservation_mismatch", &c.reservation_mismatch),
            ("sagas_open", &c.sagas_open),
            ("read_model_mismatch", &c.read_model_mismatch),
        ]
        .into_iter()
        .filter(|(_, v)| v.count > 0)
        .map(|(name, v)| (name, v.count))
        .collect()
    }

    #[test]
    fn a_clean_system_passes_every_check() {
        assert_eq!(flagged(&clean()), vec![]);
        assert_eq!(check_orders(&clean()).orders["REJECTED"], 2);
    }

    #[test]
    fn a_completed_saga_without_its_order_is_lost() {
        let mut input = clean();
        input.sagas.push(("o9".into(), "completed".into()));
        assert_eq!(flagged(&input), vec![("lost", 1)]);
    }

    #[test]
    fn two_standing_charges_are_charged_twice() {
        let mut input = clean();
        input.standing.insert("o1".into(), 2);
        assert_eq!(flagged(&input), vec![("charged_twice", 1)]);
        // Also for an order the read model does not know.
        let mut input = clean();
        input.standing.insert("ghost".into(), 2);
        assert_eq!(flagged(&input), vec![("charged_twice", 1)]);
    }

    #[test]
    fn a_rejected_order_with_a_standing_charge_misses_its_refund() {
        let mut input = clean();
        input.standing.insert("o2".into(), 1);
        assert_eq!(flagged(&input), vec![("refunds_missing", 1)]);
    }

    #[test]
    fn a_confirmed_order_without_a_charge_is_flagged() {
        let mut input = clean();
        input.standing.clear();
        assert_eq!(flagged(&input), vec![("confirmed_not_charged", 1)]);
    }

    #[test]
    fn reservations_must_match_their_order() {
        for (order, held) in [
            // Confirmed, reservation still merely held (or released).
            ("o1", "RESERVED"),
            ("o1", "RELEASED"),
            // Rejected, reservation confirmed or still held: stock leaked.
            ("o2", "CONFIRMED"),
            ("o3", "RESERVED"),
        ] {
            let mut input = clean();
            input.reservations.retain(|(o, _)| o != order);
            input.reservations.push((order.into(), held.into()));
            assert_eq!(
                flagged(&input),
                vec![("reservation_mismatch", 1)],
                "{order} {held}"
            );
        }
        // A confirmed order without any reservation too.
        let mut input = clean();
        input.reservations.retain(|(o, _)| o != "o1");
        assert_eq!(flagged(&input), vec![("reservation_mismatch", 1)]);
        // An expired reservation of a rejected order is fine.
        let mut input = clean();
        input.reservations.push(("o3".into(), "EXPIRED".into()));
        assert_eq!(flagged(&input), vec![]);
    }

    #[test]
    fn sagas_not_settled_are_open() {
        for status in ["running", "compensating", "needs_attention"] {
            let mut input = clean();
            input.sagas.push(("o2/validate/1".into(), status.into()));
            assert_eq!(flagged(&input), vec![("sagas_open", 1)], "{status}");
        }
    }

    #[test]
    fn shipping_must_ship_exactly_the_confirmed_orders() {
        // A confirmed order shipping never saw.
        let mut input = clean();
        input.shipments.retain(|(o, _)| o != "o1");
        assert_eq!(flagged(&input), vec![("read_model_mismatch", 1)]);
        // A rejected order ready to ship.
        let mut input = clean();
        input.shipments.push(("o3".into(), "READY_TO_SHIP".into()));
        assert_eq!(flagged(&input), vec![("read_model_mismatch", 1)]);
        // A shipment for an order orders does not know.
        let mut input = clean();
        input
            .shipments
            .push(("ghost".into(), "READY_TO_SHIP".into()));
        assert_eq!(flagged(&input), vec![("read_model_mismatch", 1)]);
    }

    #[test]
    fn analytics_must_count_exactly_the_confirmed_orders() {
        let mut input = clean();
        input.analytics.retain(|(o, _)| o != "o1");
        assert_eq!(flagged(&input), vec![("read_model_mismatch", 1)]);
        let mut input = clean();
        input.analytics.push(("o3".into(), 1));
        assert_eq!(flagged(&input), vec![("read_model_mismatch", 1)]);
    }
}
