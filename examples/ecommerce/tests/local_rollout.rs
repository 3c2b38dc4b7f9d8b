//! Canary and blue-green in the one-process mode (issue #16 §2): with
//! `delivery.canary_version`, `ecommerce::start` runs a second orders
//! version beside the stable one, sharing its stores, behind the same
//! canary router and analysis as the gateway's. Short real runs (3 s
//! analysis intervals) on SQLite, under load from customers who each stay
//! on their version:
//!
//! - a canary failing a fifth of its charges (a flag file targeting its
//!   version label) is rolled back to weight 0;
//! - a healthy canary is promoted to 100;
//! - blue-green to a green failing every charge fails its smoke orders and
//!   stays on blue; to a healthy green, it switches in one step.
//!
//! Each ends with `GET /api/v1/admin/audit`: nothing lost, nothing charged
//! twice, no charge or reservation out of step, no saga open.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ecommerce::ApiClient;
use ecommerce::delivery::{DeliverySettings, Strategy};
use http::{Method, StatusCode};
use serde_json::{Value, json};

const INTERVAL: Duration = Duration::from_secs(3);

/// A flag file failing `share` of the canary version's charges.
fn flag_file(dir: &std::path::Path, share: f64) -> std::path::PathBuf {
    let path = dir.join("flags.json");
    let text = json!({ "flags": { "payment-failure-rate": {
        "variants": { "off": 0.0, "bad": share }, "defaultVariant": "off",
        "targeting": [{ "if": [{ "attribute": "version", "op": "equals", "value": "canary" }], "variant": "bad" }]
    } } });
    std::fs::write(&path, text.to_string()).unwrap();
    path
}

async fn start(
    name: &str,
    strategy: Strategy,
    canary_failure: f64,
) -> (ecommerce::Running, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "ecommerce-local-rollout-{name}-{}",
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let delivery = DeliverySettings {
        flags_file: Some(flag_file(&dir, canary_failure)),
        canary_version: Some("canary".into()),
        strategy,
        canary_steps: vec![50, 100],
        canary_interval: INTERVAL,
        // About errors, not this shared machine's latency.
        canary_max_p99: Duration::from_secs(10),
        ..DeliverySettings::default()
    };
    let config = ecommerce::Config {
        data_dir: dir.join("data"),
        addr: "127.0.0.1:0".parse().unwrap(),
        delivery,
        ..ecommerce::Config::default()
    };
    // A first start creates the stores; the stock is then raised so the
    // load never runs out: an out-of-stock rejection is the customer's
    // outcome, not the canary's failure, and would hide the bad canary's
    // charge failures from the analysis.
    ecommerce::start(config.clone())
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    let inventory = dir.join("data").join("inventory.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", inventory.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE stock SET available = 1000000")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let running = ecommerce::start(config).await.unwrap();
    (running, dir)
}

/// Customers placing orders until `stop`, at least `on_canary` of them in
/// the first step's (50 %) buckets; returns `(order id, version)` per order.
fn load(
    running: &ecommerce::Running,
    customers: usize,
    on_canary: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(String, String)>>> {
    let mut subjects = Vec::new();
    let (mut canary, mut n) = (0, 0);
    while subjects.len() < customers || canary < on_canary {
        n += 1;
        let sub = format!("local-rollout-{n}");
        let in_canary = ecommerce::rollout::bucket_of(&format!("key:{sub}")) < 50;
        if in_canary {
            canary += 1;
        } else if subjects.len() >= customers {
            continue;
        }
        subjects.push(sub);
    }
    subjects
        .into_iter()
        .map(|sub| {
            let token = running
                .token_with_scopes(&sub, &["catalog:read", "orders:read", "orders:write"])
                .unwrap();
            let api = ApiClient::new(running.base_url());
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut placed = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let key = uuid::Uuid::new_v4().to_string();
                    let body = json!({ "lines": [{ "sku": "TEA-001", "quantity": 1 }], "card": "4242424242424242" });
                    let Ok(r) = api
                        .with_headers(
                            Method::POST,
                            "/api/v1/orders",
                            Some(&token),
                            &[("idempotency-key", key.as_str())],
                            serde_json::to_vec(&body).unwrap(),
                        )
                        .await
                    else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let version = r
                        .headers
                        .get("x-rollout-version")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    if let Some(id) = r.body["order_id"].as_str() {
                        placed.push((id.to_owned(), version));
                    }
                }
                placed
            })
        })
        .collect()
}

