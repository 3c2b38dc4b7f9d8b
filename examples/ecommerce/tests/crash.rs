//! Kill the whole system (SIGKILL) mid-saga, restart it on the same data
//! directory, and check that the place-order saga is recovered.
//!
//! This test target has no libtest harness: `main` runs as the parent and
//! re-executes its own binary (`std::env::current_exe`) as a child selected
//! by `ECOMMERCE_CRASH_CHILD`. The child starts the system through the
//! library on 127.0.0.1:0 and prints its URL and an operator token. The
//! parent places an order with payment latency switched on, kills the child
//! at a chosen point of the saga, starts a second child on the same data
//! directory (startup runs `Orchestrator::recover`) and checks, over HTTP
//! and in the services' own SQLite files: the order reaches a final state,
//! the card was charged at most once (and refunded if compensated), the
//! reservation was confirmed or released (no stock leaked), nothing lost.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::json;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

const CHILD_ENV: &str = "ECOMMERCE_CRASH_CHILD";
const SKU: &str = "TEA-001";
const QUANTITY: i64 = 2;
const EMAIL: &str = "crash@example.com";
const PASSWORD: &str = "long enough password";
/// The children's saga lease.
const LEASE_TTL: Duration = Duration::from_secs(2);

fn main() {
    match std::env::var(CHILD_ENV) {
        Ok(dir) => child(PathBuf::from(dir)),
        Err(_) => parent(),
    }
}

/// The child: the whole system on `dir`, serving until killed.
fn child(dir: PathBuf) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = ecommerce::Config {
            data_dir: dir,
            addr: "127.0.0.1:0".parse().expect("addr"),
            drain: Duration::from_millis(10),
            // Each start is a new lease owner: the restart adopts the
            // killed run's sagas once their leases expire.
            saga_lease_ttl: LEASE_TTL,
            ..ecommerce::Config::default()
        };
        let running = ecommerce::start(config).await.expect("system starts");
        println!("URL {}", running.base_url());
        println!("OPS {}", running.ops_token().expect("ops token"));
        running
            .serve_until(std::future::pending())
            .await
            .expect("serve");
    });
}

/// A running child process; killed (SIGKILL) and reaped on drop.
struct System {
    child: Child,
    url: String,
    ops: String,
}

