//! Concurrency and restarts: nothing oversold, nothing lost.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;

async fn login(api: &ecommerce::ApiClient, email: &str, register: bool) -> String {
    let creds = json!({ "email": email, "password": "long enough password" });
    if register {
        let r = api
            .json(
                Method::POST,
                "/api/v1/identity/register",
                None,
                Some(creds.clone()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let r = api
        .json(Method::POST, "/api/v1/identity/login", None, Some(creds))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_never_oversell() {
    let (running, _dir) = support::start("oversell").await;
    let api = ecommerce::ApiClient::new(running.base_url());
    let kettles = running.stock("KET-003").await.unwrap();
    let attempts = kettles + 5;
    let tasks: Vec<_> = (0..attempts)
        .map(|i| {
            let api = api.clone();
            // A customer per order: one customer may hold only 3 unpaid
            // orders at once (tests/unpaid.rs), and this race is the stock's.
            let token = running
                .token_with_scopes(&format!("kim-{i}"), &["orders:read", "orders:write"])
                .unwrap();
            tokio::spawn(async move {
                let order = json!({ "lines": [ { "sku": "KET-003", "quantity": 1 } ], "card": ecommerce::scenario::GOOD_CARD });
                api.json(Method::POST, "/api/v1/orders", Some(&token), Some(order)).await.unwrap()
            })
        })
        .collect();
    let (mut confirmed, mut rejected) = (Vec::new(), 0);
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        match r.body["status"].as_str() {
            Some("CONFIRMED") => confirmed.push(r.body["order_id"].as_str().unwrap().to_owned()),
            Some("REJECTED") => rejected += 1,
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert_eq!(confirmed.len() as i64, kettles);
    assert_eq!(rejected, 5);
    assert_eq!(running.stock("KET-003").await.unwrap(), 0);
    for id in &confirmed {
        assert_eq!(
            running.net_charges(id).await.unwrap(),
            1,
            "charged exactly once"
        );
    }
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_read_models_survive_a_restart() {
    let dir = support::TempDir::new("restart");
    let config = ecommerce::Config {
        data_dir: dir.0.clone(),
        addr: "127.0.0.1:0".parse().unwrap(),
        drain: Duration::from_millis(10),
        ..ecommerce::Config::default()
    };
    let running = ecommerce::start(config.clone()).await.unwrap();
    let api = ecommerce::ApiClient::new(running.base_url());
    let token = login(&api, "lee@example.com", true).await;
    let order = json!({ "lines": [ { "sku": "BIS-004", "quantity": 3 } ], "card": ecommerce::scenario::GOOD_CARD });
    let r = api
        .json(Method::POST, "/api/v1/orders", Some(&token), Some(order))
        .await
        .unwrap();
    assert_eq!(r.body["status"], "CONFIRMED", "{}", r.body);
    let id = r.body["order_id"].as_str().unwrap().to_owned();
    let events = running.event_count().await.unwrap();
    let biscuits = running.stock("BIS-004").await.unwrap();
    running.shutdown().await.unwrap();

    let running = ecommerce::start(config).await.unwrap();
    let api = ecommerce::ApiClient::new(running.base_url());
    // The user survives; the signing key does not, so log in again.
    let token = login(&api, "lee@example.com", false).await;
    let r = api
        .json(
            Method::GET,
            &format!("/api/v1/orders/{id}"),
            Some(&token),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "CONFIRMED");
    let list = api
        .json(Method::GET, "/api/v1/orders", Some(&token), None)
        .await
        .unwrap();
    assert_eq!(
        list.body.as_array().map(Vec::len),
        Some(1),
        "the projection resumed without duplicates"
    );
    assert_eq!(running.event_count().await.unwrap(), events);
    assert_eq!(
        running.stock("BIS-004").await.unwrap(),
        biscuits,
        "the seed does not refill stock"
    );
    running.shutdown().await.unwrap();
}
