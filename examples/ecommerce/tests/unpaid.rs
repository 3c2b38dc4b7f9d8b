//! "A customer holds at most 3 unpaid orders" (services/orders/unpaid.rs)
//! through the API of the one-process system (SQLite): with inventory's
//! breaker open every accepted order stays PENDING_VALIDATION (unpaid)
//! until validated, so the count is deterministic. Eight placements of one
//! customer at once: three accepted, five refused with 409; nothing of a
//! refused one is written; once the orders are paid, a new one is admitted.
//! The same rule's race across two PostgreSQL replicas is a unit test of
//! `unpaid.rs` (`the_rule_holds_on_postgres_across_replicas`).

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::json;

use ecommerce::ApiClient;

const CUSTOMER: &[&str] = &["orders:read", "orders:write"];

fn order() -> Vec<u8> {
    json!({ "lines": [ { "sku": "TEA-001", "quantity": 1 } ], "card": "4242424242424242" })
        .to_string()
        .into_bytes()
}

async fn place(api: &ApiClient, token: &str, key: &str) -> ecommerce::ApiResponse {
    api.with_headers(
        Method::POST,
        "/api/v1/orders",
        Some(token),
        &[("idempotency-key", key)],
        order(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_placements_never_exceed_three_unpaid_orders() {
    let (running, _dir) = support::start("unpaid").await;
    let api = std::sync::Arc::new(ApiClient::new(running.base_url()));
    let ops = running.ops_token().unwrap();
    let eve = running.token_with_scopes("eve", CUSTOMER).unwrap();
    running.inventory_breaker().force_open();

    // Eight at once, each on its own task (and connection).
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (api, eve) = (api.clone(), eve.clone());
            tokio::spawn(async move { place(&api, &eve, &format!("eve-{i}")).await })
        })
        .collect();
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for (i, task) in tasks.into_iter().enumerate() {
        let r = task.await.unwrap();
        match r.status {
            StatusCode::CREATED => {
                assert_eq!(r.body["status"], "PENDING_VALIDATION", "{:?}", r.body);
                accepted.push(r.body["order_id"].as_str().unwrap().to_owned());
            }
            StatusCode::CONFLICT => {
                assert_eq!(r.body["error"], "too_many_unpaid_orders", "{:?}", r.body);
                assert!(
                    r.body["message"].as_str().unwrap().contains("3 unpaid"),
                    "{:?}",
                    r.body
                );
                refused.push(i);
            }
            other => panic!("placement {i}: {other} {:?}", r.body),
        }
    }
    assert_eq!((accepted.len(), refused.len()), (3, 5), "{accepted:?}");
    // The customer's orders are exactly the accepted ones: a refused
    // placement wrote no order.
    let r = api
        .json(Method::GET, "/api/v1/orders", Some(&eve), None)
        .await
        .unwrap();
    let mut listed: Vec<String> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    accepted.sort();
    assert_eq!(listed, accepted);
    // The same key again answers the same refusal (it is idempotent).
    let again = place(&api, &eve, &format!("eve-{}", refused[0])).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{:?}", again.body);
    // Another customer is not affected.
    let bob = running.token_with_scopes("bob", CUSTOMER).unwrap();
    let r = place(&api, &bob, "bob-1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    // Inventory back: closing the breaker validates (and charges) the
    // pending orders; once they are paid, eve may order again.
    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/inventory/breaker",
            Some(&ops),
            Some(json!({ "open": false })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in &accepted {
        loop {
            let r = api
                .json(
                    Method::GET,
                    &format!("/api/v1/orders/{id}"),
                    Some(&eve),
                    None,
                )
                .await
                .unwrap();
            if r.body["status"] == "CONFIRMED" {
                break;
            }
            assert!(Instant::now() < deadline, "{id}: {:?}", r.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let r = place(&api, &eve, "eve-after-paying").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["status"], "CONFIRMED", "{:?}", r.body);
    running.shutdown().await.unwrap();
}

/// `max_unpaid_orders = 0` turns the rule off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_zero_admits_every_order() {
    let dir = support::TempDir::new("unpaid-off");
    let running = ecommerce::start(ecommerce::Config {
        data_dir: dir.0.clone(),
        addr: "127.0.0.1:0".parse().unwrap(),
        drain: Duration::from_millis(10),
        max_unpaid_orders: 0,
        ..ecommerce::Config::default()
    })
    .await
    .unwrap();
    let api = ApiClient::new(running.base_url());
    let eve = running.token_with_scopes("eve", CUSTOMER).unwrap();
    running.inventory_breaker().force_open();
    for i in 0..5 {
        let r = place(&api, &eve, &format!("off-{i}")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{i}: {:?}", r.body);
    }
    running.shutdown().await.unwrap();
}
