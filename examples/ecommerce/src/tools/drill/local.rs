//! The drills against a running system (one process or `--url`): the
//! fault switched through the operator endpoints, every accepted order
//! followed until final, the system audited over HTTP. The helpers that
//! read orders and the audit are shared with the other drills.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::time::Instant;
use trellis_resilience::fault::FaultConfig;

use super::{Drill, DrillOptions, DrillReport, INJECTED_LATENCY};
use crate::api::Error;
use crate::services::orders::admin::BreakerBody;
use crate::tools::client::ApiClient;
use crate::tools::load::AcceptedOrder;

/// A request body as the client sends it: the typed struct the server
/// reads, as JSON.
pub(super) fn to_body(body: &impl serde::Serialize) -> Result<serde_json::Value, Error> {
    serde_json::to_value(body).map_err(|e| Error::Scenario(format!("request body: {e}")))
}

/// Switches the drill's fault on (`on`) or heals it, through the operator
/// endpoints. Healing also closes inventory's breaker, which validates the
/// orders accepted as PENDING_VALIDATION meanwhile.
async fn set_fault(api: &ApiClient, ops: &str, drill: Drill, on: bool) -> Result<(), Error> {
    // Healing sends the default settings: every fault off.
    let (path, body) = match (drill, on) {
        (Drill::PaymentOutage, true) => (
            "/api/v1/admin/payments/faults",
            to_body(&FaultConfig {
                enabled: true,
                error_probability: 1.0,
                ..FaultConfig::default()
            })?,
        ),
        (Drill::PaymentOutage, false) => (
            "/api/v1/admin/payments/faults",
            to_body(&FaultConfig::default())?,
        ),
        (Drill::InventoryLatency, true) => (
            "/api/v1/admin/inventory/faults",
            to_body(&FaultConfig {
                enabled: true,
                latency_probability: 1.0,
                latency: INJECTED_LATENCY,
                ..FaultConfig::default()
            })?,
        ),
        (Drill::InventoryLatency, false) => (
            "/api/v1/admin/inventory/faults",
            to_body(&FaultConfig::default())?,
        ),
        (Drill::InventoryDown, on) => (
            "/api/v1/admin/inventory/breaker",
            to_body(&BreakerBody { open: on })?,
        ),
        (Drill::KillOrders | Drill::NatsRestart | Drill::Reschedule | Drill::ReplicaKill, _) => {
            return Err(Error::Scenario(format!(
                "drill {} runs the distributed system: use --database-url",
                drill.name()
            )));
        }
        (Drill::LateRestart, _) => {
            return Err(Error::Scenario(format!(
                "drill {} runs its own child process: see drill::run_late_restart",
                drill.name()
            )));
        }
    };
    let r = api.json(Method::POST, path, Some(ops), Some(body)).await?;
    if r.status != StatusCode::OK {
        return Err(Error::Scenario(format!(
            "POST {path}: {} {}",
            r.status, r.body
        )));
    }
    if !on && drill != Drill::InventoryDown {
        close_breaker(api, ops).await?;
    }
    Ok(())
}

/// Closes inventory's breaker (validating pending orders, up to 100 per
/// call); returns how many orders it validated.
async fn close_breaker(api: &ApiClient, ops: &str) -> Result<usize, Error> {
    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/inventory/breaker",
            Some(ops),
            Some(to_body(&BreakerBody { open: false })?),
        )
        .await?;
    if r.status != StatusCode::OK {
        return Err(Error::Scenario(format!(
            "close breaker: {} {}",
            r.status, r.body
        )));
    }
    Ok(r.body["validated"].as_array().map_or(0, Vec::len))
}

