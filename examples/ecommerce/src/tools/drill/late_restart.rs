//! `late-restart`: the one-process system as a child process, SIGKILLed
//! right after a charge and restarted only after the saga deadline.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::time::Instant;
use trellis_resilience::fault::FaultConfig;

use super::local::{audit_clean, fetch_audit, is_final, to_body};
use super::{Drill, DrillOptions, DrillReport};
use crate::api::Error;
use crate::tools::client::ApiClient;
use crate::tools::load::AcceptedOrder;

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
    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/payments/faults",
            Some(&first.ops),
            Some(to_body(&FaultConfig {
                enabled: true,
                latency_probability: 1.0,
                latency: late.payment_latency,
                ..FaultConfig::default()
            })?),
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
