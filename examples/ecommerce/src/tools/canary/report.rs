//! What a canary drill saw, its table and its verdict.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::CanaryDrill;
use crate::tools::cluster::SchemaAudit;

/// One line of the drill's table: the state at the end of an interval.
#[derive(Debug, Clone)]
pub struct Row {
    /// Since the load started.
    pub at: Duration,
    /// The rollout's phase.
    pub phase: String,
    /// The canary's weight.
    pub weight: u64,
    /// Stable's requests and errors over the last interval.
    pub stable: (u64, u64),
    /// The canary's requests and errors over the last interval.
    pub canary: (u64, u64),
}

/// What a canary drill saw.
#[derive(Debug, Clone)]
pub struct CanaryReport {
    /// Which drill.
    pub drill: CanaryDrill,
    /// The analysis interval.
    pub interval: Duration,
    /// One row per interval.
    pub rows: Vec<Row>,
    /// The final phase (`promoted`, `rolled-back`, …).
    pub phase: String,
    /// The final weight.
    pub weight: u64,
    /// The gateway's decision log.
    pub decisions: Vec<Value>,
    /// From the start of the first judged check's interval to the
    /// rollback (for a rollback).
    pub decided_after: Option<Duration>,
    /// The judged checks (not skipped for too few requests) up to and
    /// including the rollback: 2 is "rolled back within two intervals".
    pub checks_to_rollback: Option<usize>,
    /// Orders placed, by the version that answered.
    pub placed: BTreeMap<String, u64>,
    /// Orders the canary took that are not final (CONFIRMED or REJECTED).
    pub canary_not_final: u64,
    /// The schema audit after the load.
    pub audit: SchemaAudit,
    /// The orders processes' last log lines, when the drill failed.
    pub logs: String,
}

impl CanaryReport {
    /// The violations found; empty when the drill passed.
    #[must_use]
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let want = match self.drill {
            CanaryDrill::Rollback => "rolled-back",
            CanaryDrill::Promote | CanaryDrill::BlueGreen => "promoted",
            CanaryDrill::BlueGreenFailedSmoke => "aborted",
        };
        if self.phase != want {
            v.push(format!("the rollout ended {}, not {want}", self.phase));
        }
        let decided = |kind: &str| {
            self.decisions
                .iter()
                .any(|d| d["kind"].as_str() == Some(kind))
        };
        if self.drill == CanaryDrill::BlueGreen && !decided("smoke-passed") {
            v.push("no smoke-passed decision before the switch".into());
        }
        if self.drill == CanaryDrill::BlueGreenFailedSmoke {
            // Stays blue: the weight never left 0 and the abort says why.
            if self.decisions.iter().any(|d| d["to"].as_u64() != Some(0)) {
                v.push("the green got weight after a failed smoke check".into());
            }
            if !self.decisions.iter().any(|d| {
                d["kind"].as_str() == Some("aborted")
                    && d["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("smoke check failed"))
            }) {
                v.push("no abort for a failed smoke check in the decision log".into());
            }
        }
        if self.drill == CanaryDrill::Rollback && self.checks_to_rollback.is_none_or(|n| n > 2) {
            v.push(format!(
                "rolled back after {:?} judged checks, not within two intervals",
                self.checks_to_rollback
            ));
        }
        let on_canary = self.placed.get("canary").copied().unwrap_or(0);
        if self.drill == CanaryDrill::BlueGreenFailedSmoke {
            if on_canary > 0 {
                v.push(format!("the failed green took {on_canary} customer orders"));
            }
            if self.placed.get("stable").copied().unwrap_or(0) == 0 {
                v.push("blue took no order".into());
            }
        } else if on_canary == 0 {
            v.push("the canary took no order".into());
        }
        if self.audit.lost > 0 {
            v.push(format!("{} orders lost", self.audit.lost));
        }
        if self.audit.charged_twice > 0 {
            v.push(format!("{} orders charged twice", self.audit.charged_twice));
        }
        if self.audit.charge_mismatch > 0 {
            v.push(format!(
                "{} charges out of step",
                self.audit.charge_mismatch
            ));
        }
        if self.audit.sagas_open > 0 {
            v.push(format!("{} sagas still open", self.audit.sagas_open));
        }
        if self.canary_not_final > 0 {
            v.push(format!(
                "{} orders placed on the canary not final",
                self.canary_not_final
            ));
        }
        v
    }

    /// Whether no violation was found.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.violations().is_empty()
    }
}

impl fmt::Display for CanaryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "drill {} (interval {:?})",
            self.drill.name(),
            self.interval
        )?;
        writeln!(
            f,
            "{:>7}  {:>12}  {:>6}  {:>15}  {:>15}",
            "t", "phase", "weight", "stable req/err", "canary req/err"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:>6.1}s  {:>12}  {:>5}%  {:>8}/{:<6}  {:>8}/{:<6}",
                r.at.as_secs_f64(),
                r.phase,
                r.weight,
                r.stable.0,
                r.stable.1,
                r.canary.0,
                r.canary.1
            )?;
        }
        writeln!(f, "decisions:")?;
        for d in &self.decisions {
            writeln!(
                f,
                "  {:>8} ms  {:<12} {:>3} → {:<3} {}",
                d["after_ms"],
                d["kind"].as_str().unwrap_or("?"),
                d["from"],
                d["to"],
                d["reason"].as_str().unwrap_or("")
            )?;
        }
        writeln!(
            f,
            "final: {} at {}%; orders placed by version {:?}",
            self.phase, self.weight, self.placed
        )?;
        if let (Some(n), Some(after)) = (self.checks_to_rollback, self.decided_after) {
            writeln!(
                f,
                "rolled back at judged check {n}, {:.1}s after its first judged interval began",
                after.as_secs_f64()
            )?;
        }
        writeln!(
            f,
            "audit: lost {}, charged twice {}, charge mismatches {}, sagas open {}, canary orders not final {}",
            self.audit.lost,
            self.audit.charged_twice,
            self.audit.charge_mismatch,
            self.audit.sagas_open,
            self.canary_not_final
        )?;
        let violations = self.violations();
        if violations.is_empty() {
            write!(f, "PASSED")
        } else {
            write!(f, "FAILED: {}", violations.join("; "))?;
            if !self.logs.is_empty() {
                write!(f, "\n{}", self.logs)?;
            }
            Ok(())
        }
    }
}
