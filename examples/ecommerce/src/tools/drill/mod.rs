//! `ecommerce drill NAME`: a fault drill under load. A load run (see
//! [`crate::tools::load`]) places orders while a fault is switched on through an
//! operator endpoint for the middle of the run, then healed; afterwards the
//! drill waits until every accepted order is final, audits the system
//! through `GET /api/v1/admin/audit` and returns a [`DrillReport`]. Everything
//! goes over HTTP with an `ops:admin` token, so a drill runs against the
//! in-process system or any `--url`.
//!
//! | drill | fault | heal |
//! |---|---|---|
//! | `payment-outage` | every payment call fails (payments `FaultHandle`) | faults off |
//! | `inventory-latency` | every inventory call is delayed (inventory `FaultHandle`) | faults off, breaker closed |
//! | `inventory-down` | inventory's breaker forced open: orders accepted as PENDING_VALIDATION | breaker closed, which validates them |
//!
//! The distributed drills ([`run_distributed`]) start the distributed
//! system themselves, as child processes (see [`crate::tools::cluster`]), and
//! audit it from the services' schemas:
//!
//! | drill | fault | heal |
//! |---|---|---|
//! | `kill-orders` | the orders process SIGKILLed mid-saga (each charge slowed to 300 ms) | orders restarted: it recovers the interrupted sagas |
//! | `nats-restart` | its own nats-server SIGKILLed | restarted on the same port and store: the outbox relay catches up |
//!
//! The drills' parts: [`report`] (what a drill saw and its verdict),
//! `local` (the drills against a running system, over HTTP),
//! `distributed` (the system as child processes, [`run_distributed`]) and
//! `late_restart` (the one-process system as a child, [`run_late_restart`]).

use std::str::FromStr;
use std::time::Duration;

use crate::api::Error;
use crate::tools::load::LoadOptions;

mod distributed;
mod late_restart;
mod local;
mod report;

pub use distributed::{Cluster, NATS_OUTAGE, REPLICATED, RESCHEDULE_LEASE_TTL, run_distributed};
pub use late_restart::{LateRestart, run_late_restart};
pub use local::run;
pub use report::DrillReport;

/// The delay `inventory-latency` adds to every inventory call.
pub const INJECTED_LATENCY: Duration = Duration::from_millis(150);

/// Which fault a drill injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drill {
    /// Every call to the payment provider fails, then recovers.
    PaymentOutage,
    /// Every call to inventory takes [`INJECTED_LATENCY`] longer.
    InventoryLatency,
    /// Inventory's circuit breaker is held open, then closed.
    InventoryDown,
    /// Distributed: the orders process is SIGKILLed mid-saga, then restarted.
    KillOrders,
    /// Distributed: NATS is SIGKILLed for a while, then restarted.
    NatsRestart,
    /// One process (a child): SIGKILLed right after a charge is recorded,
    /// restarted only after more than the saga deadline.
    LateRestart,
    /// Distributed: orders SIGKILLed and replaced at once by a process
    /// with a new owner identity while the old saga leases are still live.
    Reschedule,
    /// Distributed: two replicas each of orders, shipping and analytics
    /// behind the gateway; one of each SIGKILLed under load, never
    /// restarted.
    ReplicaKill,
}

impl Drill {
    /// Every drill, by name.
    pub const ALL: [Drill; 3] = [
        Drill::PaymentOutage,
        Drill::InventoryLatency,
        Drill::InventoryDown,
    ];

    /// The drills of the distributed mode ([`run_distributed`]).
    pub const DISTRIBUTED: [Drill; 4] = [
        Drill::KillOrders,
        Drill::NatsRestart,
        Drill::Reschedule,
        Drill::ReplicaKill,
    ];

    /// The drills that run the one-process system as a child process of
    /// the `ecommerce` executable, to kill it ([`run_late_restart`]).
    pub const CHILD: [Drill; 1] = [Drill::LateRestart];

    /// Whether it needs the distributed system ([`run_distributed`]).
    pub fn is_distributed(self) -> bool {
        Drill::DISTRIBUTED.contains(&self)
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Drill::PaymentOutage => "payment-outage",
            Drill::InventoryLatency => "inventory-latency",
            Drill::InventoryDown => "inventory-down",
            Drill::KillOrders => "kill-orders",
            Drill::NatsRestart => "nats-restart",
            Drill::LateRestart => "late-restart",
            Drill::Reschedule => "reschedule",
            Drill::ReplicaKill => "replica-kill",
        }
    }
}

impl FromStr for Drill {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        let all = || {
            Drill::ALL
                .into_iter()
                .chain(Drill::DISTRIBUTED)
                .chain(Drill::CHILD)
        };
        all().find(|d| d.name() == name).ok_or_else(|| {
            let names: Vec<_> = all().map(|d| d.name()).collect();
            Error::Scenario(format!(
                "unknown drill {name:?}; one of {}",
                names.join(", ")
            ))
        })
    }
}

/// How a drill runs.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// The load (its `duration` is the whole run).
    pub load: LoadOptions,
    /// When the fault goes on, as a fraction of the run (default 0.25).
    pub fault_from: f64,
    /// When it is healed, as a fraction of the run (default 0.75).
    pub fault_until: f64,
    /// How long to wait after the run for every order to become final.
    pub settle: Duration,
}

impl Default for DrillOptions {
    fn default() -> Self {
        DrillOptions {
            load: LoadOptions::default(),
            fault_from: 0.25,
            fault_until: 0.75,
            settle: Duration::from_secs(30),
        }
    }
}
