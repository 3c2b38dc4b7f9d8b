//! Degraded mode, on the whole system in one process and the real clock
//! (moved here from src/orders.rs): orders accepted as
//! PENDING_VALIDATION while inventory's breaker is open are validated when
//! it closes, by itself or by the operator; validation attempts are
//! numbered sagas, and one held order never stops the others.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use trellis_resilience::circuit_breaker::{CircuitState, SlidingWindow};

use ecommerce::ApiClient;

/// Without an operator: inventory fails, the breaker opens by itself,
/// orders are accepted as PENDING_VALIDATION; inventory heals, the next
/// order's trial call closes the breaker, and the pending orders are
/// validated by the watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_orders_are_validated_when_the_breaker_closes_by_itself() {
    let dir = std::env::temp_dir().join(format!(
        "ecommerce-self-close-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let running = ecommerce::start(ecommerce::Config {
        data_dir: dir.clone(),
        addr: "127.0.0.1:0".parse().unwrap(),
        drain: Duration::from_millis(10),
        ..ecommerce::Config::default()
    })
    .await
    .unwrap();
    let breaker = running.inventory_breaker().clone();
    let mut config = breaker.config();
    config.window = SlidingWindow::Count { size: 4 };
    config.minimum_calls = 2;
    config.wait_in_open = Duration::from_millis(300);
    config.max_wait_in_open = Duration::from_millis(300);
    config.permitted_calls_in_half_open = 1;
    breaker.replace_config(config).unwrap();

    let api = ApiClient::new(running.base_url());
    let ops = running.ops_token().unwrap();
    let credentials = json!({ "email": "self-close@example.com", "password": "a long password" });
    let r = api
        .json(
            Method::POST,
            "/api/v1/identity/register",
            None,
            Some(credentials.clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = api
        .json(
            Method::POST,
            "/api/v1/identity/login",
            None,
            Some(credentials),
        )
        .await
        .unwrap();
    let token = r.body["access_token"].as_str().unwrap().to_owned();
    let faults = |enabled: bool| json!({ "enabled": enabled, "error_probability": 1.0 });
    let set_faults = |enabled| {
        api.json(
            Method::POST,
            "/api/v1/admin/inventory/faults",
            Some(&ops),
            Some(faults(enabled)),
        )
    };
    assert_eq!(set_faults(true).await.unwrap().status, 200);
    let order =
        json!({ "lines": [ { "sku": "TEA-001", "quantity": 1 } ], "card": "4242424242424242" });
    let place = || {
        api.json(
            Method::POST,
            "/api/v1/orders",
            Some(&token),
            Some(order.clone()),
        )
    };

    let mut pending = Vec::new();
    for _ in 0..3 {
        let r = place().await.unwrap();
        assert_eq!(r.status, 201, "{:?}", r.body);
        assert_eq!(r.body["status"], "PENDING_VALIDATION", "{:?}", r.body);
        pending.push(r.body["order_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        breaker.state(),
        CircuitState::Open,
        "opened by the failures"
    );

    // The customer now holds 3 unpaid orders, the most allowed: a 4th is
    // refused before it reaches inventory.
    let r = place().await.unwrap();
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.body["error"], "too_many_unpaid_orders", "{:?}", r.body);

    assert_eq!(set_faults(false).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The trial order is another customer's.
    let other = running
        .token_with_scopes("trial-customer", &["orders:read", "orders:write"])
        .unwrap();
    let r = api
        .json(
            Method::POST,
            "/api/v1/orders",
            Some(&other),
            Some(order.clone()),
        )
        .await
        .unwrap();
    assert_eq!(
        r.body["status"], "CONFIRMED",
        "the trial call passed: {:?}",
        r.body
    );
    assert_eq!(breaker.state(), CircuitState::Closed);

    let deadline = Instant::now() + Duration::from_secs(15);
    for id in &pending {
        loop {
            let r = api
                .json(
                    Method::GET,
                    &format!("/api/v1/orders/{id}"),
                    Some(&token),
                    None,
                )
                .await
                .unwrap();
            if r.body["status"] == "CONFIRMED" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "order {id} still {:?} after the breaker closed",
                r.body["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(running.net_charges(id).await.unwrap(), 1, "charged once");
    }
    running.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Validation attempts are numbered and one order never stops the
/// pass: a first pass while inventory is still down leaves both orders
/// pending (attempt 1 each); one order's attempt 2 is then held by a
/// live run elsewhere, and the next pass skips it and confirms the
/// other with attempt 2 (a fixed saga id would refuse it as a repeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_attempts_are_numbered_and_one_order_never_stops_the_others() {
    use trellis_saga::{Lease, SagaLog, SagaRecord, SagaStatus};

    let dir = std::env::temp_dir().join(format!(
        "ecommerce-numbered-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let running = ecommerce::start(ecommerce::Config {
        data_dir: dir.clone(),
        addr: "127.0.0.1:0".parse().unwrap(),
        drain: Duration::from_millis(10),
        ..ecommerce::Config::default()
    })
    .await
    .unwrap();
    let api = ApiClient::new(running.base_url());
    let credentials = json!({ "email": "numbered@example.com", "password": "a long password" });
    api.json(
        Method::POST,
        "/api/v1/identity/register",
        None,
        Some(credentials.clone()),
    )
    .await
    .unwrap();
    let r = api
        .json(
            Method::POST,
            "/api/v1/identity/login",
            None,
            Some(credentials),
        )
        .await
        .unwrap();
    let token = r.body["access_token"].as_str().unwrap().to_owned();
    running.inventory_breaker().force_open();
    let order =
        json!({ "lines": [ { "sku": "TEA-001", "quantity": 1 } ], "card": "4242424242424242" });
    let mut pending = Vec::new();
    for _ in 0..2 {
        let r = api
            .json(
                Method::POST,
                "/api/v1/orders",
                Some(&token),
                Some(order.clone()),
            )
            .await
            .unwrap();
        assert_eq!(r.body["status"], "PENDING_VALIDATION", "{:?}", r.body);
        pending.push(r.body["order_id"].as_str().unwrap().to_owned());
    }

    // Inventory still down: attempt 1 of each defers again.
    let first = running.validate_pending().await.unwrap();
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(
        first.iter().all(|(_, s)| s == "PENDING_VALIDATION"),
        "{first:?}"
    );
    let log = running.saga_log();
    for id in &pending {
        let attempt = log.load(&format!("{id}/validate")).await.unwrap();
        assert_eq!(attempt.map(|r| r.status), Some(SagaStatus::Completed));
    }

    // The first order's attempt 2 is running on another (live) owner.
    let held = format!("{}/validate/2", pending[0]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let record = SagaRecord {
        id: held.clone(),
        name: "place-order".into(),
        status: SagaStatus::Running,
        cursor: 0,
        state: log.load(&pending[0]).await.unwrap().unwrap().state,
        error: None,
        failed_step: None,
        deadline_ms: None,
        version: 1,
        wake_at_ms: None,
        awaiting: None,
    };
    let lease = Lease {
        owner: "orders@elsewhere/1",
        now_ms: now,
        until_ms: now + 60_000,
    };
    log.create(&record, lease, &[]).await.unwrap();

    // The operator closes the breaker: that request holds the pass lock
    // from the reset on (the watcher woken by the reset does not run this
    // pass first) and answers with the orders it validated.
    let ops = running.ops_token().unwrap();
    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/inventory/breaker",
            Some(&ops),
            Some(json!({ "open": false })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let second: Vec<(String, String)> = r.body["validated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["order_id"].as_str().unwrap().to_owned(),
                v["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        second,
        vec![(pending[1].clone(), "CONFIRMED".to_owned())],
        "the held order is skipped, the other validated"
    );
    let attempt = log
        .load(&format!("{}/validate/2", pending[1]))
        .await
        .unwrap();
    assert_eq!(attempt.map(|r| r.status), Some(SagaStatus::Completed));
    assert_eq!(running.net_charges(&pending[1]).await.unwrap(), 1);
    assert_eq!(running.net_charges(&pending[0]).await.unwrap(), 0);
    running.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
