//! [`DrillReport`]: what a drill saw (the load's answers, every accepted
//! order's final state, the audit) and its verdict.

use std::fmt;

use serde_json::json;

use super::{Drill, INJECTED_LATENCY};
use crate::tools::load::{AcceptedOrder, LoadSummary};

/// What a drill saw: the load's answers, every accepted order's final
/// state, and the audit.
#[derive(Debug)]
pub struct DrillReport {
    /// The drill.
    pub drill: Drill,
    /// The load run's own summary.
    pub load: LoadSummary,
    /// Orders the system accepted (201).
    pub accepted: u64,
    /// Accepted orders now CONFIRMED.
    pub completed: u64,
    /// Accepted orders now REJECTED (compensated).
    pub compensated: u64,
    /// Orders accepted as PENDING_VALIDATION (validated later, or not).
    pub accepted_pending: u64,
    /// Of those, the ones now CONFIRMED.
    pub pending_confirmed: u64,
    /// Accepted orders still not final when the drill gave up waiting.
    pub not_final: u64,
    /// Accepted orders that cannot be read back.
    pub lost: u64,
    /// Orders with more than one standing charge (audit).
    pub charged_twice: u64,
    /// Rejected orders with a standing charge, confirmed orders without
    /// one (audit).
    pub charge_mismatch: u64,
    /// Of those, the orders not confirmed whose charge stands (audit).
    pub refunds_missing: u64,
    /// Final orders whose reservation does not match their status (audit).
    pub reservation_mismatch: u64,
    /// Sagas still running, compensating or needing attention (audit).
    pub sagas_open: u64,
    /// Orders shipping or analytics disagree on with orders (audit).
    pub read_model_mismatch: u64,
    /// Units of stock leaked (sum over SKUs of |baseline − accounted|).
    pub stock_leaked: i64,
    /// The audit as the system returned it.
    pub audit: serde_json::Value,
    /// Distributed drills: whether the fault was seen, and what happened.
    pub fault: Option<(bool, String)>,
}

impl DrillReport {
    /// The order counts of a run: `current` is each accepted order's status
    /// now (`None`: it cannot be read back). The audit's fields start at 0
    /// for the caller to fill.
    pub(super) fn from_orders(drill: Drill, load: LoadSummary, current: &[Option<String>]) -> Self {
        let count_of = |status: &str| {
            current
                .iter()
                .filter(|s| s.as_deref() == Some(status))
                .count() as u64
        };
        let pending = |o: &&AcceptedOrder| o.status == "PENDING_VALIDATION";
        DrillReport {
            drill,
            accepted: load.accepted.len() as u64,
            completed: count_of("CONFIRMED"),
            compensated: count_of("REJECTED"),
            accepted_pending: load.accepted.iter().filter(pending).count() as u64,
            pending_confirmed: load
                .accepted
                .iter()
                .zip(current)
                .filter(|(o, now)| pending(o) && now.as_deref() == Some("CONFIRMED"))
                .count() as u64,
            not_final: current
                .iter()
                .filter(|s| s.is_some() && !super::local::is_final(s))
                .count() as u64,
            lost: current.iter().filter(|s| s.is_none()).count() as u64,
            charged_twice: 0,
            charge_mismatch: 0,
            refunds_missing: 0,
            reservation_mismatch: 0,
            sagas_open: 0,
            read_model_mismatch: 0,
            stock_leaked: 0,
            audit: serde_json::Value::Null,
            load,
            fault: None,
        }
    }

    /// No order lost, charged twice or stuck, no charge without its
    /// order's confirmation, no reservation out of step with its order, no
    /// saga left open, the read models in step, no stock leaked: every
    /// check counts.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.charged_twice == 0
            && self.charge_mismatch == 0
            && self.refunds_missing == 0
            && self.reservation_mismatch == 0
            && self.sagas_open == 0
            && self.read_model_mismatch == 0
            && self.stock_leaked == 0
            && self.not_final == 0
    }

    /// Whether the fault visibly changed what the system did: orders
    /// compensated (payment outage), orders slower than the injected delay
    /// (inventory latency), orders accepted for later validation (inventory
    /// down).
    pub fn fault_took_effect(&self) -> bool {
        match self.drill {
            Drill::PaymentOutage => self.compensated > 0,
            Drill::InventoryLatency => {
                self.load.latency_us.max() >= INJECTED_LATENCY.as_micros() as u64
            }
            Drill::InventoryDown => self.accepted_pending > 0,
            Drill::KillOrders
            | Drill::NatsRestart
            | Drill::LateRestart
            | Drill::Reschedule
            | Drill::ReplicaKill => self.fault.as_ref().is_some_and(|(seen, _)| *seen),
        }
    }

    fn effect(&self) -> String {
        let seen = if self.fault_took_effect() {
            "yes"
        } else {
            "NO"
        };
        match self.drill {
            Drill::PaymentOutage => format!("{seen}: {} orders compensated", self.compensated),
            Drill::InventoryLatency => format!(
                "{seen}: max latency {:.0} ms (injected {} ms)",
                self.load.latency_us.max() as f64 / 1000.0,
                INJECTED_LATENCY.as_millis()
            ),
            Drill::InventoryDown => format!(
                "{seen}: {} orders accepted as PENDING_VALIDATION, {} of them CONFIRMED once validated",
                self.accepted_pending, self.pending_confirmed
            ),
            Drill::KillOrders
            | Drill::NatsRestart
            | Drill::LateRestart
            | Drill::Reschedule
            | Drill::ReplicaKill => {
                format!(
                    "{seen}: {}",
                    self.fault.as_ref().map_or("", |(_, what)| what.as_str())
                )
            }
        }
    }
}

