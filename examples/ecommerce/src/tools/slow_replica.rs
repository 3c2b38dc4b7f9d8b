//! `ecommerce drill slow-replica --database-url URL [--nats-url URL]
//! [load flags]`: the distributed system with two replicas of inventory
//! and of payments, orders balancing over them (`services/orders/balance.rs`).
//! Under load through the gateway, the second payments replica is made
//! slow ([`SLOW`] per charge) by its own fault flag
//! (`payments-replica-latency-ms`, targeted at its instance name in a flag
//! file every process re-reads). The drill reads orders' per-replica
//! request counts (`orders_upstream_requests_total`) before and during
//! the fault: traffic moves away from the slow replica. Afterwards the
//! schemas are audited: nothing lost, nothing charged twice, no stock
//! leaked. It prints a table and fails (non-zero exit) on a violation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::api::Error;
use crate::platform::config::ServiceName;
use crate::tools::cluster::{SchemaAudit, System};
use crate::tools::load::{LoadOptions, LoadSummary};

/// The drill's command-line name.
pub const NAME: &str = "slow-replica";

/// What each charge on the slow replica waits: below orders' per-replica
/// timeout (800 ms), so the replica is slow, not failing.
pub const SLOW: Duration = Duration::from_millis(400);

/// The slow replica's instance name (`tools::cluster` starts second
/// replicas with `HOSTNAME=<service>-2`).
const SLOW_INSTANCE: &str = "payments-2";

/// During the fault the slow replica takes at most this share of the
/// charges (about half before).
pub const MAX_SLOW_SHARE: f64 = 0.25;

/// The load runs at least this long: a third before the fault, the rest
/// with it.
const MIN_DURATION: Duration = Duration::from_secs(9);

/// The flag file: the switch defined, off; `slow` targets the second
/// payments replica when `on`.
fn flag_file(on: bool) -> String {
    let targeting = if on {
        format!(
            r#", "targeting": [{{ "if": [{{ "attribute": "targetingKey", "op": "equals", "value": "{SLOW_INSTANCE}" }}], "variant": "slow" }}]"#
        )
    } else {
        String::new()
    };
    format!(
        r#"{{ "flags": {{ "{}": {{ "variants": {{ "off": 0, "slow": {} }}, "defaultVariant": "off"{targeting} }} }} }}"#,
        crate::services::payments::REPLICA_LATENCY_MS,
        SLOW.as_millis()
    )
}

/// Requests per payments replica (base URL), all outcomes.
pub type Counts = BTreeMap<String, u64>;

/// What the drill saw.
#[derive(Debug)]
pub struct SlowReplicaReport {
    /// The slow replica's base URL.
    pub slow: String,
    /// Charges (and refunds) per replica before the fault.
    pub before: Counts,
    /// The same during the fault (after the flag file was re-read).
    pub during: Counts,
    /// The load's own summary.
    pub load: LoadSummary,
    /// The schemas after the run settled.
    pub audit: SchemaAudit,
}

