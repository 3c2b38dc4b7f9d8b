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

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;
use tokio::time::Instant;

use crate::api::Error;
use crate::tools::client::ApiClient;
use crate::tools::load::{AcceptedOrder, LoadOptions, LoadSummary};

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
    fn from_orders(drill: Drill, load: LoadSummary, current: &[Option<String>]) -> Self {
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
                .filter(|s| s.is_some() && !is_final(s))
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

/// Switches the drill's fault on (`on`) or heals it, through the operator
/// endpoints. Healing also closes inventory's breaker, which validates the
/// orders accepted as PENDING_VALIDATION meanwhile.
async fn set_fault(api: &ApiClient, ops: &str, drill: Drill, on: bool) -> Result<(), Error> {
    let (path, body) = match (drill, on) {
        (Drill::PaymentOutage, true) => (
            "/api/v1/admin/payments/faults",
            json!({ "enabled": true, "error_probability": 1.0 }),
        ),
        (Drill::PaymentOutage, false) => ("/api/v1/admin/payments/faults", json!({})),
        (Drill::InventoryLatency, true) => (
            "/api/v1/admin/inventory/faults",
            json!({
                "enabled": true,
                "latency_probability": 1.0,
                "latency": format!("{}ms", INJECTED_LATENCY.as_millis()),
            }),
        ),
        (Drill::InventoryLatency, false) => ("/api/v1/admin/inventory/faults", json!({})),
        (Drill::InventoryDown, on) => ("/api/v1/admin/inventory/breaker", json!({ "open": on })),
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
            Some(json!({ "open": false })),
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
async fn statuses(api: &Arc<ApiClient>, orders: &[AcceptedOrder]) -> Vec<Option<String>> {
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

fn is_final(status: &Option<String>) -> bool {
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
async fn fetch_audit(api: &ApiClient, ops: &str) -> Result<serde_json::Value, Error> {
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

fn audit_clean(audit: &serde_json::Value) -> bool {
    AUDIT_CHECKS
        .iter()
        .chain(["read_model_mismatch"].iter())
        .all(|key| audit[*key]["count"].as_u64() == Some(0))
        && audit["stock_leaked"].as_i64() == Some(0)
}

impl DrillReport {
    /// Takes the verdicts of `GET /admin/audit` into the report.
    fn fill_from_audit(&mut self, audit: serde_json::Value) {
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

/// Where a distributed drill runs.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The `ecommerce` executable the services run as
    /// (`std::env::current_exe()` for the command).
    pub binary: std::path::PathBuf,
    /// PostgreSQL: the run's schemas are created here and dropped after.
    pub database_url: String,
    /// NATS JetStream (`kill-orders`; `nats-restart` runs its own server).
    pub nats_url: String,
}

/// The services `replica-kill` runs twice.
pub const REPLICATED: [crate::platform::config::ServiceName; 3] = [
    crate::platform::config::ServiceName::Orders,
    crate::platform::config::ServiceName::Shipping,
    crate::platform::config::ServiceName::Analytics,
];

/// The saga lease of `reschedule`'s orders processes.
pub const RESCHEDULE_LEASE_TTL: Duration = Duration::from_secs(3);

/// How long `nats-restart` keeps NATS down at least.
pub const NATS_OUTAGE: Duration = Duration::from_secs(3);

/// Runs a distributed drill (`kill-orders`, `nats-restart`): starts the
/// services as child processes of `cluster.binary` on a fresh schema prefix
/// and free ports, runs the load through the gateway, injects the fault
/// from `fault_from` to `fault_until` of the run, waits until every order
/// is final and audits the services' schemas. Every process is killed and
/// the schemas and stream dropped at the end, also on error.
///
/// # Errors
///
/// The system did not start, the fault could not be injected or healed,
/// or the audit could not read the schemas.
pub async fn run_distributed(
    cluster: &Cluster,
    drill: Drill,
    options: &DrillOptions,
) -> Result<DrillReport, Error> {
    use crate::tools::cluster::{OwnNats, System};
    let mut nats = match drill {
        Drill::NatsRestart => {
            let binary = OwnNats::binary().ok_or_else(|| {
                Error::Scenario("no nats-server (/usr/sbin/nats-server or on PATH)".into())
            })?;
            let mut nats = OwnNats::new(binary)?;
            nats.start().await?;
            Some(nats)
        }
        Drill::KillOrders | Drill::Reschedule | Drill::ReplicaKill => None,
        other => {
            return Err(Error::Scenario(format!(
                "drill {} is not a distributed drill",
                other.name()
            )));
        }
    };
    let nats_url = nats
        .as_ref()
        .map_or_else(|| cluster.nats_url.clone(), OwnNats::url);
    let mut system = System::new(&cluster.binary, &cluster.database_url, &nats_url)?;
    let report = distributed(&mut system, nats.as_mut(), drill, options).await;
    system.cleanup().await;
    drop(nats);
    report
}

async fn distributed(
    system: &mut crate::tools::cluster::System,
    nats: Option<&mut crate::tools::cluster::OwnNats>,
    drill: Drill,
    options: &DrillOptions,
) -> Result<DrillReport, Error> {
    use crate::platform::config::ServiceName;
    if drill == Drill::ReplicaKill {
        system.add_replicas(&REPLICATED)?;
    }
    if matches!(drill, Drill::Reschedule | Drill::ReplicaKill) {
        // Short leases, so the replacement's wait for them is measured in
        // seconds.
        system.env.push((
            "ECOMMERCE_SAGA_LEASE_TTL".into(),
            format!("{}ms", RESCHEDULE_LEASE_TTL.as_millis()),
        ));
    }
    system.start_all().await?;
    let gateway = system.url(ServiceName::Gateway);
    let api = Arc::new(ApiClient::new(&gateway));
    let ops = system.service_token("ops:admin").await?;
    let payment_latency = |latency: Option<&str>| {
        let body = match latency {
            Some(latency) => {
                json!({ "enabled": true, "latency_probability": 1.0, "latency": latency })
            }
            None => json!({}),
        };
        let (api, ops) = (api.clone(), ops.clone());
        async move {
            // Through the gateway, whose breaker for an orders replica that
            // was just killed or replaced may still be open: a 503 is
            // retried for a while (the switch is idempotent).
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                let r = api
                    .json(
                        Method::POST,
                        "/api/v1/admin/payments/faults",
                        Some(&ops),
                        Some(body.clone()),
                    )
                    .await?;
                if r.status == StatusCode::OK {
                    return Ok::<_, Error>(());
                }
                if r.status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() >= until {
                    return Err(Error::Scenario(format!(
                        "payment faults: {} {}",
                        r.status, r.body
                    )));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    if matches!(
        drill,
        Drill::KillOrders | Drill::Reschedule | Drill::ReplicaKill
    ) {
        // Each charge waits 300 ms, so the kill finds sagas mid-flight with
        // stock reserved.
        payment_latency(Some("300ms")).await?;
    }

    let duration = options.load.duration;
    let start = Instant::now();
    let load = {
        let (base, load) = (gateway.clone(), options.load.clone());
        tokio::spawn(async move { crate::tools::load::run(&base, &load).await })
    };
    tokio::time::sleep_until(start + duration.mul_f64(options.fault_from.clamp(0.0, 1.0))).await;
    let fault_at = Instant::now();
    let (seen, what) = match (drill, nats) {
        (Drill::KillOrders, _) => {
            system.kill(ServiceName::Orders);
            tokio::time::sleep(Duration::from_millis(500)).await;
            // Recovers the interrupted sagas at start.
            system.spawn(ServiceName::Orders)?;
            system.wait_ready(ServiceName::Orders).await?;
            (
                true,
                format!(
                    "orders SIGKILLed at {:.1} s, ready again {:.1} s later",
                    (fault_at - start).as_secs_f64(),
                    fault_at.elapsed().as_secs_f64()
                ),
            )
        }
        (Drill::Reschedule, _) => {
            let owners = crate::tools::cluster::audit_owners(system).await?;
            system.kill(ServiceName::Orders);
            // The replacement: another host name, so another owner, started
            // while the dead process's leases are still live.
            system
                .env
                .push(("HOSTNAME".into(), "orders-rescheduled".into()));
            system.spawn(ServiceName::Orders)?;
            system.wait_ready(ServiceName::Orders).await?;
            let ready = fault_at.elapsed();
            let held = owners.live;
            // Adopted: no open saga still leased to the dead owner.
            let until = Instant::now() + options.settle;
            let mut left = crate::tools::cluster::open_sagas_of(system, &owners.owner).await?;
            while left > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
                left = crate::tools::cluster::open_sagas_of(system, &owners.owner).await?;
            }
            let adopted = fault_at.elapsed();
            let bound = RESCHEDULE_LEASE_TTL + RESCHEDULE_LEASE_TTL / 4 + Duration::from_secs(1);
            (
                left == 0 && held > 0 && ready < RESCHEDULE_LEASE_TTL && adopted <= bound + ready,
                format!(
                    "orders SIGKILLed at {:.1} s holding {held} live leases, replaced by a new owner \
                     ready {:.1} s later (lease TTL {:.1} s); its sagas adopted {:.1} s after the \
                     kill, {left} left",
                    (fault_at - start).as_secs_f64(),
                    ready.as_secs_f64(),
                    RESCHEDULE_LEASE_TTL.as_secs_f64(),
                    adopted.as_secs_f64(),
                ),
            )
        }
        (Drill::ReplicaKill, _) => {
            let owners = crate::tools::cluster::audit_owners(system).await?;
            for service in REPLICATED {
                system.kill(service);
            }
            // The survivors take the load: the gateway fails over, the
            // surviving orders adopts the dead one's sagas once their
            // leases expire, the surviving read-model replicas carry on.
            (
                true,
                format!(
                    "the first replica of orders, shipping and analytics SIGKILLed at {:.1} s \
                     (orders holding {} live saga leases), never restarted",
                    (fault_at - start).as_secs_f64(),
                    owners.live
                ),
            )
        }
        (_, Some(nats)) => {
            nats.kill();
            // Orders' readiness reports NATS down: the outage is seen.
            let orders = ApiClient::new(system.url(ServiceName::Orders));
            let mut down = false;
            let until = start
                + duration
                    .mul_f64(options.fault_until.clamp(0.0, 1.0))
                    .max(fault_at - start + NATS_OUTAGE);
            while Instant::now() < until {
                if !down && let Ok(r) = orders.json(Method::GET, "/ready", None, None).await {
                    down = r.status == StatusCode::SERVICE_UNAVAILABLE;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let outage = fault_at.elapsed();
            nats.start().await?;
            (
                down,
                format!(
                    "NATS SIGKILLed at {:.1} s for {:.1} s, orders' readiness {}",
                    (fault_at - start).as_secs_f64(),
                    outage.as_secs_f64(),
                    if down { "went down" } else { "never went down" }
                ),
            )
        }
        _ => unreachable!("run_distributed starts a nats-server for nats-restart"),
    };
    let load = load
        .await
        .map_err(|e| Error::Scenario(format!("load task: {e}")))??;
    if matches!(
        drill,
        Drill::KillOrders | Drill::Reschedule | Drill::ReplicaKill
    ) {
        payment_latency(None).await?;
    }

    // Settle: every accepted order readable and final, every saga (also
    // those whose request the kill cut off) completed or compensated. The
    // gateway's breaker for orders may answer 503 for a while after the
    // restart: those reads are retried until the deadline.
    let deadline = Instant::now() + options.settle;
    let (mut current, mut schemas) = (
        statuses(&api, &load.accepted).await,
        crate::tools::cluster::audit(system).await?,
    );
    while !(current.iter().all(is_final) && schemas.settled()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        current = statuses(&api, &load.accepted).await;
        schemas = crate::tools::cluster::audit(system).await?;
    }
    let (mut seen, mut what) = (seen, what);
    if drill == Drill::KillOrders {
        // Sagas whose request the kill cut off (no 201), recovered at restart.
        let interrupted = (schemas.sagas - load.accepted.len() as i64).max(0);
        seen = interrupted > 0 || load.error_count() > 0;
        what.push_str(&format!(
            "; {interrupted} sagas cut off before their 201, {} requests failed",
            load.error_count()
        ));
    }
    if drill == Drill::NatsRestart {
        let (relayed, events) = relay_caught_up(system, deadline).await?;
        what.push_str(&format!("; {relayed} of {events} events in the stream"));
    }
    let mut report = DrillReport::from_orders(drill, load, &current);
    report.fill_from_schemas(&schemas);
    report.fault = Some((seen, what));
    Ok(report)
}

/// Waits (until `deadline`) for orders' outbox relay to have published
/// every stored event once; returns (messages in the stream, events).
async fn relay_caught_up(
    system: &crate::tools::cluster::System,
    deadline: Instant,
) -> Result<(u64, u64), Error> {
    let orders_db = system
        .schema(crate::platform::config::ServiceName::Orders)
        .await?;
    let nats = async_nats::connect(&system.nats_url)
        .await
        .map_err(|e| Error::Scenario(format!("NATS: {e}")))?;
    let js = async_nats::jetstream::new(nats);
    let counts = loop {
        let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM es_events")
            .fetch_one(&orders_db)
            .await?;
        let messages = match js.get_stream(system.stream_name()).await {
            Ok(mut stream) => stream.info().await.map_or(0, |i| i.state.messages),
            Err(_) => 0,
        };
        if messages == events as u64 || Instant::now() >= deadline {
            break (messages, events as u64);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    orders_db.close().await;
    Ok(counts)
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

// ---------------------------------------------------------------- late-restart

/// How `late-restart` runs besides its load.
#[derive(Debug, Clone)]
pub struct LateRestart {
    /// The `ecommerce` executable (the child runs `ecommerce serve-local`).
    pub binary: std::path::PathBuf,
    /// The child's saga deadline; the restart comes after more than this.
    pub saga_deadline: Duration,
    /// The child's saga lease TTL.
    pub lease_ttl: Duration,
    /// The payment provider's injected latency (the charge is slow, so the
    /// kill finds sagas mid-flight).
    pub payment_latency: Duration,
}

impl LateRestart {
    /// The command's defaults: 10 s deadline, 2 s leases, 700 ms charges.
    pub fn new(binary: std::path::PathBuf) -> Self {
        LateRestart {
            binary,
            saga_deadline: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(2),
            payment_latency: Duration::from_millis(700),
        }
    }
}

/// The one-process system as a child process on `dir`; SIGKILLed on drop.
struct LocalChild {
    child: std::process::Child,
    url: String,
    ops: String,
}

impl LocalChild {
    /// Starts `ecommerce serve-local --data-dir DIR` and reads the URL and
    /// operator token it prints.
    async fn spawn(late: &LateRestart, dir: &std::path::Path) -> Result<LocalChild, Error> {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(&late.binary)
            .arg("serve-local")
            .arg("--data-dir")
            .arg(dir)
            .env(
                "ECOMMERCE_SAGA_DEADLINE",
                format!("{}ms", late.saga_deadline.as_millis()),
            )
            .env(
                "ECOMMERCE_SAGA_LEASE_TTL",
                format!("{}ms", late.lease_ttl.as_millis()),
            )
            .env("ECOMMERCE_ADDR", "127.0.0.1:0")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Scenario("child has no stdout".into()))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut local = LocalChild {
            child,
            url: String::new(),
            ops: String::new(),
        };
        let started = tokio::time::timeout(Duration::from_secs(60), async {
            while local.url.is_empty() || local.ops.is_empty() {
                let Some(line) = rx.recv().await else { break };
                if let Some(url) = line.strip_prefix("URL ") {
                    local.url = url.to_owned();
                } else if let Some(ops) = line.strip_prefix("OPS ") {
                    local.ops = ops.to_owned();
                }
            }
        })
        .await;
        if started.is_err() || local.url.is_empty() || local.ops.is_empty() {
            return Err(Error::Scenario(
                "the child system did not print its URL and token".into(),
            ));
        }
        Ok(local)
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LocalChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A read-only pool on one of the child's SQLite files.
async fn sqlite_file(dir: &std::path::Path, name: &str) -> Result<sqlx::SqlitePool, Error> {
    use std::str::FromStr;
    let url = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?
        .read_only(true)
        .busy_timeout(Duration::from_secs(5));
    Ok(sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?)
}

/// Runs `late-restart`: the one-process system as a child process on a
/// fresh data directory, load with every charge slowed down, the child
/// SIGKILLed right after the provider records a charge (from `fault_from`
/// of the run on), and started again (a new lease owner) only after more
/// than the saga deadline. Every order must end final, every charge of an
/// order not confirmed refunded, nothing left open or leaked.
///
/// # Errors
///
/// The child did not start, no charge was recorded to kill after, or the
/// audit could not be read.
pub async fn run_late_restart(
    late: &LateRestart,
    options: &DrillOptions,
) -> Result<DrillReport, Error> {
    let dir = std::env::temp_dir().join(format!(
        "trellis-ecommerce-late-restart-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let report = late_restart(late, options, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    report
}

async fn late_restart(
    late: &LateRestart,
    options: &DrillOptions,
    dir: &std::path::Path,
) -> Result<DrillReport, Error> {
    // Plenty of stock, as `ecommerce load` has: no order is refused for it.
    let pool = crate::platform::db::open_any(dir, "inventory").await?;
    let stock: Vec<(&str, i64)> = crate::services::catalog::SEED
        .iter()
        .map(|(sku, _, _, _)| (*sku, crate::tools::load::LOAD_STOCK))
        .collect();
    crate::services::inventory::Inventory::open(
        pool.clone(),
        &stock,
        crate::platform::config::DEFAULT_RESERVATION_TTL,
    )
    .await?;
    pool.close().await;

    let mut first = LocalChild::spawn(late, dir).await?;
    let api = ApiClient::new(&first.url);
    let latency = format!("{}ms", late.payment_latency.as_millis());
    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/payments/faults",
            Some(&first.ops),
            Some(json!({ "enabled": true, "latency_probability": 1.0, "latency": latency })),
        )
        .await?;
    if r.status != StatusCode::OK {
        return Err(Error::Scenario(format!(
            "payment faults: {} {}",
            r.status, r.body
        )));
    }

    let duration = options.load.duration;
    let start = Instant::now();
    let load = {
        let (base, load) = (first.url.clone(), options.load.clone());
        tokio::spawn(async move { crate::tools::load::run(&base, &load).await })
    };
    tokio::time::sleep_until(start + duration.mul_f64(options.fault_from.clamp(0.0, 1.0))).await;
    // Kill right after the next charge the provider records.
    let payments = sqlite_file(dir, "payments").await?;
    let charged = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM charges WHERE status = 'CHARGED'")
            .fetch_one(&payments)
            .await
    };
    let before = charged().await?;
    let wait_until = Instant::now() + Duration::from_secs(30);
    loop {
        if charged().await? > before {
            break;
        }
        if Instant::now() >= wait_until {
            return Err(Error::Scenario(
                "no charge recorded within 30 s to kill after".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    first.kill();
    let killed_at = Instant::now();
    let charges_at_kill = charged().await?;
    payments.close().await;
    let load = load
        .await
        .map_err(|e| Error::Scenario(format!("load task: {e}")))??;

    // Down for longer than a saga may run: every saga in flight has passed
    // its deadline when the new process (a new owner) adopts it.
    let down = late.saga_deadline + Duration::from_secs(1);
    tokio::time::sleep_until(killed_at + down).await;
    let second = LocalChild::spawn(late, dir).await?;
    let restarted_after = killed_at.elapsed();
    let api = Arc::new(ApiClient::new(&second.url));

    // Settle: every accepted order final (read from the read model file:
    // the customers' tokens died with the first process), the audit clean.
    let read = sqlite_file(dir, "orders-read").await?;
    let deadline = Instant::now() + options.settle;
    let mut current = read_statuses(&read, &load.accepted).await?;
    let mut audit = fetch_audit(&api, &second.ops).await?;
    while !(current.iter().all(is_final) && audit_clean(&audit)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        current = read_statuses(&read, &load.accepted).await?;
        audit = fetch_audit(&api, &second.ops).await?;
    }
    read.close().await;
    let payments = sqlite_file(dir, "payments").await?;
    let refunds: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM refunds")
        .fetch_one(&payments)
        .await?;
    payments.close().await;
    let rejected = audit["orders"]["REJECTED"].as_u64().unwrap_or(0);
    let sagas = audit["orders"]
        .as_object()
        .map_or(0, |o| o.values().filter_map(|v| v.as_u64()).sum::<u64>());
    let mut report = DrillReport::from_orders(Drill::LateRestart, load, &current);
    let cut_off = sagas.saturating_sub(report.accepted);
    report.fill_from_audit(audit);
    report.fault = Some((
        cut_off > 0,
        format!(
            "SIGKILLed at {:.1} s right after charge {charges_at_kill}, restarted {:.1} s later \
             (saga deadline {:.1} s); {cut_off} orders cut off before their answer, \
             {rejected} rejected, {refunds} charges refunded",
            (killed_at - start).as_secs_f64(),
            restarted_after.as_secs_f64(),
            late.saga_deadline.as_secs_f64()
        ),
    ));
    drop(second);
    Ok(report)
}

/// Each accepted order's status in the read model file (`None`: absent).
async fn read_statuses(
    read: &sqlx::SqlitePool,
    orders: &[AcceptedOrder],
) -> Result<Vec<Option<String>>, Error> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT order_id, status FROM order_summaries")
            .fetch_all(read)
            .await?;
    let by_id: std::collections::HashMap<String, String> = rows.into_iter().collect();
    Ok(orders
        .iter()
        .map(|o| by_id.get(&o.order_id).cloned())
        .collect())
}