impl fmt::Display for DrillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.load;
        let ms = |q: f64| l.latency_us.value_at_quantile(q) as f64 / 1000.0;
        writeln!(f, "| drill `{}` | value |", self.drill.name())?;
        writeln!(f, "|---|---|")?;
        writeln!(f, "| requests | {} |", l.requests)?;
        writeln!(f, "| orders accepted | {} |", self.accepted)?;
        writeln!(f, "| completed | {} |", self.completed)?;
        writeln!(f, "| compensated | {} |", self.compensated)?;
        writeln!(
            f,
            "| pending (accepted as PENDING_VALIDATION) | {} |",
            self.accepted_pending
        )?;
        writeln!(f, "| not final at the end | {} |", self.not_final)?;
        writeln!(f, "| errors | {} |", l.error_count())?;
        writeln!(f, "| lost | {} |", self.lost)?;
        writeln!(f, "| charged twice | {} |", self.charged_twice)?;
        writeln!(
            f,
            "| charge without confirmation / confirmation without charge | {} |",
            self.charge_mismatch
        )?;
        writeln!(f, "| refunds missing | {} |", self.refunds_missing)?;
        writeln!(f, "| stock leaked | {} |", self.stock_leaked)?;
        writeln!(
            f,
            "| reservation not matching its order | {} |",
            self.reservation_mismatch
        )?;
        writeln!(f, "| sagas open | {} |", self.sagas_open)?;
        writeln!(
            f,
            "| read-model mismatches (shipping, analytics) | {} |",
            self.read_model_mismatch
        )?;
        writeln!(f, "| fault took effect | {} |", self.effect())?;
        writeln!(
            f,
            "| latency p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
            ms(0.5),
            ms(0.99),
            l.latency_us.max() as f64 / 1000.0
        )?;
        write!(
            f,
            "| verdict | {} |",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

impl DrillReport {
    /// Takes the verdicts of `GET /admin/audit` into the report.
    pub(super) fn fill_from_audit(&mut self, audit: serde_json::Value) {
        // A missing count reads as a violation: an audit that cannot say
        // must not pass.
        let count = |key: &str| audit[key]["count"].as_u64().unwrap_or(1);
        self.lost += count("lost");
        self.charged_twice = count("charged_twice");
        self.refunds_missing = count("refunds_missing");
        self.charge_mismatch = self.refunds_missing + count("confirmed_not_charged");
        self.reservation_mismatch = count("reservation_mismatch");
        self.sagas_open = count("sagas_open");
        self.read_model_mismatch = count("read_model_mismatch");
        self.stock_leaked = audit["stock_leaked"].as_i64().unwrap_or(i64::MAX);
        self.audit = audit;
    }
}

impl DrillReport {
    /// Takes a distributed audit's verdicts into the report.
    pub(crate) fn fill_from_schemas(&mut self, schemas: &crate::tools::cluster::SchemaAudit) {
        self.lost += schemas.lost;
        self.charged_twice = schemas.charged_twice;
        self.charge_mismatch = schemas.charge_mismatch;
        self.refunds_missing = schemas.refunds_missing;
        self.reservation_mismatch = schemas.reservation_mismatch;
        self.sagas_open = schemas.sagas_open.max(0) as u64;
        self.read_model_mismatch = schemas.read_model_mismatch;
        self.stock_leaked = schemas.stock_leaked;
        self.audit = json!({
            "orders": schemas.orders,
            "sagas": schemas.sagas,
            "sagas_open": schemas.sagas_open,
            "lost": schemas.lost,
            "reservations_open": schemas.reservations_open,
            "reservations_confirmed": schemas.reservations_confirmed,
            "charged_twice": schemas.charged_twice,
            "charge_mismatch": schemas.charge_mismatch,
            "refunds_missing": schemas.refunds_missing,
            "reservation_mismatch": schemas.reservation_mismatch,
            "read_model_mismatch": schemas.read_model_mismatch,
            "stock_leaked": schemas.stock_leaked,
        });
    }
}
