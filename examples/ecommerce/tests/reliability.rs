//! `POST /orders` under the failures a client causes: it hangs up while the
//! saga runs, or it sends the same order twice (a retry racing the first
//! attempt). Checked in the services' own SQLite files: the order ends
//! final, charged at most once, its reservation settled.

mod support;

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::json;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

async fn customer(api: &ecommerce::ApiClient, email: &str) -> String {
    let creds = json!({ "email": email, "password": "long enough password" });
    let r = api
        .json(
            Method::POST,
            "/api/v1/identity/register",
            None,
            Some(creds.clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api
        .json(Method::POST, "/api/v1/identity/login", None, Some(creds))
        .await
        .unwrap();
    r.body["access_token"].as_str().unwrap().to_owned()
}

async fn open(dir: &Path, name: &str) -> SqlitePool {
    let url = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    let options = SqliteConnectOptions::from_str(&url)
        .unwrap()
        .read_only(true)
        .busy_timeout(Duration::from_secs(5));
    SqlitePool::connect_with(options).await.unwrap()
}

/// Charges the provider recorded as CHARGED for `order_id` (refunded or not).
async fn charges(dir: &Path, order_id: &str) -> i64 {
    let pool = open(dir, "payments").await;
    let n = sqlx::query_scalar(
        "SELECT COUNT(*) FROM charges WHERE order_id = ? AND status = 'CHARGED'",
    )
    .bind(order_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    n
}

/// Statuses of the reservations inventory holds for `order_id`.
async fn reservations(dir: &Path, order_id: &str) -> Vec<String> {
    let pool = open(dir, "inventory").await;
    let rows = sqlx::query_scalar("SELECT status FROM reservations WHERE order_id = ?")
        .bind(order_id)
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows
}

async fn set_payment_latency(api: &ecommerce::ApiClient, ops: &str, latency: &str) {
    let faults = json!({ "enabled": true, "latency_probability": 1.0, "latency": latency });
    let r = api
        .json(
            Method::POST,
            "/api/v1/admin/payments/faults",
            Some(ops),
            Some(faults),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

fn order() -> serde_json::Value {
    json!({ "lines": [ { "sku": "TEA-001", "quantity": 1 } ], "card": ecommerce::scenario::GOOD_CARD })
}

/// The customer's orders (id, status) from the read model.
async fn list(api: &ecommerce::ApiClient, token: &str) -> Vec<(String, String)> {
    let r = api
        .json(Method::GET, "/api/v1/orders", Some(token), None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["order_id"].as_str().unwrap().to_owned(),
                o["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A client hangs up at 0.4 s while the charge waits 800 ms on the
/// provider: the saga is not dropped with the request. Within 3 s (far
/// less than a saga lease, so no adopter could have finished it) the order
/// is final, charged once if confirmed and not at all otherwise, its
/// reservation confirmed or released, the stock accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_does_not_drop_its_saga() {
    let (running, dir) = support::start("hang-up").await;
    let api = ecommerce::ApiClient::new(running.base_url());
    let token = customer(&api, "hang-up@example.com").await;
    let ops = running.ops_token().unwrap();
    let before = running.stock("TEA-001").await.unwrap();
    set_payment_latency(&api, &ops, "800ms").await;

    let hung_up = tokio::time::timeout(
        Duration::from_millis(400),
        api.json(Method::POST, "/api/v1/orders", Some(&token), Some(order())),
    )
    .await;
    assert!(hung_up.is_err(), "the order answered before the hang-up");

    let deadline = Instant::now() + Duration::from_secs(3);
    let (order_id, status) = loop {
        let orders = list(&api, &token).await;
        if let Some((id, status)) = orders.first()
            && (status == "CONFIRMED" || status == "REJECTED")
        {
            assert_eq!(orders.len(), 1, "{orders:?}");
            break (id.clone(), status.clone());
        }
        assert!(
            Instant::now() < deadline,
            "the order is not final 3 s after its client hung up: {orders:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let charged = charges(&dir.0, &order_id).await;
    let standing = running.net_charges(&order_id).await.unwrap();
    let held = reservations(&dir.0, &order_id).await;
    let after = running.stock("TEA-001").await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    if status == "CONFIRMED" {
        assert_eq!((charged, standing), (1, 1), "confirmed: charged once");
        assert_eq!(held[0], "CONFIRMED");
        assert_eq!(after, before - 1);
    } else {
        assert_eq!(standing, 0, "rejected: no charge stands");
        assert_eq!(held[0], "RELEASED");
        assert_eq!(after, before);
    }
    running.shutdown().await.unwrap();
}

/// The same `Idempotency-Key` sent twice at once (a client retry racing
/// its first attempt) places one order and charges it once; both answers
/// name that order with the same status. Another key, or the same key from
/// another customer, is another order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_twice_at_once_places_one_order() {
    let (running, dir) = support::start("idempotent-order").await;
    let api = ecommerce::ApiClient::new(running.base_url());
    let token = customer(&api, "twice@example.com").await;
    let other = customer(&api, "other@example.com").await;
    let ops = running.ops_token().unwrap();
    // Both requests are in flight while the first charge waits.
    set_payment_latency(&api, &ops, "300ms").await;
    let before = running.stock("TEA-001").await.unwrap();

    let place = |token: String, key: &'static str| {
        let api = api.clone();
        tokio::spawn(async move {
            api.with_headers(
                Method::POST,
                "/api/v1/orders",
                Some(&token),
                &[("idempotency-key", key)],
                order().to_string().into_bytes(),
            )
            .await
            .unwrap()
        })
    };
    let (a, b) = (
        place(token.clone(), "checkout-1"),
        place(token.clone(), "checkout-1"),
    );
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    let id = a.body["order_id"].as_str().unwrap().to_owned();
    assert_eq!(b.body["order_id"], a.body["order_id"], "one order");
    assert_eq!(a.body["status"], "CONFIRMED", "{}", a.body);
    assert_eq!(b.body["status"], a.body["status"]);
    assert_eq!(charges(&dir.0, &id).await, 1, "charged once");
    assert_eq!(running.stock("TEA-001").await.unwrap(), before - 1);

    // Later, the same key again: the same order, nothing new.
    let again = place(token.clone(), "checkout-1").await.unwrap();
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert_eq!(again.body["order_id"], a.body["order_id"]);
    assert_eq!(again.body["status"], "CONFIRMED");
    assert_eq!(list(&api, &token).await.len(), 1);

    // Another key, another customer: other orders.
    let next = place(token.clone(), "checkout-2").await.unwrap();
    let theirs = place(other.clone(), "checkout-1").await.unwrap();
    assert_ne!(next.body["order_id"], a.body["order_id"]);
    assert_ne!(theirs.body["order_id"], a.body["order_id"]);
    assert_eq!(list(&api, &token).await.len(), 2);
    assert_eq!(list(&api, &other).await.len(), 1);
    assert_eq!(running.stock("TEA-001").await.unwrap(), before - 3);

    // The same key with another order (two teas): refused, nothing placed.
    let two_teas = json!({ "lines": [ { "sku": "TEA-001", "quantity": 2 } ], "card": ecommerce::scenario::GOOD_CARD });
    let reused = api
        .with_headers(
            Method::POST,
            "/api/v1/orders",
            Some(&token),
            &[("idempotency-key", "checkout-1")],
            two_teas.to_string().into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(reused.status, StatusCode::CONFLICT, "{}", reused.body);
    assert_eq!(reused.body["error"], "idempotency_key_reused");
    assert_eq!(list(&api, &token).await.len(), 2);
    assert_eq!(running.stock("TEA-001").await.unwrap(), before - 3);

    // A malformed key is refused before anything is written.
    let bad = api
        .with_headers(
            Method::POST,
            "/api/v1/orders",
            Some(&token),
            &[("idempotency-key", &"k".repeat(201))],
            order().to_string().into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert_eq!(bad.body["error"], "invalid_idempotency_key");
    running.shutdown().await.unwrap();
}