impl System {
    fn spawn(dir: &Path) -> System {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .env(CHILD_ENV, dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut system = System {
            child,
            url: String::new(),
            ops: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while system.url.is_empty() || system.ops.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("the child printed its URL and token in time");
            if let Some(url) = line.strip_prefix("URL ") {
                system.url = url.to_owned();
            } else if let Some(ops) = line.strip_prefix("OPS ") {
                system.ops = ops.to_owned();
            }
        }
        system
    }

    /// SIGKILL: no shutdown code runs in the child.
    fn kill(mut self) {
        self.child.kill().expect("kill child");
        self.child.wait().expect("reap child");
    }
}

impl Drop for System {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh data directory, removed on drop (on a failed assertion too).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "trellis-ecommerce-kill-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The services' own files, read from the parent (WAL: concurrent readers).
async fn open(dir: &Path, name: &str) -> SqlitePool {
    let url = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    let options = SqliteConnectOptions::from_str(&url)
        .expect("sqlite url")
        .read_only(true)
        .busy_timeout(Duration::from_secs(5));
    SqlitePool::connect_with(options).await.expect("open db")
}

async fn stock(dir: &Path) -> i64 {
    let pool = open(dir, "inventory").await;
    let n = sqlx::query_scalar("SELECT available FROM stock WHERE sku = ?")
        .bind(SKU)
        .fetch_one(&pool)
        .await
        .expect("stock");
    pool.close().await;
    n
}

/// The order a reservation was taken for, once there is one.
async fn reserved_order(dir: &Path) -> Option<String> {
    let pool = open(dir, "inventory").await;
    let id = sqlx::query_scalar("SELECT order_id FROM reservations LIMIT 1")
        .fetch_optional(&pool)
        .await
        .expect("reservations");
    pool.close().await;
    id
}

/// Charges the provider recorded as CHARGED for `order_id`.
async fn charges(dir: &Path, order_id: &str) -> i64 {
    let pool = open(dir, "payments").await;
    let n = sqlx::query_scalar(
        "SELECT COUNT(*) FROM charges WHERE order_id = ? AND status = 'CHARGED'",
    )
    .bind(order_id)
    .fetch_one(&pool)
    .await
    .expect("charges");
    pool.close().await;
    n
}

/// Charges for `order_id` with a refund against them.
async fn refunded(dir: &Path, order_id: &str) -> i64 {
    let pool = open(dir, "payments").await;
    let n = sqlx::query_scalar(
        "SELECT COUNT(*) FROM charges c JOIN refunds r ON r.payment_id = c.payment_id \
         WHERE c.order_id = ?",
    )
    .bind(order_id)
    .fetch_one(&pool)
    .await
    .expect("refunds");
    pool.close().await;
    n
}

/// Statuses of the reservations taken for `order_id`.
async fn reservations(dir: &Path, order_id: &str) -> Vec<String> {
    let pool = open(dir, "inventory").await;
    let rows = sqlx::query_scalar("SELECT status FROM reservations WHERE order_id = ?")
        .bind(order_id)
        .fetch_all(&pool)
        .await
        .expect("reservations");
    pool.close().await;
    rows
}

async fn login(api: &ecommerce::ApiClient, register: bool) -> String {
    let creds = json!({ "email": EMAIL, "password": PASSWORD });
    if register {
        let r = api
            .json(
                Method::POST,
                "/api/v1/identity/register",
                None,
                Some(creds.clone()),
            )
            .await
            .expect("register");
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let r = api
        .json(Method::POST, "/api/v1/identity/login", None, Some(creds))
        .await
        .expect("login");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["access_token"]
        .as_str()
        .expect("access token")
        .to_owned()
}

/// Where in the saga the child is killed.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// While charge-payment waits on the provider's injected latency:
    /// stock reserved, card not yet charged.
    MidCharge,
    /// As soon as the provider has recorded the charge, before the saga
    /// has confirmed the order.
    ChargeRecorded,
    /// While charge-payment waits on the provider with the declined card:
    /// recovery re-runs the charge, is declined, and compensates.
    MidDeclinedCharge,
    /// During a compensation: the declined card made the saga compensate,
    /// the reservation is released, and the rejection of the order is
    /// held up (the test holds the event store's write lock) when the
    /// process dies. The new process finishes the compensation.
    MidCompensation,
    /// Between confirm-reservation and confirm-order: the reservation is
    /// CONFIRMED, the order's confirmation held up (the event store's write
    /// lock again). The new process confirms the order: charged once, the
    /// stock sold once.
    ReservationConfirmed,
}

impl KillPoint {
    fn card(self) -> &'static str {
        match self {
            KillPoint::MidDeclinedCharge | KillPoint::MidCompensation => ecommerce::DECLINED_CARD,
            _ => ecommerce::scenario::GOOD_CARD,
        }
    }
}

async fn scenario(point: KillPoint) {
    // Declared first, so dropped last: after the children are killed.
    let temp = TempDir::new(&format!("{point:?}"));
    let dir = temp.0.clone();
    let started = Instant::now();

    let first = System::spawn(&dir);
    let api = ecommerce::ApiClient::new(first.url.clone());
    let token = login(&api, true).await;
    let before = stock(&dir).await;

    // Every call to the provider waits 700 ms (under the 1 s timeout), so
    // the saga sits in charge-payment.
    let faults = json!({ "enabled": true, "latency_probability": 1.0, "latency": "700ms" });
    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/payments/faults",
            Some(&first.ops),
            Some(faults),
        )
        .await
        .expect("set faults");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let order = json!({ "lines": [ { "sku": SKU, "quantity": QUANTITY } ], "card": point.card() });
    let placing = {
        let (api, token) = (api.clone(), token.clone());
        tokio::spawn(async move {
            api.json(Method::POST, "/api/v1/orders", Some(&token), Some(order))
                .await
        })
    };

    // The saga is in flight once inventory holds a reservation for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let order_id = loop {
        if let Some(id) = reserved_order(&dir).await {
            break id;
        }
        assert!(Instant::now() < deadline, "{point:?}: no reservation taken");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    match point {
        KillPoint::MidCharge | KillPoint::MidDeclinedCharge => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                charges(&dir, &order_id).await,
                0,
                "{point:?}: killed before the charge"
            );
        }
        KillPoint::ChargeRecorded => {
            // One connection kept open, so the kill follows the charge
            // within about a millisecond.
            let payments = open(&dir, "payments").await;
            loop {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM charges WHERE order_id = ? AND status = 'CHARGED'",
                )
                .bind(&order_id)
                .fetch_one(&payments)
                .await
                .expect("charges");
                if n > 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "{point:?}: never charged");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            payments.close().await;
        }
        KillPoint::MidCompensation | KillPoint::ReservationConfirmed => {
            // Hold the event store's write lock: the saga's next write to
            // the store (the rejection, or the order's confirmation) waits
            // on it.
            let sagas = open(&dir, "orders-sagas").await;
            let wanted = if matches!(point, KillPoint::MidCompensation) {
                "compensating"
            } else {
                "running"
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut lock = write_lock(&dir, "orders-events").await;
            // The lock is taken while the charge still waits on the
            // provider (the reservation is made, the order recorded): the
            // steps after it run in milliseconds and cannot slip past it.
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut lock)
                .await
                .expect("the event store's lock");
            loop {
                let status: Option<String> =
                    sqlx::query_scalar("SELECT status FROM trellis_sagas WHERE id = ?")
                        .bind(&order_id)
                        .fetch_optional(&sagas)
                        .await
                        .expect("saga status");
                let charged = charges(&dir, &order_id).await > 0;
                let declined = matches!(point, KillPoint::MidCompensation);
                if status.as_deref() == Some(wanted) && (declined || charged) {
                    break;
                }
                assert!(Instant::now() < deadline, "{point:?}: never reached");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // The step before the held write has finished.
            let held = loop {
                let held = reservations(&dir, &order_id).await;
                let done = match point {
                    KillPoint::MidCompensation => held == ["RELEASED"],
                    _ => held == ["CONFIRMED"],
                };
                if done {
                    break held;
                }
                assert!(Instant::now() < deadline, "{point:?}: reservation {held:?}");
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            // Let the held write start waiting, then kill.
            tokio::time::sleep(Duration::from_millis(100)).await;
            first.kill();
            sqlx::query("ROLLBACK")
                .execute(&mut lock)
                .await
                .expect("release the lock");
            drop(lock);
            sagas.close().await;
            println!("  {point:?}: killed with the reservation {held:?}");
            return after_kill(point, temp, dir, started, placing, order_id, before).await;
        }
    }
    first.kill();
    after_kill(point, temp, dir, started, placing, order_id, before).await;
}

