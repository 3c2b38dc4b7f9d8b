//! The shipping and analytics read models after the scenario, asserted
//! through the API (one process, SQLite). The same projections on
//! PostgreSQL are tested in src/services/shipping and src/services/analytics.

#[path = "support/mod.rs"]
mod support;

use ecommerce::ApiClient;
use http::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_fills_the_shipping_and_analytics_read_models() {
    let (running, _dir) = support::start("read-models").await;
    let ops = running.ops_token().unwrap();
    let outcome = ecommerce::scenario::run(&running.base_url(), &ops, |_| {})
        .await
        .expect("scenario runs");
    let api = ApiClient::new(running.base_url());
    let get = |path: String, token: String| {
        let api = api.clone();
        async move {
            api.json(Method::GET, &path, Some(&token), None)
                .await
                .unwrap()
        }
    };
    let customer = outcome.token.clone();

    // A shipment per confirmed order (the degraded one too, once validated).
    for order in [&outcome.confirmed, &outcome.pending] {
        let r = get(format!("/api/v1/shipments/{order}"), customer.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{order}: {}", r.body);
        assert_eq!(r.body["status"], "READY_TO_SHIP");
        assert_eq!(r.body["items"], 3);
        assert_eq!(r.body["customer"], outcome.customer.as_str());
    }
    // None for the declined order, none for another customer, none without the scope.
    let r = get(
        format!("/api/v1/shipments/{}", outcome.declined),
        customer.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let stranger = running
        .token_with_scopes("stranger", &["orders:read"])
        .unwrap();
    let r = get(format!("/api/v1/shipments/{}", outcome.confirmed), stranger).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Analytics: the two confirmed orders, 2 × (2 tea + 1 mug) = 2 × 4300.
    let r = get("/api/v1/analytics/customers".into(), ops.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body,
        json!([{ "customer": outcome.customer, "orders": 2, "revenue_cents": 8600 }])
    );
    let r = get("/api/v1/analytics/revenue/hourly".into(), ops.clone()).await;
    let hours = r.body.as_array().unwrap();
    let total = |field: &str| {
        hours
            .iter()
            .map(|h| h[field].as_i64().unwrap())
            .sum::<i64>()
    };
    assert_eq!(
        (total("orders"), total("revenue_cents")),
        (2, 8600),
        "{}",
        r.body
    );
    assert!(
        hours
            .iter()
            .all(|h| h["hour"].as_i64().unwrap() % 3600 == 0)
    );
    let r = get("/api/v1/analytics/products/top".into(), ops.clone()).await;
    assert_eq!(
        r.body,
        json!([
            { "sku": "TEA-001", "units": 4, "orders": 2 },
            { "sku": "MUG-002", "units": 2, "orders": 2 }
        ])
    );
    let r = get(
        "/api/v1/analytics/products/TEA-001/bought-together".into(),
        ops.clone(),
    )
    .await;
    assert_eq!(r.body, json!([{ "sku": "MUG-002", "orders": 2 }]));
    let r = get(
        "/api/v1/analytics/products/KET-003/bought-together".into(),
        ops.clone(),
    )
    .await;
    assert_eq!(r.body, json!([]));

    // Customers do not get analytics.
    let r = get("/api/v1/analytics/customers".into(), customer).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["error"], Value::from("insufficient_scope"));
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_survive_a_restart_without_counting_twice() {
    let dir = support::TempDir::new("read-models-restart");
    let config = ecommerce::Config {
        data_dir: dir.0.clone(),
        addr: "127.0.0.1:0".parse().unwrap(),
        drain: std::time::Duration::from_millis(10),
        ..ecommerce::Config::default()
    };
    let running = ecommerce::start(config.clone()).await.unwrap();
    let ops = running.ops_token().unwrap();
    ecommerce::scenario::run(&running.base_url(), &ops, |_| {})
        .await
        .unwrap();
    running.shutdown().await.unwrap();

    // Same data directory: the projections resume from their checkpoints.
    let running = ecommerce::start(config).await.unwrap();
    let ops = running.ops_token().unwrap();
    let api = ApiClient::new(running.base_url());
    let r = api
        .json(
            Method::GET,
            "/api/v1/analytics/products/top",
            Some(&ops),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        r.body[0],
        json!({ "sku": "TEA-001", "units": 4, "orders": 2 })
    );
    running.shutdown().await.unwrap();
}