/// Every accepted order's current status (`None`: not found).
pub(super) async fn statuses(
    api: &Arc<ApiClient>,
    orders: &[AcceptedOrder],
) -> Vec<Option<String>> {
    let workers = 16;
    let chunk = orders.len().div_ceil(workers).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for (n, part) in orders.chunks(chunk).enumerate() {
        let (api, part) = (api.clone(), part.to_vec());
        tasks.spawn(async move {
            let mut found = Vec::with_capacity(part.len());
            for order in part {
                let r = api
                    .json(
                        Method::GET,
                        &format!("/api/v1/orders/{}", order.order_id),
                        Some(&order.token),
                        None,
                    )
                    .await;
                found.push(match r {
                    Ok(r) if r.status == StatusCode::OK => {
                        r.body["status"].as_str().map(str::to_owned)
                    }
                    _ => None,
                });
            }
            (n, found)
        });
    }
    let mut parts = Vec::new();
    while let Some(done) = tasks.join_next().await {
        // A panicked reader proves nothing: its orders stay unknown (lost).
        if let Ok(part) = done {
            parts.push(part);
        }
    }
    parts.sort_by_key(|(n, _)| *n);
    let mut all: Vec<Option<String>> = parts.into_iter().flat_map(|(_, p)| p).collect();
    all.resize(orders.len(), None);
    all
}

pub(super) fn is_final(status: &Option<String>) -> bool {
    matches!(status.as_deref(), Some("CONFIRMED" | "REJECTED"))
}

/// Runs `drill` against `base_url` with the operator token `ops`.
///
/// # Errors
///
/// The load could not start (registration, login) or an operator endpoint
/// refused; the drill's verdict itself is [`DrillReport::passed`].
pub async fn run(
    base_url: &str,
    ops: &str,
    drill: Drill,
    options: &DrillOptions,
) -> Result<DrillReport, Error> {
    let api = Arc::new(ApiClient::new(base_url));
    // Start from a healthy system.
    set_fault(&api, ops, drill, false).await?;
    if drill == Drill::InventoryDown {
        close_breaker(&api, ops).await?;
    }
    let duration = options.load.duration;
    let start = Instant::now();
    let load = {
        let (base, load) = (base_url.to_owned(), options.load.clone());
        tokio::spawn(async move { crate::tools::load::run(&base, &load).await })
    };
    tokio::time::sleep_until(start + duration.mul_f64(options.fault_from.clamp(0.0, 1.0))).await;
    set_fault(&api, ops, drill, true).await?;
    tokio::time::sleep_until(start + duration.mul_f64(options.fault_until.clamp(0.0, 1.0))).await;
    set_fault(&api, ops, drill, false).await?;
    let load = load
        .await
        .map_err(|e| Error::Scenario(format!("load task: {e}")))??;

    // Settle: orders accepted as pending while the breaker was open (some
    // may have been in flight when it closed) are validated by closing it
    // again; wait until every accepted order is final.
    let deadline = Instant::now() + options.settle;
    let mut current = statuses(&api, &load.accepted).await;
    while !current.iter().all(is_final) && Instant::now() < deadline {
        if current
            .iter()
            .any(|s| s.as_deref() == Some("PENDING_VALIDATION"))
        {
            close_breaker(&api, ops).await?;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        current = statuses(&api, &load.accepted).await;
    }

    // Then until the audit is clean or the deadline passed: sagas whose
    // request failed still settle, read models catch up.
    let mut audit = fetch_audit(&api, ops).await?;
    while !audit_clean(&audit) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        audit = fetch_audit(&api, ops).await?;
    }
    let mut report = DrillReport::from_orders(drill, load, &current);
    report.fill_from_audit(audit);
    Ok(report)
}

/// `GET /api/v1/admin/audit`.
pub(super) async fn fetch_audit(api: &ApiClient, ops: &str) -> Result<serde_json::Value, Error> {
    let r = api
        .json(Method::GET, "/api/v1/admin/audit", Some(ops), None)
        .await?;
    if r.status != StatusCode::OK {
        return Err(Error::Scenario(format!("audit: {} {}", r.status, r.body)));
    }
    Ok(r.body)
}

/// The audit's violation counts (stock aside).
const AUDIT_CHECKS: [&str; 6] = [
    "lost",
    "charged_twice",
    "refunds_missing",
    "confirmed_not_charged",
    "reservation_mismatch",
    "sagas_open",
];

pub(super) fn audit_clean(audit: &serde_json::Value) -> bool {
    AUDIT_CHECKS
        .iter()
        .chain(["read_model_mismatch"].iter())
        .all(|key| audit[*key]["count"].as_u64() == Some(0))
        && audit["stock_leaked"].as_i64() == Some(0)
}