async fn rollout(api: &ApiClient, ops: &str) -> Value {
    let r = api
        .json(Method::GET, "/api/v1/admin/rollout", Some(ops), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

/// Waits (bounded) for the rollout to end; its final state.
async fn finished(api: &ApiClient, ops: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let state = rollout(api, ops).await;
        if matches!(
            state["phase"].as_str(),
            Some("promoted" | "rolled-back" | "aborted")
        ) || tokio::time::Instant::now() >= deadline
        {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The audit once every saga has ended and the read models caught up
/// (bounded), asserted clean.
async fn audit_is_clean(api: &ApiClient, ops: &str) {
    let checks = [
        "lost",
        "charged_twice",
        "refunds_missing",
        "confirmed_not_charged",
        "reservation_mismatch",
        "sagas_open",
        "read_model_mismatch",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = api
            .json(Method::GET, "/api/v1/admin/audit", Some(ops), None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let clean = checks.iter().all(|c| r.body[c]["count"] == 0) && r.body["stock_leaked"] == 0;
        if clean {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the audit is not clean: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs load until the rollout ends; the final state and orders by version.
async fn run_until_decided(
    running: &ecommerce::Running,
) -> (Value, std::collections::BTreeMap<String, u64>) {
    let api = ApiClient::new(running.base_url());
    let ops = running.ops_token().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(running, 8, 4, stop.clone());
    let state = finished(&api, &ops).await;
    stop.store(true, Ordering::Relaxed);
    let mut by_version = std::collections::BTreeMap::new();
    for worker in workers {
        for (_, version) in worker.await.unwrap() {
            *by_version.entry(version).or_insert(0) += 1;
        }
    }
    audit_is_clean(&api, &ops).await;
    (state, by_version)
}

fn kinds(state: &Value) -> Vec<&str> {
    state["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["kind"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_local_canary_is_rolled_back_and_the_audit_is_clean() {
    let (running, dir) = start("rollback", Strategy::Canary, 0.2).await;
    assert_eq!(running.canary_flags().unwrap().version(), "canary");
    let (state, by_version) = run_until_decided(&running).await;
    assert_eq!(state["strategy"], "canary", "{state}");
    assert_eq!(state["phase"], "rolled-back", "{state}");
    assert_eq!(state["weight"], 0, "{state}");
    // Never past the first step, and rolled back on the success rate.
    assert!(
        state["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["to"].as_u64().unwrap() <= 50),
        "{state}"
    );
    let rolled_back = state["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "rolled-back")
        .unwrap();
    assert!(
        rolled_back["reason"]
            .as_str()
            .unwrap()
            .contains("success rate"),
        "{state}"
    );
    assert!(
        by_version.get("canary").copied().unwrap_or(0) > 0,
        "{by_version:?}"
    );
    assert!(
        by_version.get("stable").copied().unwrap_or(0) > 0,
        "{by_version:?}"
    );
    running.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_local_canary_is_promoted_and_the_audit_is_clean() {
    let (running, dir) = start("promote", Strategy::Canary, 0.0).await;
    let (state, by_version) = run_until_decided(&running).await;
    assert_eq!(state["phase"], "promoted", "{state}");
    assert_eq!(state["weight"], 100, "{state}");
    let kinds = kinds(&state);
    assert_eq!(kinds.first(), Some(&"started"), "{state}");
    assert!(kinds.contains(&"step"), "went through 50 to 100: {state}");
    assert!(!kinds.contains(&"rolled-back"), "{state}");
    assert!(
        by_version.get("canary").copied().unwrap_or(0) > 0,
        "{by_version:?}"
    );
    running.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_blue_green_stays_blue_when_the_smoke_orders_fail_and_switches_when_they_pass() {
    // Every charge of the green fails: its first smoke order is rejected
    // by the system's fault, the rollout aborts at 0.
    let (running, dir) = start("bg-bad", Strategy::BlueGreen, 1.0).await;
    let api = ApiClient::new(running.base_url());
    let ops = running.ops_token().unwrap();
    let state = finished(&api, &ops).await;
    assert_eq!(state["strategy"], "blue-green", "{state}");
    assert_eq!(state["phase"], "aborted", "{state}");
    assert_eq!(state["weight"], 0, "{state}");
    let reason = state["decisions"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("smoke check failed: smoke order 1"),
        "{state}"
    );
    // A customer now lands on blue.
    let token = running
        .token_with_scopes("after-abort", &["orders:read", "orders:write"])
        .unwrap();
    let r = api
        .with_headers(
            Method::POST,
            "/api/v1/orders",
            Some(&token),
            &[("idempotency-key", "9d3c1c0e-7f7e-4d0b-9b1e-1b2f3c4d5e6f")],
            serde_json::to_vec(&json!({ "lines": [{ "sku": "TEA-001", "quantity": 1 }], "card": "4242424242424242" })).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.headers["x-rollout-version"], "stable");
    audit_is_clean(&api, &ops).await;
    running.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);

    // A healthy green: smoke passed, 0 → 100 at once, promoted after a
    // passing check.
    let (running, dir) = start("bg-good", Strategy::BlueGreen, 0.0).await;
    let (state, by_version) = run_until_decided(&running).await;
    assert_eq!(state["phase"], "promoted", "{state}");
    let first = &state["decisions"][0];
    assert_eq!(first["kind"], "smoke-passed", "{state}");
    assert_eq!(
        (first["from"].as_u64(), first["to"].as_u64()),
        (Some(0), Some(100)),
        "{state}"
    );
    assert!(
        by_version.get("canary").copied().unwrap_or(0) > 0,
        "{by_version:?}"
    );
    running.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