fn share(counts: &Counts, of: &str) -> f64 {
    let total: u64 = counts.values().sum();
    counts.get(of).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

impl SlowReplicaReport {
    /// The slow replica's share of the calls before the fault.
    pub fn share_before(&self) -> f64 {
        share(&self.before, &self.slow)
    }

    /// Its share during the fault.
    pub fn share_during(&self) -> f64 {
        share(&self.during, &self.slow)
    }

    /// Traffic moved away from the slow replica (it had its share before,
    /// at most [`MAX_SLOW_SHARE`] during), the load's orders are all
    /// readable, and the audit found nothing lost, charged twice, leaked
    /// or left open.
    pub fn passed(&self) -> bool {
        self.share_before() > MAX_SLOW_SHARE
            && self.share_during() <= MAX_SLOW_SHARE
            && self.during.values().sum::<u64>() > 0
            && self.load.lost == 0
            && self.audit.settled()
            && self.audit.refunds_missing == 0
    }
}

impl fmt::Display for SlowReplicaReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Drill {NAME}: payments replica {} made slow ({SLOW:?} per charge) under load",
            self.slow
        )?;
        writeln!(
            f,
            "| payments replica | calls before | calls during the fault |"
        )?;
        writeln!(f, "|---|---|---|")?;
        let endpoints: std::collections::BTreeSet<&String> =
            self.before.keys().chain(self.during.keys()).collect();
        for endpoint in endpoints {
            let mark = if *endpoint == self.slow {
                " (slow)"
            } else {
                ""
            };
            writeln!(
                f,
                "| {endpoint}{mark} | {} | {} |",
                self.before.get(endpoint).copied().unwrap_or(0),
                self.during.get(endpoint).copied().unwrap_or(0)
            )?;
        }
        writeln!(
            f,
            "| slow replica's share | {:.0}% | {:.0}% (at most {:.0}%) |",
            self.share_before() * 100.0,
            self.share_during() * 100.0,
            MAX_SLOW_SHARE * 100.0
        )?;
        let a = &self.audit;
        writeln!(f)?;
        writeln!(f, "| check | value |")?;
        writeln!(f, "|---|---|")?;
        writeln!(f, "| orders placed (201) | {} |", self.load.accepted.len())?;
        writeln!(f, "| request errors | {} |", self.load.error_count())?;
        writeln!(f, "| orders by status | {:?} |", a.orders)?;
        writeln!(f, "| lost | {} |", a.lost + self.load.lost)?;
        writeln!(f, "| charged twice | {} |", a.charged_twice)?;
        writeln!(f, "| charge mismatch | {} |", a.charge_mismatch)?;
        writeln!(f, "| refunds missing | {} |", a.refunds_missing)?;
        writeln!(f, "| reservation mismatch | {} |", a.reservation_mismatch)?;
        writeln!(f, "| sagas open | {} |", a.sagas_open)?;
        writeln!(f, "| stock leaked | {} |", a.stock_leaked)?;
        write!(
            f,
            "| verdict | {} |",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// Orders' per-replica payments counts, from its `/metrics`.
async fn counts(orders: &str) -> Result<Counts, Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = orders.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let mut counts = Counts::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("orders_upstream_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        if !labels.contains("service=\"payments\"") {
            continue;
        }
        let endpoint = labels
            .split("endpoint=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default();
        let n: f64 = value.trim().parse().unwrap_or(0.0);
        *counts.entry(endpoint.to_owned()).or_insert(0) += n as u64;
    }
    Ok(counts)
}

fn minus(after: &Counts, before: &Counts) -> Counts {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0).min(*v)))
        .collect()
}

/// Runs the drill: the system of `binary` processes on `database_url`
/// and `nats_url` (fresh schemas, dropped at the end, also on error).
///
/// # Errors
///
/// The system did not start, the load failed, or the audit could not
/// read the schemas.
pub async fn run(
    binary: &Path,
    database_url: &str,
    nats_url: &str,
    load: &LoadOptions,
) -> Result<SlowReplicaReport, Error> {
    let mut system = System::new(binary, database_url, nats_url)?;
    let report = drill(&mut system, load).await;
    system.cleanup().await;
    report
}

async fn drill(system: &mut System, load: &LoadOptions) -> Result<SlowReplicaReport, Error> {
    system.add_replicas(&[ServiceName::Inventory, ServiceName::Payments])?;
    let flags: PathBuf = system.dir.join("flags.json");
    std::fs::write(&flags, flag_file(false))?;
    system
        .env
        .push(("ECOMMERCE_FLAGS_FILE".into(), flags.display().to_string()));
    system.start_all().await?;
    let slow = format!(
        "http://127.0.0.1:{}",
        system.replica_ports[&ServiceName::Payments]
    );
    let orders = system.url(ServiceName::Orders);
    let gateway = system.url(ServiceName::Gateway);

    let mut load = load.clone();
    load.duration = load.duration.max(MIN_DURATION);
    load.progress = false;
    let duration = load.duration;
    let start = Instant::now();
    let running = tokio::spawn(async move { crate::tools::load::run(&gateway, &load).await });
    tokio::time::sleep_until(start + duration / 3).await;
    let at_fault = counts(&orders).await?;
    std::fs::write(&flags, flag_file(true))?;
    // Every process re-reads the file within FLAGS_RELOAD.
    tokio::time::sleep(crate::platform::delivery::FLAGS_RELOAD + Duration::from_millis(500)).await;
    let slowed = counts(&orders).await?;
    let summary = running
        .await
        .map_err(|e| Error::Scenario(format!("load task: {e}")))??;
    let after = counts(&orders).await?;
    std::fs::write(&flags, flag_file(false))?;

    // Settle: every saga final, the schemas consistent.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut audit = crate::tools::cluster::audit(system).await?;
    while !audit.settled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        audit = crate::tools::cluster::audit(system).await?;
    }
    Ok(SlowReplicaReport {
        slow,
        before: at_fault,
        during: minus(&after, &slowed),
        load: summary,
        audit,
    })
}
