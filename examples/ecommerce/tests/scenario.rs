//! The narrated scenario end to end through the HTTP API.

#[path = "support/mod.rs"]
mod support;

use http::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_reaches_the_expected_final_states() {
    let (running, _dir) = support::start("scenario").await;
    let tea_before = running.stock("TEA-001").await.unwrap();
    let mug_before = running.stock("MUG-002").await.unwrap();
    let mut narration = Vec::new();
    let ops = running.ops_token().unwrap();
    let outcome = ecommerce::scenario::run(&running.base_url(), &ops, |line| narration.push(line))
        .await
        .expect("scenario runs");
    assert_eq!(narration.len(), 9, "{narration:#?}");

    let api = ecommerce::ApiClient::new(running.base_url());
    let get = |id: String| {
        let api = api.clone();
        let token = outcome.token.clone();
        async move {
            api.json(
                Method::GET,
                &format!("/api/v1/orders/{id}"),
                Some(&token),
                None,
            )
            .await
            .unwrap()
        }
    };

    // Completed through the saga: confirmed, charged once, reservation confirmed.
    let confirmed = get(outcome.confirmed.clone()).await;
    assert_eq!(confirmed.status, StatusCode::OK);
    assert_eq!(confirmed.body["status"], "CONFIRMED");
    assert_eq!(confirmed.body["total_cents"], 2 * 1250 + 1800);
    assert_eq!(confirmed.body["items"], 3);
    assert_eq!(running.net_charges(&outcome.confirmed).await.unwrap(), 1);

    // Declined: rejected, nothing charged, the reservation released.
    let declined = get(outcome.declined.clone()).await;
    assert_eq!(declined.body["status"], "REJECTED");
    assert_eq!(declined.body["reason"], "payment failed");
    assert_eq!(running.net_charges(&outcome.declined).await.unwrap(), 0);

    // Degraded: accepted for later validation while the breaker was open,
    // then validated through the saga once it closed: confirmed, charged once.
    assert_eq!(outcome.pending_status, "PENDING_VALIDATION");
    let pending = get(outcome.pending.clone()).await;
    assert_eq!(pending.body["status"], "CONFIRMED");
    assert_eq!(running.net_charges(&outcome.pending).await.unwrap(), 1);

    // The two confirmed orders hold stock; the declined one released its own.
    assert_eq!(running.stock("TEA-001").await.unwrap(), tea_before - 4);
    assert_eq!(running.stock("MUG-002").await.unwrap(), mug_before - 2);

    // The read model lists the customer's three orders.
    let list = api
        .json(Method::GET, "/api/v1/orders", Some(&outcome.token), None)
        .await
        .unwrap();
    assert_eq!(list.body.as_array().map(Vec::len), Some(3));

    // Another customer cannot read them.
    let stranger = running
        .token_with_scopes("someone-else", &["orders:read"])
        .unwrap();
    let r = api
        .json(
            Method::GET,
            &format!("/api/v1/orders/{}", outcome.confirmed),
            Some(&stranger),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_jwks_metrics_and_request_ids_are_served() {
    let (running, _dir) = support::start("probes").await;
    let api = ecommerce::ApiClient::new(running.base_url());
    for path in ["/live", "/ready", "/startup"] {
        let r = api.json(Method::GET, path, None, None).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    let jwks = api
        .json(Method::GET, "/api/v1/.well-known/jwks.json", None, None)
        .await
        .unwrap();
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.body["keys"][0]["kty"], "OKP");
    let r = api
        .json(Method::GET, "/api/v1/products", None, None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["error"], "unauthenticated");
    assert!(
        r.headers.contains_key("x-request-id"),
        "every response carries a request id"
    );
    let metrics = api.json(Method::GET, "/metrics", None, None).await.unwrap();
    assert_eq!(metrics.status, StatusCode::OK);
    let content_type = metrics.headers["content-type"].to_str().unwrap();
    assert!(
        content_type.contains("openmetrics") || content_type.contains("text/plain"),
        "{content_type}"
    );
    running.shutdown().await.unwrap();
}

async fn customer(api: &ecommerce::ApiClient) -> String {
    let creds =
        serde_json::json!({ "email": "eve@example.com", "password": "long enough password" });
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
    let r = api
        .json(Method::POST, "/api/v1/identity/login", None, Some(creds))
        .await
        .unwrap();
    r.body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_stock_rejects_the_order_and_takes_no_stock() {
    let (running, _dir) = support::start("out-of-stock").await;
    let api = ecommerce::ApiClient::new(running.base_url());
    let token = customer(&api).await;
    let kettles = running.stock("KET-003").await.unwrap();
    let tea = running.stock("TEA-001").await.unwrap();
    let order = serde_json::json!({
        "lines": [ { "sku": "TEA-001", "quantity": 1 }, { "sku": "KET-003", "quantity": kettles + 1 } ],
        "card": ecommerce::scenario::GOOD_CARD,
    });
    let r = api
        .json(Method::POST, "/api/v1/orders", Some(&token), Some(order))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "REJECTED");
    assert_eq!(r.body["reason"], "inventory could not reserve the items");
    let id = r.body["order_id"].as_str().unwrap();
    assert_eq!(running.net_charges(id).await.unwrap(), 0);
    assert_eq!(
        running.stock("KET-003").await.unwrap(),
        kettles,
        "a partial reservation is rolled back"
    );
    assert_eq!(running.stock("TEA-001").await.unwrap(), tea);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_outage_compensates_and_recovers() {
    let (running, _dir) = support::start("payment-outage").await;
    let api = ecommerce::ApiClient::new(running.base_url());
    let token = customer(&api).await;
    let ops = running.ops_token().unwrap();
    let tea = running.stock("TEA-001").await.unwrap();
    let order = serde_json::json!({ "lines": [ { "sku": "TEA-001", "quantity": 1 } ], "card": ecommerce::scenario::GOOD_CARD });

    // Every call to the payment provider fails (injected through its FaultHandle).
    let faults = serde_json::json!({ "enabled": true, "error_probability": 1.0 });
    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/payments/faults",
            Some(&ops),
            Some(faults),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api
        .json(
            Method::POST,
            "/api/v1/orders",
            Some(&token),
            Some(order.clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.body["status"], "REJECTED", "{}", r.body);
    assert_eq!(
        running.stock("TEA-001").await.unwrap(),
        tea,
        "reservation released"
    );

    // A customer token cannot touch the fault handle.
    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/payments/faults",
            Some(&token),
            Some(serde_json::json!({})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Outage over: orders complete again.
    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/payments/faults",
            Some(&ops),
            Some(serde_json::json!({ "enabled": false })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let r = api
        .json(Method::POST, "/api/v1/orders", Some(&token), Some(order))
        .await
        .unwrap();
    assert_eq!(r.body["status"], "CONFIRMED", "{}", r.body);
    assert_eq!(
        running
            .net_charges(r.body["order_id"].as_str().unwrap())
            .await
            .unwrap(),
        1
    );
    assert_eq!(running.stock("TEA-001").await.unwrap(), tea - 1);
    running.shutdown().await.unwrap();
}

/// A reservation that expires while the saga waits on the payment provider
/// is swept (its stock back on the shelf), so confirming it fails: the saga
/// refunds and rejects the order instead of confirming it without stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_whose_reservation_expired_mid_saga_is_rejected_and_refunded() {
    let dir = support::TempDir::new("expired-reservation");
    let running = ecommerce::start(ecommerce::Config {
        data_dir: dir.0.clone(),
        addr: "127.0.0.1:0".parse().unwrap(),
        drain: std::time::Duration::from_millis(10),
        reservation_ttl: std::time::Duration::from_millis(300),
        ..ecommerce::Config::default()
    })
    .await
    .unwrap();
    let api = ecommerce::ApiClient::new(running.base_url());
    let token = customer(&api).await;
    let ops = running.ops_token().unwrap();
    let tea = running.stock("TEA-001").await.unwrap();

    // The charge answers after 700 ms: past the 300 ms TTL, within the
    // payment call's 1 s timeout, so it succeeds.
    let faults =
        serde_json::json!({ "enabled": true, "latency_probability": 1.0, "latency": "700ms" });
    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/payments/faults",
            Some(&ops),
            Some(faults),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let order = serde_json::json!({ "lines": [ { "sku": "TEA-001", "quantity": 2 } ], "card": ecommerce::scenario::GOOD_CARD });
    let r = api
        .json(Method::POST, "/api/v1/orders", Some(&token), Some(order))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "REJECTED", "{}", r.body);
    assert!(
        r.body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{}",
        r.body
    );
    let id = r.body["order_id"].as_str().unwrap();
    // Charged, then refunded by the compensation: no net charge.
    assert_eq!(running.net_charges(id).await.unwrap(), 0);
    // The sweeper (or the refused confirm) gave the stock back, once.
    assert_eq!(
        running
            .reservation_status(&format!("{id}/1/action"))
            .await
            .unwrap()
            .as_deref(),
        Some("EXPIRED")
    );
    assert_eq!(running.stock("TEA-001").await.unwrap(), tea);
    running.shutdown().await.unwrap();
}
