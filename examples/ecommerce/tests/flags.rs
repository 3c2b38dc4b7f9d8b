//! Feature flags in the reference system (issue #16 §1), on the whole system
//! in one process: the fault drills are flags changed live through the
//! admin API (`/api/v1/admin/flags`, scope `ops:admin`), a flag gates a
//! checkout step, and a caller without the scope changes nothing.

use std::time::Duration;

use http::Method;
use serde_json::{Value, json};

use ecommerce::ApiClient;

struct System {
    running: ecommerce::Running,
    api: ApiClient,
    ops: String,
    customer: String,
    dir: std::path::PathBuf,
}

async fn system(name: &str) -> System {
    let dir = std::env::temp_dir().join(format!(
        "ecommerce-flags-{name}-{}",
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
    let ops = running.ops_token().unwrap();
    let credentials =
        json!({ "email": format!("{name}@example.com"), "password": "a long password" });
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
    let customer = r.body["access_token"].as_str().unwrap().to_owned();
    System {
        running,
        api,
        ops,
        customer,
        dir,
    }
}

impl System {
    async fn place(&self, quantity: i64) -> ecommerce::ApiResponse {
        let order = json!({ "lines": [ { "sku": "TEA-001", "quantity": quantity } ], "card": "4242424242424242" });
        self.api
            .json(
                Method::POST,
                "/api/v1/orders",
                Some(&self.customer),
                Some(order),
            )
            .await
            .unwrap()
    }

    async fn set_variant(&self, token: &str, flag: &str, variant: &str) -> ecommerce::ApiResponse {
        self.api
            .json(
                Method::POST,
                &format!("/api/v1/admin/flags/{flag}/variant"),
                Some(token),
                Some(json!({ "variant": variant })),
            )
            .await
            .unwrap()
    }

    async fn flags(&self) -> Value {
        let r = self
            .api
            .json(Method::GET, "/api/v1/admin/flags", Some(&self.ops), None)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body
    }

    async fn stop(self) {
        self.running.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn default_variant(flags: &Value, key: &str) -> String {
    flags["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == key)
        .unwrap_or_else(|| panic!("{key} not listed: {flags}"))["default_variant"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `payment-failure-rate` to `all` through the admin API: the next order
/// is rejected with nothing charged and marked a system failure for the
/// canary analysis; back to `off`: the next one is confirmed. No restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_flip_through_the_admin_api_makes_payments_fail_live() {
    let s = system("flip").await;
    let listed = s.flags().await;
    for key in [
        "payment-outage",
        "payment-failure-rate",
        "inventory-latency-ms",
        "inventory-down",
        "checkout-order-limit",
    ] {
        assert_eq!(default_variant(&listed, key), "off", "{key}");
    }

    let before = s.place(1).await;
    assert_eq!(before.status, 201, "{:?}", before.body);
    assert_eq!(before.body["status"], "CONFIRMED", "{:?}", before.body);
    assert_eq!(before.headers["x-rollout-outcome"], "success");

    let r = s.set_variant(&s.ops, "payment-failure-rate", "all").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["value"], 1.0);
    let failed = s.place(1).await;
    assert_eq!(failed.status, 201, "{:?}", failed.body);
    assert_eq!(failed.body["status"], "REJECTED", "{:?}", failed.body);
    assert!(
        failed.body["saga"]["error"]
            .as_str()
            .unwrap()
            .contains("payment-failure-rate"),
        "{:?}",
        failed.body
    );
    assert_eq!(failed.headers["x-rollout-outcome"], "error");
    let id = failed.body["order_id"].as_str().unwrap();
    assert_eq!(s.running.net_charges(id).await.unwrap(), 0);

    assert_eq!(
        s.set_variant(&s.ops, "payment-failure-rate", "off")
            .await
            .status,
        200
    );
    let after = s.place(1).await;
    assert_eq!(after.body["status"], "CONFIRMED", "{:?}", after.body);
    let id = after.body["order_id"].as_str().unwrap();
    assert_eq!(s.running.net_charges(id).await.unwrap(), 1);
    s.stop().await;
}

/// `payment-outage` on: every payment call fails (retried, then the saga
/// compensates: the order is rejected, nothing charged); off: orders go
/// through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_outage_flag_fails_every_charge_until_switched_off() {
    let s = system("outage").await;
    assert_eq!(
        s.set_variant(&s.ops, "payment-outage", "on").await.status,
        200
    );
    let failed = s.place(1).await;
    assert_eq!(failed.body["status"], "REJECTED", "{:?}", failed.body);
    assert_eq!(failed.headers["x-rollout-outcome"], "error");
    assert_eq!(
        s.set_variant(&s.ops, "payment-outage", "off").await.status,
        200
    );
    // The payments breaker may have opened: wait for it to let calls by.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = s.place(1).await;
        if r.body["status"] == "CONFIRMED" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}", r.body);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.stop().await;
}

/// The checkout step behind `checkout-order-limit`: off, a 10-unit order
/// (12 500 cents) passes; at `100` (10 000 cents) the same is refused with 422
/// `order_limit` before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_gates_the_order_limit_checkout_step() {
    let s = system("limit").await;
    let big = s.place(10).await;
    assert_eq!(big.status, 201, "{:?}", big.body);
    let events = s.running.event_count().await.unwrap();
    assert_eq!(
        s.set_variant(&s.ops, "checkout-order-limit", "100")
            .await
            .status,
        200
    );
    let refused = s.place(10).await;
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    assert_eq!(refused.body["error"], "order_limit");
    assert_eq!(s.running.event_count().await.unwrap(), events);
    s.stop().await;
}

/// A customer token (no `ops:admin`) gets 403 on every admin flag route,
/// and the flags are as before; no token at all gets 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ops_admin_the_flag_api_refuses_and_nothing_changes() {
    let s = system("forbidden").await;
    let before = s.flags().await;
    let r = s.set_variant(&s.customer, "payment-outage", "on").await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = s
        .api
        .json(
            Method::PUT,
            "/api/v1/admin/flags/payment-outage",
            Some(&s.customer),
            Some(json!({ "variants": { "on": true, "off": false }, "defaultVariant": "on" })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = s
        .api
        .json(Method::GET, "/api/v1/admin/flags", Some(&s.customer), None)
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = s.set_variant("", "payment-outage", "on").await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(s.flags().await, before);
    let order = s.place(1).await;
    assert_eq!(order.body["status"], "CONFIRMED", "{:?}", order.body);

    // Invalid changes by the operator are refused whole too.
    let r = s.set_variant(&s.ops, "payment-outage", "maybe").await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    let r = s.set_variant(&s.ops, "no-such-flag", "on").await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(s.flags().await, before);
    s.stop().await;
}

/// The console's flags and rollout pages are served, with their script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_serves_the_flags_and_rollout_pages() {
    let s = system("pages").await;
    for (path, content_type) in [
        ("/ops/flags", "text/html"),
        ("/ops/rollout", "text/html"),
        ("/assets/delivery.js", "text/javascript"),
    ] {
        let r = s
            .api
            .raw(Method::GET, path, None, Vec::new())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{path}");
        let got = r.headers[http::header::CONTENT_TYPE].to_str().unwrap();
        assert!(got.starts_with(content_type), "{path}: {got}");
    }
    s.stop().await;
}