/// A writable connection to one of the child's SQLite files.
async fn write_lock(dir: &Path, name: &str) -> sqlx::SqliteConnection {
    use sqlx::ConnectOptions;
    let url = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    SqliteConnectOptions::from_str(&url)
        .expect("sqlite url")
        .busy_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("open db for writing")
}

/// From the kill on: restart, recover, check.
async fn after_kill(
    point: KillPoint,
    temp: TempDir,
    dir: PathBuf,
    started: Instant,
    placing: tokio::task::JoinHandle<Result<ecommerce::ApiResponse, ecommerce::Error>>,
    order_id: String,
    before: i64,
) {
    let reply = placing.await.expect("placing task");
    assert!(
        reply.is_err(),
        "{point:?}: the order finished before the kill: {reply:?}"
    );
    let charged_at_kill = charges(&dir, &order_id).await;

    // Restart on the same files: startup recovers the saga before serving.
    let second = System::spawn(&dir);
    let api = ecommerce::ApiClient::new(second.url.clone());
    let token = login(&api, false).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let r = api
            .json(
                Method::GET,
                &format!("/api/v1/orders/{order_id}"),
                Some(&token),
                None,
            )
            .await
            .expect("get order");
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{point:?}: order lost: {}",
            r.body
        );
        let status = r.body["status"].as_str().unwrap_or_default().to_owned();
        if status == "CONFIRMED" || status == "REJECTED" {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{point:?}: order stuck in {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let charged = charges(&dir, &order_id).await;
    let refunds = refunded(&dir, &order_id).await;
    let held = reservations(&dir, &order_id).await;
    let after = stock(&dir).await;
    assert!(charged <= 1, "{point:?}: charged {charged} times");
    assert!(
        charged >= charged_at_kill,
        "{point:?}: a charge disappeared"
    );
    assert_eq!(held.len(), 1, "{point:?}: reservations {held:?}");
    if matches!(
        point,
        KillPoint::MidDeclinedCharge | KillPoint::MidCompensation
    ) {
        assert_eq!(status, "REJECTED", "{point:?}: a declined card confirmed");
    }
    if matches!(point, KillPoint::ReservationConfirmed) {
        assert_eq!(
            status, "CONFIRMED",
            "{point:?}: charged and stock confirmed"
        );
    }
    match status.as_str() {
        "CONFIRMED" => {
            assert_eq!(charged, 1, "{point:?}: confirmed but not charged");
            assert_eq!(refunds, 0, "{point:?}: confirmed but refunded");
            assert_eq!(held[0], "CONFIRMED", "{point:?}");
            assert_eq!(after, before - QUANTITY, "{point:?}: stock");
        }
        _ => {
            assert_eq!(refunds, charged, "{point:?}: a charge not refunded");
            assert_eq!(held[0], "RELEASED", "{point:?}");
            assert_eq!(after, before, "{point:?}: stock leaked");
        }
    }
    // The customer's list holds the order exactly once.
    let list = api
        .json(Method::GET, "/api/v1/orders", Some(&token), None)
        .await
        .expect("list orders");
    let ids: Vec<_> = list
        .body
        .as_array()
        .expect("order list")
        .iter()
        .filter_map(|row| row["order_id"].as_str())
        .collect();
    assert_eq!(ids, vec![order_id.as_str()], "{point:?}: order list");
    second.kill();
    drop(temp);
    println!(
        "  {point:?}: charges at kill {charged_at_kill}, recovered to {status} \
         (charged {charged}, refunded {refunds}), {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn parent() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let points = [
        KillPoint::MidCharge,
        KillPoint::ChargeRecorded,
        KillPoint::MidDeclinedCharge,
        KillPoint::MidCompensation,
        KillPoint::ReservationConfirmed,
    ];
    println!("\nrunning {} tests", points.len());
    for point in points {
        runtime.block_on(scenario(point));
        println!("test kill_{point:?} ... ok");
    }
    println!(
        "\ntest result: ok. {} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n",
        points.len()
    );
}
